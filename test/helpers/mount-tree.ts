/**
 * End-to-end mount checks: an expected tree computed from OCI layer specs (the layer rules and
 * OCI transform of brief 4.3/4.4, written out independently of src/), a snapshot of a mounted
 * (or plain) directory, and a comparison that lists every difference.
 *
 * Run as a script (`node --import tsx mount-tree.ts DIR`) it prints the snapshot of DIR as
 * JSON, so another user can take it (FUSE mounts of a user are hidden from everyone else).
 */
import { createHash } from 'node:crypto';
import { lstatSync, readdirSync, readFileSync, readlinkSync } from 'node:fs';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { native } from '../../src/native.js';
import type { EntrySpec, EntryType } from './oci-fixture.js';

const DEFAULT_MTIME = 1700000000;

export interface ModelNode {
  type: Exclude<EntryType, 'hardlink'>;
  mode: number; // permission bits incl. setuid/setgid/sticky
  uid: number;
  gid: number;
  mtimeNs: bigint;
  xattrs: Map<string, Buffer>;
  content?: Buffer;
  target?: string;
  rdev?: number;
  children?: Map<string, ModelNode>;
}

const TYPE_BITS: Readonly<Record<ModelNode['type'], number>> = {
  file: 0o100000,
  directory: 0o040000,
  symlink: 0o120000,
  char: 0o020000,
  block: 0o060000,
  fifo: 0o010000,
};

function specType(e: EntrySpec): EntryType {
  return e.type ?? (e.path.endsWith('/') ? 'directory' : 'file');
}

function statOf(e: EntrySpec, type: ModelNode['type']): Omit<ModelNode, 'type' | 'children'> {
  const xattrs = new Map<string, Buffer>();
  for (const [k, v] of Object.entries(e.xattrs ?? {})) xattrs.set(k, typeof v === 'string' ? Buffer.from(v) : v);
  return {
    mode: e.mode ?? (type === 'directory' ? 0o755 : type === 'symlink' ? 0o777 : 0o644),
    uid: e.uid ?? 0,
    gid: e.gid ?? 0,
    mtimeNs: BigInt(e.mtime ?? DEFAULT_MTIME) * 1_000_000_000n + BigInt(e.mtimeNsec ?? 0),
    xattrs,
  };
}

function components(p: string): string[] {
  return p.split('/').filter((c) => c !== '' && c !== '.');
}

function lookupDir(root: ModelNode, parts: string[]): ModelNode {
  let cur = root;
  for (const c of parts) {
    const next = cur.children?.get(c);
    if (!next || next.type !== 'directory') throw new Error(`model: no directory ${parts.join('/')}`);
    cur = next;
  }
  return cur;
}

/**
 * The merged tree of the layers: entries in tar order, `.wh.NAME` removes NAME, `.wh..wh..opq`
 * empties the parent at that point, a directory over a directory only replaces the stat,
 * anything else replaces the entry, a hardlink shares its target's node. Then the OCI
 * transform: `/` takes `/usr`'s stat, `/run` is emptied and gets `/usr`'s mtime, and only
 * `security.capability` xattrs remain.
 */
export function expectedTree(layers: EntrySpec[][]): ModelNode {
  const root: ModelNode = { type: 'directory', mode: 0o755, uid: 0, gid: 0, mtimeNs: 0n, xattrs: new Map(), children: new Map() };
  for (const layer of layers) {
    for (const e of layer) {
      const parts = components(e.path);
      const base = parts.pop()!;
      const parent = lookupDir(root, parts);
      const kids = parent.children!;
      if (base === '.wh..wh..opq') kids.clear();
      else if (base.startsWith('.wh.')) kids.delete(base.slice(4));
      else {
        const type = specType(e);
        if (type === 'hardlink') {
          const tparts = components(e.linkname!);
          const tname = tparts.pop()!;
          const target = lookupDir(root, tparts).children!.get(tname);
          if (!target || target.type === 'directory') throw new Error(`model: bad hardlink target ${e.linkname}`);
          kids.set(base, target);
        } else if (type === 'directory') {
          const old = kids.get(base);
          const st = statOf(e, type);
          if (old?.type === 'directory') Object.assign(old, st);
          else kids.set(base, { type, ...st, children: new Map() });
        } else {
          const node: ModelNode = { type, ...statOf(e, type) };
          if (type === 'file') node.content = typeof e.content === 'string' ? Buffer.from(e.content) : (e.content ?? Buffer.alloc(0));
          if (type === 'symlink') node.target = e.linkname;
          if (type === 'char' || type === 'block') node.rdev = ((e.devmajor ?? 0) << 8) | (e.devminor ?? 0);
          kids.set(base, node);
        }
      }
    }
  }
  const usr = root.children!.get('usr');
  if (usr?.type !== 'directory') throw new Error('model: no /usr');
  Object.assign(root, { mode: usr.mode, uid: usr.uid, gid: usr.gid, mtimeNs: usr.mtimeNs, xattrs: new Map(usr.xattrs) });
  const run = root.children!.get('run');
  if (run?.type === 'directory') {
    run.mtimeNs = usr.mtimeNs;
    run.children!.clear();
  }
  const seen = new Set<ModelNode>();
  const filter = (n: ModelNode): void => {
    if (seen.has(n)) return;
    seen.add(n);
    for (const k of [...n.xattrs.keys()]) if (k !== 'security.capability') n.xattrs.delete(k);
    for (const c of n.children?.values() ?? []) filter(c);
  };
  filter(root);
  return root;
}

/** Path ('/', '/a', '/a/b') → node, parents before children. */
export function flatten(root: ModelNode): Map<string, ModelNode> {
  const out = new Map<string, ModelNode>([['/', root]]);
  const walk = (dir: ModelNode, prefix: string): void => {
    for (const [name, n] of [...dir.children!].sort(([a], [b]) => (a < b ? -1 : a > b ? 1 : 0))) {
      const p = `${prefix}/${name}`;
      out.set(p, n);
      if (n.type === 'directory') walk(n, p);
    }
  };
  walk(root, '');
  return out;
}

export interface SnapEntry {
  mode: number;
  uid: number;
  gid: number;
  size: number;
  nlink: number;
  ino: string;
  mtimeNs: string;
  rdev: number;
  target?: string;
  xattrs: Record<string, string>;
  sha256?: string;
  /** errno code of reading the file or listing the directory. */
  error?: string;
}

function errCode(e: unknown): string {
  return (e as { code?: string }).code ?? String(e);
}

function xattrsOf(p: string): Record<string, string> {
  const out: Record<string, string> = {};
  for (const name of native().llistxattr(p).sort()) {
    const v = native().lgetxattr(p, name);
    if (v) out[name] = v.toString('hex');
  }
  return out;
}

/** Every entry under dir: stat, link target, xattrs, sha256 of regular files (or the read error). */
export function snapshotTree(dir: string): Record<string, SnapEntry> {
  const out: Record<string, SnapEntry> = {};
  const visit = (abs: string, rel: string): void => {
    const st = lstatSync(abs, { bigint: true });
    const e: SnapEntry = {
      mode: Number(st.mode),
      uid: Number(st.uid),
      gid: Number(st.gid),
      size: Number(st.size),
      nlink: Number(st.nlink),
      ino: String(st.ino),
      mtimeNs: String(st.mtimeNs),
      rdev: Number(st.rdev),
      xattrs: xattrsOf(abs),
    };
    out[rel] = e;
    if (st.isSymbolicLink()) e.target = readlinkSync(abs, 'utf8');
    else if (st.isFile()) {
      try {
        e.sha256 = createHash('sha256').update(readFileSync(abs)).digest('hex');
      } catch (err) {
        e.error = errCode(err);
      }
    } else if (st.isDirectory()) {
      let names: string[];
      try {
        names = readdirSync(abs).sort();
      } catch (err) {
        e.error = errCode(err);
        return;
      }
      for (const n of names) visit(path.join(abs, n), rel === '/' ? `/${n}` : `${rel}/${n}`);
    }
  };
  visit(dir, '/');
  return out;
}

export interface CompareOptions {
  /** The snapshot was taken by this unprivileged user: what it may not see or read is expected to be missing/EACCES. */
  asUser?: { uid: number; gid: number };
  /** Paths whose reading is expected to fail with this code. */
  readErrors?: Record<string, string>;
}

function permits(n: ModelNode, bits: number, user: { uid: number; gid: number } | undefined): boolean {
  if (!user) return true;
  const shift = user.uid === n.uid ? 6 : user.gid === n.gid ? 3 : 0;
  return ((n.mode >> shift) & bits) === bits;
}

/** Differences between the expected tree and a snapshot, one line each (empty: equal). */
export function compareTree(root: ModelNode, snap: Record<string, SnapEntry>, opts: CompareOptions = {}): string[] {
  const problems: string[] = [];
  const expected = flatten(root);
  const visible = new Set<string>();
  for (const [p, n] of expected) {
    const parent = p === '/' ? null : (path.posix.dirname(p) as string);
    if (parent !== null && (!visible.has(parent) || !permits(expected.get(parent)!, 0o5, opts.asUser))) continue;
    visible.add(p);
    const s = snap[p];
    if (!s) {
      problems.push(`${p}: missing`);
      continue;
    }
    const want = (what: string, actual: unknown, exp: unknown): void => {
      if (actual !== exp) problems.push(`${p}: ${what} ${String(actual)}, expected ${String(exp)}`);
    };
    want('mode', s.mode.toString(8), (TYPE_BITS[n.type] | n.mode).toString(8));
    want('uid', s.uid, n.uid);
    want('gid', s.gid, n.gid);
    want('mtime', s.mtimeNs, String(n.mtimeNs));
    const xattrs = Object.fromEntries([...n.xattrs].map(([k, v]) => [k, v.toString('hex')]));
    want('xattrs', JSON.stringify(s.xattrs), JSON.stringify(xattrs));
    if (n.type === 'file') {
      want('size', s.size, n.content!.length);
      const readErr = opts.readErrors?.[p] ?? (permits(n, 0o4, opts.asUser) ? undefined : 'EACCES');
      if (readErr) want('read', s.error, readErr);
      else want('content sha256', s.error ?? s.sha256, createHash('sha256').update(n.content!).digest('hex'));
    } else if (n.type === 'symlink') {
      want('target', s.target, n.target);
      want('size', s.size, Buffer.byteLength(n.target!));
    } else if (n.type === 'char' || n.type === 'block') {
      want('rdev', s.rdev, n.rdev);
    } else if (n.type === 'directory') {
      if (!permits(n, 0o5, opts.asUser)) want('listing', s.error, 'EACCES');
      else want('listing error', s.error, undefined);
    }
  }
  for (const p of Object.keys(snap)) if (!expected.has(p)) problems.push(`${p}: unexpected entry`);
  // Hardlinks: paths of one node share one inode and count it in nlink; other nodes have others.
  const inoOf = new Map<ModelNode, string>();
  const owner = new Map<string, ModelNode>();
  const refs = new Map<ModelNode, number>();
  for (const n of expected.values()) refs.set(n, (refs.get(n) ?? 0) + 1);
  for (const [p, n] of expected) {
    const s = snap[p];
    if (!s || !visible.has(p)) continue;
    const ino = inoOf.get(n);
    if (ino === undefined) inoOf.set(n, s.ino);
    else if (ino !== s.ino) problems.push(`${p}: inode ${s.ino}, expected ${ino} (hardlink)`);
    const other = owner.get(s.ino);
    if (other && other !== n) problems.push(`${p}: inode ${s.ino} shared with an unrelated entry`);
    owner.set(s.ino, n);
    if (n.type !== 'directory' && s.nlink !== refs.get(n)) problems.push(`${p}: nlink ${s.nlink}, expected ${refs.get(n)}`);
  }
  return problems;
}

if (process.argv[1] && path.resolve(process.argv[1]) === fileURLToPath(import.meta.url)) {
  process.stdout.write(JSON.stringify(snapshotTree(process.argv[2]!)));
}
