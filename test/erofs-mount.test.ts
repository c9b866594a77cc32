/**
 * Kernel check: an image written from a scanned directory mounts as EROFS and shows the same
 * names, modes, owners, sizes, symlink targets, user xattrs and inline contents (root only).
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import { chownSync, linkSync, lstatSync, mkdirSync, mkdtempSync, readdirSync, readFileSync, readlinkSync, rmSync, symlinkSync, utimesSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { native } from '../src/native.js';
import { scanDirectory } from '../src/tree/scan.js';
import { writeErofs } from '../src/erofs/writer.js';

const isRoot = process.getuid?.() === 0;

function makeTree(src: string): void {
  mkdirSync(path.join(src, 'd/e/f'), { recursive: true });
  for (const size of [0, 1, 64, 65, 5000, 100000]) writeFileSync(path.join(src, `f${size}`), Buffer.alloc(size, size % 251));
  symlinkSync('f1', path.join(src, 'short-link'));
  symlinkSync('t'.repeat(4000), path.join(src, 'long-link'));
  execFileSync('mkfifo', [path.join(src, 'fifo')]);
  execFileSync('mknod', [path.join(src, 'chr'), 'c', '1', '3']);
  execFileSync('mknod', [path.join(src, 'blk'), 'b', '8', '1']);
  linkSync(path.join(src, 'f65'), path.join(src, 'd/hardlink'));
  writeFileSync(path.join(src, 'n'.repeat(255)), 'long name');
  for (let i = 0; i < 600; i++) writeFileSync(path.join(src, 'd/e', `entry-${i}`), `${i}`);
  writeFileSync(path.join(src, 'd/e/f/owned'), 'x');
  chownSync(path.join(src, 'd/e/f/owned'), 1234, 70000);
  native().lsetxattr(path.join(src, 'f1'), 'user.one', Buffer.from('1'));
  native().lsetxattr(path.join(src, 'd'), 'user.big', Buffer.alloc(3000, 0x41));
  native().lsetxattr(path.join(src, 'f64'), 'user.empty', Buffer.alloc(0));
  utimesSync(path.join(src, 'f0'), 1000, 1000.5);
}

function userXattrs(p: string): Record<string, string> {
  const out: Record<string, string> = {};
  for (const k of native().llistxattr(p).filter((n) => n.startsWith('user.')).sort()) out[k] = native().lgetxattr(p, k)!.toString('hex');
  return out;
}

function compare(src: string, mnt: string, rel: string): number {
  const a = lstatSync(path.join(src, rel));
  const b = lstatSync(path.join(mnt, rel));
  const what = rel || '/';
  assert.equal(b.mode, a.mode, `mode ${what}`);
  assert.equal(b.uid, a.uid, `uid ${what}`);
  assert.equal(b.gid, a.gid, `gid ${what}`);
  assert.deepEqual(userXattrs(path.join(mnt, rel)), userXattrs(path.join(src, rel)), `xattrs ${what}`);
  if (a.isDirectory()) {
    const names = readdirSync(path.join(src, rel)).sort();
    let shown = readdirSync(path.join(mnt, rel)).sort();
    // The root carries the 256 whiteout stubs 00..ff (char 0/0).
    if (rel === '') shown = shown.filter((n) => !(/^[0-9a-f]{2}$/.test(n) && lstatSync(path.join(mnt, n)).isCharacterDevice()));
    assert.deepEqual(shown, names, `entries of ${what}`);
    let n = 1;
    for (const name of names) n += compare(src, mnt, path.join(rel, name));
    return n;
  }
  assert.equal(b.mtimeMs, a.mtimeMs, `mtime ${what}`);
  if (a.isSymbolicLink()) assert.equal(readlinkSync(path.join(mnt, rel)), readlinkSync(path.join(src, rel)));
  if (a.isFile()) {
    assert.equal(b.size, a.size, `size ${what}`);
    if (a.size <= 64) assert.deepEqual(readFileSync(path.join(mnt, rel)), readFileSync(path.join(src, rel)), `content ${what}`);
  }
  if (a.isCharacterDevice() || a.isBlockDevice()) assert.equal(b.rdev, a.rdev, `rdev ${what}`);
  return 1;
}

test('kernel EROFS mount of a scanned tree matches the source', { skip: isRoot ? false : 'needs root (mount)' }, async () => {
  const tmp = mkdtempSync(path.join(tmpdir(), 'cfs-mnt-'));
  const src = path.join(tmp, 'src');
  const mnt = path.join(tmp, 'mnt');
  mkdirSync(src);
  mkdirSync(mnt);
  let mounted = false;
  try {
    makeTree(src);
    const root = await scanDirectory(src);
    const hl = root.children!.get('f65')!;
    assert.equal(root.children!.get('d')!.children!.get('hardlink'), hl, 'hardlinks share one inode');
    assert.equal(hl.nlink, 2);
    const image = path.join(tmp, 'image');
    writeFileSync(image, writeErofs(root));
    execFileSync('fsck.erofs', [image], { stdio: 'pipe' });
    execFileSync('mount', ['-t', 'erofs', '-o', 'ro', image, mnt]);
    mounted = true;
    const n = compare(src, mnt, '');
    assert.ok(n > 600);
    assert.equal(lstatSync(path.join(mnt, 'd/hardlink')).ino, lstatSync(path.join(mnt, 'f65')).ino);
    assert.equal(lstatSync(path.join(mnt, 'f65')).nlink, 2);
  } finally {
    if (mounted) execFileSync('umount', [mnt]);
    rmSync(tmp, { recursive: true, force: true });
  }
});
