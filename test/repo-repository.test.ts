import { test } from 'node:test';
import assert from 'node:assert/strict';
import { spawn, execFileSync } from 'node:child_process';
import { existsSync, lstatSync, mkdirSync, mkdtempSync, readdirSync, readFileSync, readlinkSync, rmSync, writeFileSync } from 'node:fs';
import { randomBytes } from 'node:crypto';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { fileURLToPath, pathToFileURL } from 'node:url';
import { Repository, initRepository, resolveRepositoryPath, ObjectWriter, SYSTEM_REPO_PATH } from '../src/repository/index.js';
import { fsverityDigest } from '../src/fsverity/digest.js';
import { CfsError } from '../src/errors.js';
import { newMeta, serializeMeta } from '../src/repository/meta.js';
import { ObjectSink } from '../src/repository/object-sink.js';
import { firstOutput, stopChild } from './helpers/child.js';

function tmp(): string {
  return mkdtempSync(path.join(tmpdir(), 'cfs-repo-'));
}

function isCfs(code: string, re?: RegExp) {
  return (e: unknown): boolean => e instanceof CfsError && e.code === code && (!re || re.test(e.message));
}

/** Every object file under objects/XX/ (no temp files anywhere else in objects/). */
function objectFiles(repo: string): string[] {
  const dir = path.join(repo, 'objects');
  const out: string[] = [];
  for (const ent of readdirSync(dir, { withFileTypes: true })) {
    if (!ent.isDirectory()) {
      out.push(ent.name);
      continue;
    }
    for (const f of readdirSync(path.join(dir, ent.name))) out.push(`${ent.name}/${f}`);
  }
  return out.sort();
}

const META_SHA256 = `{
  "version": 1,
  "algorithm": "fsverity-sha256-12",
  "features": {
    "compatible": [],
    "read-only-compatible": [
      "v1_erofs"
    ],
    "incompatible": []
  },
  "erofs_formats": {
    "default": 1
  }
}
`;

test('init writes meta.json exactly like composefs-rs (sha256 default, sha512 option)', async () => {
  const d = tmp();
  try {
    assert.deepEqual(await initRepository(path.join(d, 'a'), { insecure: true }), { created: true });
    assert.equal(readFileSync(path.join(d, 'a/meta.json'), 'utf8'), META_SHA256);
    assert.equal(lstatSync(path.join(d, 'a')).mode & 0o777, 0o700);
    for (const sub of ['objects', 'streams', 'images']) assert.ok(lstatSync(path.join(d, 'a', sub)).isDirectory());
    await initRepository(path.join(d, 'b/c'), { insecure: true, hashAlg: 'sha512' });
    assert.equal(readFileSync(path.join(d, 'b/c/meta.json'), 'utf8'), META_SHA256.replace('sha256', 'sha512'));
    // Idempotent with the same config, refused with a different one.
    assert.deepEqual(await initRepository(path.join(d, 'a'), { insecure: true }), { created: false });
    await assert.rejects(initRepository(path.join(d, 'a'), { insecure: true, hashAlg: 'sha512' }),
      isCfs('EEXIST', /different configuration \(algorithm: fsverity-sha256-12.*fsverity-sha512-12/));
    // Format 2 as composefs-rs writes it (cfs reads such repositories, but writes no format 2 images).
    const m = JSON.parse(serializeMeta(newMeta('sha256', 2)));
    assert.deepEqual(m.features['read-only-compatible'], []);
    assert.deepEqual(m.erofs_formats, { default: 2 });
    await assert.rejects(initRepository(path.join(d, 'v2'), { insecure: true, erofsVersion: 2 }), isCfs('ENOTSUP', /EROFS format 2: cfs writes formats 0 and 1/));
  } finally {
    rmSync(d, { recursive: true, force: true });
  }
});

test('secure init fails without fs-verity (this kernel) and leaves no meta.json', async () => {
  const d = tmp();
  try {
    const r = path.join(d, 'r');
    await assert.rejects(initRepository(r), isCfs('ENOTSUP', /does not support fs-verity \(use --insecure\)/));
    assert.ok(!existsSync(path.join(r, 'meta.json')));
    await assert.rejects(Repository.open(r, { create: true }), isCfs('ENOTSUP'));
    const repo = await Repository.open(r, { create: true, insecure: true });
    assert.equal(repo.secure, false);
    repo.close();
  } finally {
    rmSync(d, { recursive: true, force: true });
  }
});

test('open validates meta.json: version, algorithm, features, --hash', async () => {
  const d = tmp();
  try {
    const r = path.join(d, 'r');
    await assert.rejects(Repository.open(r), isCfs('ENOENT', /does not exist/));
    mkdirSync(r);
    await assert.rejects(Repository.open(r), isCfs('ENOENT', /must be initialized with `cfs init`/));
    const repo = await Repository.open(r, { create: true, insecure: true });
    assert.equal(repo.alg, 'sha256');
    assert.deepEqual(repo.erofsFormats, { default: 1, extra: [] });
    repo.close();
    const meta = JSON.parse(readFileSync(path.join(r, 'meta.json'), 'utf8'));
    const put = (m: object): void => writeFileSync(path.join(r, 'meta.json'), JSON.stringify(m));
    put({ ...meta, version: 2 });
    await assert.rejects(Repository.open(r), isCfs('ENOTSUP', /unsupported repository format version 2 \(this tool supports up to 1\)/));
    put({ ...meta, features: { incompatible: ['future_thing'] } });
    await assert.rejects(Repository.open(r), isCfs('ENOTSUP', /unsupported incompatible features: future_thing/));
    for (const [alg, re] of [['sha256-12', /prefix/], ['fsverity-sha256', /missing '-'/], ['fsverity-sha256-x', /not a number/],
      ['fsverity-sha256-16', /block size/], ['fsverity-md5-12', /unknown hash/]] as const) {
      put({ ...meta, algorithm: alg });
      await assert.rejects(Repository.open(r), isCfs('EINVAL', re));
    }
    // Unknown compatible / read-only-compatible flags are accepted; absent erofs_formats = legacy V2.
    put({ version: 1, algorithm: 'fsverity-sha256-12', features: { compatible: ['x'], 'read-only-compatible': ['y'] } });
    const legacy = await Repository.open(r);
    assert.deepEqual(legacy.erofsFormats, { default: 2, extra: [] });
    // …but an unknown read-only-compatible flag forbids every write.
    const readOnly = isCfs('EPERM', /has read-only-compatible features it does not know \(y\); it may only be read/);
    await assert.rejects(legacy.ensureWritable(), readOnly);
    await assert.rejects(legacy.setRef('streams', 'x', 'oci-config-sha256:' + '0'.repeat(64)), readOnly);
    await assert.rejects(legacy.writeImage(Buffer.alloc(4096)), readOnly);
    assert.deepEqual(await legacy.listImages(), []);
    legacy.close();
    put(meta);
    await assert.rejects(Repository.open(r, { hashAlg: 'sha512' }), isCfs('EINVAL', /configured for fsverity-sha256-12 \(from meta.json\) but --hash sha512/));
    // Old-format repository: objects/ without meta.json.
    rmSync(path.join(r, 'meta.json'));
    await assert.rejects(Repository.open(r, { create: true }), isCfs('ENOTSUP', /old-format repository/));
  } finally {
    rmSync(d, { recursive: true, force: true });
  }
});

test('resolveRepositoryPath: --repo, --system, --user, $CFS_REPO, uid default', () => {
  const saved = { HOME: process.env.HOME, CFS_REPO: process.env.CFS_REPO };
  try {
    process.env.HOME = '/home/someone';
    delete process.env.CFS_REPO;
    assert.equal(resolveRepositoryPath({ repo: 'rel/repo' }), path.resolve('rel/repo'));
    assert.equal(resolveRepositoryPath({ system: true }), '/sysroot/composefs');
    assert.equal(resolveRepositoryPath({ user: true }), '/home/someone/.var/lib/composefs');
    assert.equal(resolveRepositoryPath({}), process.getuid!() === 0 ? SYSTEM_REPO_PATH : '/home/someone/.var/lib/composefs');
    process.env.CFS_REPO = '/srv/cfs';
    assert.equal(resolveRepositoryPath({}), '/srv/cfs');
    assert.equal(resolveRepositoryPath({ user: true }), '/home/someone/.var/lib/composefs');
    assert.throws(() => resolveRepositoryPath({ user: true, system: true }), isCfs('EINVAL', /mutually exclusive/));
    delete process.env.HOME;
    assert.throws(() => resolveRepositoryPath({ user: true }), isCfs('EINVAL', /\$HOME is not set/));
  } finally {
    for (const [k, v] of Object.entries(saved)) {
      if (v === undefined) delete process.env[k];
      else process.env[k] = v;
    }
  }
});

test('objects: named by fs-verity digest, streamed, deduplicated (sha256 and sha512)', async () => {
  const d = tmp();
  try {
    for (const hashAlg of ['sha256', 'sha512'] as const) {
      const repo = await Repository.init(path.join(d, hashAlg), { insecure: true, hashAlg });
      const data = randomBytes(5 * 1024 * 1024 + 123);
      const w = repo.createObjectWriter();
      for (let off = 0; off < data.length; off += 70_001) await w.write(data.subarray(off, off + 70_001));
      const id = await w.commit();
      assert.deepEqual(id, fsverityDigest(data, hashAlg));
      const hex = id.toString('hex');
      assert.equal(repo.objectPath(id), path.join(repo.path, 'objects', hex.slice(0, 2), hex.slice(2)));
      assert.equal(hex.slice(2).length, hashAlg === 'sha256' ? 62 : 126);
      assert.deepEqual(readFileSync(repo.objectPath(id)), data);
      assert.deepEqual(await repo.readObject(id), data);
      // The same content again (streamed and in-memory) dedupes onto the existing file.
      const ino = lstatSync(repo.objectPath(id)).ino;
      const w2 = repo.createObjectWriter();
      await w2.write(data);
      assert.deepEqual(await w2.commit(), id);
      assert.deepEqual(await repo.writeObject(data), id);
      assert.equal(lstatSync(repo.objectPath(id)).ino, ino);
      const empty = await repo.writeObject(Buffer.alloc(0));
      assert.deepEqual(empty, fsverityDigest(Buffer.alloc(0), hashAlg));
      assert.deepEqual(objectFiles(repo.path), [hex, empty.toString('hex')].map((h) => `${h.slice(0, 2)}/${h.slice(2)}`).sort());
      repo.close();
    }
  } finally {
    rmSync(d, { recursive: true, force: true });
  }
});

test('partial objects are never visible: uncommitted, aborted, named-temp fallback', async () => {
  const d = tmp();
  try {
    const repo = await Repository.init(path.join(d, 'r'), { insecure: true });
    const w = repo.createObjectWriter();
    await w.write(randomBytes(1 << 20));
    assert.deepEqual(objectFiles(repo.path), []); // O_TMPFILE: no name until commit
    w.abort();
    assert.deepEqual(objectFiles(repo.path), []);
    // Filesystems without O_TMPFILE: a named temp file, renamed without replacing.
    const store = { path: repo.path, alg: repo.alg, secure: false, tmpfileUnsupported: true, knownDirs: new Set<string>() };
    const data = randomBytes(100_000);
    const nw = new ObjectWriter(store);
    await nw.write(data);
    assert.equal(objectFiles(repo.path).filter((f) => f.startsWith('.tmp-object-')).length, 1);
    const id = await nw.commit();
    assert.deepEqual(objectFiles(repo.path), [`${id.toString('hex').slice(0, 2)}/${id.toString('hex').slice(2)}`]);
    const again = new ObjectWriter(store);
    await again.write(data);
    assert.deepEqual(await again.commit(), id); // EEXIST from RENAME_NOREPLACE = dedupe, temp removed
    const aborted = new ObjectWriter(store);
    await aborted.write(data);
    aborted.abort();
    assert.equal(objectFiles(repo.path).length, 1);
    repo.close();
  } finally {
    rmSync(d, { recursive: true, force: true });
  }
});

test('a writer killed with SIGKILL leaves only complete, correctly named objects', async () => {
  const d = tmp();
  try {
    const repoPath = path.join(d, 'r');
    (await Repository.init(repoPath, { insecure: true })).close();
    const here = path.dirname(fileURLToPath(import.meta.url));
    const ext = import.meta.url.endsWith('.ts') ? 'ts' : 'js';
    const mod = pathToFileURL(path.join(here, `../src/repository/repository.${ext}`)).href;
    const script = `
      const { Repository } = await import(${JSON.stringify(mod)});
      const { randomBytes } = await import('node:crypto');
      const repo = await Repository.open(${JSON.stringify(repoPath)});
      process.stdout.write('ready\\n');
      for (;;) {
        const w = repo.createObjectWriter();
        for (let i = 0; i < 64; i++) await w.write(randomBytes(64 * 1024));
        await w.commit();
      }`;
    const args = [...(ext === 'ts' ? ['--import', 'tsx'] : []), '--input-type=module', '-e', script];
    const child = spawn(process.execPath, args, { stdio: ['ignore', 'pipe', 'inherit'] });
    await firstOutput(child, 'the writer');
    // Let it commit a few objects, then kill it in the middle of whatever it is doing.
    while (objectFiles(repoPath).length < 3 && child.exitCode === null) await new Promise((r) => setTimeout(r, 20));
    assert.equal(child.exitCode, null, 'the writer runs until killed');
    await stopChild(child, 'SIGKILL');
    const files = objectFiles(repoPath);
    assert.ok(files.length >= 3);
    for (const f of files) {
      assert.match(f, /^[0-9a-f]{2}\/[0-9a-f]{62}$/);
      assert.equal(fsverityDigest(readFileSync(path.join(repoPath, 'objects', f))).toString('hex'), f.replace('/', ''));
    }
  } finally {
    rmSync(d, { recursive: true, force: true });
  }
});

test('secure repository: enabling fs-verity fails clearly on a filesystem without it', async () => {
  const d = tmp();
  try {
    const repo = await Repository.init(path.join(d, 'r'), { insecure: true });
    assert.equal(repo.secure, false); // meta.json has no verity here
    // An ObjectStore that demands verity exercises the real FS_IOC_ENABLE_VERITY path.
    const store = { path: repo.path, alg: repo.alg, secure: true, tmpfileUnsupported: false, knownDirs: new Set<string>() };
    const w = new ObjectWriter(store);
    await w.write(Buffer.from('x'.repeat(1000)));
    await assert.rejects(w.commit(), isCfs('ENOTSUP', /requires fs-verity, but its filesystem does not support it .*--insecure/));
    assert.deepEqual(objectFiles(repo.path), []);
    repo.close();
  } finally {
    rmSync(d, { recursive: true, force: true });
  }
});

test('streams, images and refs: relative symlinks, atomic replace, lookups', async () => {
  const d = tmp();
  try {
    const repo = await Repository.init(path.join(d, 'r'), { insecure: true });
    const a = await repo.writeObject(Buffer.from('stream a'));
    const b = await repo.writeObject(Buffer.from('stream b'));
    const ahex = a.toString('hex');
    assert.equal(await repo.hasStream('oci-layer-sha256:00'), null);
    await repo.linkStream('oci-layer-sha256:00', a);
    assert.equal(readlinkSync(path.join(repo.path, 'streams/oci-layer-sha256:00')), `../objects/${ahex.slice(0, 2)}/${ahex.slice(2)}`);
    assert.deepEqual(await repo.hasStream('oci-layer-sha256:00'), a);
    await repo.linkStream('oci-layer-sha256:00', a); // same target: no-op
    await repo.linkStream('oci-config-sha256:11', b);
    await repo.setRef('streams', 'oci/foo:latest', 'oci-layer-sha256:00');
    assert.equal(readlinkSync(path.join(repo.path, 'streams/refs/oci/foo:latest')), '../../oci-layer-sha256:00');
    assert.deepEqual(await repo.resolveStream('refs/oci/foo:latest'), { contentId: 'oci-layer-sha256:00', objectId: a });
    assert.deepEqual(await repo.resolveStream('ref/oci/foo:latest'), { contentId: 'oci-layer-sha256:00', objectId: a });
    await repo.setRef('streams', 'oci/foo:latest', 'oci-config-sha256:11'); // replaced atomically
    assert.deepEqual((await repo.resolveStream('refs/oci/foo:latest')).objectId, b);
    assert.ok(!readdirSync(repo.path).some((n) => n.startsWith('.symlink-')));
    assert.deepEqual(await repo.listStreams(), ['oci-config-sha256:11', 'oci-layer-sha256:00']);
    assert.deepEqual(await repo.listStreamRefs(), [{ name: 'oci/foo:latest', contentId: 'oci-config-sha256:11' }]);
    await assert.rejects(repo.resolveStream('nope'), isCfs('ENOENT', /stream 'nope' not found/));
    await assert.rejects(repo.resolveStream('refs/nope'), isCfs('ENOENT', /stream ref 'nope' not found/));
    for (const bad of ['', '/abs', 'a/../b', 'a//b', './a']) await assert.rejects(repo.setRef('streams', bad, 'x'), isCfs('EINVAL'));
    await assert.rejects(repo.linkStream('a/b', a), isCfs('EINVAL'));
    await repo.removeRef('streams', 'oci/foo:latest');
    assert.deepEqual(await repo.listStreamRefs(), []);

    const img = Buffer.from('pretend this is an EROFS image');
    const hex = await repo.writeImage(img, 'my/image');
    assert.equal(hex, fsverityDigest(img).toString('hex'));
    assert.equal(readlinkSync(path.join(repo.path, 'images', hex)), `../objects/${hex.slice(0, 2)}/${hex.slice(2)}`);
    assert.equal(readlinkSync(path.join(repo.path, 'images/refs/my/image')), `../../${hex}`);
    assert.deepEqual(await repo.listImages(), [hex]);
    assert.deepEqual(await repo.listImageRefs(), [{ name: 'my/image', imageId: hex }]);
    for (const name of [hex, 'refs/my/image']) {
      const h = await repo.openImage(name);
      assert.equal(h.imageId.toString('hex'), hex);
      assert.equal(h.path, repo.objectPath(h.imageId));
      assert.equal(h.verityRequired, false); // insecure repository, no fs-verity on this kernel
    }
    await repo.setRef('images', 'plain', hex);
    assert.equal((await repo.openImage('plain')).imageId.toString('hex'), hex);
    await assert.rejects(repo.openImage('missing'), isCfs('ENOENT', /image not found: missing/));
    repo.close();
  } finally {
    rmSync(d, { recursive: true, force: true });
  }
});

test('a read-only repository is reported as not writable', async (t) => {
  const d = tmp();
  const ro = path.join(d, 'ro');
  try {
    const repo = await Repository.init(path.join(d, 'r'), { insecure: true });
    repo.close();
    mkdirSync(ro);
    try {
      execFileSync('mount', ['--bind', '-o', 'ro', path.join(d, 'r'), ro], { stdio: 'pipe' });
    } catch {
      t.skip('bind mounts need root');
      return;
    }
    try {
      const r = await Repository.open(ro);
      await assert.rejects(r.ensureWritable(), isCfs('EPERM', /Repository is not writable: read-only file system/));
      r.close();
    } finally {
      execFileSync('umount', [ro]);
    }
  } finally {
    rmSync(d, { recursive: true, force: true });
  }
});

test('ObjectSink: small objects written in batches under their digests; a full filesystem fails drain() with the object named', async () => {
  const dir = mkdtempSync(path.join(tmpdir(), 'cfs-sink-'));
  try {
    const repo = await Repository.init(path.join(dir, 'ok'), { insecure: true });
    const sink = new ObjectSink(repo);
    const datas = Array.from({ length: 150 }, (_, i) => randomBytes(100 + i * 37));
    datas.push(Buffer.from(datas[3]!));
    const ids = await Promise.all(datas.map((d) => sink.store(d)));
    await sink.drain();
    for (const [i, d] of datas.entries()) {
      assert.deepEqual(ids[i], fsverityDigest(d, 'sha256'));
      assert.deepEqual(readFileSync(repo.objectPath(ids[i]!)), d);
    }
    repo.close();
    // 2 MiB of objects into a 512 KiB tmpfs.
    const mnt = path.join(dir, 'small');
    mkdirSync(mnt);
    execFileSync('mount', ['-t', 'tmpfs', '-o', 'size=512k', 'cfs-sink-test', mnt]);
    try {
      const full = await Repository.init(path.join(mnt, 'repo'), { insecure: true });
      const s = new ObjectSink(full);
      for (let i = 0; i < 256; i++) await s.store(randomBytes(8192)).catch(() => undefined);
      await assert.rejects(s.drain(), (e: unknown) => e instanceof CfsError && e.code === 'EIO' && /cannot write an object: .*objects\/[0-9a-f]{2}\/[0-9a-f]{62}: No space left/.test(e.message));
      full.close();
    } finally {
      execFileSync('umount', [mnt]);
    }
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
});
