/**
 * The served tree as flat tables keyed by FUSE node id (= st_ino): node id 1 (FUSE_ROOT_ID) is the root, then
 * the order of a depth-first walk over byte-sorted names (the numbering of the fuse-native
 * server, so st_ino does not change between the two); a hardlinked Inode object keeps its
 * first number. Overlay whiteouts (char device 0:0) are hidden, as C composefs-fuse hides
 * them (the kernel mount shows them as overlay xwhiteouts). Every fuse_attr is encoded once, up
 * front: a request copies 88 bytes.
 */
import { S_IFMT, isDir, isSymlink, isWhiteout, sortedEntries, type Inode } from '../../tree/inode.js';
import { Attr, Size, writeU64 } from './protocol.js';

const BLOCK_SIZE = 4096;
/** FUSE_ROOT_ID. */
const FUSE_ROOT = 1;

/** One visible directory entry. */
export interface DirEntry {
  /** Name bytes as the kernel sees them (names may be any bytes, not only UTF-8). */
  name: Buffer;
  ino: number;
  /** DT_* type for the dirent (mode >> 12). */
  type: number;
}

export class NodeTable {
  /** Node id → Inode; index 0 unused. */
  readonly nodes: Inode[] = [];
  /** Node id → encoded fuse_attr at id * Size.ATTR. */
  readonly attrs: Buffer;
  /** Directory node id → its entries, starting with "." and "..", in byte order of names. */
  private readonly listings = new Map<number, DirEntry[]>();
  private readonly ids = new Map<Inode, number>();

  constructor(root: Inode) {
    const parents = new Map<Inode, number>();
    const order: Inode[] = [];
    const stack: Inode[] = [root];
    this.nodes.push(root); // placeholder for index 0
    while (stack.length > 0) {
      const n = stack.pop()!;
      if (this.ids.has(n)) continue; // a hardlink seen before
      const id = this.nodes.length;
      this.ids.set(n, id);
      this.nodes.push(n);
      order.push(n);
      if (!isDir(n)) continue;
      const visible = sortedEntries(n).filter(([, child]) => !isWhiteout(child));
      for (const [, child] of visible) if (isDir(child) && !parents.has(child)) parents.set(child, id);
      // Reverse push so the walk visits children in byte order (preorder numbering).
      for (let i = visible.length - 1; i >= 0; i--) stack.push(visible[i][1]);
    }
    this.attrs = Buffer.alloc((this.nodes.length) * Size.ATTR);
    for (const n of order) {
      const id = this.ids.get(n)!;
      if (isDir(n)) {
        const entries: DirEntry[] = [
          { name: Buffer.from('.'), ino: id, type: 4 },
          { name: Buffer.from('..'), ino: parents.get(n) ?? id, type: 4 },
        ];
        let subdirs = 0;
        for (const [name, child] of sortedEntries(n)) {
          if (isWhiteout(child)) continue;
          if (isDir(child)) subdirs++;
          entries.push({ name: Buffer.from(name, 'latin1'), ino: this.ids.get(child)!, type: (child.mode & S_IFMT) >>> 12 });
        }
        this.listings.set(id, entries);
        this.encodeAttr(id, n, 2 + subdirs);
      } else {
        this.encodeAttr(id, n, n.nlink);
      }
    }
  }

  get count(): number {
    return this.nodes.length - 1;
  }

  /** Node id of an Inode in this tree, or undefined if hidden or absent. */
  idOf(n: Inode): number | undefined {
    return this.ids.get(n);
  }

  /** Entries of a directory node ("." and ".." first), or undefined if not a directory. */
  listing(id: number): DirEntry[] | undefined {
    return this.listings.get(id);
  }

  /**
   * A path of node `id` inside the mount, for messages (found by a walk: only errors ask).
   * Names are shown as UTF-8 (invalid bytes as U+FFFD).
   */
  pathOf(id: number): string {
    const queue: Array<[number, string]> = [[FUSE_ROOT, '']];
    for (let i = 0; i < queue.length; i++) {
      const [dir, prefix] = queue[i];
      if (dir === id) return prefix || '/';
      for (const e of this.listings.get(dir)!.slice(2)) {
        const p = `${prefix}/${e.name.toString('utf8')}`;
        if (e.ino === id) return p;
        if (this.listings.has(e.ino)) queue.push([e.ino, p]);
      }
    }
    return `inode ${id}`;
  }

  private encodeAttr(id: number, n: Inode, nlink: number): void {
    const b = this.attrs;
    const o = id * Size.ATTR;
    // Directories: their size in the image, as the kernel's EROFS mount shows it.
    const size = isSymlink(n) ? Buffer.byteLength(n.payload ?? '', 'latin1') : n.size;
    writeU64(b, id, o + Attr.ino);
    writeU64(b, size, o + Attr.size);
    // 512-byte units of whole 4 KiB blocks, as EROFS (and ext4 under the kernel mount's objects) count them.
    writeU64(b, Math.ceil(size / BLOCK_SIZE) * (BLOCK_SIZE / 512), o + Attr.blocks);
    for (const [sec, nsec] of [[Attr.atime, Attr.atimensec], [Attr.mtime, Attr.mtimensec], [Attr.ctime, Attr.ctimensec]]) {
      writeU64(b, n.mtimeSec, o + sec);
      b.writeUInt32LE(n.mtimeNsec, o + nsec);
    }
    b.writeUInt32LE(n.mode, o + Attr.mode);
    b.writeUInt32LE(nlink >>> 0, o + Attr.nlink);
    b.writeUInt32LE(n.uid >>> 0, o + Attr.uid);
    b.writeUInt32LE(n.gid >>> 0, o + Attr.gid);
    b.writeUInt32LE(n.rdev >>> 0, o + Attr.rdev);
    b.writeUInt32LE(BLOCK_SIZE, o + Attr.blksize);
  }
}
