/**
 * `cfs mount` / `cfs umount` / `cfs mounts` end to end through the real CLI and real mounts
 * (root): a multi-layer OCI image imported on the fly and mounted by the kernel (composefs:
 * EROFS + overlay) and by the FUSE server, compared entry by entry with the tree the layers
 * define; several mounts of one image; mounting during another import; busy and lazy unmount;
 * and the errors a user can cause, each a one-line message with a non-zero exit.
 */
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { spawn, spawnSync } from 'node:child_process';
import { mkdirSync, mkdtempSync, openSync, closeSync, readFileSync, readlinkSync, rmSync, truncateSync, writeFileSync, existsSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { buildOciLayout } from './helpers/oci-fixture.js';
import { cfs, cfsOkAsync, processGone } from './helpers/cli-detached.js';
import { cfsCommand } from './helpers/cli.js';
import { EXTERNAL_FILE, bytes, mountFixtureLayers } from './helpers/mount-fixture.js';
import { compareTree, expectedTree, snapshotTree, type ModelNode } from './helpers/mount-tree.js';
import { isRoot } from './helpers/unpriv.js';

const SKIP = isRoot() ? false : 'needs root (kernel mounts, FUSE with allow_other)';

let work = '';
let layoutDir = '';
let otherLayoutDir = '';
let repo = '';
let expected: ModelNode;
const mounted = new Set<string>();

function mountinfo(): string {
  return readFileSync('/proc/self/mountinfo', 'utf8');
}

function isMounted(mp: string): boolean {
  return mountinfo().split('\n').some((l) => l.split(' ')[4] === mp);
}

function newMountpoint(name: string): string {
  const mp = path.join(work, 'mnt', name);
  mkdirSync(mp, { recursive: true });
  return mp;
}

async function mount(source: string, mp: string, extra: string[] = [], repoDir = repo): Promise<void> {
  await cfsOkAsync(['--repo', repoDir, '--insecure', 'mount', '-q', ...extra, source, mp]);
  mounted.add(mp);
}

async function umount(mp: string, extra: string[] = []): Promise<void> {
  await cfsOkAsync(['umount', ...extra, mp]);
  mounted.delete(mp);
  assert.ok(!isMounted(mp), `${mp} still in /proc/self/mountinfo`);
}

let taggedPulled: Promise<void> | null = null;

/**
 * The name of the v1 image tagged 'tagged' in the shared repository, pulled by the first test
 * that needs it (not in before(): the first test checks that `cfs mount oci:…` imports), so
 * each test also runs alone (--test-name-pattern).
 */
async function tagged(): Promise<string> {
  taggedPulled ??= cfsOkAsync(['--repo', repo, '--insecure', 'oci', 'pull', '-q', `oci:${layoutDir}:v1`, 'tagged']).then(() => undefined);
  await taggedPulled;
  return 'tagged';
}

/** A failing cfs run: non-zero exit, and stderr is exactly one `cfs: …` line matching re. */
async function assertFails(args: string[], re: RegExp): Promise<void> {
  const r = await cfs(args);
  assert.notEqual(r.status, 0, `cfs ${args.join(' ')} succeeded`);
  const lines = r.stderr.split('\n').filter((l) => l !== '');
  assert.equal(lines.length, 1, `one line expected:\n${r.stderr}`);
  assert.match(lines[0]!, /^cfs: /);
  assert.match(lines[0]!, re);
}

/** Object path of a file's content: fs-verity sha256 of the data, as the repository names it. */
async function objectOf(repoDir: string, data: Buffer): Promise<string> {
  const { fsverityDigest } = await import('../src/fsverity/digest.js');
  const hex = fsverityDigest(data).toString('hex');
  return path.join(repoDir, 'objects', hex.slice(0, 2), hex.slice(2));
}

before(async () => {
  if (SKIP) return;
  work = mkdtempSync(path.join(tmpdir(), 'cfs-mount-cli-'));
  const layers = mountFixtureLayers();
  const [base, update, data] = layers;
  layoutDir = (await buildOciLayout(path.join(work, 'layout'), {
    images: [{ tag: 'v1', layers: [{ entries: base, compression: 'gzip' }, { entries: update, compression: 'zstd' }, { entries: data, compression: 'none' }] }],
  })).dir;
  expected = expectedTree(layers);
  // A second image, big enough that its import is still running while we mount the first.
  const many = Array.from({ length: 6 }, (_, i) => ({
    entries: [
      { path: 'usr/', mtime: 1 },
      ...Array.from({ length: 40 }, (__, j) => ({ path: `usr/f${i}-${j}`, content: bytes(`other${i}-${j}`, 400_000) })),
    ],
    compression: 'gzip' as const,
  }));
  otherLayoutDir = (await buildOciLayout(path.join(work, 'other'), { images: [{ tag: 'other', layers: many }] })).dir;
  repo = path.join(work, 'repo');
});

after(async () => {
  if (SKIP) return;
  for (const mp of mounted) await cfs(['umount', '--lazy', mp]);
  // Whatever a failed test left mounted under our directory, so it can be removed.
  for (const l of mountinfo().split('\n').reverse()) {
    const mp = l.split(' ')[4];
    if (mp?.startsWith(`${work}/`)) spawnSync('umount', ['--lazy', mp]);
  }
  rmSync(work, { recursive: true, force: true });
});

test('kernel: cfs mount oci:… imports and mounts; the tree equals the layers; mounts --json; umount', { skip: SKIP }, async () => {
  const mp = newMountpoint('kernel');
  const source = `oci:${layoutDir}:v1`;
  await mount(source, mp);
  const line = mountinfo().split('\n').find((l) => l.split(' ')[4] === mp);
  assert.match(line ?? '', / - overlay composefs:oci:/, 'overlay with a composefs: source');
  assert.deepEqual(compareTree(expected, snapshotTree(mp)), []);

  const list = JSON.parse((await cfsOkAsync(['mounts', '--json'])).stdout) as { mounts: Array<{ mountpoint: string; source: string; kind: string }> };
  const mine = list.mounts.filter((m) => m.mountpoint === mp);
  assert.deepEqual(mine.map((m) => [m.kind, m.source]), [['kernel', `composefs:${source}`]]);
  assert.match((await cfsOkAsync(['mounts'])).stdout, new RegExp(`^${mp}\tkernel\t`, 'm'));

  await umount(mp);
  assert.ok(!mountinfo().includes(mp), 'nothing left in mountinfo');
  const after = JSON.parse((await cfsOkAsync(['mounts', '--json'])).stdout) as { mounts: Array<{ mountpoint: string }> };
  assert.ok(!after.mounts.some((m) => m.mountpoint === mp));
});

test('FUSE (--fuse yes): the same tree by tag name; listed as fuse; umount stops the server', { skip: SKIP }, async () => {
  const mp = newMountpoint('fuse');
  await mount(`oci:${layoutDir}:v1`, mp, ['--fuse', 'yes']);
  assert.deepEqual(compareTree(expected, snapshotTree(mp)), []);
  const list = JSON.parse((await cfsOkAsync(['mounts', '--json'])).stdout) as { mounts: Array<{ mountpoint: string; kind: string }> };
  assert.deepEqual(list.mounts.filter((m) => m.mountpoint === mp).map((m) => m.kind), ['fuse']);
  const { readFuseRecord } = await import('../src/mount/fuse-daemon.js');
  const pid = readFuseRecord(mp)?.pid;
  assert.ok(pid, 'runtime record of the server');
  await umount(mp);
  assert.ok(processGone(pid), 'server exited');
});

test('FUSE: cfs umount ends the server even when another mount namespace holds a copy of the mount (its connection is aborted)', { skip: SKIP }, async () => {
  const mp = newMountpoint('fuse-held');
  await mount(await tagged(), mp, ['--fuse', 'yes']);
  const { readFuseRecord } = await import('../src/mount/fuse-daemon.js');
  const pid = readFuseRecord(mp)?.pid;
  assert.ok(pid);
  // A namespace made while it is mounted, as a rootless podman's pause process makes one.
  const holder = spawn('unshare', ['-m', '--propagation', 'private', 'sleep', '120'], { stdio: 'ignore' });
  try {
    await new Promise((r) => setTimeout(r, 300));
    await umount(mp);
    assert.ok(processGone(pid), 'server exited');
  } finally {
    holder.kill('SIGKILL');
  }
});

test('mount by image id and by tag; the same image twice at two places', { skip: SKIP }, async () => {
  await tagged();
  const images = JSON.parse((await cfsOkAsync(['--repo', repo, 'oci', 'images', '--json'])).stdout) as { images: Array<{ name: string; imageId: string }> };
  const id = images.images.find((i) => i.name === 'tagged')!.imageId;
  const a = newMountpoint('twice-a');
  const b = newMountpoint('twice-b');
  const c = newMountpoint('twice-fuse');
  await mount('tagged', a);
  await mount(id, b);
  await mount(id, c, ['--fuse', 'yes']);
  for (const mp of [a, b]) assert.deepEqual(compareTree(expected, snapshotTree(mp)), [], mp);
  assert.deepEqual(compareTree(expected, snapshotTree(c)), []);
  // A second cfs mount on the same directory would hide the first: refused, kernel or FUSE.
  for (const fuse of ['no', 'yes']) await assertFails(['--repo', repo, '--insecure', 'mount', '-q', '--fuse', fuse, id, a], /already has a cfs mount \(composefs:/);
  await umount(a);
  assert.ok(readFileSync(path.join(b, 'usr/share/big')).equals(bytes('big', 3 * 1024 * 1024 + 7)), 'second mount unaffected');
  await umount(b);
  await umount(c);
});

test('cfs umount leaves mounts that are not cfs mounts alone', { skip: SKIP }, async () => {
  const mp = newMountpoint('not-cfs');
  spawnSync('mount', ['-t', 'tmpfs', 'cfs-test-tmpfs', mp]);
  try {
    assert.ok(isMounted(mp));
    await assertFails(['umount', mp], /is a tmpfs mount of cfs-test-tmpfs, not a cfs mount; use umount\(8\) for it/);
    assert.ok(isMounted(mp), 'still mounted');
  } finally {
    spawnSync('umount', [mp]);
  }
});

test('mount while another import runs into the same repository', { skip: SKIP }, async () => {
  const [cmd, ...pre] = cfsCommand();
  const pull = spawn(cmd!, [...pre, '--repo', repo, '--insecure', 'oci', 'pull', '-q', `oci:${otherLayoutDir}:other`, 'other'], { stdio: ['ignore', 'ignore', 'pipe'] });
  let pullErr = '';
  pull.stderr!.on('data', (c: Buffer) => (pullErr += c.toString()));
  const pulled = new Promise<number>((resolve) => pull.on('close', (code) => resolve(code ?? -1)));
  let running = true;
  void pulled.then(() => (running = false));
  const mp = newMountpoint('during-import');
  const mp2 = newMountpoint('during-import-ref');
  await mount(await tagged(), mp);
  await mount(`oci:${layoutDir}:v1`, mp2);
  const overlapped = running;
  assert.deepEqual(compareTree(expected, snapshotTree(mp)), []);
  assert.equal(await pulled, 0, pullErr);
  const other = newMountpoint('other');
  await mount('other', other);
  assert.ok(readFileSync(path.join(other, 'usr/f5-39')).equals(bytes('other5-39', 400_000)));
  for (const m of [mp, mp2, other]) await umount(m);
  // Not a timing assertion: documents whether the mounts really overlapped the import.
  if (!overlapped) process.stderr.write('note: the import finished before the mounts; no overlap was exercised\n');
});

test('busy unmount: clear EBUSY, mount stays; --lazy detaches and the open file stays readable', { skip: SKIP }, async () => {
  for (const mode of ['no', 'yes']) {
    const mp = newMountpoint(`busy-${mode}`);
    await mount(await tagged(), mp, ['--fuse', mode]);
    const fd = openSync(path.join(mp, 'usr/share/big'), 'r');
    try {
      await assertFails(['umount', mp], /busy.*--lazy|busy.*lazily/i);
      assert.ok(isMounted(mp), `${mode}: still mounted after EBUSY`);
      await umount(mp, ['--lazy']);
      const buf = Buffer.alloc(4096);
      const { readSync } = await import('node:fs');
      assert.equal(readSync(fd, buf, 0, buf.length, 8192), 4096);
      assert.ok(buf.equals(bytes('big', 3 * 1024 * 1024 + 7).subarray(8192, 8192 + 4096)), `${mode}: open file still served`);
    } finally {
      closeSync(fd);
    }
  }
});

test('errors: bad mount point, unknown image, bad options, not a mount point', { skip: SKIP }, async () => {
  const mp = newMountpoint('errors');
  const file = path.join(work, 'a-file');
  writeFileSync(file, 'x');
  const base = ['--repo', repo, '--insecure', 'mount'];
  await tagged();
  await assertFails([...base, 'tagged', path.join(work, 'no-such-dir')], /mount point .*no-such-dir does not exist/);
  await assertFails([...base, 'tagged', file], /mount point .*a-file is not a directory/);
  await assertFails([...base, 'no-such-image', mp], /image 'no-such-image' not found/);
  await assertFails([...base, 'ab'.repeat(32), mp], /not found/);
  await assertFails([...base, 'ref/nothing', mp], /not found/);
  await assertFails([...base, `oci:${path.join(work, 'no-layout')}:v1`, mp], /no-layout/);
  await assertFails([...base, `oci:${layoutDir}:no-such-tag`, mp], /no-such-tag/);
  await assertFails([...base, '--fuse', 'maybe', 'tagged', mp], /--fuse must be auto, yes or no/);
  await assertFails([...base, '--upperdir', work, 'tagged', mp], /--upperdir and --workdir/);
  await assertFails([...base, '--fuse', 'yes', '--upperdir', work, '--workdir', work, 'tagged', mp], /need the kernel mount/);
  await assertFails(['umount', mp], /not a mount point/);
  await assertFails(['umount', path.join(work, 'no-such-dir')], /^cfs: .*no-such-dir does not exist$/);
  assert.ok(!mountinfo().includes(mp));
});

test('missing object: the mount works, reading that file fails (kernel ENOENT, FUSE EIO), the rest reads', { skip: SKIP }, async () => {
  const own = path.join(work, 'repo-missing');
  await cfsOkAsync(['--repo', own, '--insecure', 'oci', 'pull', '-q', `oci:${layoutDir}:v1`, 'img']);
  const victim = (await import('./helpers/mount-tree.js')).flatten(expected).get(EXTERNAL_FILE)!;
  const obj = await objectOf(own, victim.content!);
  assert.ok(existsSync(obj), `object of ${EXTERNAL_FILE} at ${obj}`);
  rmSync(obj);
  for (const mode of ['no', 'yes']) {
    const mp = newMountpoint(`missing-${mode}`);
    await mount('img', mp, ['--fuse', mode], own);
    // overlayfs answers ENOENT for a missing data-only-layer file ("lazy lowerdata lookup
    // failed … err=-2" in the kernel log); the FUSE server answers EIO.
    const readErr = mode === 'no' ? 'ENOENT' : 'EIO';
    assert.deepEqual(compareTree(expected, snapshotTree(mp), { readErrors: { [EXTERNAL_FILE]: readErr } }), []);
    await umount(mp);
  }
});

test('corrupt image object: refused at mount with a one-line error (kernel and FUSE)', { skip: SKIP }, async () => {
  const own = path.join(work, 'repo-corrupt');
  await cfsOkAsync(['--repo', own, '--insecure', 'oci', 'pull', '-q', `oci:${layoutDir}:v1`, 'img']);
  const images = JSON.parse((await cfsOkAsync(['--repo', own, 'oci', 'images', '--json'])).stdout) as { images: Array<{ name: string; imageId: string }> };
  const id = images.images.find((i) => i.name === 'img')!.imageId;
  const link = path.join(own, 'images', id);
  const obj = path.resolve(path.dirname(link), readlinkSync(link));
  const good = readFileSync(obj);
  const damage: Array<[string, () => void]> = [
    ['truncated', () => truncateSync(obj, 1500)],
    ['superblock flipped', () => writeFileSync(obj, flip(good, 1024))],
    ['inode area flipped', () => writeFileSync(obj, flip(good, good.length >> 1))],
  ];
  for (const [what, harm] of damage) {
    harm();
    for (const mode of ['no', 'yes']) {
      const mp = newMountpoint(`corrupt-${mode}`);
      await assertFails(['--repo', own, '--insecure', 'mount', '--fuse', mode, 'img', mp], /^cfs: image [0-9a-f]{64} is damaged: .*digest/).catch((e: Error) => {
        throw new Error(`${what}, --fuse ${mode}: ${e.message}`);
      });
      assert.ok(!isMounted(mp), `${what}, --fuse ${mode}: nothing mounted`);
    }
    writeFileSync(obj, good);
  }
  // Repaired: mounts again.
  const mp = newMountpoint('repaired');
  await mount('img', mp, [], own);
  await umount(mp);
});

function flip(b: Buffer, at: number): Buffer {
  const c = Buffer.from(b);
  c[at] = c[at]! ^ 0xff;
  return c;
}
