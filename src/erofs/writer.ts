/**
 * composefs EROFS image writer, byte-identical to C mkcomposefs (format versions 0 and 1).
 *
 * Passes: (1) walk the input tree (never mutated), numbering inodes and deciding which entry of a
 * hardlinked inode is the real one; (2) BFS order + the overlayfs rewrite (escaping, metacopy,
 * redirect, whiteouts, root stubs, `.`/`..`); (3) shared xattr table; (4) layout of every inode
 * and data block; (5) one preallocated buffer filled in place.
 *
 * Speed: per-inode state is kept in parallel (mostly typed) arrays, not objects, so a large tree
 * adds little to the heap the garbage collector has to copy; metacopy and redirect values are
 * never materialised as strings (digest and payload are written directly).
 */
import { CfsError } from '../errors.js';
import { isWhiteout, newInode, S_IFBLK, S_IFCHR, S_IFDIR, S_IFIFO, S_IFLNK, S_IFMT, S_IFREG, S_IFSOCK, type Inode } from '../tree/inode.js';
import {
  ACL_ACCESS,
  ACL_DEFAULT,
  BLOCK_BITS,
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
import { HASH_ALG_ID, hashAlgOfSize } from '../fsverity/digest.js';

export interface WriteOptions {
  /** Lowest format version (default 0). */
  minVersion?: number;
  /** Highest format version; the writer upgrades to it only when the tree has whiteouts (default 1). */
  maxVersion?: number;
}

/** Keys the writer itself sets on external files; interned first so their ids are fixed. */
const K_METACOPY = 0;
const K_REDIRECT = 1;
const DOT = '.';
const DOTDOT = '..';

/** A node's xattrs as alternating key/value strings: nodes carry only a handful. */
class XList implements XattrStore<string> {
  readonly kv: string[] = [];
  acct = 0;
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

function digestAlg(digest: Buffer): number {
  const alg = hashAlgOfSize(digest.length);
  return alg ? HASH_ALG_ID[alg] : 0;
}

function sameBytes(a: Buffer, b: Buffer): boolean {
  if (a.length !== b.length) return false;
  for (let i = 0; i < a.length; i++) if (a[i] !== b[i]) return false;
  return true;
}

/** Bytes of a latin1 string at `off`; short strings are cheaper copied here than in C++. */
function putLatin1(buf: Buffer, off: number, s: string): number {
  const n = s.length;
  if (n > 256) return buf.write(s, off, 'latin1');
  for (let i = 0; i < n; i++) buf[off + i] = s.charCodeAt(i);
  return n;
}

/**
 * The writer's state. Nodes (distinct inodes, then the root stubs) are numbered in discovery
 * order and every per-node fact lives in a parallel array indexed by that number; directory
 * entries likewise live in flat arrays. The input tree is only read.
 */
class Writer {
  // --- nodes (discovery order; 0 is the root)
  private readonly src: Inode[] = [];
  /** Entry naming the node: its first entry while discovering, then its canonical one. */
  private readonly nameEntry: number[] = [-1];
  /** Directories: their entries are [entStart, entEnd) of the flat entry arrays. */
  private readonly entStart: number[] = [0];
  private readonly entEnd: number[] = [0];
  /** Root entries in name order, stubs included. */
  private rootOrder: number[] = [];
  private nDiscovered = 0;
  private nNodes = 0;
  // rewritten attributes and layout (allocated once the node count is known)
  private mode = new Uint32Array(0);
  private nlink = new Float64Array(0);
  private size = new Float64Array(0);
  /** 1: external file carrying metacopy (and redirect when it has a payload). */
  private external = new Uint8Array(0);
  private hasRedirect = new Uint8Array(0);
  private xl: Array<XList | null> = [];
  private bfs = new Int32Array(0);
  private ino = new Int32Array(0);
  private nid = new Float64Array(0);
  private compact = new Uint8Array(0);
  private nblocks = new Float64Array(0);
  private tail = new Int32Array(0);
  private blockIndex = new Float64Array(0);
  private chunkCount = new Int32Array(0);
  private chunkFormat = new Int32Array(0);
  private nShared = new Int32Array(0);
  private xattrSize = new Int32Array(0);
  /** Pair ids of the node's xattrs in key order (nodes with any xattr other than metacopy/redirect). */
  private lists: Array<number[] | null> = [];
  private metaPair = new Int32Array(0);
  private redirPair = new Int32Array(0);
  /** Directories: their image entries ('.' and '..' included) are [fStart, fEnd) of fName/fNode. */
  private fStart = new Int32Array(0);
  private fEnd = new Int32Array(0);
  /** Directories: entry boundaries of each full block, then of the tail, from chunkAt. */
  private chunkAt = new Int32Array(0);
  private readonly chunks: number[] = [];
  // --- entries as discovered: name, target node, containing directory
  private readonly eName: string[] = [];
  private readonly eNode: number[] = [];
  private readonly eDir: number[] = [];
  private eCanon = new Uint8Array(0);
  private readonly fName: string[] = [];
  private readonly fNode: number[] = [];
  // --- xattr keys and (key, value) pairs
  private readonly keyIds = new Map<string, number>();
  private readonly keyStr: string[] = [];
  private readonly keyIndex: number[] = [];
  private readonly keySuffix: string[] = [];
  private readonly keyFilterBit: number[] = [];
  /** Per key (metacopy excepted): value token -> pair id (token: the value; redirect: the payload). */
  private readonly pairIds: Array<Map<string, number>> = [];
  private readonly pairKey: number[] = [];
  /** Value: latin1 string; metacopy: the digest (null: empty value); redirect: the payload. */
  private readonly pairVal: Array<string | Buffer | null> = [];
  private readonly pairCount: number[] = [];
  private readonly pairOffset: number[] = [];
  /** Metacopy pairs by the digest's first 32 bits, chained through metaNext; -1 ends a chain. */
  private readonly metaByWord = new Map<number, number>();
  private readonly metaNext: number[] = [];
  private metaNull = -1;
  /** latin1 strings of input xattr values, by Buffer identity (parsed trees share Buffers). */
  private readonly valueStrings = new Map<Buffer, string>();
  private readonly scratch: number[] = [];

  private version = 0;
  private minSec = 0;
  private minNsec = 0;
  private hasAcl = false;
  private shared: number[] = [];
  private sharedSize = 0;
  private inodesEnd = 0;
  private dataStart = 0;
  private nDataBlocks = 0;
  /** View of the image being emitted (DataView stores are cheaper than Buffer.write*). */
  private dv = new DataView(new ArrayBuffer(0));

  constructor(root: Inode, opts: WriteOptions) {
    this.internKey(OVL_METACOPY);
    this.internKey(OVL_REDIRECT);
    this.discover(root);
    let hasWhiteout = false;
    for (let i = 0; i < this.nDiscovered && !hasWhiteout; i++) {
      const s = this.src[i]!;
      hasWhiteout = isWhiteout(s);
    }
    this.version = chooseVersion(opts, hasWhiteout);
  }

  build(): Buffer {
    this.addStubs();
    this.rewriteAndOrder();
    this.computeShared();
    this.layout();
    return this.emit();
  }

  private path(i: number): string {
    const parts: string[] = [];
    for (let n = i; n !== 0; ) {
      const e = this.nameEntry[n]!;
      if (e < 0) break;
      parts.push(this.eName[e]!);
      n = this.eDir[e]!;
    }
    return '/' + parts.reverse().join('/');
  }
  private parentOf(i: number): number {
    const e = this.nameEntry[i]!;
    return e < 0 ? i : this.eDir[e]!;
  }

  private checkName(name: string, dir: number): void {
    if (name.length === 0 || name.length > NAME_MAX || name === DOT || name === DOTDOT || name.includes('/') || name.includes('\0')) {
      throw new CfsError('EINVAL', `cannot write image: invalid file name '${name}' in ${this.path(dir)}`);
    }
  }

  /**
   * Pass 1: number every distinct inode and record every entry. Directories are visited from a
   * stack in name order; the canonical entry of a hardlinked inode is its recorded primary one
   * (if met) else the first one seen.
   */
  private discover(root: Inode): void {
    if ((root.mode & S_IFMT) !== S_IFDIR || root.children === null) {
      throw new CfsError('EINVAL', 'cannot write image: the root is not a directory');
    }
    const { src, nameEntry, entStart, entEnd, eName, eNode, eDir } = this;
    const ids = new Map<Inode, number>();
    ids.set(root, 0);
    src.push(root);
    let linked: number[] | null = null;
    const stack: number[] = [0];
    const subdirs: number[] = [];
    while (stack.length > 0) {
      const d = stack.pop()!;
      const dir = src[d]!;
      const children = dir.children!;
      const names = [...children.keys()];
      // Parsed trees usually list children in order already.
      for (let i = 1; i < names.length; i++) {
        if (!(names[i - 1]! < names[i]!)) {
          names.sort();
          break;
        }
      }
      entStart[d] = eName.length;
      subdirs.length = 0;
      for (const name of names) {
        this.checkName(name, d);
        const child = children.get(name)!;
        const e = eName.length;
        const isDir = (child.mode & S_IFMT) === S_IFDIR;
        let c = ids.get(child);
        if (c === undefined) {
          if (isDir !== (child.children !== null)) {
            throw new CfsError('EINVAL', `cannot write image: ${this.path(d)}/${name}: children do not match the file type`);
          }
          c = src.length;
          ids.set(child, c);
          src.push(child);
          nameEntry.push(e);
          entStart.push(0);
          entEnd.push(0);
          if (isDir) subdirs.push(c);
        } else if (isDir) {
          throw new CfsError('ELOOP', `cannot write image: directory ${this.path(c)} appears twice (directory hardlink or cycle) at ${this.path(d)}/${name}`);
        } else {
          (linked ??= []).push(c);
        }
        eName.push(name);
        eNode.push(c);
        eDir.push(d);
      }
      entEnd[d] = eName.length;
      for (let i = subdirs.length - 1; i >= 0; i--) stack.push(subdirs[i]!);
    }
    this.nDiscovered = src.length;
    const canon = new Uint8Array(eName.length + 256);
    for (let i = 1; i < src.length; i++) canon[nameEntry[i]!] = 1;
    if (linked !== null) {
      // Only inodes with several entries can have a canonical entry other than their first seen.
      const multi = new Set(linked);
      const primary = new Map<number, number>();
      for (let e = 0; e < eName.length; e++) {
        const c = eNode[e]!;
        if (multi.has(c) && !primary.has(c) && isRecordedPrimary(src[c]!, src[eDir[e]!]!, eName[e]!)) primary.set(c, e);
      }
      // Without a record: the first entry in depth-first name order (composefs-rs's canonical
      // one, and the one composefs-info dump prints as real), which discovery (a directory's
      // entries before its subdirectories') need not have met first.
      if (primary.size < multi.size) {
        for (const [c, e] of this.firstInDepthFirstOrder(multi)) if (!primary.has(c)) primary.set(c, e);
      }
      for (const [c, e] of primary) {
        canon[nameEntry[c]!] = 0;
        canon[e] = 1;
        nameEntry[c] = e;
      }
    }
    this.eCanon = canon;
  }

  /** For each node of `nodes`, its first entry in a depth-first walk with entries in name order. */
  private firstInDepthFirstOrder(nodes: Set<number>): Map<number, number> {
    const { src, nameEntry, entStart, entEnd, eNode } = this;
    const first = new Map<number, number>();
    // (directory, its next entry): entries are recorded in name order per directory.
    const stack: Array<[number, number]> = [[0, entStart[0]!]];
    while (stack.length > 0 && first.size < nodes.size) {
      const top = stack[stack.length - 1]!;
      const [d, e] = top;
      if (e >= entEnd[d]!) {
        stack.pop();
        continue;
      }
      top[1] = e + 1;
      const c = eNode[e]!;
      if (nodes.has(c)) {
        if (!first.has(c)) first.set(c, e);
      } else if ((src[c]!.mode & S_IFMT) === S_IFDIR && nameEntry[c] === e) {
        stack.push([c, entStart[c]!]);
      }
    }
    return first;
  }

  private str(b: Buffer): string {
    const known = this.valueStrings.get(b);
    if (known !== undefined) return known;
    const s = b.toString('latin1');
    this.valueStrings.set(b, s);
    return s;
  }

  private set(i: number, key: string, value: string): void {
    const x = (this.xl[i] ??= new XList());
    const acct = setXattrCounted(x, x.acct, key, value);
    if (acct === null) {
      throw new CfsError('ERANGE', `cannot write image: xattrs of ${this.path(i)} exceed the per-inode size budget (setting ${key})`);
    }
    x.acct = acct;
  }

  /** Root stubs `00`..`ff` for names the root lacks (3.3); allocates the per-node arrays. */
  private addStubs(): void {
    const root = this.src[0]!;
    const { eName, eNode, eDir } = this;
    const existing = new Set<string>();
    const order: number[] = [];
    for (let e = this.entStart[0]!; e < this.entEnd[0]!; e++) {
      existing.add(eName[e]!);
      order.push(e);
    }
    const stubs: number[] = [];
    for (let i = 0; i < 256; i++) {
      const name = i.toString(16).padStart(2, '0');
      if (existing.has(name)) continue;
      const c = this.src.length;
      const e = eName.length;
      this.src.push(newInode(S_IFCHR | 0o644, { uid: root.uid, gid: root.gid, mtimeSec: root.mtimeSec, mtimeNsec: root.mtimeNsec }));
      this.nameEntry.push(e);
      this.entStart.push(0);
      this.entEnd.push(0);
      eName.push(name);
      eNode.push(c);
      eDir.push(0);
      this.eCanon[e] = 1;
      order.push(e);
      stubs.push(c);
    }
    if (stubs.length > 0) order.sort((a, b) => (eName[a]! < eName[b]! ? -1 : 1));
    this.rootOrder = order;

    const n = this.src.length;
    this.nNodes = n;
    this.mode = new Uint32Array(n);
    this.nlink = new Float64Array(n);
    this.size = new Float64Array(n);
    for (let i = 0; i < n; i++) {
      const s = this.src[i]!;
      this.mode[i] = s.mode & 0xffff;
      this.nlink[i] = s.nlink;
      this.size[i] = s.size;
    }
    this.external = new Uint8Array(n);
    this.hasRedirect = new Uint8Array(n);
    this.xl = new Array<XList | null>(n).fill(null);
    this.lists = new Array<number[] | null>(n).fill(null);
    this.bfs = new Int32Array(n);
    this.ino = new Int32Array(n);
    this.nid = new Float64Array(n);
    this.compact = new Uint8Array(n);
    this.nblocks = new Float64Array(n);
    this.tail = new Int32Array(n);
    this.blockIndex = new Float64Array(n);
    this.chunkCount = new Int32Array(n);
    this.chunkFormat = new Int32Array(n);
    this.nShared = new Int32Array(n);
    this.xattrSize = new Int32Array(n);
    this.metaPair = new Int32Array(n).fill(-1);
    this.redirPair = new Int32Array(n).fill(-1);
    this.fStart = new Int32Array(n);
    this.fEnd = new Int32Array(n);
    this.chunkAt = new Int32Array(n);

    // Stubs are never rewritten; they only copy the root's security.selinux.
    const selinux = root.xattrs.get('security.selinux');
    if (selinux !== undefined) for (const c of stubs) this.set(c, 'security.selinux', this.str(selinux));
  }

  /** BFS order, overlayfs rewrite, image entries with `.`/`..` (3.2, 3.3). */
  private rewriteAndOrder(): void {
    const { bfs, ino, mode, nlink, eName, eNode, eCanon, fName, fNode, fStart, fEnd } = this;
    let qn = 1;
    bfs[0] = 0;
    for (let q = 0; q < qn; q++) {
      const i = bfs[q]!;
      ino[i] = q;
      if (i < this.nDiscovered) this.rewrite(i);
      if ((mode[i]! & S_IFMT) !== S_IFDIR) continue;
      const ro = i === 0 ? this.rootOrder : null;
      const s = this.entStart[i]!;
      const count = ro !== null ? ro.length : this.entEnd[i]! - s;
      let subdirs = 0;
      let dot = true;
      let dotdot = true;
      fStart[i] = fName.length;
      for (let k = 0; k < count; k++) {
        const e = ro !== null ? ro[k]! : s + k;
        const name = eName[e]!;
        const c = eNode[e]!;
        if (eCanon[e] === 1) {
          if ((mode[c]! & S_IFMT) === S_IFDIR) subdirs++;
          bfs[qn++] = c;
        }
        if (dot && DOT < name) {
          fName.push(DOT);
          fNode.push(i);
          dot = false;
        }
        if (dotdot && DOTDOT < name) {
          fName.push(DOTDOT);
          fNode.push(this.parentOf(i));
          dotdot = false;
        }
        fName.push(name);
        fNode.push(c);
      }
      if (dot) {
        fName.push(DOT);
        fNode.push(i);
      }
      if (dotdot) {
        fName.push(DOTDOT);
        fNode.push(this.parentOf(i));
      }
      fEnd[i] = fName.length;
      nlink[i] = 2 + subdirs;
    }
    this.set(0, OVL_OPAQUE, 'y');
  }

  /** Per-node rewrite (3.2 steps 1-4); xattrs start empty with a zero budget counter. */
  private rewrite(i: number): void {
    const s = this.src[i]!;
    const type = this.mode[i]! & S_IFMT;
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
        throw new CfsError('EINVAL', `cannot write image: ${this.path(i)}: invalid mode ${s.mode.toString(8)}`);
    }
    if (s.xattrs.size > 0) {
      // The deep copy C writes from starts with a zero budget counter (see xattr-budget.ts).
      const x = new XList();
      for (const [k, v] of s.xattrs) x.kv.push(k.startsWith(OVL_PREFIX) ? OVL_ESCAPED_PREFIX + k.slice(OVL_PREFIX.length) : k, this.str(v));
      this.xl[i] = x;
    }
    if (type === S_IFLNK) {
      const payload = s.payload;
      if (payload === null || payload.length === 0 || payload.length >= PATH_MAX) {
        throw new CfsError('EINVAL', `cannot write image: ${this.path(i)}: invalid symlink target`);
      }
      this.size[i] = payload.length;
    } else if (type === S_IFREG) {
      const size = this.size[i]!;
      const content = s.content;
      if (content !== null && content.length > 0) {
        if (content.length !== size || size > MAX_INLINE_CONTENT) {
          throw new CfsError('EINVAL', `cannot write image: ${this.path(i)}: inline content of ${content.length} bytes (size ${size}, max ${MAX_INLINE_CONTENT})`);
        }
      } else if (size > 0) {
        const { chunkBits, chunkCount } = chunking(size);
        if (chunkCount > MAX_CHUNKS) throw new CfsError('EFBIG', `cannot write image: ${this.path(i)}: file too large (${size > 2 ** 53 ? 'over 2^53' : size} bytes, more than ${MAX_CHUNKS} chunks)`);
        this.chunkCount[i] = chunkCount;
        this.chunkFormat[i] = chunkBits - BLOCK_BITS;
        // metacopy and redirect: the writer's own keys, so they never replace an input xattr
        // and always fit the budget; their values are made from digest and payload when written.
        if (s.digest !== null && digestAlg(s.digest) === 0) {
          throw new CfsError('EINVAL', `cannot write image: ${this.path(i)}: digest of ${s.digest.length} bytes`);
        }
        this.external[i] = 1;
        const payload = s.payload;
        if (payload !== null && payload.length > 0) {
          if (payload.length >= PATH_MAX) throw new CfsError('EINVAL', `cannot write image: ${this.path(i)}: payload too long`);
          this.hasRedirect[i] = 1;
        }
      }
    } else if (type === S_IFCHR && s.rdev === 0) {
      // A user whiteout is stored escaped: a regular file overlayfs shows as a whiteout.
      this.size[i] = 0;
      this.mode[i] = S_IFREG | (this.mode[i]! & ~S_IFMT & 0xffff);
      const empty = '';
      this.set(i, OVL_ESCAPED_WHITEOUT, empty);
      this.set(i, OVL_USER_WHITEOUT, empty);
      const p = this.parentOf(i);
      this.set(p, OVL_ESCAPED_WHITEOUTS, empty);
      this.set(p, OVL_USER_WHITEOUTS, empty);
      if (this.version >= 1) {
        const x = 'x';
        this.set(p, OVL_ESCAPED_OPAQUE, x);
        this.set(p, OVL_USER_OPAQUE, x);
      }
    }
  }

  private internKey(key: string): number {
    let k = this.keyIds.get(key);
    if (k === undefined) {
      k = this.keyStr.length;
      const index = xattrIndexOf(key);
      const suffix = key.slice(xattrPrefixLen(index));
      this.keyIds.set(key, k);
      this.keyStr.push(key);
      this.keyIndex.push(index);
      this.keySuffix.push(suffix);
      this.keyFilterBit.push(xxh32(suffix, (XATTR_FILTER_SEED + index) >>> 0) & (XATTR_FILTER_BITS - 1));
      this.pairIds.push(new Map());
      if (key === ACL_ACCESS || key === ACL_DEFAULT) this.hasAcl = true;
    }
    return k;
  }

  /** One more inode whose metacopy value is made from `d`: digests are compared as bytes. */
  private useMetacopy(d: Buffer | null): number {
    let p: number;
    if (d === null) {
      if (this.metaNull < 0) this.metaNull = this.newPair(K_METACOPY, null);
      p = this.metaNull;
    } else {
      const word = d.readInt32LE(0);
      const head = this.metaByWord.get(word) ?? -1;
      p = head;
      while (p >= 0 && !sameBytes(this.pairVal[p] as Buffer, d)) p = this.metaNext[p]!;
      if (p < 0) {
        p = this.newPair(K_METACOPY, d);
        this.metaNext[p] = head;
        this.metaByWord.set(word, p);
      }
    }
    this.pairCount[p]!++;
    return p;
  }

  private newPair(key: number, value: string | Buffer | null): number {
    const p = this.pairKey.length;
    this.pairKey.push(key);
    this.pairVal.push(value);
    this.pairCount.push(0);
    this.pairOffset.push(-1);
    this.metaNext.push(-1);
    return p;
  }

  /** One more inode carrying (key, value); `token` identifies the value within the key. */
  private usePair(key: number, token: string, value: string | Buffer | null): number {
    const ids = this.pairIds[key]!;
    let p = ids.get(token);
    if (p === undefined) {
      p = this.newPair(key, value);
      ids.set(token, p);
    }
    this.pairCount[p]!++;
    return p;
  }

  private valueLength(p: number): number {
    const k = this.pairKey[p]!;
    const v = this.pairVal[p]!;
    if (k === K_METACOPY) return v === null ? 0 : METACOPY_HDR_SIZE + v.length;
    if (k === K_REDIRECT) return 1 + v!.length;
    return v!.length;
  }

  private entrySize(p: number): number {
    return roundUp(XATTR_ENTRY_SIZE + this.keySuffix[this.pairKey[p]!]!.length + this.valueLength(p), 4);
  }

  /** Pair ids of node i in key order (a shared scratch array for plain external files). */
  private pairsOf(i: number): number[] {
    const list = this.lists[i];
    if (list !== null) return list;
    const out = this.scratch;
    out.length = 0;
    if (this.metaPair[i]! >= 0) out.push(this.metaPair[i]!);
    if (this.redirPair[i]! >= 0) out.push(this.redirPair[i]!);
    return out;
  }

  /** Shared xattr table (3.4): pairs used by more than one inode, in descending order. */
  private computeShared(): void {
    const { bfs, src, external, hasRedirect, metaPair, redirPair, xl, keyStr } = this;
    let minSec = src[0]!.mtimeSec;
    let minNsec = src[0]!.mtimeNsec;
    for (let q = 0; q < this.nNodes; q++) {
      const i = bfs[q]!;
      const s = src[i]!;
      if (s.mtimeSec < minSec || (s.mtimeSec === minSec && s.mtimeNsec < minNsec)) {
        minSec = s.mtimeSec;
        minNsec = s.mtimeNsec;
      }
      if (external[i] === 1) {
        metaPair[i] = this.useMetacopy(s.digest);
        if (hasRedirect[i] === 1) redirPair[i] = this.usePair(K_REDIRECT, s.payload!, s.payload);
      }
      const x = xl[i];
      if (x === null) continue;
      const list: number[] = [];
      const kv = x.kv;
      for (let j = 0; j < kv.length; j += 2) {
        const value = kv[j + 1]!;
        list.push(this.usePair(this.internKey(kv[j]!), value, value));
      }
      if (metaPair[i]! >= 0) list.push(metaPair[i]!);
      if (redirPair[i]! >= 0) list.push(redirPair[i]!);
      if (list.length > 1) list.sort((a, b) => (keyStr[this.pairKey[a]!]! < keyStr[this.pairKey[b]!]! ? -1 : 1));
      this.lists[i] = list;
    }
    this.minSec = minSec;
    this.minNsec = minNsec;

    const { pairKey, pairVal } = this;
    const multi: number[] = [];
    for (let p = 0; p < pairKey.length; p++) if (this.pairCount[p]! > 1) multi.push(p);
    multi.sort((a, b) => {
      const ka = pairKey[a]!;
      const kb = pairKey[b]!;
      if (ka !== kb) return keyStr[ka]! < keyStr[kb]! ? 1 : -1;
      const la = this.valueLength(a);
      const lb = this.valueLength(b);
      if (la !== lb) return lb - la;
      const va = pairVal[a]!;
      const vb = pairVal[b]!;
      // Equal lengths: metacopy values differ only in their digests, redirects in their payloads.
      if (typeof va !== 'string' || typeof vb !== 'string') return Buffer.compare(vb as Buffer, va as Buffer);
      return va < vb ? 1 : va > vb ? -1 : 0;
    });
    let off = 0;
    for (const p of multi) {
      this.pairOffset[p] = off;
      off += this.entrySize(p);
    }
    this.shared = multi;
    this.sharedSize = off;

    for (let i = 0; i < this.nNodes; i++) {
      const list = this.pairsOf(i);
      if (list.length === 0) continue;
      let nShared = 0;
      let inlineSize = 0;
      for (const p of list) {
        if (this.pairOffset[p]! >= 0 && nShared < XATTR_MAX_SHARED_REFS) nShared++;
        else inlineSize += this.entrySize(p);
      }
      this.nShared[i] = nShared;
      this.xattrSize[i] = XATTR_HDR_SIZE + 4 * nShared + inlineSize;
    }
  }

  /** Inode layout (3.6): sizes, padding and nid of every inode; data block indexes. */
  private layout(): void {
    const { bfs, src, mode, nlink, size, nblocks, tail, compact, xattrSize } = this;
    const minSec = this.minSec;
    const minNsec = this.minNsec;
    let pos = INODES_START;
    let blocks = 0;
    for (let q = 0; q < this.nNodes; q++) {
      const i = bfs[q]!;
      const s = src[i]!;
      const type = mode[i]! & S_IFMT;
      let sizeForCompact = size[i]!;
      if (type === S_IFDIR) {
        this.dirLayout(i);
        sizeForCompact = nblocks[i]! * BLOCK_SIZE + tail[i]!;
      } else if (type === S_IFLNK) {
        tail[i] = s.payload!.length;
      } else if (type === S_IFREG && size[i]! > 0) {
        if (this.external[i] === 0) {
          const sz = size[i]!;
          let nb = Math.floor(sz / BLOCK_SIZE);
          let t = sz % BLOCK_SIZE;
          if (t > BLOCK_SIZE / 2) {
            nb++;
            t = 0;
          }
          nblocks[i] = nb;
          tail[i] = t;
        } else {
          tail[i] = 4 * this.chunkCount[i]!;
        }
      }
      const isCompact =
        s.mtimeSec === minSec &&
        s.mtimeNsec === minNsec &&
        nlink[i]! <= 0xffff &&
        s.uid <= 0xffff &&
        s.gid <= 0xffff &&
        sizeForCompact <= 0xffffffff;
      compact[i] = isCompact ? 1 : 0;
      const isz = isCompact ? COMPACT_SIZE : EXTENDED_SIZE;
      const xsz = xattrSize[i]!;
      const aligned = roundUp(pos, SLOT_SIZE);
      pos = aligned;
      const t = tail[i]!;
      if (type === S_IFLNK) {
        const total = isz + xsz + t;
        if (total >= BLOCK_SIZE) {
          nblocks[i] = 1;
          tail[i] = 0;
        }
        if (Math.floor(pos / BLOCK_SIZE) !== Math.floor((pos + total - 1) / BLOCK_SIZE)) pos = roundUp(pos, BLOCK_SIZE);
      } else if (t > 0) {
        const rem = BLOCK_SIZE - ((pos + isz + xsz) % BLOCK_SIZE);
        if (rem < t) {
          const extra = roundUp(rem, SLOT_SIZE);
          const rem2 = BLOCK_SIZE - ((pos + isz + xsz + extra) % BLOCK_SIZE);
          if (t <= rem2) {
            pos += extra;
          } else {
            // The chunk table does not fit inline: it "spills" into a data block (3.6.6).
            nblocks[i]!++;
            tail[i] = 0;
            pos = roundUp(pos, BLOCK_SIZE);
          }
        }
      }
      this.nid[i] = pos / SLOT_SIZE;
      this.blockIndex[i] = blocks;
      blocks += nblocks[i]!;
      pos += isz + xsz + tail[i]!;
    }
    this.inodesEnd = roundUp(pos, SLOT_SIZE);
    this.dataStart = roundUp(this.inodesEnd + this.sharedSize, BLOCK_SIZE);
    this.nDataBlocks = blocks;
    if (this.nid[0]! >= 0xffff) throw new CfsError('EFBIG', 'cannot write image: root inode number too large');
  }

  /** Directory sizing (3.6.3); records the entry boundaries of each block and of the tail. */
  private dirLayout(i: number): void {
    const { fName, chunks } = this;
    const start = this.fStart[i]!;
    const end = this.fEnd[i]!;
    this.chunkAt[i] = chunks.length;
    chunks.push(start);
    let used = 0;
    let nblocks = 0;
    for (let e = start; e < end; e++) {
      const need = DIRENT_SIZE + fName[e]!.length;
      if (used + need > BLOCK_SIZE) {
        nblocks++;
        used = 0;
        chunks.push(e);
      }
      used += need;
    }
    if (used > BLOCK_SIZE / 2) {
      nblocks++;
      used = 0;
      chunks.push(end);
    }
    chunks.push(end);
    this.nblocks[i] = nblocks;
    this.tail[i] = used;
  }

  /** Write pass (3.7) into one buffer. */
  private emit(): Buffer {
    const firstBlock = this.dataStart / BLOCK_SIZE;
    const total = this.dataStart + this.nDataBlocks * BLOCK_SIZE;
    const buf = Buffer.alloc(total);
    const dv = (this.dv = new DataView(buf.buffer, buf.byteOffset, buf.length));

    dv.setUint32(CFS_HDR.magic, CFS_MAGIC, true);
    dv.setUint32(CFS_HDR.version, CFS_HEADER_VERSION, true);
    dv.setUint32(CFS_HDR.flags, this.hasAcl ? CFS_FLAG_HAS_ACL : 0, true);
    dv.setUint32(CFS_HDR.composefsVersion, this.version, true);

    const sb = SB_OFFSET;
    dv.setUint32(sb + SB.magic, EROFS_MAGIC, true);
    dv.setUint32(sb + SB.featureCompat, FEATURE_COMPAT_MTIME | FEATURE_COMPAT_XATTR_FILTER, true);
    buf[sb + SB.blkszbits] = BLOCK_BITS;
    dv.setUint16(sb + SB.rootNid, this.nid[0]!, true);
    writeU64(dv, this.nNodes, sb + SB.inos);
    writeI64(dv, this.minSec, sb + SB.buildTime);
    dv.setUint32(sb + SB.buildTimeNsec, this.minNsec >>> 0, true);
    dv.setUint32(sb + SB.blocks, firstBlock + this.nDataBlocks, true);
    dv.setUint32(sb + SB.xattrBlkaddr, Math.floor(this.inodesEnd / BLOCK_SIZE), true);

    const sharedBase = this.inodesEnd % BLOCK_SIZE;
    const { bfs, nblocks, mode, src } = this;
    for (let q = 0; q < this.nNodes; q++) this.emitInode(buf, bfs[q]!, firstBlock, sharedBase);

    let off = this.inodesEnd;
    for (const p of this.shared) off = this.writeEntry(buf, off, p);

    for (let q = 0; q < this.nNodes; q++) {
      const i = bfs[q]!;
      const nb = nblocks[i]!;
      if (nb === 0) continue;
      const at = (firstBlock + this.blockIndex[i]!) * BLOCK_SIZE;
      const type = mode[i]! & S_IFMT;
      const s = src[i]!;
      if (type === S_IFDIR) {
        const c = this.chunkAt[i]!;
        for (let b = 0; b < nb; b++) this.writeDirChunk(buf, at + b * BLOCK_SIZE, this.chunks[c + b]!, this.chunks[c + b + 1]!);
      } else if (type === S_IFLNK) {
        buf.write(s.payload!, at, 'latin1');
      } else if (this.external[i] === 0) {
        s.content!.copy(buf, at, 0, Math.min(s.content!.length, BLOCK_SIZE));
      } else {
        buf.fill(0xff, at, at + BLOCK_SIZE);
      }
    }
    return buf;
  }

  private emitInode(buf: Buffer, i: number, firstBlock: number, sharedBase: number): void {
    const dv = this.dv;
    const s = this.src[i]!;
    const mode = this.mode[i]!;
    const type = mode & S_IFMT;
    const at = this.nid[i]! * SLOT_SIZE;
    const xattrSize = this.xattrSize[i]!;
    const nShared = this.nShared[i]!;
    const tail = this.tail[i]!;
    const nblocks = this.nblocks[i]!;
    const isCompact = this.compact[i] === 1;
    const nlink = this.nlink[i]!;
    const icount = xattrSize === 0 ? 0 : (xattrSize - XATTR_HDR_SIZE) / 4 + 1;
    let layout = tail > 0 ? LAYOUT_FLAT_INLINE : LAYOUT_FLAT_PLAIN;
    let size = 0;
    const external = this.external[i] === 1;
    if (type === S_IFDIR) size = nblocks * BLOCK_SIZE + tail;
    else if (type === S_IFREG) {
      size = this.size[i]!;
      if (external) layout = LAYOUT_CHUNK_BASED;
    } else if (type === S_IFLNK) size = s.payload!.length;
    const format = (layout << I_DATALAYOUT_SHIFT) | (isCompact ? 0 : I_VERSION_EXTENDED);
    let iu = 0;
    if (type === S_IFCHR || type === S_IFBLK) iu = s.rdev >>> 0;
    else if (nblocks > 0 && (type === S_IFDIR || type === S_IFREG || type === S_IFLNK)) iu = firstBlock + this.blockIndex[i]!;
    // Chunk-based: the chunk format overwrites the low 16 bits (also of a spilled table's block).
    if (external) iu = ((iu & 0xffff0000) | this.chunkFormat[i]!) >>> 0;

    if (isCompact) {
      dv.setUint16(at + COMPACT.format, format, true);
      dv.setUint16(at + COMPACT.xattrIcount, icount, true);
      dv.setUint16(at + COMPACT.mode, mode, true);
      dv.setUint16(at + COMPACT.nlink, nlink & 0xffff, true);
      dv.setUint32(at + COMPACT.size, size >>> 0, true);
      dv.setUint32(at + COMPACT.u, iu, true);
      dv.setUint32(at + COMPACT.ino, this.ino[i]! >>> 0, true);
      dv.setUint16(at + COMPACT.uid, s.uid & 0xffff, true);
      dv.setUint16(at + COMPACT.gid, s.gid & 0xffff, true);
    } else {
      dv.setUint16(at + EXTENDED.format, format, true);
      dv.setUint16(at + EXTENDED.xattrIcount, icount, true);
      dv.setUint16(at + EXTENDED.mode, mode, true);
      writeU64(dv, size, at + EXTENDED.size);
      dv.setUint32(at + EXTENDED.u, iu, true);
      dv.setUint32(at + EXTENDED.ino, this.ino[i]! >>> 0, true);
      dv.setUint32(at + EXTENDED.uid, s.uid >>> 0, true);
      dv.setUint32(at + EXTENDED.gid, s.gid >>> 0, true);
      writeI64(dv, s.mtimeSec, at + EXTENDED.mtime);
      dv.setUint32(at + EXTENDED.mtimeNsec, s.mtimeNsec >>> 0, true);
      dv.setUint32(at + EXTENDED.nlink, nlink >>> 0, true);
    }
    let off = at + (isCompact ? COMPACT_SIZE : EXTENDED_SIZE);
    if (xattrSize > 0) {
      const list = this.pairsOf(i);
      let bits = 0;
      for (const p of list) bits |= 1 << this.keyFilterBit[this.pairKey[p]!]!;
      dv.setUint32(off + XATTR_HDR.nameFilter, ~bits >>> 0, true);
      buf[off + XATTR_HDR.sharedCount] = nShared;
      off += XATTR_HDR_SIZE;
      let refs = 0;
      let inline = off + 4 * nShared;
      for (const p of list) {
        const po = this.pairOffset[p]!;
        if (po >= 0 && refs < nShared) {
          dv.setUint32(off, (sharedBase + po) / 4, true);
          off += 4;
          refs++;
        } else {
          inline = this.writeEntry(buf, inline, p);
        }
      }
      off = inline;
    }
    if (tail === 0) return;
    if (type === S_IFDIR) {
      const c = this.chunkAt[i]! + nblocks;
      this.writeDirChunk(buf, off, this.chunks[c]!, this.chunks[c + 1]!);
    } else if (type === S_IFLNK) {
      putLatin1(buf, off, s.payload!);
    } else if (!external) {
      s.content!.copy(buf, off, this.size[i]! - tail, this.size[i]!);
    } else {
      buf.fill(0xff, off, off + 4 * this.chunkCount[i]!);
    }
  }

  private writeEntry(buf: Buffer, off: number, p: number): number {
    const dv = this.dv;
    const k = this.pairKey[p]!;
    const suffix = this.keySuffix[k]!;
    const v = this.pairVal[p]!;
    buf[off + XATTR_ENTRY.nameLen] = suffix.length;
    buf[off + XATTR_ENTRY.nameIndex] = this.keyIndex[k]!;
    dv.setUint16(off + XATTR_ENTRY.valueSize, this.valueLength(p), true);
    let q = off + XATTR_ENTRY_SIZE;
    q += putLatin1(buf, q, suffix);
    if (k === K_METACOPY) {
      if (v !== null) {
        const d = v as Buffer;
        // version 0, total length, flags 0, hash algorithm, digest
        buf[q] = 0;
        buf[q + 1] = METACOPY_HDR_SIZE + d.length;
        buf[q + 2] = 0;
        buf[q + 3] = digestAlg(d);
        q += METACOPY_HDR_SIZE;
        for (let j = 0; j < d.length; j++) buf[q + j] = d[j]!;
        q += d.length;
      }
    } else if (k === K_REDIRECT) {
      buf[q++] = 0x2f; // '/'
      q += putLatin1(buf, q, v as string);
    } else {
      q += putLatin1(buf, q, v as string);
    }
    return off + roundUp(q - off, 4);
  }

  private writeDirChunk(buf: Buffer, at: number, from: number, to: number): void {
    const { fName, fNode, nid, mode, dv } = this;
    let nameoff = (to - from) * DIRENT_SIZE;
    let d = at;
    for (let e = from; e < to; e++) {
      const c = fNode[e]!;
      const name = fName[e]!;
      writeU64(dv, nid[c]!, d + DIRENT.nid);
      dv.setUint16(d + DIRENT.nameoff, nameoff, true);
      buf[d + DIRENT.fileType] = fileTypeOf(mode[c]!);
      nameoff += putLatin1(buf, at + nameoff, name);
      d += DIRENT_SIZE;
    }
  }
}

function writeU64(dv: DataView, v: number, off: number): void {
  dv.setUint32(off, v % 2 ** 32 >>> 0, true);
  dv.setUint32(off + 4, Math.floor(v / 2 ** 32) >>> 0, true);
}
function writeI64(dv: DataView, v: number, off: number): void {
  const hi = Math.floor(v / 2 ** 32);
  dv.setUint32(off, (v - hi * 2 ** 32) >>> 0, true);
  dv.setInt32(off + 4, hi | 0, true);
}

/**
 * Write the composefs EROFS image of `root` (not modified). Throws CfsError for trees C
 * mkcomposefs rejects (EFBIG, ERANGE, ELOOP, EINVAL).
 */
export function writeErofs(root: Inode, opts: WriteOptions = {}): Buffer {
  return new Writer(root, opts).build();
}
