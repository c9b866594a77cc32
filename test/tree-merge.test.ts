import assert from 'node:assert/strict';
import { test } from 'node:test';
import { isCfsError, type CfsErrorCode } from '../src/errors.js';
import type { TarEntry, TarEntryType } from '../src/tar/entry.js';
import { S_IFCHR, S_IFDIR, S_IFLNK, S_IFREG, isDir, type Inode } from '../src/tree/inode.js';
import { objectRelPath } from '../src/repository/ids.js';
import { TreeBuilder } from '../src/tree/merge.js';

type Spec = Partial<Omit<TarEntry, 'path' | 'content'>> & { path: string; data?: string; external?: { id: Buffer; size: number } };

function entry(s: Spec): TarEntry {
  const type: TarEntryType = s.type ?? (s.path.endsWith('/') ? 'directory' : 'file');
  let content: TarEntry['content'] = null;
  if (type === 'file') content = s.external ? { kind: 'external', ...s.external } : { kind: 'inline', data: Buffer.from(s.data ?? '') };
  return {
    path: s.path,
    type,
    mode: s.mode ?? (type === 'directory' ? 0o755 : 0o644),
    uid: s.uid ?? 0,
    gid: s.gid ?? 0,
    mtimeSec: s.mtimeSec ?? 1000,
    mtimeNsec: s.mtimeNsec ?? 0,
    linkTarget: s.linkTarget ?? null,
    rdev: s.rdev ?? 0,
    size: content?.kind === 'external' ? content.size : (content?.data.length ?? 0),
    xattrs: s.xattrs ?? new Map(),
    content,
  };
}

async function* gen(specs: Spec[]): AsyncGenerator<TarEntry> {
  for (const s of specs) yield entry(s);
}

async function build(...layers: Spec[][]): Promise<Inode> {
  const b = new TreeBuilder();
  for (const [i, l] of layers.entries()) await b.applyLayer(gen(l), `L${i}`);
  return b.finish();
}

function get(root: Inode, path: string): Inode | undefined {
  let n: Inode | undefined = root;
  for (const p of path.split('/').filter(Boolean)) n = n?.children?.get(p);
  return n;
}

/** Sorted `path type` listing of the tree. */
function list(root: Inode, prefix = ''): string[] {
  const out: string[] = [];
  for (const [name, n] of [...root.children!].sort(([a], [b]) => (a < b ? -1 : 1))) {
    const p = `${prefix}/${name}`;
    out.push(isDir(n) ? `${p}/` : p);
    if (isDir(n)) out.push(...list(n, p));
  }
  return out;
}

async function rejects(p: Promise<unknown>, code: CfsErrorCode, msg: RegExp): Promise<void> {
  await assert.rejects(p, (e) => {
    assert.ok(isCfsError(e), String(e));
    assert.equal(e.code, code, e.message);
    assert.match(e.message, msg);
    return true;
  });
}

test('merge: entry types become inodes; external content points at the object', async () => {
  const id = Buffer.alloc(32, 0xab);
  const root = await build([
    { path: './etc/', mode: 0o750, uid: 3, gid: 4, mtimeSec: 77, mtimeNsec: 5, xattrs: new Map([['user.x', Buffer.from('1')]]) },
    { path: './etc/small', data: 'hi', mode: 0o600 },
    { path: './etc/empty', data: '' },
    { path: './etc/big', external: { id, size: 100000 } },
    { path: 'etc/link', type: 'symlink', linkTarget: '../usr/lib' },
    { path: '/dev/', type: 'directory' },
    { path: '/dev/null', type: 'char', rdev: 0x103, mode: 0o666 },
    { path: 'dev/fifo', type: 'fifo' },
  ]);
  const etc = get(root, 'etc')!;
  assert.equal(etc.mode, S_IFDIR | 0o750);
  assert.deepEqual([etc.uid, etc.gid, etc.mtimeSec, etc.mtimeNsec], [3, 4, 77, 5]);
  assert.deepEqual(etc.xattrs.get('user.x'), Buffer.from('1'));
  const small = get(root, 'etc/small')!;
  assert.equal(small.mode, S_IFREG | 0o600);
  assert.deepEqual(small.content, Buffer.from('hi'));
  assert.equal(small.size, 2);
  assert.equal(small.payload, null);
  const empty = get(root, 'etc/empty')!;
  assert.equal(empty.content, null);
  assert.equal(empty.size, 0);
  const big = get(root, 'etc/big')!;
  assert.equal(big.payload, objectRelPath(id));
  assert.equal(big.digest, id);
  assert.equal(big.size, 100000);
  assert.equal(big.content, null);
  const link = get(root, 'etc/link')!;
  assert.equal(link.mode, S_IFLNK | 0o644);
  assert.equal(link.payload, '../usr/lib');
  assert.equal(link.size, 10);
  assert.equal(get(root, 'dev/null')!.mode, S_IFCHR | 0o666);
  assert.equal(get(root, 'dev/null')!.rdev, 0x103);
  assert.equal(get(root, 'dev/fifo')!.mode & 0o170000, 0o010000);
  assert.equal(etc.nlink, 2);
  assert.equal(root.nlink, 4);
});

test('merge: whiteouts remove files and subtrees of lower layers; never inserted', async () => {
  const root = await build(
    [{ path: 'a/' }, { path: 'a/f', data: '1' }, { path: 'a/sub/' }, { path: 'a/sub/g', data: '2' }, { path: 'b', data: '3' }],
    [{ path: 'a/.wh.sub' }, { path: '.wh.b' }, { path: '.wh.missing' }, { path: 'a/.wh.' }, { path: 'nodir/.wh.x' }],
  );
  assert.deepEqual(list(root), ['/a/', '/a/f']);
});

test('merge: .wh..wh. whites out ".wh." and is not an opaque marker', async () => {
  const root = await build([{ path: 'd/' }, { path: 'd/keep', data: '' }], [{ path: 'd/.wh..wh.' }]);
  assert.deepEqual(list(root), ['/d/', '/d/keep']);
});

test('merge: opaque marker clears the directory at its position, incl. earlier entries of the same layer', async () => {
  const root = await build(
    [{ path: 'd/', mtimeSec: 1 }, { path: 'd/lower', data: '' }, { path: 'd/sub/' }, { path: 'd/sub/x', data: '' }],
    [
      { path: 'd/', mtimeSec: 2 },
      { path: 'd/before', data: '' },
      { path: 'd/.wh..wh..opq' },
      { path: 'd/after', data: '' },
      { path: 'other/', type: 'directory' },
    ],
  );
  assert.deepEqual(list(root), ['/d/', '/d/after', '/other/']);
  assert.equal(get(root, 'd')!.mtimeSec, 2);
});

test('merge: later layers override; dir over dir keeps children and takes the new stat', async () => {
  const root = await build(
    [{ path: 'd/', mode: 0o700, uid: 1, xattrs: new Map([['user.old', Buffer.from('o')]]) }, { path: 'd/f', data: 'old' }],
    [{ path: 'd/', mode: 0o755, uid: 2, mtimeNsec: 9 }, { path: 'd/f', data: 'new' }, { path: 'd/g', data: 'g' }],
  );
  const d = get(root, 'd')!;
  assert.equal(d.mode, S_IFDIR | 0o755);
  assert.equal(d.uid, 2);
  assert.equal(d.mtimeNsec, 9);
  assert.equal(d.xattrs.size, 0);
  assert.deepEqual(list(root), ['/d/', '/d/f', '/d/g']);
  assert.deepEqual(get(root, 'd/f')!.content, Buffer.from('new'));
});

test('merge: file over directory drops the subtree; directory over file replaces it', async () => {
  const root = await build(
    [{ path: 'x/' }, { path: 'x/deep/' }, { path: 'x/deep/f', data: '' }, { path: 'y', data: 'file' }],
    [{ path: 'x', data: 'now a file' }, { path: 'y/' }, { path: 'y/child', data: '' }],
  );
  assert.deepEqual(list(root), ['/x', '/y/', '/y/child']);
  assert.equal(get(root, 'x')!.mode & 0o170000, S_IFREG);
});

test('merge: hardlinks share one inode, across layers; their own metadata is ignored', async () => {
  const root = await build(
    [{ path: 'bin/' }, { path: 'bin/a', data: 'A', mode: 0o755, uid: 7 }],
    [{ path: 'bin/b', type: 'hardlink', linkTarget: 'bin/a', mode: 0o600, uid: 9 }, { path: 'lib/c', type: 'hardlink', linkTarget: './bin/a' }],
  );
  const a = get(root, 'bin/a')!;
  assert.equal(get(root, 'bin/b'), a);
  assert.equal(get(root, 'lib/c'), a);
  assert.equal(a.nlink, 3);
  assert.equal(a.mode, S_IFREG | 0o755);
  assert.equal(a.uid, 7);
});

test('merge: a link keeps the old inode when its target is replaced or whited out', async () => {
  const root = await build(
    [{ path: 'a', data: 'old' }, { path: 'b', type: 'hardlink', linkTarget: 'a' }, { path: 'c', type: 'hardlink', linkTarget: 'a' }],
    [{ path: 'a', data: 'new' }, { path: '.wh.c' }],
  );
  assert.deepEqual(get(root, 'a')!.content, Buffer.from('new'));
  assert.deepEqual(get(root, 'b')!.content, Buffer.from('old'));
  assert.equal(get(root, 'a')!.nlink, 1);
  assert.equal(get(root, 'b')!.nlink, 1);
});

test('merge: hardlink to a missing target or a directory fails naming layer and path', async () => {
  await rejects(build([{ path: 'l', type: 'hardlink', linkTarget: 'nope' }]), 'ENOENT', /^layer L0: hardlink l -> nope: target does not exist/);
  await rejects(build([{ path: 'd/' }], [{ path: 'l', type: 'hardlink', linkTarget: 'd' }]), 'EINVAL', /^layer L1: hardlink l -> d: target is a directory/);
  await rejects(build([{ path: 'l', type: 'hardlink', linkTarget: '../etc/passwd' }]), 'EINVAL', /^layer L0: path \.\.\/etc\/passwd escapes the root/);
});

test('merge: missing parents are created root:root 0755 mtime 0 without xattrs', async () => {
  const root = await build([{ path: 'a/b/c/file', data: 'x', mtimeSec: 99 }], [{ path: 'a/b/', mode: 0o700, mtimeSec: 5 }]);
  const a = get(root, 'a')!;
  assert.equal(a.mode, S_IFDIR | 0o755);
  assert.deepEqual([a.uid, a.gid, a.mtimeSec, a.mtimeNsec, a.xattrs.size], [0, 0, 0, 0, 0]);
  assert.equal(get(root, 'a/b')!.mode, S_IFDIR | 0o700);
  assert.equal(get(root, 'a/b')!.mtimeSec, 5);
  assert.equal(get(root, 'a/b/c')!.mtimeSec, 0);
  assert.deepEqual(list(root), ['/a/', '/a/b/', '/a/b/c/', '/a/b/c/file']);
});

test('merge: path traversal and non-directory parents are rejected', async () => {
  await rejects(build([{ path: '../evil', data: '' }]), 'EINVAL', /^layer L0: path \.\.\/evil escapes the root$/);
  await rejects(build([{ path: 'a/../../evil', data: '' }]), 'EINVAL', /escapes the root/);
  await rejects(build([{ path: '/../x/' }]), 'EINVAL', /escapes the root/);
  await rejects(build([{ path: 'f', data: '' }, { path: 'f/x', data: '' }]), 'EINVAL', /^layer L0: path f\/x: parent component "f" is not a directory/);
});

test('merge: root entries replace only the root stat; a non-directory root fails', async () => {
  const root = await build([{ path: 'x', data: '' }, { path: './', mode: 0o700, uid: 5, mtimeSec: 3 }], [{ path: '/', mode: 0o711 }, { path: '.', type: 'directory', mode: 0o555 }]);
  assert.equal(root.mode, S_IFDIR | 0o555);
  assert.deepEqual(list(root), ['/x']);
  await rejects(build([{ path: './', type: 'symlink', linkTarget: 'x' }]), 'EINVAL', /^layer L0: root entry "\.\/" is not a directory/);
});

test('merge: default root is root:root 0755 mtime 0', async () => {
  const root = await build([]);
  assert.equal(root.mode, S_IFDIR | 0o755);
  assert.deepEqual([root.uid, root.gid, root.mtimeSec, root.nlink], [0, 0, 0, 2]);
});

test('merge: a char device 0/0 is not a whiteout', async () => {
  const root = await build([{ path: 'f', data: '' }], [{ path: 'f', type: 'char', rdev: 0 }]);
  assert.equal(get(root, 'f')!.mode & 0o170000, S_IFCHR);
});
