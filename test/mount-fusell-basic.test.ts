/**
 * Real FUSE mounts of hand-built composefs trees served by the /dev/fuse server
 * (src/mount/fuse-ll): the checks of mount-fuse.test.ts, with exact nanosecond times and
 * non-UTF-8 names, plus images read back through readErofs. The server runs in a worker
 * thread of this process.
 */
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { execFile } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { existsSync } from 'node:fs';
import fs from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { promisify } from 'node:util';
import { fsverityDigest } from '../src/fsverity/digest.js';
import { startFuse, type FuseLlHandle as FuseHandle } from '../src/mount/fuse-ll/index.js';
import {
  S_IFBLK, S_IFCHR, S_IFDIR, S_IFIFO, S_IFLNK, S_IFREG,
  isDir, newInode, sortedEntries, type Inode,
} from '../src/tree/inode.js';
import { objectRelPath } from '../src/repository/ids.js';
import { checkoutUnreadableReason, ensureUnprivUser, isRoot, openUpDir, runAsUser, withDevFuseMode } from './helpers/unpriv.js';

const execFileP = promisify(execFile);
const here = path.dirname(fileURLToPath(import.meta.url));
// The source checkout (with node_modules), also when this file runs compiled from dist/test.
const checkout = [path.resolve(here, '..'), path.resolve(here, '../..')].find((d) => existsSync(path.join(d, 'package.json')))!;
const FUSE_SUPER_MAGIC = 0x65735546;
const SKIP = isRoot() ? false : 'needs root (FUSE mounts with allow_other, /dev/fuse, test user)';

let tmp = '';
let objects = '';
const big = randomBytes(6 * 1024 * 1024 + 12345);
const mounts: FuseHandle[] = [];

async function putObject(data: Buffer): Promise<{ payload: string; digest: Buffer }> {
  const digest = fsverityDigest(data);
  const payload = objectRelPath(digest);
  await fs.mkdir(path.join(objects, payload.slice(0, 2)), { recursive: true });
  await fs.writeFile(path.join(objects, payload), data);
  return { payload, digest };
}

interface Fixture {
  root: Inode;
  hard: Inode;
}

/** A tree with every file type, inline and external data, hardlinks, xattrs and a whiteout. */
async function buildTree(): Promise<Fixture> {
  const t = (sec: number, nsec: number) => ({ mtimeSec: sec, mtimeNsec: nsec });
  const root = newInode(S_IFDIR | 0o755, { ...t(1700000000, 987654321), xattrs: new Map([['user.root', Buffer.from('r')]]) });
  const add = (dir: Inode, name: string, n: Inode): Inode => (dir.children!.set(name, n), n);
  add(root, 'inline', newInode(S_IFREG | 0o640, {
    uid: 1000, gid: 1001, size: 11, content: Buffer.from('inline data'), ...t(1600000000, 123456789),
    xattrs: new Map([['user.color', Buffer.from('blue')], ['security.capability', Buffer.from('0100000200200000000000000000000000000000', 'hex')]]),
  }));
  const bigObj = await putObject(big);
  add(root, 'big', newInode(S_IFREG | 0o644, { size: big.length, ...bigObj, ...t(1500000000, 1) }));
  const small = Buffer.from('external but small\n');
  add(root, 'ext', newInode(S_IFREG | 0o4755, { size: small.length, ...(await putObject(small)) }));
  add(root, 'empty', newInode(S_IFREG | 0o600, { size: 0 }));
  add(root, 'missing', newInode(S_IFREG | 0o644, { size: 5, payload: 'ff/00000000000000000000000000000000000000000000000000000000000000', digest: Buffer.alloc(32) }));
  add(root, 'link', newInode(S_IFLNK | 0o777, { payload: 'inline', size: 6, ...t(1234, 500000000) }));
  add(root, 'longlink', newInode(S_IFLNK | 0o777, { payload: 'x/'.repeat(300) + 'end', size: 603 }));
  add(root, 'null', newInode(S_IFCHR | 0o666, { rdev: 0x0103 }));
  add(root, 'loop0', newInode(S_IFBLK | 0o660, { rdev: 0x0700, gid: 6 }));
  add(root, 'fifo', newInode(S_IFIFO | 0o644));
  add(root, '.wh-gone', newInode(S_IFCHR, { rdev: 0 })); // whiteout: hidden
  const hard = newInode(S_IFREG | 0o444, { nlink: 3, size: 4, content: Buffer.from('hard') });
  add(root, 'hard1', hard);
  const sub = add(root, 'sub', newInode(S_IFDIR | 0o2775, { uid: 5, gid: 7, ...t(1, 999999999) }));
  add(sub, 'hard2', hard);
  const deep = add(sub, 'deep', newInode(S_IFDIR | 0o700));
  add(deep, 'hard3', hard);
  add(deep, Buffer.from('ünïcode ✓').toString('latin1'), newInode(S_IFREG | 0o644, { size: 3, content: Buffer.from('utf') }));
  add(sub, 'empty-dir', newInode(S_IFDIR | 0o755));
  add(sub, 'latin1-\xe9', newInode(S_IFREG | 0o644, { size: 2, content: Buffer.from('l1') })); // not UTF-8
  return { root, hard };
}

async function mountTree(root: Inode, name: string, verify?: { alg: 'sha256' }, log: (line: string) => void = () => undefined): Promise<FuseHandle> {
  const mp = await fs.mkdtemp(path.join(tmp, 'mnt-'));
  const h = await startFuse({ root, objectsDir: objects, mountpoint: mp, name, verify, log });
  mounts.push(h);
  return h;
}

/** Expected visible entries: path → inode (whiteouts hidden). */
function walk(root: Inode, prefix = ''): Map<string, Inode> {
  const out = new Map<string, Inode>();
  for (const [name, n] of sortedEntries(root)) {
    if ((n.mode & 0o170000) === S_IFCHR && n.rdev === 0) continue;
    const p = `${prefix}/${name}`; // byte string: see at()
    out.set(p, n);
    if (isDir(n)) for (const [q, m] of walk(n, p)) out.set(q, m);
  }
  return out;
}

/** A mount path plus a tree path (a byte string, not necessarily UTF-8) as path bytes. */
function at(mp: string, rel: string): Buffer {
  return Buffer.concat([Buffer.from(mp), Buffer.from(rel, 'latin1')]);
}

function isUtf8(b: Buffer): boolean {
  return Buffer.from(b.toString('utf8'), 'utf8').equals(b);
}

async function xattrsOf(file: string): Promise<Map<string, string>> {
  const { stdout } = await execFileP('getfattr', ['--absolute-names', '-h', '-d', '-m', '-', '-e', 'hex', file]);
  const out = new Map<string, string>();
  for (const line of stdout.split('\n')) {
    const m = /^([^#=][^=]*)=0x([0-9a-f]*)$/.exec(line);
    if (m) out.set(m[1], m[2]);
  }
  return out;
}

before(async () => {
  if (SKIP) return;
  tmp = await fs.mkdtemp(path.join(os.tmpdir(), 'cfs-fusell-'));
  objects = path.join(tmp, 'objects');
  await fs.mkdir(objects);
});

after(async () => {
  for (const h of mounts) await h.unmount({ lazy: true }).catch(() => undefined);
  if (tmp) await fs.rm(tmp, { recursive: true, force: true });
});

test('fuse-ll: metadata, types, xattrs and contents match the tree', { skip: SKIP }, async () => {
  const { root } = await buildTree();
  const h = await mountTree(root, 'meta');
  const mp = h.mountpoint;
  const expected = walk(root);
  // Names per directory, with . and .. and without the whiteout.
  assert.deepEqual((await fs.readdir(mp)).sort(), [...sortedEntries(root)].map(([n]) => n).filter((n) => n !== '.wh-gone').sort());
  const subNames = (await fs.readdir(path.join(mp, 'sub'), { encoding: 'buffer' })).map((b) => b.toString('latin1'));
  assert.deepEqual(subNames.sort(), [...root.children!.get('sub')!.children!.keys()].sort());
  const { stdout: lsa } = await execFileP('ls', ['-a', path.join(mp, 'sub')]);
  assert.deepEqual(lsa.trim().split('\n').slice(0, 2), ['.', '..']);
  const rootSt = await fs.lstat(mp, { bigint: true });
  assert.equal(rootSt.ino, 1n);
  assert.equal(rootSt.nlink, 3n); // 2 + one subdirectory
  for (const [rel, n] of expected) {
    const p = at(mp, rel);
    const st = await fs.lstat(p, { bigint: true });
    assert.equal(Number(st.mode), n.mode, `${rel} mode`);
    assert.equal(Number(st.uid), n.uid, `${rel} uid`);
    assert.equal(Number(st.gid), n.gid, `${rel} gid`);
    const ns = BigInt(n.mtimeSec) * 1_000_000_000n + BigInt(n.mtimeNsec);
    assert.equal(st.mtimeNs, ns, `${rel} mtime`);
    assert.equal(st.ctimeNs, ns, `${rel} ctime`);
    if (isDir(n)) {
      const subdirs = [...n.children!.values()].filter(isDir).length;
      assert.equal(Number(st.nlink), 2 + subdirs, `${rel} nlink`);
    } else {
      assert.equal(Number(st.nlink), n.nlink, `${rel} nlink`);
    }
    if ((n.mode & 0o170000) === S_IFREG) assert.equal(Number(st.size), n.size, `${rel} size`);
    if ((n.mode & 0o170000) === S_IFLNK) {
      assert.equal((await fs.readlink(p, { encoding: 'buffer' })).toString('latin1'), n.payload, `${rel} target`);
      assert.equal(Number(st.size), n.payload!.length, `${rel} link size`);
    }
    if ((n.mode & 0o170000) === S_IFCHR || (n.mode & 0o170000) === S_IFBLK) assert.equal(Number(st.rdev), n.rdev, `${rel} rdev`);
    if (isUtf8(p)) {
      assert.deepEqual(
        await xattrsOf(p.toString()),
        new Map([...n.xattrs].map(([k, v]) => [k, v.toString('hex')])),
        `${rel} xattrs`,
      );
    }
    if ((n.mode & 0o170000) === S_IFREG && rel !== '/missing') {
      const want = n.content ?? (n.payload === null ? Buffer.alloc(0) : n.size === big.length ? big : await fs.readFile(path.join(objects, n.payload)));
      assert.ok((await fs.readFile(p)).equals(want.subarray(0, n.size)), `${rel} content`);
    }
  }
});

test('fuse-ll: random reads of a multi-MiB external file', { skip: SKIP }, async () => {
  const h = await mountTree((await buildTree()).root, 'random');
  const fh = await fs.open(path.join(h.mountpoint, 'big'), 'r');
  try {
    for (let i = 0; i < 64; i++) {
      const len = 1 + Math.floor(Math.random() * 300_000);
      const pos = Math.floor(Math.random() * (big.length + 1000));
      const buf = Buffer.alloc(len);
      const { bytesRead } = await fh.read(buf, 0, len, pos);
      const want = big.subarray(Math.min(pos, big.length), Math.min(pos + len, big.length));
      assert.equal(bytesRead, want.length);
      assert.ok(buf.subarray(0, bytesRead).equals(want), `read ${len}@${pos}`);
    }
  } finally {
    await fh.close();
  }
});

test('fuse-ll: hardlinks share an inode; inode numbers are stable across mounts', { skip: SKIP }, async () => {
  const { root } = await buildTree();
  const a = await mountTree(root, 'ino-a');
  const b = await mountTree((await buildTree()).root, 'ino-b');
  const inos = await Promise.all(['hard1', 'sub/hard2', 'sub/deep/hard3'].map(async (p) => (await fs.stat(path.join(a.mountpoint, p))).ino));
  assert.equal(new Set(inos).size, 1);
  const seen = new Set<number>();
  for (const rel of walk(root).keys()) {
    const sa = await fs.lstat(at(a.mountpoint, rel));
    const sb = await fs.lstat(at(b.mountpoint, rel));
    assert.equal(sa.ino, sb.ino, `${rel} ino`);
    if (!rel.startsWith('/hard') && !rel.endsWith('/hard2') && !rel.endsWith('/hard3')) {
      assert.ok(!seen.has(sa.ino), `${rel} unique ino`);
      seen.add(sa.ino);
    }
  }
});

test('fuse-ll: a missing object fails with EIO, the rest stays readable; statfs; writes fail with EROFS', { skip: SKIP }, async () => {
  const h = await mountTree((await buildTree()).root, 'errors');
  const mp = h.mountpoint;
  await assert.rejects(fs.readFile(path.join(mp, 'missing')), { code: 'EIO' });
  assert.equal(await fs.readFile(path.join(mp, 'ext'), 'utf8'), 'external but small\n');
  await assert.rejects(fs.readFile(path.join(mp, 'nope')), { code: 'ENOENT' });
  await assert.rejects(fs.lstat(path.join(mp, '.wh-gone')), { code: 'ENOENT' });
  await assert.rejects(fs.lstat(path.join(mp, 'n'.repeat(256))), { code: 'ENAMETOOLONG' });
  const sf = await fs.statfs(mp);
  assert.equal(sf.type, FUSE_SUPER_MAGIC);
  assert.equal(sf.bsize, 4096);
  const { stdout: mi } = await execFileP('findmnt', ['-n', '-o', 'SOURCE,FSTYPE,OPTIONS', mp]);
  assert.match(mi, /^cfs:errors\s+fuse\.cfs\s+ro,/);
  const erofs = { code: 'EROFS' };
  await assert.rejects(fs.writeFile(path.join(mp, 'inline'), 'x'), erofs);
  await assert.rejects(fs.open(path.join(mp, 'ext'), 'r+'), erofs);
  await assert.rejects(fs.writeFile(path.join(mp, 'new'), 'x'), erofs);
  await assert.rejects(fs.mkdir(path.join(mp, 'newdir')), erofs);
  await assert.rejects(fs.unlink(path.join(mp, 'inline')), erofs);
  await assert.rejects(fs.rename(path.join(mp, 'inline'), path.join(mp, 'x')), erofs);
  await assert.rejects(fs.chmod(path.join(mp, 'inline'), 0o777), erofs);
  await assert.rejects(fs.symlink('a', path.join(mp, 'sl')), erofs);
  await assert.rejects(execFileP('setfattr', ['-n', 'user.x', '-v', '1', path.join(mp, 'inline')]), /Read-only file system/);
});

test('fuse-ll: verify=sha256 serves good objects and fails a tampered one with EIO', { skip: SKIP }, async () => {
  const { root } = await buildTree();
  const bad = Buffer.from('original content');
  const obj = await putObject(bad);
  await fs.writeFile(path.join(objects, obj.payload), 'tampered content'); // same size, other digest
  root.children!.set('tampered', newInode(S_IFREG | 0o644, { size: bad.length, ...obj }));
  const logged: string[] = [];
  const h = await mountTree(root, 'verify', { alg: 'sha256' }, (line) => logged.push(line));
  await assert.rejects(fs.readFile(path.join(h.mountpoint, 'tampered')), { code: 'EIO' });
  // The log names the file, the object and both digests.
  const want = obj.digest.toString('hex');
  assert.ok(logged.some((l) => l.includes('tampered') && l.includes(`object ${obj.payload} has fs-verity digest`) && l.endsWith(`expected ${want}`)), logged.join('\n'));
  assert.ok((await fs.readFile(path.join(h.mountpoint, 'big'))).equals(big));
  assert.equal(await fs.readFile(path.join(h.mountpoint, 'inline'), 'utf8'), 'inline data');
});

test('fuse-ll: unmount refuses a busy mount, lazy unmount keeps open files readable', { skip: SKIP }, async () => {
  const h = await mountTree((await buildTree()).root, 'busy');
  const fh = await fs.open(path.join(h.mountpoint, 'big'), 'r');
  await assert.rejects(h.unmount(), { code: 'EBUSY' });
  await h.unmount({ lazy: true });
  const buf = Buffer.alloc(4096);
  await fh.read(buf, 0, buf.length, 4096);
  assert.ok(buf.equals(big.subarray(4096, 8192)));
  await fh.close();
  await h.closed; // the connection ends with the last open file
});

test('fuse-ll: an unprivileged user mounts through fusermount3, reads, unmounts', { skip: SKIP }, async (t) => {
  const reason = checkoutUnreadableReason(checkout);
  if (reason) return t.skip(`test user cannot read the checkout: ${reason}`);
  const user = await ensureUnprivUser();
  openUpDir(tmp);
  openUpDir(objects);
  const mp = await fs.mkdtemp(path.join(tmp, 'umnt-'));
  await fs.chown(mp, user.uid, user.gid);
  // The child builds a small tree whose one external file is an object of ours.
  const data = Buffer.from('served to an unprivileged user\n');
  const obj = await putObject(data);
  await fs.chmod(path.join(objects, obj.payload.slice(0, 2)), 0o755);
  const script = `
    const { startFuse } = await import(${JSON.stringify(path.join(checkout, 'src/mount/fuse-ll/index.ts'))});
    const { newInode, S_IFDIR, S_IFREG } = await import(${JSON.stringify(path.join(checkout, 'src/tree/inode.ts'))});
    const fs = await import('node:fs/promises');
    const root = newInode(S_IFDIR | 0o755);
    root.children.set('f', newInode(S_IFREG | 0o644, { size: ${data.length}, payload: ${JSON.stringify(obj.payload)} }));
    const h = await startFuse({ root, objectsDir: ${JSON.stringify(objects)}, mountpoint: ${JSON.stringify(mp)}, name: 'unpriv' });
    const text = await fs.readFile(${JSON.stringify(mp)} + '/f', 'utf8');
    const mounts = await fs.readFile('/proc/self/mountinfo', 'utf8');
    const line = mounts.split('\\n').find((l) => l.includes(${JSON.stringify(mp)}));
    await h.unmount();
    process.stdout.write(JSON.stringify({ text, line, uid: process.getuid() }));
  `;
  const r = await withDevFuseMode(0o666, () =>
    runAsUser(user, [process.execPath, '--import', 'tsx', '--input-type=module', '-e', script], { cwd: checkout }),
  );
  assert.equal(r.code, 0, r.stderr);
  const out = JSON.parse(r.stdout) as { text: string; line: string; uid: number };
  assert.equal(out.uid, user.uid);
  assert.equal(out.text, data.toString());
  assert.match(out.line, new RegExp(`fuse\\.cfs cfs:unpriv .*user_id=${user.uid}`));
  const { stdout } = await execFileP('findmnt', ['-n', mp]).catch(() => ({ stdout: '' }));
  assert.equal(stdout, '', 'unmounted by the user');
});


test('fuse-ll: an image read back with readErofs serves like the tree; xattr size probes', { skip: SKIP }, async () => {
  const { writeErofs } = await import('../src/erofs/writer.js');
  const { readErofs } = await import('../src/erofs/reader.js');
  const { root } = await buildTree();
  const h = await mountTree(readErofs(writeErofs(root)), 'image');
  const mp = h.mountpoint;
  assert.ok((await fs.readFile(path.join(mp, 'big'))).equals(big));
  assert.equal(await fs.readFile(path.join(mp, 'sub/deep/hard3'), 'utf8'), 'hard');
  const st = await fs.lstat(path.join(mp, 'inline'), { bigint: true });
  assert.equal(st.mtimeNs, 1600000000_123456789n);
  assert.equal((await fs.stat(path.join(mp, 'hard1'))).ino, (await fs.stat(path.join(mp, 'sub/hard2'))).ino);
  // getfattr asks for the size first (size 0), then the value; listing likewise.
  const { stdout } = await execFileP('getfattr', ['--absolute-names', '-n', 'user.color', '--only-values', path.join(mp, 'inline')]);
  assert.equal(stdout, 'blue');
  await assert.rejects(execFileP('getfattr', ['-n', 'user.nope', path.join(mp, 'inline')]), /No such attribute/);
  // Name lookups of absent entries are cached negatively: asking twice answers the same.
  for (let i = 0; i < 2; i++) await assert.rejects(fs.lstat(path.join(mp, 'sub/nope')), { code: 'ENOENT' });
  const { stdout: ls } = await execFileP('ls', ['-lR', mp]);
  assert.match(ls, /^lrwxrwxrwx 1 root +root +6 .* link -> inline$/m);
});

test('fuse-ll: passthrough (CFS_FUSE_PASSTHROUGH=1) serves the same contents and errors', { skip: SKIP }, async () => {
  const old = process.env.CFS_FUSE_PASSTHROUGH;
  process.env.CFS_FUSE_PASSTHROUGH = '1';
  let h: FuseHandle;
  try {
    h = await mountTree((await buildTree()).root, 'passthrough');
  } finally {
    if (old === undefined) delete process.env.CFS_FUSE_PASSTHROUGH;
    else process.env.CFS_FUSE_PASSTHROUGH = old;
  }
  const mp = h.mountpoint;
  assert.ok((await fs.readFile(path.join(mp, 'big'))).equals(big));
  const fh = await fs.open(path.join(mp, 'big'), 'r');
  try {
    const buf = Buffer.alloc(100_000);
    const { bytesRead } = await fh.read(buf, 0, buf.length, 1_234_567);
    assert.equal(bytesRead, buf.length);
    assert.ok(buf.equals(big.subarray(1_234_567, 1_334_567)));
  } finally {
    await fh.close();
  }
  assert.equal(await fs.readFile(path.join(mp, 'ext'), 'utf8'), 'external but small\n');
  assert.equal(await fs.readFile(path.join(mp, 'inline'), 'utf8'), 'inline data');
  await assert.rejects(fs.open(path.join(mp, 'missing'), 'r'), { code: 'EIO' });
});
