/**
 * `cfs oci pull` end to end through the real CLI: generated OCI layouts and archives, the
 * merged tree, exact layer reconstruction (`cfs cat`), re-pull, and every bad input the
 * issue lists (each: clear error, non-zero exit, repository still consistent, nothing tagged).
 */
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { createHash } from 'node:crypto';
import { mkdtempSync, readFileSync, rmSync, writeFileSync, existsSync, readdirSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { buildOciLayout, buildOciArchive, type EntrySpec } from './helpers/oci-fixture.js';
import { cfsOk, runCfs } from './helpers/cli.js';
import { repoProblems } from './helpers/repo-check.js';

let work: string;
before(() => {
  work = mkdtempSync(path.join(tmpdir(), 'cfs-pull-'));
});
after(() => rmSync(work, { recursive: true, force: true }));

const T = 1_600_000_000;
const big = Buffer.alloc(200_000, 'x');

const base: EntrySpec[] = [
  { path: 'usr/', type: 'directory', mode: 0o755, mtime: T },
  { path: 'usr/bin/', type: 'directory', mode: 0o755, mtime: T },
  { path: 'usr/bin/tool', mode: 0o755, content: big, mtime: T },
  { path: 'usr/lib/', type: 'directory', mode: 0o755, mtime: T },
  { path: 'usr/lib/small', mode: 0o644, content: 'tiny', mtime: T, xattrs: { 'user.note': 'x' } },
  { path: 'usr/lib/cap', mode: 0o755, content: 'c'.repeat(100), mtime: T, xattrs: { 'security.capability': Buffer.from('0100000201', 'hex') } },
  { path: 'etc/', type: 'directory', mode: 0o755, mtime: T },
  { path: 'etc/gone', mode: 0o644, content: 'deleted later', mtime: T },
  { path: 'etc/keep/', type: 'directory', mode: 0o700, uid: 1000, gid: 1000, mtime: T },
  { path: 'etc/keep/a', mode: 0o600, content: 'a'.repeat(65), mtime: T },
  { path: 'opaque/', type: 'directory', mode: 0o755, mtime: T },
  { path: 'opaque/old', mode: 0o644, content: 'old', mtime: T },
  { path: 'link', type: 'symlink', linkname: 'usr/bin/tool', mtime: T },
  { path: 'usr/bin/hard', type: 'hardlink', linkname: 'usr/bin/tool', mtime: T },
  { path: 'dev-null', type: 'char', mode: 0o666, devmajor: 1, devminor: 3, mtime: T },
  { path: 'fifo', type: 'fifo', mode: 0o644, mtime: T },
  { path: 'run/', type: 'directory', mode: 0o755, mtime: T },
  { path: 'run/stale', mode: 0o644, content: 'x', mtime: T },
];
const update: EntrySpec[] = [
  { path: 'etc/.wh.gone', mode: 0o644, content: '', mtime: T },
  { path: 'opaque/', type: 'directory', mode: 0o755, mtime: T + 5 },
  { path: 'opaque/.wh..wh..opq', mode: 0o644, content: '', mtime: T },
  { path: 'opaque/new', mode: 0o644, content: 'new', mtime: T },
  { path: 'usr/lib/hard2', type: 'hardlink', linkname: 'usr/bin/tool', mtime: T },
  { path: 'implicit/parent/file', mode: 0o644, content: 'implicit parents', mtime: T, mtimeNsec: 123456789 },
];

function dumpLines(repo: string, name: string): string[] {
  return cfsOk(['--repo', repo, 'oci', 'dump', name]).stdout.split('\n').filter((l) => l !== '');
}

test('pull a two-layer image (gzip + zstd): merged tree, exact layers, re-pull skips', async () => {
  const layout = await buildOciLayout(path.join(work, 'img'), {
    images: [{ tag: 'v1', layers: [{ entries: base, compression: 'gzip' }, { entries: update, compression: 'zstd' }] }],
  });
  const repo = path.join(work, 'repo1');
  const r = cfsOk(['--repo', repo, '--insecure', 'oci', 'pull', `oci:${layout.dir}:v1`, 'img']);
  assert.match(r.stdout, new RegExp(`manifest ${layout.images[0].manifestDigest}`));
  const imageId = /image ([0-9a-f]{64})/.exec(r.stdout)?.[1];
  assert.ok(imageId, r.stdout);

  const lines = dumpLines(repo, 'img');
  const byPath = new Map(lines.map((l) => [l.split(' ')[0], l]));
  assert.ok(!byPath.has('/etc/gone'), 'whiteout removed /etc/gone');
  assert.ok(!byPath.has('/opaque/old'), 'opaque dir cleared');
  assert.ok(byPath.has('/opaque/new'));
  assert.ok(!byPath.has('/run/stale'), '/run is emptied by the OCI transform');
  // One of the three names carries the inode (nlink 3), the others are `@` hardlink lines.
  const names = ['/usr/bin/hard', '/usr/bin/tool', '/usr/lib/hard2'];
  const primary = names.filter((n) => !/ @1/.test(byPath.get(n)!));
  assert.equal(primary.length, 1, names.map((n) => byPath.get(n)).join('\n'));
  assert.match(byPath.get(primary[0])!, / 200000 100755 3 0 0 0 1600000000\.0 [0-9a-f]{2}\//);
  assert.match(byPath.get('/usr/lib/cap')!, /security\.capability=/);
  assert.doesNotMatch(byPath.get('/usr/lib/small')!, /user\.note/, 'only security.capability survives');
  assert.match(byPath.get('/implicit')!, /^\/implicit 0 40755 3 0 0 0 0\.0 /, 'implicit parent: root:root 0755 mtime 0');
  assert.match(byPath.get('/implicit/parent/file')!, / 1600000000\.123456789 /);
  assert.match(byPath.get('/dev-null')!, / 20666 1 0 0 259 /);
  assert.match(byPath.get('/etc/keep')!, / 40700 2 1000 1000 /);

  // Every layer rebuilds to its exact tar.
  for (const l of layout.images[0].layers) {
    const cat = cfsOk(['--repo', repo, 'cat', `oci-layer-${l.diffId}`]);
    assert.equal(`sha256:${createHash('sha256').update(cat.stdoutBuf).digest('hex')}`, l.diffId);
  }
  // compute-id agrees with the stored image.
  assert.equal(cfsOk(['--repo', repo, 'oci', 'compute-id', 'img']).stdout.trim(), imageId);

  // Second pull: no layer work.
  const again = cfsOk(['--repo', repo, 'oci', 'pull', `oci:${layout.dir}:v1`, 'img2']);
  assert.match(again.stdout, new RegExp(`image ${imageId}`));
  const images = JSON.parse(cfsOk(['--repo', repo, 'oci', 'images', '--json']).stdout) as { images: Array<{ name: string; imageId: string }> };
  assert.deepEqual(images.images.map((i) => i.name), ['img', 'img2']);
  assert.deepEqual(repoProblems(repo), []);
});

test('oci-archive: same image id as the layout, read in place', async () => {
  const layout = await buildOciLayout(path.join(work, 'arch-src'), {
    images: [{ tag: 'latest', layers: [{ entries: base }, { entries: update, compression: 'none' }] }],
  });
  const archive = path.join(work, 'img.tar');
  await buildOciArchive(layout.dir, archive);
  const repo = path.join(work, 'repo-arch');
  const a = cfsOk(['--repo', repo, 'oci', 'pull', `oci:${layout.dir}`, 'a']).stdout;
  const b = cfsOk(['--repo', path.join(work, 'repo-arch2'), 'oci', 'pull', `oci-archive:${archive}:latest`, 'b']).stdout;
  assert.equal(/image (\w+)/.exec(a)?.[1], /image (\w+)/.exec(b)?.[1]);
});

test('composefs-rs pinned V1 image id (sha512 repository) for its create_oci_layout fixture', async () => {
  const layout = await buildOciLayout(path.join(work, 'pinned'), {
    images: [
      {
        tag: null,
        platform: 'linux/amd64',
        layers: [
          [
            { path: 'usr/', type: 'directory', mode: 0o755, mtime: 1234567890 },
            { path: 'hello.txt', mode: 0o644, content: 'hello from test layer\n', mtime: 1234567890 },
            { path: 'hello-link.txt', type: 'hardlink', linkname: 'hello.txt', mode: 0, mtime: 1234567890 },
          ],
        ],
      },
    ],
  });
  const repo = path.join(work, 'repo512');
  cfsOk(['--repo', repo, 'init', '--insecure', '--hash', 'sha512']);
  const out = cfsOk(['--repo', repo, 'oci', 'pull', '--platform', 'linux/amd64', `oci:${layout.dir}`, 'pinned']).stdout;
  assert.equal(
    /image (\w+)/.exec(out)?.[1],
    'd06f1f6a73f62ed48e05ce9442ff045cdf2a9f5ba1ec623795de3d6177a253d91076459795d94f55d8c3d71dab458bb3fc0071255a50c0a4896d86ffdc870b9a',
  );
});

interface BadCase {
  name: string;
  build: (dir: string) => Promise<string>; // returns the reference
  error: RegExp;
}

const ok = [{ path: 'usr/', type: 'directory' as const, mode: 0o755 }, { path: 'usr/f', content: 'f'.repeat(100) }];
const badCases: BadCase[] = [
  { name: 'blob digest mismatch', build: async (d) => `oci:${(await buildOciLayout(d, { images: [{ tag: 't', layers: [ok], bad: { corruptLayerBlob: [0] } }] })).dir}:t`, error: /sha256|digest/ },
  { name: 'diff_id mismatch', build: async (d) => `oci:${(await buildOciLayout(d, { images: [{ tag: 't', layers: [ok], bad: { wrongDiffId: 0 } }] })).dir}:t`, error: /diff_id/ },
  { name: 'truncated gzip', build: async (d) => `oci:${(await buildOciLayout(d, { images: [{ tag: 't', layers: [ok], bad: { truncateLayer: 0 } }] })).dir}:t`, error: /truncated|unexpected end/i },
  { name: 'truncated zstd', build: async (d) => `oci:${(await buildOciLayout(d, { images: [{ tag: 't', compression: 'zstd', layers: [ok], bad: { truncateLayer: 0 } }] })).dir}:t`, error: /truncated|unexpected end/i },
  { name: 'missing blob', build: async (d) => `oci:${(await buildOciLayout(d, { images: [{ tag: 't', layers: [ok], bad: { missingLayerBlob: 0 } }] })).dir}:t`, error: /sha256:[0-9a-f]{64}/ },
  { name: 'unknown tag', build: async (d) => `oci:${(await buildOciLayout(d, { images: [{ tag: 't', layers: [ok] }] })).dir}:nope`, error: /nope/ },
  { name: 'no manifest for this platform', build: async (d) => `oci:${(await buildOciLayout(d, { images: [{ tag: 't', platform: 'plan9/mips', layers: [ok] }, { tag: 't', platform: 'plan9/386', layers: [ok] }], index: 'manifest-list', indexTag: 't' })).dir}:t`, error: /no manifest for platform linux\/\w+; available: plan9\/mips, plan9\/386/ },
  { name: 'path traversal', build: async (d) => `oci:${(await buildOciLayout(d, { images: [{ tag: 't', layers: [[...ok, { path: '../../etc/evil', content: 'x' }]] }] })).dir}:t`, error: /escapes|\.\./ },
  { name: 'corrupt index.json', build: async (d) => `oci:${(await buildOciLayout(d, { images: [{ tag: 't', layers: [ok] }], corruptIndexJson: true })).dir}:t`, error: /index\.json/ },
  {
    name: 'oci-archive truncated mid-blob',
    build: async (d) => {
      const l = await buildOciLayout(d, { images: [{ tag: 't', layers: [ok] }] });
      const tarPath = `${d}.tar`;
      await buildOciArchive(l.dir, tarPath, { truncateMember: `blobs/sha256/${l.images[0].layers[0].digest.slice(7)}` });
      return `oci-archive:${tarPath}:t`;
    },
    error: /truncat|beyond|end of/i,
  },
];

for (const c of badCases) {
  test(`bad input: ${c.name}`, async () => {
    const dir = path.join(work, `bad-${c.name.replace(/\W+/g, '-')}`);
    const ref = await c.build(dir);
    const repo = path.join(work, `repo-bad-${c.name.replace(/\W+/g, '-')}`);
    const r = runCfs(['--repo', repo, 'oci', 'pull', '-q', ref, 'bad']);
    assert.notEqual(r.status, 0, `pull should fail: ${r.stdout}`);
    const lines = r.stderr.trim().split('\n').filter((l) => !l.startsWith('cfs: note:'));
    assert.equal(lines.length, 1, `one-line error, got: ${r.stderr}`);
    assert.match(lines[0], /^cfs: /);
    assert.match(lines[0], c.error);
    assert.doesNotMatch(r.stderr, /internal error|    at /);
    if (existsSync(repo)) {
      assert.deepEqual(repoProblems(repo), []);
      assert.ok(!existsSync(path.join(repo, 'streams/refs/oci/bad')), 'nothing tagged');
      const streams = existsSync(path.join(repo, 'streams')) ? readdirSync(path.join(repo, 'streams')) : [];
      assert.ok(!streams.some((s) => s.startsWith('oci-manifest-') || s.startsWith('oci-config-')), `no manifest/config visible: ${streams.join(',')}`);
    }
  });
}

test('a name with a newline and terminal escapes in a bad layer is shown escaped, on one line', async () => {
  const layout = await buildOciLayout(path.join(work, 'esc'), {
    images: [{ tag: 'e', layers: [[{ path: 'usr/' }, { path: 'usr/x', type: 'hardlink', linkname: 'usr/\n\x1b[2J\x1b[31mFAKE: all good\x1b[0m' }]] }],
  });
  const r = runCfs(['--repo', path.join(work, 'repo-esc'), 'oci', 'pull', `oci:${layout.dir}:e`, 'e']);
  assert.notEqual(r.status, 0);
  assert.equal(r.stderr.split('\n').filter((l) => l.startsWith('cfs: ') && !l.startsWith('cfs: note:')).length, 1, r.stderr);
  assert.ok(!r.stderr.includes('\x1b'), 'no raw escape reaches the terminal');
  assert.match(r.stderr, /usr\/\\n\\x1b\[2J\\x1b\[31mFAKE: all good\\x1b\[0m/);
});

test('a pull into a repository of EROFS format 2 (composefs-rs legacy) is refused before any layer work', async () => {
  const layout = await buildOciLayout(path.join(work, 'v2-src'), { images: [{ tag: 't', layers: [[{ path: 'usr/' }, { path: 'usr/f', content: 'x'.repeat(100) }]] }] });
  const repo = path.join(work, 'repo-v2');
  cfsOk(['init', '--insecure', repo]);
  const metaPath = path.join(repo, 'meta.json');
  const meta = JSON.parse(readFileSync(metaPath, 'utf8')) as { features: { 'read-only-compatible': string[] }; erofs_formats: { default: number } };
  meta.features['read-only-compatible'] = [];
  meta.erofs_formats = { default: 2 };
  writeFileSync(metaPath, JSON.stringify(meta));
  const r = runCfs(['--repo', repo, 'oci', 'pull', `oci:${layout.dir}:t`, 'v2']);
  assert.notEqual(r.status, 0);
  assert.match(r.stderr, /^cfs: repository \S+ keeps EROFS format 2 images, which cfs does not write/m);
  assert.deepEqual(readdirSync(path.join(repo, 'streams')).filter((n) => n !== 'refs'), [], 'no layer was imported');
});

test('artifact blobs are stored as single-object streams', async () => {
  writeFileSync(path.join(work, 'dummy'), '');
  const layout = await buildOciLayout(path.join(work, 'artifact'), {
    images: [{ tag: 'a', artifact: { artifactType: 'application/vnd.example' }, layers: [{ blob: Buffer.from('artifact payload'), mediaType: 'application/octet-stream' }] }],
  });
  const repo = path.join(work, 'repo-artifact');
  cfsOk(['--repo', repo, 'oci', 'pull', `oci:${layout.dir}:a`, 'art']);
  const cat = cfsOk(['--repo', repo, 'cat', `oci-layer-${layout.images[0].layers[0].digest}`]);
  assert.equal(cat.stdout, 'artifact payload');
  // By name, as by reference: an artifact has no filesystem to dump, hash or mount.
  for (const args of [['oci', 'dump', 'art'], ['oci', 'compute-id', 'art'], ['mount', 'art', work]]) {
    const r = runCfs(['--repo', repo, ...args]);
    assert.notEqual(r.status, 0, args.join(' '));
    assert.match(r.stderr, /^cfs: .*art.* is an artifact \(config application\/vnd\.oci\.empty\.v1\+json\): it has no filesystem( to mount)?\n$/, args.join(' '));
  }
});

test('an image with hardlinks across directories: its dump, through mkcomposefs, gives the image ID the pull gave', async () => {
  const layout = await buildOciLayout(path.join(work, 'hl-src'), {
    images: [{ tag: 'hl', layers: [[
      { path: 'usr/' },
      { path: 'x/' },
      { path: 'x/a/' },
      { path: 'x/a/f', content: big },
      // A name that sorts after the directory holding the real file, then another inode.
      { path: 'x/b', type: 'hardlink', linkname: 'x/a/f' },
      { path: 'x/c', content: 'c'.repeat(100) },
      { path: 'usr/zoneinfo/' },
      { path: 'usr/zoneinfo/Etc/' },
      { path: 'usr/zoneinfo/Etc/UTC', content: 'TZif2'.padEnd(120, '.') },
      { path: 'usr/zoneinfo/UTC', type: 'hardlink', linkname: 'usr/zoneinfo/Etc/UTC' },
      { path: 'usr/zoneinfo/zone.tab', content: 'z'.repeat(100) },
    ]] }],
  });
  const repo = path.join(work, 'repo-hl');
  const image = /image (\w+)/.exec(cfsOk(['--repo', repo, 'oci', 'pull', `oci:${layout.dir}:hl`, 'hl']).stdout)?.[1];
  const dump = path.join(work, 'hl.dump');
  writeFileSync(dump, cfsOk(['--repo', repo, 'oci', 'dump', 'hl']).stdoutBuf);
  assert.equal(cfsOk(['mkcomposefs', '--from-file', dump, '--min-version', '1', '--print-digest-only']).stdout.trim(), image);
});
