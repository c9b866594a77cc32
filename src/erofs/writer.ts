/**
 * composefs EROFS image writer, byte-identical to C mkcomposefs (format versions 0 and 1).
 *
 * Passes: (1) walk the input tree (never mutated) into writer nodes, deciding which entry of a
 * hardlinked inode is the real one; (2) BFS order + the overlayfs rewrite (escaping, metacopy,
 * redirect, whiteouts, root stubs, `.`/`..`); (3) shared xattr table; (4) layout of every inode
 * and data block; (5) one preallocated buffer filled in place.
 */
import { CfsError } from '../errors.js';
import { S_IFBLK, S_IFCHR, S_IFDIR, S_IFIFO, S_IFLNK, S_IFMT, S_IFREG, S_IFSOCK, type Inode } from '../tree/inode.js';
import {
  ACL_ACCESS,
  ACL_DEFAULT,
  BLOCK_SIZE,
  CFS_FLAG_HAS_ACL,
  CFS_HDR,
  CFS_HEADER_VERSION,
  CFS_MAGIC,
  CFS_VERSION_MAX,
  chunking,
  COMPACT,
  COMPACT_SIZE,
  DIRENT,
  DIRENT_SIZE,
  EROFS_MAGIC,
  EXTENDED,
  EXTENDED_SIZE,
  FEATURE_COMPAT_MTIME,
  FEATURE_COMPAT_XATTR_FILTER,
  FT_BLKDEV,
  FT_CHRDEV,
  FT_DIR,
  FT_FIFO,
  FT_REG,
  FT_SOCK,
  FT_SYMLINK,
  FT_UNKNOWN,
  I_DATALAYOUT_SHIFT,
  I_VERSION_EXTENDED,
  INODES_START,
  LAYOUT_CHUNK_BASED,
  LAYOUT_FLAT_INLINE,
  LAYOUT_FLAT_PLAIN,
  MAX_CHUNKS,
  MAX_INLINE_CONTENT,
  METACOPY_HDR_SIZE,
  NAME_MAX,
  NULL_ADDR,
  OVL_ESCAPED_OPAQUE,
  OVL_ESCAPED_PREFIX,
  OVL_ESCAPED_WHITEOUT,
  OVL_ESCAPED_WHITEOUTS,
  OVL_METACOPY,
  OVL_OPAQUE,
  OVL_PREFIX,
  OVL_REDIRECT,
  OVL_USER_OPAQUE,
  OVL_USER_WHITEOUT,
  OVL_USER_WHITEOUTS,
  PATH_MAX,
  roundUp,
  SB,
  SB_OFFSET,
  SLOT_SIZE,
  XATTR_ENTRY,
  XATTR_ENTRY_SIZE,
  XATTR_FILTER_BITS,
  XATTR_FILTER_SEED,
  XATTR_HDR,
  XATTR_HDR_SIZE,
  XATTR_MAX_SHARED_REFS,
  xattrIndexOf,
  xattrPrefixLen,
} from './format.js';
import { xxh32 } from './xxh32.js';
import { setXattrCounted, type XattrStore } from './xattr-budget.js';
import { isRecordedPrimary } from './hardlinks.js';
import { HASH_ALG_ID } from '../fsverity/digest.js';

export interface WriteOptions {
  /** Lowest format version (default 0). */
  minVersion?: number;
  /** Highest format version; the writer upgrades to it only when the tree has whiteouts (default 1). */
  maxVersion?: number;
}

interface Entry {
  name: string;
  node: WNode;
  /** The directory holding this entry. */
  dir: WNode;
  /** False for `.`, `..` and the extra names of hardlinked inodes. */
  canonical: boolean;
}

/** One distinct (key, value) pair of the image; values are latin1 byte strings. */
interface Pair {
  key: string;
  value: string;
  /** Number of inodes carrying it. */
  count: number;
  /** Byte offset in the shared table, or -1 when never shared. */
  offset: number;
}

/** Per-key facts, computed once per distinct key. */
interface KeyInfo {
  index: number;
  suffix: string;
  filterBit: number;
}

/** A node's xattrs as alternating key/value strings: nodes carry only a handful. */
class XList implements XattrStore<string> {
  readonly kv: string[] = [];
  get size(): number {
    return this.kv.length >> 1;
  }
  get(key: string): string | undefined {
    const kv = this.kv;
    for (let i = 0; i < kv.length; i += 2) if (kv[i] === key) return kv[i + 1];
    return undefined;
  }
  delete(key: string): boolean {
    const kv = this.kv;
    for (let i = 0; i < kv.length; i += 2) {
      if (kv[i] === key) {
        kv.splice(i, 2);
        return true;
      }
    }
    return false;
  }
  set(key: string, value: string): void {
    const kv = this.kv;
    for (let i = 0; i < kv.length; i += 2) {
      if (kv[i] === key) {
        kv[i + 1] = value;
        return;
      }
    }
    kv.push(key, value);
  }
}

/** The writer's private, rewritten copy of one inode. */
class WNode {
  /** The input inode (null for the root stubs). */
  readonly src: Inode | null;
  mode: number;
  nlink: number;
  uid: number;
  gid: number;
  rdev: number;
  size: number;
  mtimeSec: number;
  mtimeNsec: number;
  readonly xattrs = new XList();
  acct = 0;
  content: Buffer | null;
  payload: string | null;
  digest: Buffer | null;
  entries: Entry[] | null;
  /** Canonical parent and name (error messages, whiteout markers). */
  parent: WNode | null = null;
  name = '';
  firstEntry: Entry | null = null;
  primaryEntry: Entry | null = null;
  // layout
  ino = 0;
  nid = 0;
  compact = true;
  nblocks = 0;
  tail = 0;
  pad = 0;
  blockIndex = 0;
  /** Xattrs in key order; the first XATTR_MAX_SHARED_REFS shared-eligible ones are referenced. */
  xattrList: Pair[] = [];
  nShared = 0;
  xattrSize = 0;
  chunkCount = 0;
  chunkFormat = 0;
  /** Directory chunks: [first entry, end entry) per full block, then the tail's. */
  dirChunks: number[] = [];

  constructor(src: Inode | null, mode: number) {
    this.src = src;
    this.mode = mode;
    this.nlink = src?.nlink ?? 1;
    this.uid = src?.uid ?? 0;
    this.gid = src?.gid ?? 0;
    this.rdev = src?.rdev ?? 0;
    this.size = src?.size ?? 0;
    this.mtimeSec = src?.mtimeSec ?? 0;
    this.mtimeNsec = src?.mtimeNsec ?? 0;
    this.content = src?.content && src.content.length > 0 ? src.content : null;
    this.payload = src?.payload ?? null;
    this.digest = src?.digest ?? null;
    this.entries = (mode & S_IFMT) === S_IFDIR ? [] : null;
  }

  get type(): number {
    return this.mode & S_IFMT;
  }
  path(): string {
    if (this.parent === null) return '/';
    const parts: string[] = [];
    for (let n: WNode | null = this; n !== null && n.parent !== null; n = n.parent) parts.push(n.name);
    return '/' + parts.reverse().join('/');
  }
}

function fileTypeOf(mode: number): number {
  switch (mode & S_IFMT) {
    case S_IFREG:
      return FT_REG;
    case S_IFDIR:
      return FT_DIR;
    case S_IFCHR:
      return FT_CHRDEV;
    case S_IFBLK:
      return FT_BLKDEV;
    case S_IFIFO:
      return FT_FIFO;
    case S_IFSOCK:
      return FT_SOCK;
    case S_IFLNK:
      return FT_SYMLINK;
    default:
      return FT_UNKNOWN;
  }
}

function byName(a: Entry, b: Entry): number {
  return a.name < b.name ? -1 : a.name > b.name ? 1 : 0;
}

function insertSorted(entries: Entry[], e: Entry): void {
  let lo = 0;
  let hi = entries.length;
  while (lo < hi) {
    const mid = (lo + hi) >> 1;
    if (entries[mid]!.name < e.name) lo = mid + 1;
    else hi = mid;
  }
  entries.splice(lo, 0, e);
}

function checkName(name: string, dir: WNode): void {
  if (name.length === 0 || name.length > NAME_MAX || name === '.' || name === '..' || name.includes('/') || name.includes('\0')) {
    throw new CfsError('EINVAL', `cannot write image: invalid file name '${name}' in ${dir.path()}`);
  }
}

/** Version selection like mkcomposefs (3.1). */
function chooseVersion(opts: WriteOptions, hasWhiteout: boolean): number {
  let min = 0;
  let max = 1;
  if (opts.minVersion !== undefined || opts.maxVersion !== undefined) {
    min = opts.minVersion ?? 0;
    max = opts.maxVersion ?? 0;
  }
  for (const v of [min, max]) {
    if (!Number.isInteger(v) || v < 0 || v > CFS_VERSION_MAX) {
      throw new CfsError('EINVAL', `cannot write image: unsupported format version ${v} (0..${CFS_VERSION_MAX})`);
    }
  }
  if (max < min) max = min;
  return min < 1 && max >= 1 && hasWhiteout ? 1 : min;
}

/** Pass 1: writer nodes for every distinct inode; decide canonical entries. */
function buildNodes(root: Inode): { wroot: WNode; nodes: WNode[] } {
  if ((root.mode & S_IFMT) !== S_IFDIR || root.children === null) {
    throw new CfsError('EINVAL', 'cannot write image: the root is not a directory');
  }
  const map = new Map<Inode, WNode>();
  const wroot = new WNode(root, root.mode & 0xffff);
  map.set(root, wroot);
  const nodes: WNode[] = [wroot];
  // DFS pre-order in name order, so "first entry" is the first in depth-first order.
  const stack: Array<[Inode, WNode]> = [[root, wroot]];
  while (stack.length > 0) {
    const [dir, wdir] = stack.pop()!;
    const names = [...dir.children!.keys()];
    // Parsed trees usually list children in order already.
    let sorted = true;
    for (let i = 1; i < names.length && sorted; i++) sorted = names[i - 1]! < names[i]!;
    if (!sorted) names.sort();
    const subdirs: Array<[Inode, WNode]> = [];
    for (const name of names) {
      checkName(name, wdir);
      const child = dir.children!.get(name)!;
      let wc = map.get(child);
      const isDir = (child.mode & S_IFMT) === S_IFDIR;
      if (wc === undefined) {
        if (isDir !== (child.children !== null)) {
          throw new CfsError('EINVAL', `cannot write image: ${wdir.path()}/${name}: children do not match the file type`);
        }
        wc = new WNode(child, child.mode & 0xffff);
        map.set(child, wc);
        nodes.push(wc);
        if (isDir) subdirs.push([child, wc]);
      } else if (isDir) {
        throw new CfsError('ELOOP', `cannot write image: directory ${wc.path()} appears twice (directory hardlink or cycle) at ${wdir.path()}/${name}`);
      }
      const e: Entry = { name, node: wc, dir: wdir, canonical: false };
      wdir.entries!.push(e);
      if (wc.firstEntry === null) {
        wc.firstEntry = e;
        wc.parent = wdir;
        wc.name = name;
      }
      if (!isDir && wc.primaryEntry === null && isRecordedPrimary(child, dir, name)) wc.primaryEntry = e;
    }
    for (let i = subdirs.length - 1; i >= 0; i--) stack.push(subdirs[i]!);
  }
  for (const n of nodes) {
    const e = n.primaryEntry ?? n.firstEntry;
    if (e === null) continue; // root
    e.canonical = true;
    n.parent = e.dir;
    n.name = e.name;
  }
  return { wroot, nodes };
}

class Writer {
  private readonly nodes: WNode[];
  private readonly wroot: WNode;
  private readonly bfs: WNode[] = [];
  private version = 0;
  private minSec = 0;
  private minNsec = 0;
  private hasAcl = false;
  private shared: Pair[] = [];
  private sharedSize = 0;
  private inodesEnd = 0;
  private dataStart = 0;
  private nDataBlocks = 0;
  private readonly keyInfo = new Map<string, KeyInfo>();
  /** latin1 strings of input xattr values, by Buffer identity (parsed trees share Buffers). */
  private readonly valueStrings = new Map<Buffer, string>();

  constructor(root: Inode, opts: WriteOptions) {
    const { wroot, nodes } = buildNodes(root);
    this.wroot = wroot;
    this.nodes = nodes;
    const hasWhiteout = nodes.some((n) => n.type === S_IFCHR && n.rdev === 0);
    this.version = chooseVersion(opts, hasWhiteout);
  }

  private str(b: Buffer): string {
    const known = this.valueStrings.get(b);
    if (known !== undefined) return known;
    const s = b.toString('latin1');
    this.valueStrings.set(b, s);
    return s;
  }

  private info(key: string): KeyInfo {
    let k = this.keyInfo.get(key);
    if (k === undefined) {
      const index = xattrIndexOf(key);
      const suffix = key.slice(xattrPrefixLen(index));
      const filterBit = xxh32(suffix, (XATTR_FILTER_SEED + index) >>> 0) & (XATTR_FILTER_BITS - 1);
      k = { index, suffix, filterBit };
      this.keyInfo.set(key, k);
    }
    return k;
  }

  private entrySize(p: Pair): number {
    return roundUp(XATTR_ENTRY_SIZE + this.info(p.key).suffix.length + p.value.length, 4);
  }

  private writeEntry(buf: Buffer, off: number, p: Pair): number {
    const { index, suffix } = this.info(p.key);
    buf[off + XATTR_ENTRY.nameLen] = suffix.length;
    buf[off + XATTR_ENTRY.nameIndex] = index;
    buf.writeUInt16LE(p.value.length, off + XATTR_ENTRY.valueSize);
    let q = off + XATTR_ENTRY_SIZE;
    q += buf.write(suffix, q, 'latin1');
    q += buf.write(p.value, q, 'latin1');
    return off + roundUp(q - off, 4);
  }

  private set(n: WNode, key: string, value: string): void {
    const acct = setXattrCounted(n.xattrs, n.acct, key, value);
    if (acct === null) {
      throw new CfsError('ERANGE', `cannot write image: xattrs of ${n.path()} exceed the per-inode size budget (setting ${key})`);
    }
    n.acct = acct;
  }

  build(): Buffer {
    this.rewriteAndOrder();
    this.computeShared();
    this.layout();
    return this.emit();
  }

  /** BFS order, overlayfs rewrite, `.`/`..`, root stubs (3.2, 3.3). */
  private rewriteAndOrder(): void {
    const root = this.wroot;
    // Stubs are added to the root before ordering; C adds them after the rewrite, which is
    // equivalent because they are never rewritten and only copy the root's security.selinux.
    const selinux = root.src!.xattrs.get('security.selinux');
    const existing = new Set(root.entries!.map((e) => e.name));
    let addedStub = false;
    for (let i = 0; i < 256; i++) {
      const name = i.toString(16).padStart(2, '0');
      if (existing.has(name)) continue;
      const stub = new WNode(null, S_IFCHR | 0o644);
      stub.uid = root.uid;
      stub.gid = root.gid;
      stub.mtimeSec = root.mtimeSec;
      stub.mtimeNsec = root.mtimeNsec;
      stub.parent = root;
      stub.name = name;
      if (selinux !== undefined) this.set(stub, 'security.selinux', this.str(selinux));
      root.entries!.push({ name, node: stub, dir: root, canonical: true });
      addedStub = true;
    }
    if (addedStub) root.entries!.sort(byName);

    const bfs = this.bfs;
    bfs.push(root);
    for (let qi = 0; qi < bfs.length; qi++) {
      const n = bfs[qi]!;
      n.ino = qi;
      if (n.src !== null) this.rewrite(n, n.src);
      if (n.entries !== null) {
        let subdirs = 0;
        for (const e of n.entries) {
          if (!e.canonical) continue;
          if (e.node.type === S_IFDIR) subdirs++;
          bfs.push(e.node);
        }
        n.nlink = 2 + subdirs;
        insertSorted(n.entries, { name: '.', node: n, dir: n, canonical: false });
        insertSorted(n.entries, { name: '..', node: n.parent ?? n, dir: n, canonical: false });
      }
    }
    this.set(root, OVL_OPAQUE, 'y');
  }

  /** Per-node rewrite (3.2 steps 1-4); `n.xattrs` starts empty with a zero budget counter. */
  private rewrite(n: WNode, s: Inode): void {
    const type = n.type;
    switch (type) {
      case S_IFREG:
      case S_IFDIR:
      case S_IFLNK:
      case S_IFBLK:
      case S_IFCHR:
      case S_IFSOCK:
      case S_IFIFO:
        break;
      default:
        throw new CfsError('EINVAL', `cannot write image: ${n.path()}: invalid mode ${s.mode.toString(8)}`);
    }
    // The deep copy C writes from starts with a zero budget counter (see xattr-budget.ts).
    for (const [k, v] of s.xattrs) {
      n.xattrs.kv.push(k.startsWith(OVL_PREFIX) ? OVL_ESCAPED_PREFIX + k.slice(OVL_PREFIX.length) : k, this.str(v));
    }
    if (type === S_IFLNK) {
      if (n.payload === null || n.payload.length === 0 || n.payload.length >= PATH_MAX) {
        throw new CfsError('EINVAL', `cannot write image: ${n.path()}: invalid symlink target`);
      }
      n.size = n.payload.length;
    } else if (type === S_IFREG) {
      if (n.content !== null) {
        if (n.content.length !== n.size || n.size > MAX_INLINE_CONTENT) {
          throw new CfsError('EINVAL', `cannot write image: ${n.path()}: inline content of ${n.content.length} bytes (size ${n.size}, max ${MAX_INLINE_CONTENT})`);
        }
      } else if (n.size > 0) {
        const { chunkCount } = chunking(n.size);
        if (chunkCount > MAX_CHUNKS) throw new CfsError('EFBIG', `cannot write image: ${n.path()}: file too large (${n.size > 2 ** 53 ? 'over 2^53' : n.size} bytes, more than ${MAX_CHUNKS} chunks)`);
        this.set(n, OVL_METACOPY, metacopyValue(n.digest, n));
        if (n.payload !== null && n.payload.length > 0) {
          if (n.payload.length >= PATH_MAX) throw new CfsError('EINVAL', `cannot write image: ${n.path()}: payload too long`);
          this.set(n, OVL_REDIRECT, '/' + n.payload);
        }
      }
    } else if (type === S_IFCHR && n.rdev === 0) {
      // A user whiteout is stored escaped: a regular file overlayfs shows as a whiteout.
      n.size = 0;
      n.mode = S_IFREG | (n.mode & ~S_IFMT & 0xffff);
      const empty = '';
      this.set(n, OVL_ESCAPED_WHITEOUT, empty);
      this.set(n, OVL_USER_WHITEOUT, empty);
      const p = n.parent!;
      this.set(p, OVL_ESCAPED_WHITEOUTS, empty);
      this.set(p, OVL_USER_WHITEOUTS, empty);
      if (this.version >= 1) {
        const x = 'x';
        this.set(p, OVL_ESCAPED_OPAQUE, x);
        this.set(p, OVL_USER_OPAQUE, x);
      }
    }
  }

  /** Shared xattr table (3.4): pairs used by more than one inode, in descending order. */
  private computeShared(): void {
    const pairs = new Map<string, Map<string, Pair>>();
    let minSec = this.wroot.mtimeSec;
    let minNsec = this.wroot.mtimeNsec;
    for (const n of this.bfs) {
      if (n.mtimeSec < minSec || (n.mtimeSec === minSec && n.mtimeNsec < minNsec)) {
        minSec = n.mtimeSec;
        minNsec = n.mtimeNsec;
      }
      const kv = n.xattrs.kv;
      const count = kv.length >> 1;
      if (count === 0) continue;
      const order: number[] = [];
      for (let i = 0; i < kv.length; i += 2) order.push(i);
      if (count > 1) order.sort((a, b) => (kv[a]! < kv[b]! ? -1 : 1));
      const list = new Array<Pair>(count);
      for (let i = 0; i < count; i++) {
        const key = kv[order[i]!]!;
        const value = kv[order[i]! + 1]!;
        if (key === ACL_ACCESS || key === ACL_DEFAULT) this.hasAcl = true;
        let byValue = pairs.get(key);
        if (byValue === undefined) {
          byValue = new Map();
          pairs.set(key, byValue);
        }
        let p = byValue.get(value);
        if (p === undefined) {
          p = { key, value, count: 0, offset: -1 };
          byValue.set(value, p);
        }
        p.count++;
        list[i] = p;
      }
      n.xattrList = list;
    }
    this.minSec = minSec;
    this.minNsec = minNsec;

    const multi: Pair[] = [];
    for (const byValue of pairs.values()) for (const p of byValue.values()) if (p.count > 1) multi.push(p);
    multi.sort((a, b) => {
      if (a.key !== b.key) return a.key < b.key ? 1 : -1;
      if (a.value.length !== b.value.length) return b.value.length - a.value.length;
      return a.value < b.value ? 1 : a.value > b.value ? -1 : 0;
    });
    let off = 0;
    for (const p of multi) {
      p.offset = off;
      off += this.entrySize(p);
    }
    this.shared = multi;
    this.sharedSize = off;

    for (const n of this.bfs) {
      if (n.xattrList.length === 0) continue;
      let nShared = 0;
      let inlineSize = 0;
      for (const p of n.xattrList) {
        if (p.offset >= 0 && nShared < XATTR_MAX_SHARED_REFS) nShared++;
        else inlineSize += this.entrySize(p);
      }
      n.nShared = nShared;
      n.xattrSize = XATTR_HDR_SIZE + 4 * nShared + inlineSize;
    }
  }

  /** Inode layout (3.6): sizes, padding and nid of every inode; data block indexes. */
  private layout(): void {
    let pos = INODES_START;
    let blocks = 0;
    for (const n of this.bfs) {
      const type = n.type;
      let sizeForCompact = n.size;
      if (type === S_IFDIR) {
        this.dirLayout(n);
        sizeForCompact = n.nblocks * BLOCK_SIZE + n.tail;
      } else if (type === S_IFLNK) {
        n.nblocks = 0;
        n.tail = n.payload!.length;
      } else if (type === S_IFREG && n.size > 0) {
        if (n.content !== null) {
          n.nblocks = Math.floor(n.size / BLOCK_SIZE);
          n.tail = n.size % BLOCK_SIZE;
          if (n.tail > BLOCK_SIZE / 2) {
            n.nblocks++;
            n.tail = 0;
          }
        } else {
          const { chunkBits, chunkCount } = chunking(n.size);
          n.chunkCount = chunkCount;
          n.chunkFormat = chunkBits - 12;
          n.tail = 4 * chunkCount;
        }
      }
      n.compact =
        n.mtimeSec === this.minSec &&
        n.mtimeNsec === this.minNsec &&
        n.nlink <= 0xffff &&
        n.uid <= 0xffff &&
        n.gid <= 0xffff &&
        sizeForCompact <= 0xffffffff;
      const isz = n.compact ? COMPACT_SIZE : EXTENDED_SIZE;
      const xsz = n.xattrSize;
      const aligned = roundUp(pos, SLOT_SIZE);
      let pad = aligned - pos;
      pos = aligned;
      if (type === S_IFLNK) {
        const total = isz + xsz + n.tail;
        if (total >= BLOCK_SIZE) {
          n.nblocks = 1;
          n.tail = 0;
        }
        if (Math.floor(pos / BLOCK_SIZE) !== Math.floor((pos + total - 1) / BLOCK_SIZE)) {
          const extra = roundUp(pos, BLOCK_SIZE) - pos;
          pad += extra;
          pos += extra;
        }
      } else if (n.tail > 0) {
        const rem = BLOCK_SIZE - ((pos + isz + xsz) % BLOCK_SIZE);
        if (rem < n.tail) {
          const extra = roundUp(rem, SLOT_SIZE);
          const rem2 = BLOCK_SIZE - ((pos + isz + xsz + extra) % BLOCK_SIZE);
          if (n.tail <= rem2) {
            pad += extra;
            pos += extra;
          } else {
            // The chunk table does not fit inline: it "spills" into a data block (3.6.6).
            n.nblocks++;
            n.tail = 0;
            const extra2 = roundUp(pos, BLOCK_SIZE) - pos;
            pad += extra2;
            pos += extra2;
          }
        }
      }
      n.pad = pad;
      n.nid = pos / SLOT_SIZE;
      n.blockIndex = blocks;
      blocks += n.nblocks;
      pos += isz + xsz + n.tail;
    }
    this.inodesEnd = roundUp(pos, SLOT_SIZE);
    this.dataStart = roundUp(this.inodesEnd + this.sharedSize, BLOCK_SIZE);
    this.nDataBlocks = blocks;
    if (this.wroot.nid >= 0xffff) throw new CfsError('EFBIG', 'cannot write image: root inode number too large');
  }

  /** Directory sizing (3.6.3); records the entry ranges of each block and of the tail. */
  private dirLayout(n: WNode): void {
    const entries = n.entries!;
    const chunks: number[] = [0];
    let used = 0;
    let nblocks = 0;
    for (let i = 0; i < entries.length; i++) {
      const need = DIRENT_SIZE + entries[i]!.name.length;
      if (used + need > BLOCK_SIZE) {
        nblocks++;
        used = 0;
        chunks.push(i);
      }
      used += need;
    }
    if (used > BLOCK_SIZE / 2) {
      nblocks++;
      used = 0;
      chunks.push(entries.length);
    }
    chunks.push(entries.length);
    n.nblocks = nblocks;
    n.tail = used;
    n.dirChunks = chunks;
  }

  /** Write pass (3.7) into one buffer. */
  private emit(): Buffer {
    const firstBlock = this.dataStart / BLOCK_SIZE;
    const total = this.dataStart + this.nDataBlocks * BLOCK_SIZE;
    const buf = Buffer.alloc(total);

    buf.writeUInt32LE(CFS_MAGIC, CFS_HDR.magic);
    buf.writeUInt32LE(CFS_HEADER_VERSION, CFS_HDR.version);
    buf.writeUInt32LE(this.hasAcl ? CFS_FLAG_HAS_ACL : 0, CFS_HDR.flags);
    buf.writeUInt32LE(this.version, CFS_HDR.composefsVersion);

    const sb = SB_OFFSET;
    buf.writeUInt32LE(EROFS_MAGIC, sb + SB.magic);
    buf.writeUInt32LE(FEATURE_COMPAT_MTIME | FEATURE_COMPAT_XATTR_FILTER, sb + SB.featureCompat);
    buf[sb + SB.blkszbits] = 12;
    buf.writeUInt16LE(this.wroot.nid, sb + SB.rootNid);
    writeU64(buf, this.bfs.length, sb + SB.inos);
    writeI64(buf, this.minSec, sb + SB.buildTime);
    buf.writeUInt32LE(this.minNsec >>> 0, sb + SB.buildTimeNsec);
    buf.writeUInt32LE(firstBlock + this.nDataBlocks, sb + SB.blocks);
    buf.writeUInt32LE(Math.floor(this.inodesEnd / BLOCK_SIZE), sb + SB.xattrBlkaddr);

    const sharedBase = this.inodesEnd % BLOCK_SIZE;
    for (const n of this.bfs) this.emitInode(buf, n, firstBlock, sharedBase);

    let off = this.inodesEnd;
    for (const p of this.shared) off = this.writeEntry(buf, off, p);

    for (const n of this.bfs) {
      if (n.nblocks === 0) continue;
      const at = (firstBlock + n.blockIndex) * BLOCK_SIZE;
      const type = n.type;
      if (type === S_IFDIR) {
        for (let b = 0; b < n.nblocks; b++) writeDirChunk(buf, at + b * BLOCK_SIZE, n.entries!, n.dirChunks[b]!, n.dirChunks[b + 1]!);
      } else if (type === S_IFLNK) {
        buf.write(n.payload!, at, 'latin1');
      } else if (n.content !== null) {
        n.content.copy(buf, at, 0, Math.min(n.content.length, BLOCK_SIZE));
      } else {
        buf.fill(0xff, at, at + BLOCK_SIZE);
      }
    }
    return buf;
  }

  private emitInode(buf: Buffer, n: WNode, firstBlock: number, sharedBase: number): void {
    const type = n.type;
    const at = n.nid * SLOT_SIZE;
    const icount = n.xattrSize === 0 ? 0 : (n.xattrSize - XATTR_HDR_SIZE) / 4 + 1;
    let layout = n.tail > 0 ? LAYOUT_FLAT_INLINE : LAYOUT_FLAT_PLAIN;
    let size = 0;
    const external = type === S_IFREG && n.size > 0 && n.content === null;
    if (type === S_IFDIR) size = n.nblocks * BLOCK_SIZE + n.tail;
    else if (type === S_IFREG) {
      size = n.size;
      if (external) layout = LAYOUT_CHUNK_BASED;
    } else if (type === S_IFLNK) size = n.payload!.length;
    const format = (layout << I_DATALAYOUT_SHIFT) | (n.compact ? 0 : I_VERSION_EXTENDED);
    let iu = 0;
    if (type === S_IFCHR || type === S_IFBLK) iu = n.rdev >>> 0;
    else if (n.nblocks > 0 && (type === S_IFDIR || type === S_IFREG || type === S_IFLNK)) iu = firstBlock + n.blockIndex;
    // Chunk-based: the chunk format overwrites the low 16 bits (also of a spilled table's block).
    if (external) iu = ((iu & 0xffff0000) | n.chunkFormat) >>> 0;

    if (n.compact) {
      buf.writeUInt16LE(format, at + COMPACT.format);
      buf.writeUInt16LE(icount, at + COMPACT.xattrIcount);
      buf.writeUInt16LE(n.mode & 0xffff, at + COMPACT.mode);
      buf.writeUInt16LE(n.nlink & 0xffff, at + COMPACT.nlink);
      buf.writeUInt32LE(size >>> 0, at + COMPACT.size);
      buf.writeUInt32LE(iu, at + COMPACT.u);
      buf.writeUInt32LE(n.ino >>> 0, at + COMPACT.ino);
      buf.writeUInt16LE(n.uid & 0xffff, at + COMPACT.uid);
      buf.writeUInt16LE(n.gid & 0xffff, at + COMPACT.gid);
    } else {
      buf.writeUInt16LE(format, at + EXTENDED.format);
      buf.writeUInt16LE(icount, at + EXTENDED.xattrIcount);
      buf.writeUInt16LE(n.mode & 0xffff, at + EXTENDED.mode);
      writeU64(buf, size, at + EXTENDED.size);
      buf.writeUInt32LE(iu, at + EXTENDED.u);
      buf.writeUInt32LE(n.ino >>> 0, at + EXTENDED.ino);
      buf.writeUInt32LE(n.uid >>> 0, at + EXTENDED.uid);
      buf.writeUInt32LE(n.gid >>> 0, at + EXTENDED.gid);
      writeI64(buf, n.mtimeSec, at + EXTENDED.mtime);
      buf.writeUInt32LE(n.mtimeNsec >>> 0, at + EXTENDED.mtimeNsec);
      buf.writeUInt32LE(n.nlink >>> 0, at + EXTENDED.nlink);
    }
    let off = at + (n.compact ? COMPACT_SIZE : EXTENDED_SIZE);
    if (n.xattrSize > 0) {
      let bits = 0;
      for (const p of n.xattrList) bits |= 1 << this.info(p.key).filterBit;
      buf.writeUInt32LE(~bits >>> 0, off + XATTR_HDR.nameFilter);
      buf[off + XATTR_HDR.sharedCount] = n.nShared;
      off += XATTR_HDR_SIZE;
      let refs = 0;
      let inline = off + 4 * n.nShared;
      for (const p of n.xattrList) {
        if (p.offset >= 0 && refs < n.nShared) {
          buf.writeUInt32LE((sharedBase + p.offset) / 4, off);
          off += 4;
          refs++;
        } else {
          inline = this.writeEntry(buf, inline, p);
        }
      }
      off = inline;
    }
    if (n.tail === 0) return;
    if (type === S_IFDIR) {
      const c = n.dirChunks;
      writeDirChunk(buf, off, n.entries!, c[c.length - 2]!, c[c.length - 1]!);
    } else if (type === S_IFLNK) {
      buf.write(n.payload!, off, 'latin1');
    } else if (n.content !== null) {
      n.content.copy(buf, off, n.size - n.tail, n.size);
    } else {
      buf.fill(0xff, off, off + 4 * n.chunkCount);
    }
  }
}

function metacopyValue(digest: Buffer | null, n: WNode): string {
  if (digest === null) return '';
  const alg = digest.length === 32 ? 'sha256' : digest.length === 64 ? 'sha512' : undefined;
  if (alg === undefined) {
    throw new CfsError('EINVAL', `cannot write image: ${n.path()}: digest of ${digest.length} bytes`);
  }
  // version 0, total length, flags 0, hash algorithm, digest
  return String.fromCharCode(0, METACOPY_HDR_SIZE + digest.length, 0, HASH_ALG_ID[alg]) + digest.toString('latin1');
}

function writeDirChunk(buf: Buffer, at: number, entries: Entry[], from: number, to: number): void {
  let nameoff = (to - from) * DIRENT_SIZE;
  let d = at;
  for (let i = from; i < to; i++) {
    const e = entries[i]!;
    writeU64(buf, e.node.nid, d + DIRENT.nid);
    buf.writeUInt16LE(nameoff, d + DIRENT.nameoff);
    buf[d + DIRENT.fileType] = fileTypeOf(e.node.mode);
    buf.write(e.name, at + nameoff, 'latin1');
    nameoff += e.name.length;
    d += DIRENT_SIZE;
  }
}

function writeU64(buf: Buffer, v: number, off: number): void {
  buf.writeUInt32LE(v % 2 ** 32 >>> 0, off);
  buf.writeUInt32LE(Math.floor(v / 2 ** 32) >>> 0, off + 4);
}
function writeI64(buf: Buffer, v: number, off: number): void {
  const hi = Math.floor(v / 2 ** 32);
  buf.writeUInt32LE((v - hi * 2 ** 32) >>> 0, off);
  buf.writeInt32LE(hi | 0, off + 4);
}

/**
 * Write the composefs EROFS image of `root` (not modified). Throws CfsError for trees C
 * mkcomposefs rejects (EFBIG, ERANGE, ELOOP, EINVAL).
 */
export function writeErofs(root: Inode, opts: WriteOptions = {}): Buffer {
  return new Writer(root, opts).build();
}
