/**
 * cfs as a library: the package entry (`import … from 'cfs'`, the package's own name) pulls,
 * lists, dumps, mounts (kernel and FUSE, as root) and unmounts an image as the CLI does, builds
 * the same EROFS image as `cfs mkcomposefs`, and fails with typed errors, printing nothing.
 */
import { test, after } from 'node:test';
import assert from 'node:assert/strict';
import { mkdirSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import * as api from '../src/index.js';
import { buildOciLayout } from './helpers/oci-fixture.js';
import { cfsOk, runCfs } from './helpers/cli.js';
import { isRoot } from './helpers/unpriv.js';

const work = mkdtempSync(path.join(tmpdir(), 'cfs-lib-'));
after(() => rmSync(work, { recursive: true, force: true }));

test('the package name resolves to the library entry (package.json exports), with its declarations', async () => {
  const name: string = JSON.parse(readFileSync(path.join(import.meta.dirname, '../../package.json'), 'utf8')).name;
  const byName = (await import(name)) as typeof api;
  assert.equal(byName.pullImage, api.pullImage);
  assert.equal(byName.Repository, api.Repository);
  assert.ok(readFileSync(path.join(import.meta.dirname, '../src/index.d.ts'), 'utf8').includes('export { mountImage'));
});

test('pull, list, dump, mount (kernel and FUSE), unmount through the library; errors are CfsErrors', { skip: isRoot() ? false : 'needs root (mounts)' }, async () => {
  const layout = path.join(work, 'layout');
  await buildOciLayout(layout, {
    images: [{ tag: 'v1', layers: [[{ path: 'etc/' }, { path: 'etc/motd', content: 'hello from the library\n' }], [{ path: 'usr/' }, { path: 'usr/big', content: Buffer.alloc(100_000, 7) }]] }],
  });
  const notices: string[] = [];
  const repo = await api.Repository.open(path.join(work, 'repo'), { create: true, fallbackInsecure: true, onNotice: (t) => notices.push(t) });
  try {
    const reference = `oci:${layout}:v1`;
    const pulled = await api.pullImage(repo, reference);
    assert.equal(pulled.tag, reference);
    assert.match(pulled.imageId ?? '', /^[0-9a-f]{64}$/);
    assert.equal(pulled.layersImported, 2);
    // The CLI sees what the library stored.
    assert.match(cfsOk(['--repo', repo.path, 'oci', 'images']).stdout, new RegExp(reference.replace(/[/.]/g, '\\$&')));
    assert.deepEqual((await api.listTags(repo)).map((t) => t.name), [reference]);
    // `cfs oci tag` takes an existing tag as the image, as podman tag does (or a digest).
    cfsOk(['--repo', repo.path, 'oci', 'tag', reference, 'again']);
    assert.deepEqual((await api.listTags(repo)).map((t) => t.name).sort(), [reference, 'again'].sort());
    const unknown = runCfs(['--repo', repo.path, 'oci', 'tag', 'f'.repeat(64), 'x']);
    assert.match(unknown.stderr, /^cfs: image 'f{64}' not found in repository \S+ \(not a tag, manifest digest or image id; see 'cfs oci images'\)\n$/);
    await api.untagImage(repo, 'again');
    // The library's tagImage(repo, NAME, IMAGE) takes what the CLI takes: a tag, a short id, a digest.
    await api.tagImage(repo, 'by-tag', reference);
    await api.tagImage(repo, 'by-short-id', pulled.manifestDigest.slice(7, 19));
    await api.tagImage(repo, 'by-digest', pulled.manifestDigest);
    const tagged = await api.listTags(repo);
    for (const t of ['by-tag', 'by-short-id', 'by-digest']) assert.equal(tagged.find((x) => x.name === t)?.manifestDigest, pulled.manifestDigest, t);
    for (const t of ['by-tag', 'by-short-id', 'by-digest']) await api.untagImage(repo, t);
    const stored = await api.openStoredImage(repo, reference);
    assert.equal(stored.imageId, pulled.imageId);
    const tree = await api.buildTreeFromLayers(repo, stored.diffIds.map((d) => ({ diffId: d, streamId: stored.layerStreams.get(d)! })));
    assert.match(api.printDumpfile(tree).toString(), /^\/etc\/motd 23 /m);

    for (const fuse of ['no', 'yes'] as const) {
      const mp = path.join(work, `mnt-${fuse}`);
      mkdirSync(mp);
      const m = await api.mountImage(repo, reference, mp, { fuse });
      try {
        assert.deepEqual(m, { mountpoint: mp, kind: fuse === 'no' ? 'kernel' : 'fuse', imageId: pulled.imageId, label: reference });
        assert.equal(readFileSync(path.join(mp, 'etc/motd'), 'utf8'), 'hello from the library\n');
        assert.deepEqual(readFileSync(path.join(mp, 'usr/big')), Buffer.alloc(100_000, 7));
        assert.ok((await api.listMounts()).some((e) => e.mountpoint === mp && e.kind === m.kind && e.state === 'active' && e.image === reference));
        // A second mount on the same place is refused, as by the CLI.
        await assert.rejects(api.mountImage(repo, reference, mp), (e: unknown) => api.isCfsError(e) && e.code === 'EBUSY');
      } finally {
        await api.unmountImage(mp);
      }
      assert.ok(!(await api.listMounts()).some((e) => e.mountpoint === mp));
    }

    // Typed errors, nothing printed.
    const code = (c: string) => (e: unknown) => api.isCfsError(e) && e.code === c;
    await assert.rejects(api.mountImage(repo, reference, path.join(work, 'nowhere')), code('ENOENT'));
    await assert.rejects(api.pullImage(repo, reference, { localFetch: 'sometimes' as api.LocalFetch }), code('EINVAL'));
    await assert.rejects(api.pullImage(repo, `oci:${path.join(work, 'missing')}:v1`), (e: unknown) => api.isCfsError(e));
    await assert.rejects(api.unmountImage(work), code('EINVAL'));
    const report = await api.fsck(repo);
    assert.equal(report.ok, true);
  } finally {
    repo.close();
  }
  // A closed handle holds no lock: using it is an error, not a stray EBADF.
  await assert.rejects(api.pullImage(repo, `oci:${layout}:v1`, { name: 'after-close' }), (e: unknown) => api.isCfsError(e) && e.code === 'EINVAL' && /this handle is closed/.test(e.message));
  await assert.rejects(api.Repository.init(path.join(work, 'v2'), { insecure: true, erofsVersion: 2 }), (e: unknown) => api.isCfsError(e) && e.code === 'ENOTSUP');
});

test('parseDumpfile + writeErofs write the image `cfs mkcomposefs` writes; fsverityDigest is its id', async () => {
  const dump = [
    '/ 0 40755 2 0 0 0 1700000000.0 - - -',
    '/hello 6 100644 1 0 0 0 1700000000.0 - hello\\x0a -',
    '/link 5 120777 1 0 0 0 1700000000.0 hello - -',
    '',
  ].join('\n');
  const file = path.join(work, 'in.dump');
  writeFileSync(file, dump);
  const image = api.writeErofs(api.parseDumpfile(Buffer.from(dump), { strict: true }));
  const out = path.join(work, 'cli.img');
  const printed = cfsOk(['mkcomposefs', '--from-file', '--print-digest', file, out]).stdout.trim();
  assert.deepEqual(image, readFileSync(out));
  assert.equal(api.fsverityDigest(image).toString('hex'), printed);
});
