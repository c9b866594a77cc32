/**
 * Merging OCI layer tars into one Inode tree, entry by entry in tar order (composefs-rs
 * `process_entry` semantics, except that missing parent directories are created implicitly):
 *
 * - path components `''` and `.` are dropped, `..` is rejected; no components = the root entry,
 *   which must be a directory and only replaces the root's stat;
 * - basename `.wh..wh..opq` empties the parent at that point (earlier entries of the same
 *   layer included); `.wh.NAME` removes NAME (file or subtree) if present; whiteouts are never
 *   inserted and never create parents;
 * - a directory over a directory replaces only the stat; anything else replaces the entry;
 * - a hardlink reuses the Inode of its target in the current merged tree (its own metadata is
 *   ignored); the target must exist and not be a directory.
 */
import { CfsError } from '../errors.js';
import type { TarEntry } from '../tar/entry.js';
import {
  S_IFBLK,
  S_IFCHR,
  S_IFDIR,
  S_IFIFO,
  S_IFLNK,
  S_IFREG,
  isDir,
  newInode,
  type ByteString,
  type Inode,
} from './inode.js';
import { objectRelPath } from '../repository/ids.js';

const WHITEOUT_PREFIX = '.wh.';
const OPAQUE = '.wh..wh..opq';

/** Metadata of directories created because an entry needed them: root:root 0755, mtime 0. */
function implicitDir(): Inode {
  return newInode(S_IFDIR | 0o755);
}

const TYPE_BITS: Readonly<Record<Exclude<TarEntry['type'], 'hardlink'>, number>> = {
  file: S_IFREG,
  directory: S_IFDIR,
  symlink: S_IFLNK,
  char: S_IFCHR,
  block: S_IFBLK,
  fifo: S_IFIFO,
};

export class TreeBuilder {
  private readonly root: Inode = implicitDir();

  async applyLayer(entries: AsyncIterable<TarEntry> | Iterable<TarEntry>, layerName: string): Promise<void> {
    for await (const e of entries) this.applyEntry(e, layerName);
  }

  applyEntry(e: TarEntry, layer: string): void {
    const parts = components(e.path, layer);
    if (parts.length === 0) {
      this.applyRoot(e, layer);
      return;
    }
    const name = parts.pop()!;
    const parentParts = parts;
    if (name.startsWith(WHITEOUT_PREFIX)) {
      // Resolve a hardlinked whiteout's target first, as composefs-rs does (its errors win).
      if (e.type === 'hardlink') this.linkTarget(e, layer);
      const parent = this.findDir(parentParts);
      if (!parent) return;
      if (name === OPAQUE) parent.children!.clear();
      else parent.children!.delete(name.slice(WHITEOUT_PREFIX.length));
      return;
    }
    const inode = e.type === 'hardlink' ? this.linkTarget(e, layer) : leafOrDir(e, e.type, layer);
    const parent = this.makeParents(parentParts, e.path, layer);
    const existing = parent.get(name);
    if (existing && isDir(existing) && isDir(inode)) setStat(existing, inode);
    else parent.set(name, inode);
  }

  /** The merged tree, with nlink set from the references to each inode. */
  finish(): Inode {
    const refs = new Map<Inode, number>();
    const walk = (dir: Inode): void => {
      let subdirs = 0;
      for (const child of dir.children!.values()) {
        if (isDir(child)) {
          subdirs++;
          walk(child);
        } else {
          refs.set(child, (refs.get(child) ?? 0) + 1);
        }
      }
      dir.nlink = 2 + subdirs;
    };
    walk(this.root);
    for (const [inode, n] of refs) inode.nlink = n;
    return this.root;
  }

  private applyRoot(e: TarEntry, layer: string): void {
    if (e.type !== 'directory') throw new CfsError('EINVAL', `layer ${layer}: root entry "${e.path}" is not a directory`);
    setStat(this.root, leafOrDir(e, e.type, layer));
  }

  /** Walks existing directories; null when a component is missing or not a directory. */
  private findDir(parts: ByteString[]): Inode | null {
    let dir = this.root;
    for (const p of parts) {
      const next = dir.children!.get(p);
      if (!next || !isDir(next)) return null;
      dir = next;
    }
    return dir;
  }

  private makeParents(parts: ByteString[], path: ByteString, layer: string): Map<ByteString, Inode> {
    let dir = this.root;
    for (const p of parts) {
      let next = dir.children!.get(p);
      if (!next) {
        next = implicitDir();
        dir.children!.set(p, next);
      } else if (!isDir(next)) {
        throw new CfsError('EINVAL', `layer ${layer}: path ${show(path)}: parent component "${show(p)}" is not a directory`);
      }
      dir = next;
    }
    return dir.children!;
  }

  private linkTarget(e: TarEntry, layer: string): Inode {
    if (e.linkTarget === null) throw new CfsError('EINVAL', `layer ${layer}: hardlink ${show(e.path)} has no target`);
    const parts = components(e.linkTarget, layer);
    const what = `layer ${layer}: hardlink ${show(e.path)} -> ${show(e.linkTarget)}`;
    const parent = parts.length === 0 ? null : this.findDir(parts.slice(0, -1));
    const target = parts.length === 0 ? this.root : parent?.children!.get(parts[parts.length - 1]!);
    if (!target) throw new CfsError('ENOENT', `${what}: target does not exist`);
    if (isDir(target)) throw new CfsError('EINVAL', `${what}: target is a directory`);
    return target;
  }
}

/** Path components, `''` and `.` dropped; `..` rejected. */
function components(path: ByteString, layer: string): ByteString[] {
  const parts: ByteString[] = [];
  for (const p of path.split('/')) {
    if (p === '' || p === '.') continue;
    if (p === '..') throw new CfsError('EINVAL', `layer ${layer}: path ${show(path)} escapes the root`);
    parts.push(p);
  }
  return parts;
}

/** Paths are latin1 byte strings; show them as the UTF-8 the archive most likely meant. */
function show(p: ByteString): string {
  return Buffer.from(p, 'latin1').toString('utf8');
}

function leafOrDir(e: TarEntry, type: Exclude<TarEntry['type'], 'hardlink'>, layer: string): Inode {
  const inode = newInode(TYPE_BITS[type] | (e.mode & 0o7777), {
    uid: e.uid,
    gid: e.gid,
    mtimeSec: e.mtimeSec,
    mtimeNsec: e.mtimeNsec,
    xattrs: e.xattrs.size === 0 ? undefined : new Map(e.xattrs),
  });
  switch (type) {
    case 'file': {
      const c = e.content;
      if (!c) throw new CfsError('EINVAL', `layer ${layer}: file ${show(e.path)} has no content`);
      if (c.kind === 'inline') {
        inode.size = c.data.length;
        inode.content = c.data.length > 0 ? c.data : null;
      } else {
        inode.size = c.size;
        inode.payload = objectRelPath(c.id);
        inode.digest = c.id;
      }
      break;
    }
    case 'symlink':
      if (e.linkTarget === null || e.linkTarget === '') throw new CfsError('EINVAL', `layer ${layer}: symlink ${show(e.path)} has no target`);
      inode.payload = e.linkTarget;
      inode.size = e.linkTarget.length;
      break;
    case 'char':
    case 'block':
      inode.rdev = e.rdev;
      break;
    case 'directory':
    case 'fifo':
      break;
  }
  return inode;
}

/** Replaces a directory's stat (mode bits, owner, mtime, xattrs), keeping its entries. */
function setStat(dir: Inode, from: Inode): void {
  dir.mode = from.mode;
  dir.uid = from.uid;
  dir.gid = from.gid;
  dir.mtimeSec = from.mtimeSec;
  dir.mtimeNsec = from.mtimeNsec;
  dir.xattrs = from.xattrs;
}
