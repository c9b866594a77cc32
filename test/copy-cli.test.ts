/**
 * `cfs oci copy` through the real CLI: a multi-layer image lands with the same image ID and
 * dumpfile; sha256 → sha512 gives the ID of a direct pull into sha512 (and back); --zerocopy
 * hardlinks on one filesystem, reflinks between btrfs subvolumes, and fails clearly across
 * filesystems and algorithms; a second copy does no layer work.
 */
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { execFileSync, spawnSync } from 'node:child_process';
import { closeSync, mkdirSync, mkdtempSync, openSync, readFileSync, rmSync, statSync, readdirSync, writeSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { buildOciLayout, type EntrySpec } from './helpers/oci-fixture.js';
import { cfsOk, runCfs } from './helpers/cli.js';
import { repoProblems } from './helpers/repo-check.js';

let work: string;
let layout: string;
const T = 1_650_000_000;

const layers: EntrySpec[][] = [
  [
    { path: 'usr/', type: 'directory', mtime: T },
    { path: 'usr/bin/', type: 'directory', mtime: T },
    { path: 'usr/bin/tool', mode: 0o755, content: Buffer.alloc(250_000, 't'), mtime: T },
    { path: 'usr/small', content: 'small', mtime: T },
    { path: 'etc/', type: 'directory', mtime: T },
    { path: 'etc/conf', content: 'c'.repeat(100), mtime: T, xattrs: { 'security.capability': Buffer.from('0100000201', 'hex') } },
  ],
  [
    { path: 'usr/lib/', type: 'directory', mtime: T },
    { path: 'usr/lib/lib.so', content: Buffer.alloc(120_000, 'l'), mtime: T },
    { path: 'usr/lib/dup', content: Buffer.alloc(250_000, 't'), mtime: T },
    { path: 'etc/.wh.conf', content: '', mtime: T },
  ],
  [{ path: 'usr/share/', type: 'directory', mtime: T }, { path: 'usr/share/doc', content: Buffer.alloc(90_000, 'd'), mtime: T }],
];

function imageId(repo: string, name: string): string {
  const out = JSON.parse(cfsOk(['--repo', repo, 'oci', 'inspect', name]).stdout) as { imageId: string };
  return out.imageId;
}

function dump(repo: string, name: string): string {
  return cfsOk(['--repo', repo, 'oci', 'dump', name]).stdout;
}

/** Object counters from the copy's objects line (on stderr, as pull's). */
function objects(stderr: string): { reflinked: number; hardlinked: number; copied: number; present: number } {
  const m = /^objects: (\d+) reflinked \+ (\d+) hardlinked \+ (\d+) copied(?: \(\+ (\d+) already present\))?$/m.exec(stderr);
  assert.ok(m, stderr);
  return { reflinked: +m[1], hardlinked: +m[2], copied: +m[3], present: +(m[4] ?? 0) };
}

/** Five external objects (4 distinct); parallel layers may both link the shared one. */
const EXTERNAL = 5;

function init(repo: string, hash: 'sha256' | 'sha512'): void {
  cfsOk(['init', '--insecure', '--hash', hash, repo]);
}

before(async () => {
  work = mkdtempSync(path.join(tmpdir(), 'cfs-copy-'));
  layout = (await buildOciLayout(path.join(work, 'img'), { images: [{ tag: 'v1', layers }] })).dir;
  init(path.join(work, 'src'), 'sha256');
  cfsOk(['--repo', path.join(work, 'src'), 'oci', 'pull', '-q', `oci:${layout}:v1`, 'app']);
});
after(() => rmSync(work, { recursive: true, force: true }));

test('copy a three-layer image: same image ID and dump; a second copy does no layer work', () => {
  const src = path.join(work, 'src');
  const dst = path.join(work, 'dst');
  init(dst, 'sha256');
  const r = cfsOk(['--repo', dst, 'oci', 'copy', 'app', '--from', src, '--name', 'copied']);
  assert.match(r.stdout, new RegExp(`^Copied image app from ${src} to ${dst}, tagged as copied\nManifest digest: sha256:[0-9a-f]{64}\nManifest verity: [0-9a-f]{64}\nConfig digest:   sha256:[0-9a-f]{64}\nConfig verity:   [0-9a-f]{64}\n`));
  assert.match(r.stdout, /Layers: 3 copied, 0 already present/);
  const o = objects(r.stderr);
  assert.equal(o.copied, 0);
  assert.equal(o.reflinked + o.hardlinked + o.present, EXTERNAL);
  assert.ok(o.hardlinked >= 4, 'ext4 has no reflink: hardlinks');
  assert.match(r.stderr, /Copying 3 layers/);
  assert.equal(imageId(dst, 'copied'), imageId(src, 'app'));
  assert.equal(dump(dst, 'copied'), dump(src, 'app'));
  // Same-algorithm copies produce byte-identical layer streams (same verity).
  assert.deepEqual(readdirSync(path.join(dst, 'streams')).sort(), readdirSync(path.join(src, 'streams')).sort());
  for (const s of readdirSync(path.join(src, 'streams')).filter((n) => n.startsWith('oci-'))) {
    assert.equal(statSync(path.join(dst, 'streams', s)).ino !== 0, true);
    assert.equal(
      execFileSync('readlink', [path.join(dst, 'streams', s)]).toString(),
      execFileSync('readlink', [path.join(src, 'streams', s)]).toString(),
      s,
    );
  }
  const again = cfsOk(['--repo', dst, 'oci', 'copy', 'app', '--from', src, '--name', 'copied']);
  assert.match(again.stdout, /Layers: 0 copied, 3 already present\n$/);
  assert.match(again.stderr, /^objects: 0 reflinked \+ 0 hardlinked \+ 0 copied$/m);
  assert.doesNotMatch(again.stderr, /Copying/);
  assert.doesNotMatch(again.stderr, /untagged/);
  // --json: the same result for scripts, stdout only.
  const json = JSON.parse(cfsOk(['--repo', dst, 'oci', 'copy', '--json', '-q', 'app', '--from', src, '--name', 'copied']).stdout) as Record<string, unknown>;
  assert.deepEqual(
    { ...json, manifestDigest: /^Manifest digest: (\S+)$/m.exec(again.stdout)![1], imageId: /^Image ID: +(\S+)$/m.exec(again.stdout)![1] },
    { ...json, tag: 'copied', from: src, to: dst, layersCopied: 0, layersSkipped: 3, objects: { copied: 0, reflinked: 0, hardlinked: 0, present: 0 } },
  );
  assert.deepEqual(repoProblems(dst), []);
});

test('a copy without --name is untagged, as in cfsctl, and says so', () => {
  const src = path.join(work, 'src');
  const dst = path.join(work, 'untagged');
  init(dst, 'sha256');
  const r = cfsOk(['--repo', dst, 'oci', 'copy', 'app', '--from', src]);
  assert.match(r.stdout, new RegExp(`^Copied image app from ${src} to ${dst}\n`));
  // An empty --name is refused, not taken for "untagged".
  const empty = runCfs(['--repo', dst, 'oci', 'copy', 'app', '--from', src, '--name', '']);
  assert.equal(empty.status, 1);
  assert.equal(empty.stderr, 'cfs: --name: the name to tag the copy with is empty\n');
  const manifest = /^Manifest digest: (sha256:[0-9a-f]{64})$/m.exec(r.stdout)![1];
  assert.match(r.stderr, new RegExp(`^cfs: note: the copy is untagged: the next \`cfs gc\` removes it \\(tag it with --name, or \`cfs oci tag ${manifest} NAME\`\\)$`, 'm'));
  cfsOk(['--repo', dst, 'oci', 'tag', manifest, 'named-later']);
  assert.match(cfsOk(['--repo', dst, 'gc']).stdout, /^Objects: 0 removed/m);
  assert.match(cfsOk(['--repo', dst, 'oci', 'images']).stdout, /^named-later /m);
});

test('sha256 → sha512 copy gives the image ID of a direct sha512 pull, and back', () => {
  const src = path.join(work, 'src');
  const d512 = path.join(work, 'd512');
  const direct = path.join(work, 'direct512');
  init(d512, 'sha512');
  init(direct, 'sha512');
  const r = cfsOk(['--repo', d512, 'oci', 'copy', 'app', '--from', src, '--name', 'x']);
  assert.match(r.stdout, /Manifest verity: [0-9a-f]{128}\n/);
  assert.match(r.stdout, /Layers: 3 copied, 0 already present/);
  const o = objects(r.stderr);
  assert.equal(o.hardlinked + o.reflinked, 0, 'no zero-copy across algorithms');
  assert.equal(o.copied + o.present, EXTERNAL);
  cfsOk(['--repo', direct, 'oci', 'pull', '-q', `oci:${layout}:v1`, 'x']);
  assert.equal(imageId(d512, 'x'), imageId(direct, 'x'));
  assert.equal(dump(d512, 'x'), dump(direct, 'x'));
  const back = path.join(work, 'back256');
  init(back, 'sha256');
  cfsOk(['--repo', back, 'oci', 'copy', 'x', '--from', d512, '--name', 'y']);
  assert.equal(imageId(back, 'y'), imageId(src, 'app'));
  assert.deepEqual(repoProblems(d512), []);
});

test('--zerocopy: hardlinks on one filesystem; different algorithm or filesystem fail clearly', () => {
  const src = path.join(work, 'src');
  const zc = path.join(work, 'zc');
  init(zc, 'sha256');
  const r = cfsOk(['--repo', zc, 'oci', 'copy', 'app', '--from', src, '--zerocopy', '--name', 'z']);
  assert.equal(objects(r.stderr).copied, 0);
  const d512 = path.join(work, 'zc512');
  init(d512, 'sha512');
  const bad = runCfs(['--repo', d512, 'oci', 'copy', 'app', '--from', src, '--zerocopy']);
  assert.equal(bad.status, 1);
  assert.match(bad.stderr, /--zerocopy requires matching hash algorithms; source uses sha256 but destination uses sha512/);

  const mnt = path.join(work, 'tmpfs');
  mkdirSync(mnt);
  execFileSync('mount', ['-t', 'tmpfs', 'cfs-copy-test', mnt]);
  try {
    const other = path.join(mnt, 'repo');
    init(other, 'sha256');
    const x = runCfs(['--repo', other, 'oci', 'copy', 'app', '--from', src, '--zerocopy']);
    assert.equal(x.status, 1);
    assert.match(x.stderr, /--zerocopy requires both repositories on the same filesystem/);
    assert.deepEqual(readdirSync(path.join(other, 'streams')), []);
    // Without --zerocopy the copy crosses filesystems by copying.
    const ok = cfsOk(['--repo', other, 'oci', 'copy', 'app', '--from', src, '--name', 'z']);
    const o = objects(ok.stderr);
    assert.equal(o.hardlinked + o.reflinked, 0);
    assert.equal(o.copied + o.present, EXTERNAL);
    assert.equal(imageId(other, 'z'), imageId(src, 'app'));
  } finally {
    execFileSync('umount', [mnt]);
  }
});

/** Why this host cannot make a btrfs on a loop device (scripts/setup installs btrfs-progs), or null. */
function btrfsUnavailable(): string | null {
  if (process.getuid?.() !== 0) return 'needs root (loop mount)';
  if (spawnSync('mkfs.btrfs', ['--version']).status !== 0) return 'mkfs.btrfs is not installed (Debian btrfs-progs)';
  spawnSync('modprobe', ['btrfs']);
  if (!readFileSync('/proc/filesystems', 'utf8').includes('\tbtrfs\n')) return 'the kernel has no btrfs';
  return null;
}

test('btrfs: two subvolumes differ in st_dev and still reflink; --zerocopy copies between them by reflink', { skip: btrfsUnavailable() ?? false }, () => {
  const img = path.join(work, 'btrfs.img');
  const mnt = path.join(work, 'btrfs');
  mkdirSync(mnt);
  // Sparse; btrfs needs about 110 MiB at least.
  closeSync(openSync(img, 'w'));
  execFileSync('truncate', ['-s', '256M', img]);
  execFileSync('mkfs.btrfs', ['-q', img]);
  execFileSync('mount', ['-o', 'loop', img, mnt]);
  try {
    const [a, b] = ['a', 'b'].map((v) => {
      execFileSync('btrfs', ['-q', 'subvolume', 'create', path.join(mnt, v)]);
      return path.join(mnt, v, 'repo');
    });
    assert.notEqual(statSync(path.dirname(a!)).dev, statSync(path.dirname(b!)).dev, 'subvolumes have their own st_dev');
    init(a!, 'sha256');
    cfsOk(['--repo', a!, 'oci', 'pull', '-q', `oci:${layout}:v1`, 'app']);
    init(b!, 'sha256');
    const r = cfsOk(['--repo', b!, 'oci', 'copy', 'app', '--from', a!, '--zerocopy', '--name', 'z']);
    const o = objects(r.stderr);
    assert.equal(o.copied + o.hardlinked, 0, r.stdout);
    assert.ok(o.reflinked >= 4, `reflinked: ${r.stdout}`);
    assert.equal(imageId(b!, 'z'), imageId(a!, 'app'));
    assert.deepEqual(repoProblems(b!), []);
  } finally {
    execFileSync('umount', [mnt]);
    rmSync(img, { force: true });
  }
});

test('copy of a missing image or from a missing repository fails without touching the destination', () => {
  const dst = path.join(work, 'dst-missing');
  init(dst, 'sha256');
  const a = runCfs(['--repo', dst, 'oci', 'copy', 'nope', '--from', path.join(work, 'src')]);
  assert.equal(a.status, 1);
  assert.match(a.stderr, /image 'nope' not found/);
  const b = runCfs(['--repo', dst, 'oci', 'copy', 'app', '--from', path.join(work, 'no-such-repo')]);
  assert.equal(b.status, 1);
  assert.match(b.stderr, /source repository: repository .*no-such-repo does not exist/);
  assert.deepEqual(readdirSync(path.join(dst, 'streams')), []);
});

test('copy from a source whose object was damaged names the source as damaged (plain and --zerocopy)', () => {
  const src = path.join(work, 'damaged-src');
  cfsOk(['--repo', src, 'init', '--insecure']);
  cfsOk(['--repo', src, 'oci', 'pull', '-q', `oci:${layout}:v1`, 'app']);
  // The 90 000-byte object of layer 3 (usr/share/doc): one byte changed in place.
  const doc = readdirSync(path.join(src, 'objects'), { recursive: true, withFileTypes: true })
    .filter((e) => e.isFile())
    .map((e) => path.join(e.parentPath, e.name))
    .find((p) => statSync(p).size === 90_000);
  assert.ok(doc);
  const fd = openSync(doc, 'r+');
  writeSync(fd, Buffer.from('X'), 0, 1, 10);
  closeSync(fd);
  const plain = runCfs(['--repo', path.join(work, 'from-damaged'), 'oci', 'copy', 'app', '--from', src]);
  assert.notEqual(plain.status, 0);
  assert.match(plain.stderr, new RegExp(`diff_id mismatch.*; the source repository ${src} is damaged \\(run cfs --repo ${src} fsck\\)`));
  const zc = runCfs(['--repo', path.join(work, 'from-damaged-zc'), 'oci', 'copy', 'app', '--from', src, '--zerocopy']);
  assert.notEqual(zc.status, 0);
  assert.match(zc.stderr, /hardlink \(impossible: the file is not named by its digest [0-9a-f]{2}\/[0-9a-f]+, a damaged object\?\)/);
  for (const d of ['from-damaged', 'from-damaged-zc']) assert.deepEqual(repoProblems(path.join(work, d)), []);
  // The object removed: the layer and the source are named as well.
  rmSync(doc);
  const gone = runCfs(['--repo', path.join(work, 'from-missing'), 'oci', 'copy', 'app', '--from', src]);
  assert.notEqual(gone.status, 0);
  assert.match(gone.stderr, new RegExp(`^cfs: layer sha256:[0-9a-f]{64}: object [0-9a-f]{2}/[0-9a-f]+ not found in repository ${src}; the source repository is damaged \\(run cfs --repo ${src} fsck\\)$`, 'm'));
  assert.deepEqual(repoProblems(path.join(work, 'from-missing')), []);
});
