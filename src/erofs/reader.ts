/**
 * composefs EROFS image reader: the reverse mapping C `composefs-info` applies (brief 8.2).
 * Real whiteouts (chardev 0/0, incl. the 256 root stubs) are dropped, overlay xattrs written by
 * the writer are turned back into payload/digest/whiteouts, escaped ones are unescaped.
 *
 * Every offset is bounds-checked; anything malformed is a CfsError('ECORRUPT'). Directories are
 * walked iteratively and a directory reached twice (cycle, directory hardlink) is rejected.
 */
import { CfsError } from '../errors.js';
import { newInode, S_IFBLK, S_IFCHR, S_IFDIR, S_IFLNK, S_IFMT, S_IFREG, type Inode } from '../tree/inode.js';
import {
  BLOCK_BITS,
  BLOCK_SIZE,
  CFS_HDR,
  CFS_HEADER_VERSION,
  CFS_MAGIC,
  COMPACT,
  COMPACT_SIZE,
  DIRENT,
  DIRENT_SIZE,
  EROFS_MAGIC,
  EXTENDED,
  EXTENDED_SIZE,
  I_DATALAYOUT_SHIFT,
  I_VERSION_EXTENDED,
  LAYOUT_CHUNK_BASED,
  LAYOUT_FLAT_INLINE,
  LAYOUT_FLAT_PLAIN,
  MAX_INLINE_CONTENT,
  METACOPY_HDR_SIZE,
  NAME_MAX,
  OVL_ESCAPED_PREFIX,
  OVL_ESCAPED_WHITEOUT,
  OVL_ESCAPED_WHITEOUTS,
  OVL_METACOPY,
  OVL_PREFIX,
  OVL_REDIRECT,
  OVL_USER_WHITEOUT,
  OVL_USER_WHITEOUTS,
  PATH_MAX,
  READ_XATTR_PREFIXES,
  SB,
  SB_OFFSET,
  SB_SIZE,
  SLOT_SIZE,
  XATTR_ENTRY,
  XATTR_ENTRY_SIZE,
  XATTR_HDR,
  XATTR_HDR_SIZE,
  roundUp,
} from './format.js';
import { hashAlgFromId, HASH_SIZE } from '../fsverity/digest.js';

export interface ImageInfo {
  /** composefs format version from the header. */
  composefsVersion: number;
  root: Inode;
}

function corrupt(what: string): CfsError {
  return new CfsError('ECORRUPT', `corrupt composefs image: ${what}`);
}

interface RawInode {
  nid: number;
  layout: number;
  mode: number;
  size: number;
  iu: number;
  xattrStart: number;
  xattrSize: number;
  /** Offset of the inline tail (after the xattr area). */
  tailStart: number;
  inode: Inode;
}

class Reader {
  private readonly img: Buffer;
  private readonly metaBase: number;
  private readonly xattrBase: number;
  private readonly buildTime: number;
  private readonly buildTimeNsec: number;
  readonly rootNid: number;
  readonly version: number;
  private readonly byNid = new Map<number, Inode>();

  constructor(img: Buffer) {
    this.img = img;
    if (img.length < SB_OFFSET + SB_SIZE) throw corrupt(`too short (${img.length} bytes)`);
    if (img.readUInt32LE(CFS_HDR.magic) !== CFS_MAGIC) throw corrupt('bad composefs magic');
    if (img.readUInt32LE(CFS_HDR.version) !== CFS_HEADER_VERSION) {
      throw new CfsError('ENOTSUP', `unsupported composefs header version ${img.readUInt32LE(CFS_HDR.version)}`);
    }
    this.version = img.readUInt32LE(CFS_HDR.composefsVersion);
    const sb = SB_OFFSET;
    if (img.readUInt32LE(sb + SB.magic) !== EROFS_MAGIC) throw corrupt('bad EROFS superblock magic');
    if (img[sb + SB.blkszbits] !== BLOCK_BITS) throw corrupt(`unsupported block size 2^${img[sb + SB.blkszbits]}`);
    this.rootNid = img.readUInt16LE(sb + SB.rootNid);
    this.buildTime = safe(img.readBigInt64LE(sb + SB.buildTime), 'build time');
    this.buildTimeNsec = img.readUInt32LE(sb + SB.buildTimeNsec);
    this.metaBase = img.readUInt32LE(sb + SB.metaBlkaddr) * BLOCK_SIZE;
    this.xattrBase = img.readUInt32LE(sb + SB.xattrBlkaddr) * BLOCK_SIZE;
  }

  private need(off: number, len: number, what: string): void {
    if (off < 0 || len < 0 || off + len > this.img.length) throw corrupt(`${what} at ${off}+${len} beyond the image end (${this.img.length})`);
  }

  private readInode(nid: number): RawInode {
    const img = this.img;
    const at = this.metaBase + nid * SLOT_SIZE;
    this.need(at, COMPACT_SIZE, `inode ${nid}`);
    const format = img.readUInt16LE(at);
    const extended = (format & I_VERSION_EXTENDED) !== 0;
    const layout = (format >> I_DATALAYOUT_SHIFT) & 7;
    const isz = extended ? EXTENDED_SIZE : COMPACT_SIZE;
    this.need(at, isz, `inode ${nid}`);
    let mode: number, size: number, iu: number, icount: number;
    let n: Inode;
    if (extended) {
      mode = img.readUInt16LE(at + EXTENDED.mode);
      size = safe(img.readBigUInt64LE(at + EXTENDED.size), `inode ${nid} size`);
      iu = img.readUInt32LE(at + EXTENDED.u);
      icount = img.readUInt16LE(at + EXTENDED.xattrIcount);
      n = newInode(mode, {
        nlink: img.readUInt32LE(at + EXTENDED.nlink),
        uid: img.readUInt32LE(at + EXTENDED.uid),
        gid: img.readUInt32LE(at + EXTENDED.gid),
        size,
        mtimeSec: safe(img.readBigInt64LE(at + EXTENDED.mtime), `inode ${nid} mtime`),
        mtimeNsec: img.readUInt32LE(at + EXTENDED.mtimeNsec),
      });
    } else {
      mode = img.readUInt16LE(at + COMPACT.mode);
      size = img.readUInt32LE(at + COMPACT.size);
      iu = img.readUInt32LE(at + COMPACT.u);
      icount = img.readUInt16LE(at + COMPACT.xattrIcount);
      n = newInode(mode, {
        nlink: img.readUInt16LE(at + COMPACT.nlink),
        uid: img.readUInt16LE(at + COMPACT.uid),
        gid: img.readUInt16LE(at + COMPACT.gid),
        size,
        mtimeSec: this.buildTime,
        mtimeNsec: this.buildTimeNsec,
      });
    }
    const type = mode & S_IFMT;
    if (type === S_IFCHR || type === S_IFBLK) n.rdev = iu;
    const xattrSize = icount === 0 ? 0 : XATTR_HDR_SIZE + 4 * (icount - 1);
    this.need(at + isz, xattrSize, `xattrs of inode ${nid}`);
    return { nid, layout, mode, size, iu, xattrStart: at + isz, xattrSize, tailStart: at + isz + xattrSize, inode: n };
  }

  /** The flat data of an inode (blocks at i_u, then the inline tail), bounds-checked. */
  private flatData(r: RawInode, maxLen: number, what: string): Buffer {
    if (r.layout !== LAYOUT_FLAT_PLAIN && r.layout !== LAYOUT_FLAT_INLINE) throw corrupt(`${what}: unexpected data layout ${r.layout}`);
    if (r.size > maxLen) throw corrupt(`${what}: size ${r.size} too large`);
    const inline = r.layout === LAYOUT_FLAT_INLINE;
    const tail = inline ? r.size % BLOCK_SIZE : 0;
    const blockBytes = r.size - tail;
    const parts: Buffer[] = [];
    if (blockBytes > 0) {
      const off = r.iu * BLOCK_SIZE;
      this.need(off, blockBytes, `${what} data blocks`);
      parts.push(this.img.subarray(off, off + blockBytes));
    }
    if (tail > 0) {
      this.need(r.tailStart, tail, `${what} inline data`);
      parts.push(this.img.subarray(r.tailStart, r.tailStart + tail));
    }
    return parts.length === 1 ? parts[0]! : Buffer.concat(parts);
  }

  private xattrName(index: number, suffix: Buffer, what: string): string {
    const prefix = READ_XATTR_PREFIXES[index];
    if (prefix === undefined) throw corrupt(`${what}: unknown xattr prefix index ${index}`);
    return prefix + suffix.toString('latin1');
  }

  private entryAt(off: number, limit: number, what: string): { key: string; value: Buffer; next: number } {
    this.need(off, XATTR_ENTRY_SIZE, what);
    const nameLen = this.img[off + XATTR_ENTRY.nameLen]!;
    const index = this.img[off + XATTR_ENTRY.nameIndex]!;
    const valueSize = this.img.readUInt16LE(off + XATTR_ENTRY.valueSize);
    const body = off + XATTR_ENTRY_SIZE;
    if (body + nameLen + valueSize > limit) throw corrupt(`${what}: xattr entry overruns its area`);
    this.need(body, nameLen + valueSize, what);
    const key = this.xattrName(index, this.img.subarray(body, body + nameLen), what);
    return { key, value: this.img.subarray(body + nameLen, body + nameLen + valueSize), next: off + roundUp(XATTR_ENTRY_SIZE + nameLen + valueSize, 4) };
  }

  /** Apply one on-disk xattr to the composefs view of the inode (C lcfs_build_node_erofs_xattr). */
  private applyXattr(n: Inode, list: Array<[string, Buffer]>, key: string, value: Buffer): void {
    const type = n.mode & S_IFMT;
    if (key === OVL_REDIRECT) {
      if (type === S_IFREG) {
        let v = value.length > 1 && value[0] === 0x2f ? value.subarray(1) : value;
        const nul = v.indexOf(0);
        if (nul >= 0) v = v.subarray(0, nul);
        n.payload = v.toString('latin1');
      }
      return;
    }
    if (key === OVL_METACOPY) {
      if (type === S_IFREG && value.length > METACOPY_HDR_SIZE) {
        const alg = hashAlgFromId(value[3]!);
        if (alg !== undefined && value.length === METACOPY_HDR_SIZE + HASH_SIZE[alg]) n.digest = Buffer.from(value.subarray(METACOPY_HDR_SIZE));
      }
      return;
    }
    if (key === OVL_ESCAPED_WHITEOUT && type === S_IFREG) {
      n.mode = (n.mode & ~S_IFMT) | S_IFCHR;
      n.rdev = 0;
      n.size = 0;
      if (n.content !== null) n.content = Buffer.alloc(0);
      return;
    }
    if (key === OVL_ESCAPED_WHITEOUTS || key === OVL_USER_WHITEOUT || key === OVL_USER_WHITEOUTS) return;
    let name = key;
    if (key.startsWith(OVL_PREFIX)) {
      if (!key.startsWith(OVL_ESCAPED_PREFIX)) return;
      name = OVL_PREFIX + key.slice(OVL_ESCAPED_PREFIX.length);
    }
    // A repeated key replaces the earlier one by swap-remove then append (C order).
    const i = list.findIndex((e) => e[0] === name);
    if (i >= 0) {
      list[i] = list[list.length - 1]!;
      list.pop();
    }
    list.push([name, Buffer.from(value)]);
  }

  private readXattrs(r: RawInode): void {
    if (r.xattrSize === 0) return;
    const what = `xattrs of inode ${r.nid}`;
    const img = this.img;
    const start = r.xattrStart;
    const end = start + r.xattrSize;
    const shared = img[start + XATTR_HDR.sharedCount]!;
    let off = start + XATTR_HDR_SIZE + 4 * shared;
    if (off > end) throw corrupt(`${what}: ${shared} shared references do not fit`);
    const list: Array<[string, Buffer]> = [];
    while (off + XATTR_ENTRY_SIZE < end) {
      const e = this.entryAt(off, end, what);
      this.applyXattr(r.inode, list, e.key, e.value);
      off = e.next;
    }
    for (let i = 0; i < shared; i++) {
      const id = img.readUInt32LE(start + XATTR_HDR_SIZE + 4 * i);
      const e = this.entryAt(this.xattrBase + id * 4, img.length, `${what} (shared ${id})`);
      this.applyXattr(r.inode, list, e.key, e.value);
    }
    for (const [k, v] of list) r.inode.xattrs.set(k, v);
  }

  /** Read one inode (not its children); null for a real whiteout, which the composefs view drops. */
  private load(nid: number): { raw: RawInode; inode: Inode } | null {
    const r = this.readInode(nid);
    const n = r.inode;
    const type = r.mode & S_IFMT;
    if (type === S_IFCHR && r.iu === 0) return null;
    const what = `inode ${nid}`;
    if (type === S_IFLNK) {
      if (r.size === 0 || r.size >= PATH_MAX) throw corrupt(`${what}: symlink target of ${r.size} bytes`);
      let t = this.flatData(r, PATH_MAX - 1, what);
      const nul = t.indexOf(0);
      if (nul >= 0) t = t.subarray(0, nul);
      if (t.length === 0) throw corrupt(`${what}: empty symlink target`);
      n.payload = t.toString('latin1');
      n.size = n.payload.length;
    } else if (type === S_IFREG && r.size !== 0) {
      if (r.layout === LAYOUT_FLAT_PLAIN || r.layout === LAYOUT_FLAT_INLINE) {
        n.content = Buffer.from(this.flatData(r, MAX_INLINE_CONTENT, what));
      } else if (r.layout !== LAYOUT_CHUNK_BASED) {
        throw corrupt(`${what}: regular file with data layout ${r.layout}`);
      }
    }
    this.readXattrs(r);
    return { raw: r, inode: n };
  }

  /** Parse the entries of one directory block or tail. */
  private dirents(data: Buffer, what: string): Array<[string, number]> {
    if (data.length < DIRENT_SIZE) throw corrupt(`${what}: directory block of ${data.length} bytes`);
    const first = data.readUInt16LE(DIRENT.nameoff);
    if (first % DIRENT_SIZE !== 0 || first === 0 || first > data.length) throw corrupt(`${what}: bad first name offset ${first}`);
    const count = first / DIRENT_SIZE;
    const out: Array<[string, number]> = [];
    for (let i = 0; i < count; i++) {
      const d = i * DIRENT_SIZE;
      const nameoff = data.readUInt16LE(d + DIRENT.nameoff);
      let nameEnd: number;
      if (i + 1 < count) nameEnd = data.readUInt16LE(d + DIRENT_SIZE + DIRENT.nameoff);
      else {
        const nul = data.indexOf(0, nameoff);
        nameEnd = nul < 0 ? data.length : nul;
      }
      if (nameoff < first || nameEnd < nameoff || nameEnd > data.length) throw corrupt(`${what}: bad name offsets ${nameoff}..${nameEnd}`);
      const nid = data.readUInt32LE(d + DIRENT.nid) + data.readUInt32LE(d + DIRENT.nid + 4) * 2 ** 32;
      out.push([data.toString('latin1', nameoff, nameEnd), nid]);
    }
    return out;
  }

  private readDir(r: RawInode, dir: Inode, pending: Array<[RawInode, Inode]>): void {
    const what = `directory inode ${r.nid}`;
    if (r.layout !== LAYOUT_FLAT_PLAIN && r.layout !== LAYOUT_FLAT_INLINE) throw corrupt(`${what}: data layout ${r.layout}`);
    const inline = r.layout === LAYOUT_FLAT_INLINE;
    const tail = inline ? r.size % BLOCK_SIZE : 0;
    const nblocks = Math.ceil((r.size - tail) / BLOCK_SIZE);
    const chunks: Buffer[] = [];
    if (nblocks > 0) this.need(r.iu * BLOCK_SIZE, r.size - tail, `${what} blocks`);
    for (let b = 0; b < nblocks; b++) {
      const off = (r.iu + b) * BLOCK_SIZE;
      const len = !inline && b === nblocks - 1 && r.size % BLOCK_SIZE !== 0 ? r.size % BLOCK_SIZE : BLOCK_SIZE;
      chunks.push(this.img.subarray(off, off + len));
    }
    if (tail > 0) {
      this.need(r.tailStart, tail, `${what} inline entries`);
      chunks.push(this.img.subarray(r.tailStart, r.tailStart + tail));
    }
    const children = dir.children!;
    for (const chunk of chunks) {
      for (const [name, nid] of this.dirents(chunk, what)) {
        if (name === '.' || name === '..') continue;
        if (name.length === 0 || name.length > NAME_MAX || name.includes('/')) throw corrupt(`${what}: invalid entry name '${name}'`);
        if (children.has(name)) throw corrupt(`${what}: duplicate entry '${name}'`);
        const known = this.byNid.get(nid);
        if (known !== undefined) {
          if (known.children !== null) throw corrupt(`${what}: directory inode ${nid} linked twice (cycle or directory hardlink)`);
          children.set(name, known);
          continue;
        }
        const loaded = this.load(nid);
        if (loaded === null) continue;
        this.byNid.set(nid, loaded.inode);
        children.set(name, loaded.inode);
        if ((loaded.raw.mode & S_IFMT) === S_IFDIR) pending.push([loaded.raw, loaded.inode]);
      }
    }
  }

  read(): Inode {
    const loaded = this.load(this.rootNid);
    if (loaded === null || (loaded.raw.mode & S_IFMT) !== S_IFDIR) throw corrupt('root inode is not a directory');
    this.byNid.set(this.rootNid, loaded.inode);
    const pending: Array<[RawInode, Inode]> = [[loaded.raw, loaded.inode]];
    while (pending.length > 0) {
      const [raw, dir] = pending.pop()!;
      this.readDir(raw, dir, pending);
    }
    return loaded.inode;
  }
}

function safe(v: bigint, what: string): number {
  if (v > BigInt(Number.MAX_SAFE_INTEGER) + 1n || v < BigInt(Number.MIN_SAFE_INTEGER)) throw corrupt(`${what} out of range`);
  return Number(v);
}

/** Load the composefs tree of an image. */
export function readErofs(image: Buffer): Inode {
  return new Reader(image).read();
}

/** Load the tree and the header's format version. */
export function readErofsInfo(image: Buffer): ImageInfo {
  const r = new Reader(image);
  return { composefsVersion: r.version, root: r.read() };
}
