import assert from 'node:assert/strict';
import { test } from 'node:test';
import { S_IFDIR, S_IFLNK, S_IFREG, newInode, type Inode } from '../src/tree/inode.js';
import { ociTransform } from '../src/tree/oci-transform.js';

const CAP = Buffer.from([1, 0, 0, 2, 0x20, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0]);

function xattrs(): Map<string, Buffer> {
  return new Map([
    ['security.capability', CAP],
    ['security.selinux', Buffer.from('system_u:object_r:bin_t:s0\0')],
    ['user.note', Buffer.from('n')],
    ['trusted.overlay.opaque', Buffer.from('y')],
  ]);
}

function sample(): Inode {
  const file = newInode(S_IFREG | 0o755, { xattrs: xattrs(), nlink: 2 });
  const usr = newInode(S_IFDIR | 0o711, {
    uid: 4,
    gid: 5,
    mtimeSec: 1234,
    mtimeNsec: 567,
    xattrs: xattrs(),
    children: new Map([
      ['bin', file],
      ['link', file],
    ]),
  });
  const run = newInode(S_IFDIR | 0o755, { mtimeSec: 1, mtimeNsec: 2, uid: 9, children: new Map([['lock', newInode(S_IFDIR | 0o755)]]) });
  return newInode(S_IFDIR | 0o700, {
    uid: 1,
    mtimeSec: 999,
    xattrs: new Map([['user.root', Buffer.from('r')]]),
    children: new Map([
      ['usr', usr],
      ['run', run],
    ]),
  });
}

test('ociTransform: root takes /usr metadata; /run emptied with /usr mtime; allowlist xattrs', () => {
  const root = sample();
  ociTransform(root);
  const usr = root.children!.get('usr')!;
  assert.equal(root.mode, S_IFDIR | 0o711);
  assert.deepEqual([root.uid, root.gid, root.mtimeSec, root.mtimeNsec], [4, 5, 1234, 567]);
  assert.deepEqual([...root.xattrs.keys()], ['security.capability']);
  assert.notEqual(root.xattrs, usr.xattrs);
  const run = root.children!.get('run')!;
  assert.equal(run.children!.size, 0);
  assert.deepEqual([run.mtimeSec, run.mtimeNsec, run.uid, run.mode], [1234, 567, 9, S_IFDIR | 0o755]);
  for (const n of [usr, usr.children!.get('bin')!]) assert.deepEqual([...n.xattrs.entries()], [['security.capability', CAP]]);
});

test('ociTransform: keepUserXattrs keeps user.* too', () => {
  const root = sample();
  ociTransform(root, { keepUserXattrs: true });
  assert.deepEqual([...root.xattrs.keys()].sort(), ['security.capability', 'user.note']);
  assert.deepEqual([...root.children!.get('usr')!.children!.get('bin')!.xattrs.keys()].sort(), ['security.capability', 'user.note']);
});

test('ociTransform: without a /usr directory the root keeps its metadata and /run its mtime; /run not a directory', () => {
  const run = newInode(S_IFDIR | 0o700, { mtimeSec: 5, children: new Map([['x', newInode(S_IFREG | 0o644)]]) });
  const noUsr = newInode(S_IFDIR | 0o750, { uid: 7, mtimeSec: 9, children: new Map([['run', run]]) });
  ociTransform(noUsr);
  assert.deepEqual([noUsr.mode & 0o7777, noUsr.uid, noUsr.mtimeSec], [0o750, 7, 9]);
  assert.deepEqual([run.mtimeSec, run.children!.size], [5, 0]);
  const usrLink = newInode(S_IFDIR | 0o751, { children: new Map([['usr', newInode(S_IFLNK | 0o777, { payload: 'x' })]]) });
  ociTransform(usrLink);
  assert.equal(usrLink.mode & 0o7777, 0o751);
  const runLink = newInode(S_IFDIR | 0o755, {
    children: new Map([
      ['usr', newInode(S_IFDIR | 0o755)],
      ['run', newInode(S_IFLNK | 0o777, { payload: 'var/run' })],
    ]),
  });
  assert.throws(() => ociTransform(runLink), /\/run is not a directory/);
});

test('ociTransform: no /run is fine', () => {
  const root = newInode(S_IFDIR | 0o755, { children: new Map([['usr', newInode(S_IFDIR | 0o755, { mtimeSec: 7 })]]) });
  ociTransform(root);
  assert.equal(root.mtimeSec, 7);
  assert.equal(root.children!.size, 1);
});

test('ociTransform: emptying /run leaves it nlink 2 and takes the names it held off files also named elsewhere', () => {
  const shared = newInode(S_IFREG | 0o644, { nlink: 3 });
  const usr = newInode(S_IFDIR | 0o755, { nlink: 2, children: new Map([['a', shared]]) });
  const deep = newInode(S_IFDIR | 0o755, { nlink: 2, children: new Map([['c', shared]]) });
  const run = newInode(S_IFDIR | 0o755, { nlink: 3, children: new Map([['b', shared], ['d', deep]]) });
  const root = newInode(S_IFDIR | 0o755, { nlink: 4, children: new Map([['usr', usr], ['run', run]]) });
  ociTransform(root);
  assert.equal(run.nlink, 2);
  assert.equal(shared.nlink, 1);
});
