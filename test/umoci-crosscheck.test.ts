/**
 * Cross-check against a real tool: the tree `cfs oci dump` describes must equal what
 * `umoci unpack` extracts from the same layout (names, types, modes, owners, sizes, mtimes,
 * link targets, xattrs, content digests), up to the documented OCI transform (root metadata
 * from /usr, /run emptied, xattrs limited to security.capability).
 */
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { execFileSync, spawnSync } from 'node:child_process';
import { createHash } from 'node:crypto';
import { lstatSync, mkdtempSync, readdirSync, readFileSync, readlinkSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { buildOciLayout, type EntrySpec } from './helpers/oci-fixture.js';
import { cfsOk } from './helpers/cli.js';
import { parseDumpfile } from '../src/dumpfile/parse.js';
import { native } from '../src/native.js';
import { S_IFMT, S_IFREG, S_IFLNK, S_IFDIR, type Inode } from '../src/tree/inode.js';

const umoci = spawnSync('umoci', ['--version']).status === 0;
const skip = process.getuid?.() !== 0 ? 'umoci unpack with owners and devices needs root' : !umoci ? 'umoci is not installed' : false;

let work: string;
before(() => {
  work = mkdtempSync(path.join(tmpdir(), 'cfs-umoci-'));
});
after(() => rmSync(work, { recursive: true, force: true }));

const T = 1_650_000_000;
const layer1: EntrySpec[] = [
  { path: 'usr/', type: 'directory', mode: 0o755, mtime: T },
  { path: 'usr/bin/', type: 'directory', mode: 0o755, mtime: T },
  { path: 'usr/bin/prog', mode: 0o4755, content: Buffer.alloc(70_000, 7), mtime: T, mtimeNsec: 250_000_000 },
  { path: 'usr/bin/prog2', type: 'hardlink', linkname: 'usr/bin/prog', mtime: T },
  { path: 'usr/share/', type: 'directory', mode: 0o755, uid: 12, gid: 34, mtime: T },
  { path: 'usr/share/small.txt', mode: 0o640, uid: 1000, gid: 100, content: 'small file', mtime: T + 1 },
  { path: 'usr/share/empty', mode: 0o644, content: '', mtime: T },
  { path: 'usr/share/cap', mode: 0o755, content: 'z'.repeat(300), mtime: T, xattrs: { 'security.capability': Buffer.from('0100000200200000000000000000000000000000', 'hex') } },
  { path: 'usr/share/userx', mode: 0o644, content: 'u', mtime: T, xattrs: { 'user.keep': 'dropped by the OCI transform' } },
  { path: 'etc/', type: 'directory', mode: 0o755, mtime: T },
  { path: 'etc/rel', type: 'symlink', linkname: '../usr/share/small.txt', mtime: T },
  { path: 'etc/abs', type: 'symlink', linkname: '/usr/bin/prog', mtime: T },
  { path: 'etc/old', mode: 0o644, content: 'old', mtime: T },
  { path: 'var/', type: 'directory', mode: 0o755, mtime: T },
  { path: 'var/cache/', type: 'directory', mode: 0o755, mtime: T },
  { path: 'var/cache/a', mode: 0o644, content: 'a'.repeat(100), mtime: T },
  { path: 'dev/', type: 'directory', mode: 0o755, mtime: T },
  { path: 'dev/null', type: 'char', mode: 0o666, devmajor: 1, devminor: 3, mtime: T },
  { path: 'dev/sda', type: 'block', mode: 0o660, devmajor: 8, devminor: 0, mtime: T },
  { path: 'dev/fifo', type: 'fifo', mode: 0o600, mtime: T },
];
const layer2: EntrySpec[] = [
  { path: 'etc/', type: 'directory', mode: 0o755, mtime: T + 10 },
  { path: 'etc/.wh.old', mode: 0o644, content: '', mtime: T },
  { path: 'var/', type: 'directory', mode: 0o755, mtime: T + 10 },
  { path: 'var/cache/', type: 'directory', mode: 0o755, mtime: T + 10 },
  { path: 'var/cache/.wh..wh..opq', mode: 0o644, content: '', mtime: T },
  { path: 'var/cache/b', mode: 0o644, content: 'b'.repeat(100), mtime: T + 10 },
  { path: 'usr/share/small.txt', mode: 0o600, uid: 5, gid: 6, content: 'replaced in layer 2', mtime: T + 20 },
];

interface Meta {
  type: number;
  mode: number;
  uid: number;
  gid: number;
  size: number;
  mtime: string;
  link: string | null;
  rdev: number;
  xattrs: string;
  sha256: string | null;
}

function sha(b: Buffer): string {
  return createHash('sha256').update(b).digest('hex');
}

function fromDisk(root: string): Map<string, Meta> {
  const out = new Map<string, Meta>();
  const visit = (rel: string): void => {
    const p = path.join(root, rel);
    const st = lstatSync(p, { bigint: true });
    const type = Number(st.mode) & S_IFMT;
    const xattrs = native()
      .llistxattr(p)
      .filter((k) => k === 'security.capability')
      .map((k) => `${k}=${native().lgetxattr(p, k)!.toString('hex')}`)
      .join(',');
    if (rel !== '') {
      out.set(`/${rel}`, {
        type,
        mode: Number(st.mode) & 0o7777,
        uid: Number(st.uid),
        gid: Number(st.gid),
        size: type === S_IFREG || type === S_IFLNK ? Number(st.size) : 0,
        mtime: type === S_IFLNK ? '' : `${st.mtimeNs / 1_000_000_000n}.${st.mtimeNs % 1_000_000_000n}`,
        link: type === S_IFLNK ? readlinkSync(p) : null,
        rdev: type === 0o020000 || type === 0o060000 ? Number(st.rdev) : 0,
        xattrs,
        sha256: type === S_IFREG ? sha(readFileSync(p)) : null,
      });
    }
    if (type === S_IFDIR) for (const e of readdirSync(p)) visit(rel === '' ? e : `${rel}/${e}`);
  };
  visit('');
  return out;
}

function fromDump(dump: Buffer, objects: string): Map<string, Meta> {
  const root = parseDumpfile(dump, { strict: true });
  const out = new Map<string, Meta>();
  const visit = (node: Inode, p: string): void => {
    for (const [name, child] of node.children ?? new Map<string, Inode>()) {
      const full = `${p}/${Buffer.from(name, 'latin1').toString('utf8')}`;
      const type = child.mode & S_IFMT;
      let content: Buffer | null = null;
      if (type === S_IFREG) content = child.content ?? (child.payload ? readFileSync(path.join(objects, child.payload)) : Buffer.alloc(0));
      out.set(full, {
        type,
        mode: child.mode & 0o7777,
        uid: child.uid,
        gid: child.gid,
        size: type === S_IFREG || type === S_IFLNK ? child.size : 0,
        mtime: type === S_IFLNK ? '' : `${child.mtimeSec}.${child.mtimeNsec}`,
        link: type === S_IFLNK ? child.payload : null,
        rdev: child.rdev,
        xattrs: [...child.xattrs].map(([k, v]) => `${k}=${v.toString('hex')}`).join(','),
        sha256: content ? sha(content) : null,
      });
      if (type === S_IFDIR) visit(child, full);
    }
  };
  visit(root, '');
  return out;
}

test('cfs oci dump equals umoci unpack of the same layout', { skip }, async () => {
  const layout = await buildOciLayout(path.join(work, 'layout'), { images: [{ tag: 'x', platform: 'linux/amd64', layers: [layer1, layer2] }] });
  const bundle = path.join(work, 'bundle');
  execFileSync('umoci', ['unpack', '--image', `${layout.dir}:x`, bundle], { stdio: 'pipe' });
  const repo = path.join(work, 'repo');
  cfsOk(['--repo', repo, 'oci', 'pull', '-q', `oci:${layout.dir}:x`, 'x']);
  const dump = cfsOk(['--repo', repo, 'oci', 'dump', 'x']).stdoutBuf;

  const expected = fromDisk(path.join(bundle, 'rootfs'));
  const actual = fromDump(dump, path.join(repo, 'objects'));
  assert.deepEqual([...actual.keys()].sort(), [...expected.keys()].sort());
  for (const [p, e] of expected) assert.deepEqual(actual.get(p), e, p);
  // The two names of the hardlink share content; the whiteouts and the opaque dir took effect.
  assert.ok(!actual.has('/etc/old') && !actual.has('/var/cache/a') && actual.has('/var/cache/b'));
});
