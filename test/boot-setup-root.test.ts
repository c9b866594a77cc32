import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { existsSync, mkdirSync, mkdtempSync, readFileSync, readlinkSync, renameSync, rmSync, writeFileSync } from 'node:fs';
import { execFileSync } from 'node:child_process';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { CfsError } from '../src/errors.js';
import { hasMountPrivilege } from '../src/mount/caps.js';
import { readMountinfo } from '../src/mount/mountinfo.js';
import { Repository } from '../src/repository/repository.js';
import { writeErofs } from '../src/erofs/writer.js';
import { newInode, S_IFDIR, S_IFREG, type Inode } from '../src/tree/inode.js';
import { objectRelPath } from '../src/repository/ids.js';
import { formatKarg } from '../src/boot/karg.js';
import { deploymentStateDir, setupRoot, teardownRoot } from '../src/boot/setup-root.js';

const CLI = path.join(import.meta.dirname, '../src/cli/entry.js');
const skip = hasMountPrivilege() ? false : 'needs CAP_SYS_ADMIN in the initial user namespace (run as root)';

const dir = (children: Record<string, Inode> = {}): Inode => newInode(S_IFDIR | 0o755, { children: new Map(Object.entries(children)) });
const small = (text: string): Inode => newInode(S_IFREG | 0o644, { content: Buffer.from(text), size: text.length });

let tmp = '';
let sysroot = '';
let repo: Repository;
let good = '';
let noVar = '';
const BIG = Buffer.alloc(10_000, 'composefs object ');

async function image(withVar: boolean): Promise<string> {
  const digest = await repo.writeObject(BIG);
  const big = newInode(S_IFREG | 0o644, { size: BIG.length, digest, payload: objectRelPath(digest) });
  const children: Record<string, Inode> = {
    usr: dir({ 'os-release': small('NAME=test\n') }),
    etc: dir({ hostname: small('image-host\n'), big }),
    sysroot: dir(),
    boot: dir(),
  };
  if (withVar) children.var = dir();
  return repo.writeImage(writeErofs(dir(children), { minVersion: 1, maxVersion: 1 }));
}

function makeState(hex: string): string {
  const state = deploymentStateDir(sysroot, hex);
  for (const d of ['var', 'etc/upper', 'etc/work']) mkdirSync(path.join(state, d), { recursive: true });
  return state;
}

/** Mounts at or below our temporary directory. */
function ourMounts(): string[] {
  return readMountinfo().map((m) => m.mountpoint).filter((mp) => mp.startsWith(tmp));
}

function freshTarget(name: string): string {
  const t = path.join(tmp, name);
  mkdirSync(t);
  return t;
}

async function refused(cmdline: string, target: string, what: RegExp): Promise<void> {
  await assert.rejects(setupRoot({ cmdline, sysroot, target }), (e: unknown) => e instanceof CfsError && what.test(e.message));
  assert.deepEqual(ourMounts(), [], 'nothing stays mounted after a refusal');
}

before(async () => {
  if (skip) return;
  tmp = mkdtempSync(path.join(tmpdir(), 'cfs-setup-root-'));
  sysroot = path.join(tmp, 'sysroot');
  repo = await Repository.init(path.join(sysroot, 'composefs'), { insecure: true });
  good = await image(true);
  noVar = await image(false);
  makeState(good);
  makeState(noVar);
});

after(() => {
  if (skip) return;
  repo.close();
  for (const mp of ourMounts().reverse()) teardownRoot(mp);
  rmSync(tmp, { recursive: true, force: true });
});

test('setup-root mounts the image with writable /etc, persistent /var and /sysroot', { skip }, async () => {
  const target = freshTarget('root1');
  const karg = formatKarg(good, 'sha256', { insecure: true });
  const r = await setupRoot({ cmdline: `BOOT_IMAGE=/vmlinuz root=UUID=x ${karg} rw`, sysroot, target });
  try {
    assert.equal(r.karg.hex, good);
    assert.deepEqual(r.mounts, [target, `${target}/sysroot`, `${target}/etc`, `${target}/var`]);
    const top = readMountinfo().filter((m) => m.mountpoint === target).pop()!;
    assert.equal(top.fsType, 'overlay');
    assert.equal(top.source, `composefs:${good}`);
    assert.match(top.options, /(^|,)ro(,|$)/);
    assert.equal(readFileSync(path.join(target, 'etc/hostname'), 'utf8'), 'image-host\n');
    assert.deepEqual(readFileSync(path.join(target, 'etc/big')), BIG);
    assert.throws(() => writeFileSync(path.join(target, 'usr/x'), 'x'), /EROFS|read-only/);
    const state = deploymentStateDir(sysroot, good);
    writeFileSync(path.join(target, 'etc/hostname'), 'changed\n');
    writeFileSync(path.join(target, 'etc/new'), 'new\n');
    assert.equal(readFileSync(path.join(state, 'etc/upper/hostname'), 'utf8'), 'changed\n');
    assert.equal(readFileSync(path.join(state, 'etc/upper/new'), 'utf8'), 'new\n');
    writeFileSync(path.join(target, 'var/log'), 'persistent\n');
    assert.equal(readFileSync(path.join(state, 'var/log'), 'utf8'), 'persistent\n');
    assert.ok(existsSync(path.join(target, 'sysroot/composefs/meta.json')), 'the original sysroot is at /sysroot');
    assert.ok(readlinkSync(path.join(target, 'sysroot/composefs/images', good)).includes('objects/'));
  } finally {
    teardownRoot(target);
  }
  assert.deepEqual(ourMounts(), []);
  // /var persisted across boots; the image is untouched
  await setupRoot({ cmdline: formatKarg(good, 'sha256', { insecure: true }), sysroot, target });
  try {
    assert.equal(readFileSync(path.join(target, 'var/log'), 'utf8'), 'persistent\n');
    assert.equal(readFileSync(path.join(target, 'etc/hostname'), 'utf8'), 'changed\n');
  } finally {
    teardownRoot(target);
  }
});

test('setup-root over the sysroot itself (initramfs layout)', { skip }, async () => {
  // The new root is stacked over the sysroot directory; the original stays reachable at /sysroot.
  const r = await setupRoot({ cmdline: formatKarg(good, 'sha256', { insecure: true }), sysroot });
  try {
    assert.equal(r.target, sysroot);
    assert.equal(readFileSync(path.join(sysroot, 'etc/hostname'), 'utf8'), 'changed\n');
    assert.ok(existsSync(path.join(sysroot, 'sysroot/composefs/meta.json')));
  } finally {
    teardownRoot(sysroot);
  }
  assert.deepEqual(ourMounts(), []);
});

test('setup-root tries kargs in order and uses the first image present', { skip }, async () => {
  const target = freshTarget('root2');
  const missing = 'ab'.repeat(32);
  const cmd = `composefs.digest=?v1-sha512-12:${'cd'.repeat(64)} ${formatKarg(missing, 'sha256', { insecure: true })} composefs=?${good}`;
  const lines: string[] = [];
  const r = await setupRoot({ cmdline: cmd, sysroot, target, log: (l) => lines.push(l) });
  teardownRoot(target);
  assert.equal(r.karg.hex, good);
  assert.equal(lines.length, 2);
});

test('setup-root refuses, mounting nothing: unknown digest, corrupted image, missing state, no karg, secure karg', { skip }, async () => {
  const target = freshTarget('root3');
  await refused(formatKarg('ab'.repeat(32), 'sha256', { insecure: true }), target, /no composefs image found/);
  await refused('root=/dev/sda quiet', target, /no composefs karg/);
  await refused('composefs=xyz', target, /invalid digest length/);
  await refused(formatKarg(good, 'sha256'), target, /requires it/);

  // A state directory is missing.
  const state = deploymentStateDir(sysroot, good);
  rmSync(path.join(state, 'var'), { recursive: true });
  await refused(formatKarg(good, 'sha256', { insecure: true }), target, /state directory .*\/var is missing/);
  mkdirSync(path.join(state, 'var'));

  // The image was found but fails later (no /var in it): the mounts made so far are undone.
  await refused(formatKarg(noVar, 'sha256', { insecure: true }), target, /image directory .*\/var is missing; refusing to set up the root \(the image has no \/var, where setup-root mounts the deployment's var: add \/var to the image\)/);

  // Corrupted image object: its digest no longer matches the karg.
  const obj = repo.objectPath(Buffer.from(good, 'hex'));
  const bytes = readFileSync(obj);
  const bad = Buffer.from(bytes);
  bad[bad.length - 1] ^= 0xff;
  writeFileSync(obj, bad);
  try {
    await refused(formatKarg(good, 'sha256', { insecure: true }), target, /digest is .* expected/);
  } finally {
    writeFileSync(obj, bytes);
  }
});

test('gc keeps the images deployments boot, and a root setup-root mounted; neither once retired or unmounted', { skip }, async () => {
  // gc waits for every other handle: this process's goes first (the tests above are done with it).
  repo.close();
  type Gc = { keptMounted: string[]; keptDeployed: string[]; removed: { images: string[] } };
  const gc = (): Gc => JSON.parse(execFileSync(process.execPath, [CLI, '--repo', path.join(sysroot, 'composefs'), 'gc', '--dry-run', '--json'], { encoding: 'utf8' })) as Gc;
  const both = [`images/${good}`, `images/${noVar}`].sort();
  assert.deepEqual(gc().keptDeployed, both);
  const target = freshTarget('root-gc');
  await setupRoot({ cmdline: formatKarg(good, 'sha256', { insecure: true }), sysroot, target });
  const state = deploymentStateDir(sysroot, good);
  const retired = `${state}.retired`;
  try {
    renameSync(state, retired);
    const mounted = gc();
    assert.deepEqual([mounted.keptDeployed, mounted.keptMounted], [[`images/${noVar}`], [`images/${good}`]]);
  } finally {
    teardownRoot(target);
  }
  const after = gc();
  assert.deepEqual([after.keptMounted, after.removed.images], [[], [`images/${good}`]]);
  renameSync(retired, state);
});
