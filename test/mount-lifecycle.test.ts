/**
 * Mount lifecycle under failure (root, real mounts): a FUSE server asked to stop by a signal
 * unmounts only its own mount; non-ASCII mount points; unmounting with a hung server; a second
 * umount after a lazy one; racing mounts of one directory; bad objects under FUSE (a FIFO, a
 * truncated file); a mount point inside the repository; very long image names.
 */
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { execFileSync, spawn, spawnSync } from 'node:child_process';
import { closeSync, existsSync, utimesSync, mkdirSync, mkdtempSync, openSync, readdirSync, readFileSync, readlinkSync, readSync, rmSync, truncateSync, unlinkSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { buildOciLayout } from './helpers/oci-fixture.js';
import { cfs, cfsOkAsync, processGone } from './helpers/cli-detached.js';
import { isRoot } from './helpers/unpriv.js';
import { fsverityDigest } from '../src/fsverity/digest.js';

const SKIP = isRoot() ? false : 'needs root (kernel mounts, FUSE with allow_other)';
const BIG = Buffer.alloc(300_000, 'b');
const OTHER = Buffer.alloc(5_000, 'o');
let work = '';
let repo = '';
let image = '';
let n = 0;

function mountinfo(): string {
  return readFileSync('/proc/self/mountinfo', 'utf8');
}

/** Mounts at `mp` (its mountinfo lines), topmost last. */
function mountsAt(mp: string): string[] {
  return mountinfo().split('\n').filter((l) => l.split(' ')[4] === mp.replace(/[ \t\n\\]/g, (c) => `\\${c.charCodeAt(0).toString(8).padStart(3, '0')}`));
}

function newDir(name = `m${n++}`): string {
  const d = path.join(work, name);
  mkdirSync(d, { recursive: true });
  return d;
}

function serverPid(mp: string): number {
  const out = spawnSync('pgrep', ['-f', `fuse-server-main.*${JSON.stringify(mp).slice(1, -1)}`], { encoding: 'utf8' }).stdout.trim();
  assert.match(out, /^\d+$/, `one FUSE server for ${mp}`);
  return Number(out);
}

async function until(cond: () => boolean, what: string, ms = 10_000): Promise<void> {
  const end = Date.now() + ms;
  while (!cond()) {
    if (Date.now() > end) assert.fail(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 50));
  }
}

function objectPath(data: Buffer): string {
  const hex = fsverityDigest(data).toString('hex');
  return path.join(repo, 'objects', hex.slice(0, 2), hex.slice(2));
}

before(async () => {
  if (SKIP) return;
  work = mkdtempSync(path.join(tmpdir(), 'cfs-mount-life-'));
  const layout = await buildOciLayout(path.join(work, 'layout'), {
    images: [{ tag: 'v1', layers: [[{ path: 'usr/' }, { path: 'usr/big', content: BIG }, { path: 'usr/other', content: OTHER }]] }],
  });
  repo = path.join(work, 'repo');
  await cfsOkAsync(['--repo', repo, '--insecure', 'oci', 'pull', '-q', `oci:${layout.dir}:v1`, 'img']);
  image = 'img';
});

after(() => {
  if (SKIP) return;
  for (const l of mountinfo().split('\n').reverse()) {
    const mp = l.split(' ')[4];
    if (mp?.startsWith(`${work}/`)) spawnSync('umount', ['--lazy', mp]);
  }
  rmSync(work, { recursive: true, force: true });
});

test('SIGTERM to a FUSE server whose mount another one covers unmounts neither; cfs umount then works in order', { skip: SKIP }, async () => {
  const mp = newDir();
  await cfsOkAsync(['--repo', repo, 'mount', '--fuse', 'yes', image, mp]);
  const pid = serverPid(mp);
  execFileSync('mount', ['-t', 'tmpfs', 'cfs-test-cover', mp]);
  process.kill(pid, 'SIGTERM');
  await new Promise((r) => setTimeout(r, 500));
  assert.equal(mountsAt(mp).length, 2, 'the tmpfs and the FUSE mount are both still there');
  assert.ok(!processGone(pid));
  execFileSync('umount', [mp]);
  assert.deepEqual(readFileSync(path.join(mp, 'usr/other')), OTHER);
  await cfsOkAsync(['umount', mp]);
  await until(() => processGone(pid), 'the server to exit');
  assert.equal(mountsAt(mp).length, 0);
});

test('a non-ASCII mount point: the second mount is refused, mounts lists it, umount finds it (kernel and FUSE)', { skip: SKIP }, async () => {
  for (const fuse of ['no', 'yes']) {
    const mp = newDir(`mé-${fuse}`);
    await cfsOkAsync(['--repo', repo, 'mount', '--fuse', fuse, image, mp]);
    const again = await cfs(['--repo', repo, 'mount', '--fuse', fuse, image, mp]);
    assert.match(again.stderr, /already has a cfs mount/);
    const listed = JSON.parse((await cfsOkAsync(['mounts', '--json'])).stdout) as { mounts: Array<{ mountpoint: string }> };
    assert.ok(listed.mounts.some((m) => m.mountpoint === mp), JSON.stringify(listed));
    assert.ok((await cfsOkAsync(['mounts'])).stdout.split('\n').some((l) => l.startsWith(`${mp}\t${fuse === 'yes' ? 'fuse' : 'kernel'}\t`)));
    await cfsOkAsync(['umount', mp]);
    assert.equal(mountsAt(mp).length, 0);
  }
});

test('cfs mounts says a FUSE mount whose server was killed is dead (and which server serves a live one); cfs umount removes it', { skip: SKIP }, async () => {
  const mp = newDir();
  await cfsOkAsync(['--repo', repo, 'mount', '--fuse', 'yes', image, mp]);
  const pid = serverPid(mp);
  type Listed = { mounts: Array<{ mountpoint: string; image: string; state: string; serverPid: number | null }> };
  const entry = async (): Promise<Listed['mounts'][number] | undefined> => (JSON.parse((await cfsOkAsync(['mounts', '--json'])).stdout) as Listed).mounts.find((m) => m.mountpoint === mp);
  assert.deepEqual({ ...(await entry()) }, { ...(await entry()), image, state: 'active', serverPid: pid });
  process.kill(pid, 'SIGKILL');
  await until(() => processGone(pid), 'the server to die');
  assert.equal((await entry())?.state, 'dead');
  assert.equal((await entry())?.serverPid, null);
  assert.match((await cfsOkAsync(['mounts'])).stdout, new RegExp(`^${mp.replace(/[/.]/g, '\\$&')}\tfuse\tcfs:img\tdead: its FUSE server is gone`, 'm'));
  await cfsOkAsync(['umount', mp]);
  assert.equal(mountsAt(mp).length, 0);
});

test('cfs gc keeps an untagged image while it is mounted (kernel, FUSE, foreground FUSE) and removes it after the unmount, also one by umount(8)', { skip: SKIP }, async () => {
  const layout = await buildOciLayout(path.join(work, 'gc-layout'), { images: [{ tag: 'v1', layers: [[{ path: 'usr/' }, { path: 'usr/gc-kept', content: Buffer.alloc(4096, 'g') }]] }] });
  const gcRepo = path.join(work, 'gc-repo');
  type Gc = { keptMounted: string[]; removed: { images: string[] } };
  const gc = async (...extra: string[]): Promise<Gc> => JSON.parse((await cfsOkAsync(['--repo', gcRepo, 'gc', '--json', ...extra])).stdout) as Gc;
  for (const how of ['kernel', 'fuse', 'foreground', 'umount(8)'] as const) {
    const pulled = (await cfsOkAsync(['--repo', gcRepo, '--insecure', 'oci', 'pull', '-q', `oci:${layout.dir}:v1`, 'gc-img'])).stdout;
    const id = /^image ([0-9a-f]+)$/m.exec(pulled)![1]!;
    const mp = newDir();
    let foreground: ReturnType<typeof spawn> | null = null;
    if (how === 'foreground') {
      foreground = spawn(process.execPath, [path.join(import.meta.dirname, '../src/cli/entry.js'), '--repo', gcRepo, 'mount', '--fuse', 'yes', '--foreground', 'gc-img', mp], { stdio: 'ignore' });
      await until(() => mountsAt(mp).length === 1, 'the foreground mount');
    } else {
      await cfsOkAsync(['--repo', gcRepo, 'mount', '--fuse', how === 'fuse' ? 'yes' : 'no', 'gc-img', mp]);
    }
    await cfsOkAsync(['--repo', gcRepo, 'oci', 'untag', 'gc-img']);
    type Listed = { mounts: Array<{ mountpoint: string; imageId: string | null; repository: string | null }> };
    const listed = (JSON.parse((await cfsOkAsync(['mounts', '--json'])).stdout) as Listed).mounts.find((m) => m.mountpoint === mp);
    assert.deepEqual([listed?.imageId, listed?.repository], [id, gcRepo], how);
    const dry = (await cfsOkAsync(['--repo', gcRepo, 'gc', '--dry-run'])).stdout;
    assert.match(dry, new RegExp(`^Kept 1 mounted image that no ref reaches: ${id.slice(0, 12)} \\(a gc after the unmount removes it\\)$`, 'm'), how);
    const kept = await gc();
    assert.deepEqual(kept.keptMounted, [`images/${id}`], how);
    assert.deepEqual(kept.removed.images, [], how);
    assert.deepEqual(readFileSync(path.join(mp, 'usr/gc-kept')), Buffer.alloc(4096, 'g'), `${how}: the mounted image still reads`);
    if (how === 'umount(8)') execFileSync('umount', [mp]);
    else await cfsOkAsync(['umount', mp]);
    await until(() => mountsAt(mp).length === 0, 'the unmount');
    if (foreground) await new Promise((r) => (foreground!.exitCode !== null ? r(null) : foreground!.once('exit', r)));
    const after = await gc();
    assert.deepEqual([after.keptMounted, after.removed.images], [[], [`images/${id}`]], how);
  }
  assert.equal(readdirSync('/run/cfs').filter((n) => n.startsWith('pin-') && readFileSync(path.join('/run/cfs', n), 'utf8').includes(gcRepo)).length, 0, 'no pin is left behind');
});

test('after umount --lazy, gc keeps the image while files are open on the detached mount, and not after (kernel and FUSE)', { skip: SKIP }, async () => {
  const content = Buffer.alloc(8192, 'z');
  const layout = await buildOciLayout(path.join(work, 'lazy-layout'), { images: [{ tag: 'v1', layers: [[{ path: 'usr/' }, { path: 'usr/lazy-kept', content }]] }] });
  const lazyRepo = path.join(work, 'lazy-repo');
  type Gc = { keptMounted: string[]; removed: { images: string[] } };
  const gc = async (): Promise<Gc> => JSON.parse((await cfsOkAsync(['--repo', lazyRepo, 'gc', '--json'])).stdout) as Gc;
  for (const fuse of ['no', 'yes']) {
    const id = /^image ([0-9a-f]+)$/m.exec((await cfsOkAsync(['--repo', lazyRepo, '--insecure', 'oci', 'pull', '-q', `oci:${layout.dir}:v1`, 'lz'])).stdout)![1]!;
    const mp = newDir();
    await cfsOkAsync(['--repo', lazyRepo, 'mount', '--fuse', fuse, 'lz', mp]);
    await cfsOkAsync(['--repo', lazyRepo, 'oci', 'untag', 'lz']);
    const fd = openSync(path.join(mp, 'usr/lazy-kept'), 'r');
    try {
      await cfsOkAsync(['umount', '--lazy', mp]);
      // The pin follows the mount by id now; make it older than its grace period, so only the open file holds it.
      const pins = readdirSync('/run/cfs').filter((n) => n.startsWith('pin-')).map((n) => path.join('/run/cfs', n));
      const pin = pins.find((f) => readFileSync(f, 'utf8').includes(`"imageId":"${id}"`) && readFileSync(f, 'utf8').includes(lazyRepo));
      assert.ok(pin, `fuse=${fuse}: a pin for the lazily unmounted image`);
      const record = JSON.parse(readFileSync(pin, 'utf8')) as { mountpoint: string; detachedAt: number };
      assert.equal(record.mountpoint, '');
      writeFileSync(pin, JSON.stringify({ ...record, detachedAt: record.detachedAt - 3_600_000 }));
      assert.deepEqual((await gc()).keptMounted, [`images/${id}`], `fuse=${fuse}: kept while a file is open`);
      const buf = Buffer.alloc(content.length);
      assert.equal(readSync(fd, buf, 0, buf.length, 0), content.length);
      assert.deepEqual(buf, content);
    } finally {
      closeSync(fd);
    }
    let after: Gc = { keptMounted: [], removed: { images: [] } };
    // A FUSE mount goes once its server has answered the last release: gc may have to try again.
    for (let i = 0; i < 50; i++) {
      after = await gc();
      if (after.removed.images.length > 0) break;
      await new Promise((r) => setTimeout(r, 100));
    }
    assert.deepEqual([after.keptMounted, after.removed.images], [[], [`images/${id}`]], `fuse=${fuse}: collected once the file is closed`);
  }
});

test("logs of FUSE servers gone for a day are removed at the next FUSE mount; a recent one stays", { skip: SKIP }, async () => {
  const old = path.join('/run/cfs', `fuse-${'0'.repeat(31)}1.log`);
  const recent = path.join('/run/cfs', `fuse-${'0'.repeat(31)}2.log`);
  mkdirSync('/run/cfs', { recursive: true, mode: 0o700 });
  writeFileSync(old, 'an old server said this\n');
  writeFileSync(recent, 'a recent server said this\n');
  const twoDaysAgo = new Date(Date.now() - 2 * 86_400_000);
  utimesSync(old, twoDaysAgo, twoDaysAgo);
  const mp = newDir();
  try {
    await cfsOkAsync(['--repo', repo, 'mount', '--fuse', 'yes', image, mp]);
    assert.ok(!existsSync(old), 'the old log is removed');
    assert.ok(existsSync(recent), 'the recent log stays');
  } finally {
    rmSync(recent, { force: true });
    await cfsOkAsync(['umount', mp]);
  }
});

test('mount ids are reused: a new mount is never credited to the pin of a mount unmounted lazily', { skip: SKIP }, async () => {
  const a = newDir();
  const b = newDir();
  const layout = await buildOciLayout(path.join(work, 'reuse-layout'), { images: [{ tag: 'v1', layers: [[{ path: 'usr/' }, { path: 'usr/reuse', content: 'another image' }]] }] });
  await cfsOkAsync(['--repo', repo, 'oci', 'pull', '-q', `oci:${layout.dir}:v1`, 'reuse']);
  const imgId = (JSON.parse((await cfsOkAsync(['--repo', repo, 'oci', 'inspect', image])).stdout) as { imageId: string }).imageId;
  for (let i = 0; i < 3; i++) {
    await cfsOkAsync(['--repo', repo, 'mount', '--fuse', 'no', 'reuse', a]);
    const first = readFileSync('/proc/self/mountinfo', 'utf8').split('\n').find((l) => l.split(' ')[4] === a)!.split(' ')[0];
    await cfsOkAsync(['umount', '--lazy', a]);
    // Nothing was open: the mount is gone, its id free for the next mount; its pin is in its grace period.
    await cfsOkAsync(['--repo', repo, 'mount', '--fuse', 'no', image, b]);
    type Listed = { mounts: Array<{ mountpoint: string; kind: string; imageId: string | null }> };
    const listed = (JSON.parse((await cfsOkAsync(['mounts', '--json'])).stdout) as Listed).mounts.find((m) => m.mountpoint === b);
    const second = readFileSync('/proc/self/mountinfo', 'utf8').split('\n').find((l) => l.split(' ')[4] === b)!.split(' ')[0];
    assert.deepEqual([listed?.kind, listed?.imageId], ['kernel', imgId], `round ${i} (mount ids ${first}, then ${second})`);
    await cfsOkAsync(['umount', b]);
  }
});

test('a mount in another mount namespace keeps its image while it is mounted there, and not after (gc reads that namespace through a process in it)', { skip: SKIP }, async () => {
  const layout = await buildOciLayout(path.join(work, 'ns-layout'), { images: [{ tag: 'v1', layers: [[{ path: 'usr/' }, { path: 'usr/ns-kept', content: Buffer.alloc(4096, 'n') }]] }] });
  const nsRepo = path.join(work, 'ns-repo');
  const id = /^image ([0-9a-f]+)$/m.exec((await cfsOkAsync(['--repo', nsRepo, '--insecure', 'oci', 'pull', '-q', `oci:${layout.dir}:v1`, 'ns-img'])).stdout)![1]!;
  const mp = newDir();
  const entry = path.join(import.meta.dirname, '../src/cli/entry.js');
  const holder = spawn('unshare', ['-m', '--propagation', 'private', 'sh', '-c', `"$0" "$1" --repo "$2" mount --fuse no ns-img "$3" && echo ready && exec sleep 300`, process.execPath, entry, nsRepo, mp], { stdio: ['ignore', 'pipe', 'inherit'] });
  try {
    await new Promise<void>((resolve, reject) => {
      holder.stdout!.on('data', (d: Buffer) => d.toString().includes('ready') && resolve());
      holder.once('exit', (code) => reject(new Error(`the namespace's mount failed (${code})`)));
    });
    assert.equal(mountsAt(mp).length, 0, 'the mount is not in our namespace');
    await cfsOkAsync(['--repo', nsRepo, 'oci', 'untag', 'ns-img']);
    type Gc = { keptMounted: string[]; removed: { images: string[] } };
    const kept = JSON.parse((await cfsOkAsync(['--repo', nsRepo, 'gc', '--json'])).stdout) as Gc;
    assert.deepEqual(kept.keptMounted, [`images/${id}`]);
    execFileSync('nsenter', ['-t', String(holder.pid), '-m', 'umount', mp]);
    const after = JSON.parse((await cfsOkAsync(['--repo', nsRepo, 'gc', '--json'])).stdout) as Gc;
    assert.deepEqual([after.keptMounted, after.removed.images], [[], [`images/${id}`]], 'unmounted in its namespace: collected');
  } finally {
    holder.kill('SIGKILL');
  }
});

test('cfs mounts: one row per mount, a tab or newline in a mount point octal-escaped as in mountinfo', { skip: SKIP }, async () => {
  const mp = newDir('tab\there\nnewline');
  await cfsOkAsync(['--repo', repo, 'mount', image, mp]);
  try {
    const rows = (await cfsOkAsync(['mounts'])).stdout.split('\n').filter((l) => l.includes('tab'));
    assert.deepEqual(rows.map((l) => l.split('\t')[0]), [mp.replace('\t', '\\011').replace('\n', '\\012')]);
  } finally {
    await cfsOkAsync(['umount', mp]);
  }
});

test("another user's runtime directory cannot hang or steer root's gc and cfs mounts: FIFOs, symlinks, foreign pins", { skip: SKIP }, async () => {
  const dir = path.join(tmpdir(), 'cfs-65534');
  rmSync(dir, { recursive: true, force: true });
  mkdirSync(dir, { mode: 0o700 });
  try {
    execFileSync('mkfifo', [path.join(dir, 'pin-fifo.json')]);
    execFileSync('ln', ['-s', '/dev/zero', path.join(dir, 'pin-zero.json')]);
    // And a pin for root's repository claiming a real cfs mount (counted only for a repository
    // of that user's: pins.ts), all read without harm.
    const mp = newDir();
    await cfsOkAsync(['--repo', repo, 'mount', '--fuse', 'yes', image, mp]);
    const m = mountinfo().split('\n').find((l) => l.split(' ')[4] === mp)!;
    const imageId = (JSON.parse((await cfsOkAsync(['--repo', repo, 'oci', 'inspect', image])).stdout) as { imageId: string }).imageId;
    writeFileSync(path.join(dir, 'pin-forged.json'), JSON.stringify({ repo, imageId, mountpoint: mp, mountId: Number(m.split(' ')[0]), mntns: readlinkSync('/proc/self/ns/mnt') }));
    execFileSync('chown', ['-hR', '65534:65534', dir]);
    try {
      const listed = spawnSync(process.execPath, [path.join(import.meta.dirname, '../src/cli/entry.js'), 'mounts', '--json'], { timeout: 20_000, encoding: 'utf8' });
      assert.equal(listed.status, 0, `cfs mounts: ${listed.error?.message ?? listed.stderr}`);
      const gc = spawnSync(process.execPath, [path.join(import.meta.dirname, '../src/cli/entry.js'), '--repo', repo, 'gc', '--dry-run', '--json'], { timeout: 20_000, encoding: 'utf8' });
      assert.equal(gc.status, 0, `cfs gc: ${gc.error?.message ?? gc.stderr}`);
    } finally {
      await cfsOkAsync(['umount', mp]);
    }
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
});

test('umount --lazy of a mount whose FUSE server is stopped returns (nothing stats the mount point)', { skip: SKIP }, async () => {
  const mp = newDir();
  await cfsOkAsync(['--repo', repo, 'mount', '--fuse', 'yes', image, mp]);
  const pid = serverPid(mp);
  process.kill(pid, 'SIGSTOP');
  try {
    const r = spawnSync(process.execPath, [path.join(import.meta.dirname, '../src/cli/entry.js'), 'umount', '--lazy', mp], { timeout: 20_000, encoding: 'utf8' });
    assert.equal(r.status, 0, `umount --lazy: ${r.error?.message ?? r.stderr}`);
    assert.equal(mountsAt(mp).length, 0);
  } finally {
    process.kill(pid, 'SIGCONT');
  }
  await until(() => processGone(pid), 'the server to exit');
});

test('after umount --lazy, files opened before keep working; a second cfs umount does not end their server', { skip: SKIP }, async () => {
  const mp = newDir();
  await cfsOkAsync(['--repo', repo, 'mount', '--fuse', 'yes', image, mp]);
  const pid = serverPid(mp);
  const fd = openSync(path.join(mp, 'usr/big'), 'r');
  try {
    await cfsOkAsync(['umount', '--lazy', mp]);
    const again = await cfs(['umount', mp]);
    assert.notEqual(again.status, 0);
    assert.match(again.stderr, /not a mount point \(unmounted lazily; its FUSE server pid \d+ serves the files still open there/);
    const buf = Buffer.alloc(BIG.length);
    assert.equal(readSync(fd, buf, 0, buf.length, 0), BIG.length);
    assert.deepEqual(buf, BIG);
    assert.ok(!processGone(pid));
  } finally {
    closeSync(fd);
  }
  await until(() => processGone(pid), 'the server to exit once the file is closed');
});

test('racing cfs mounts of one directory: one mounts, the others are refused (kernel and FUSE)', { skip: SKIP }, async () => {
  for (const fuse of ['no', 'yes']) {
    const mp = newDir();
    const runs = await Promise.all([0, 1, 2, 3].map(() => cfs(['--repo', repo, 'mount', '--fuse', fuse, image, mp])));
    assert.equal(runs.filter((r) => r.status === 0).length, 1, runs.map((r) => r.stderr).join(''));
    for (const r of runs.filter((x) => x.status !== 0)) assert.match(r.stderr, /already has a cfs mount/);
    assert.equal(mountsAt(mp).length, 1);
    await cfsOkAsync(['umount', mp]);
  }
});

test('FUSE: an object replaced by a FIFO or truncated fails that file with EIO, promptly, and nothing else', { skip: SKIP }, async () => {
  const mp = newDir();
  const big = objectPath(BIG);
  const saved = readFileSync(big);
  await cfsOkAsync(['--repo', repo, 'mount', '--fuse', 'yes', image, mp]);
  try {
    truncateSync(big, 1000);
    assert.throws(() => readFileSync(path.join(mp, 'usr/big')), /EIO/);
    unlinkSync(big);
    execFileSync('mkfifo', [big]);
    const r = spawnSync('cat', [path.join(mp, 'usr/big')], { timeout: 10_000, encoding: 'utf8' });
    assert.equal(r.error, undefined, 'cat returned');
    assert.match(r.stderr, /Input\/output error/);
    assert.deepEqual(readFileSync(path.join(mp, 'usr/other')), OTHER);
  } finally {
    rmSync(big, { force: true });
    writeFileSync(big, saved);
    await cfsOkAsync(['umount', mp]);
  }
});

test('a mount point inside the repository is refused; a very long image name still mounts by the kernel', { skip: SKIP }, async () => {
  const inside = path.join(repo, 'objects');
  const r = await cfs(['--repo', repo, 'mount', '--fuse', 'yes', image, inside]);
  assert.match(r.stderr, /^cfs: mount point \S+\/objects is inside repository \S+: the mount would hide what it serves\n$/);
  assert.equal(mountsAt(inside).length, 0);
  const long = 'x'.repeat(250);
  await cfsOkAsync(['--repo', repo, 'oci', 'tag', image, long]);
  const mp = newDir();
  await cfsOkAsync(['--repo', repo, 'mount', '--fuse', 'no', long, mp]);
  assert.match(mountsAt(mp)[0] ?? '', / composefs:x{240,}…/);
  assert.deepEqual(readFileSync(path.join(mp, 'usr/other')), OTHER);
  await cfsOkAsync(['umount', mp]);
});
