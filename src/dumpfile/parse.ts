/**
 * composefs dumpfile parser with C mkcomposefs semantics (field splitting, escapes, integer
 * parsing, xattr budget, hardlinks resolved after reading in reverse order, strict mode).
 *
 * Deliberate differences from C, all on malformed input only: `\x00` in a path, payload or xattr
 * key is rejected (C silently truncates); a DIGEST must be 64 (or 128, sha512) hex digits or empty
 * (C reads garbage); hardlinks to directories and hardlink cycles are rejected here (C accepts
 * the former and fails the latter at write time); MTIME parts beyond ±2^53 are rejected.
 *
 * Equal short xattr values share one Buffer across inodes: treat xattr values as read-only.
 */
import { CfsError } from '../errors.js';
import { S_IFBLK, S_IFCHR, S_IFDIR, S_IFIFO, S_IFLNK, S_IFMT, S_IFREG, S_IFSOCK, type Inode } from '../tree/inode.js';
import { MAX_INLINE_CONTENT, NAME_MAX, PATH_MAX } from '../erofs/format.js';
import { setXattrCounted } from '../erofs/xattr-budget.js';
import { setPrimaryLink } from '../erofs/hardlinks.js';
import { EscapeError, unescape } from './escape.js';

export interface ParseOptions {
  /** CFS_PARSE_STRICT semantics (composefs-dump(5)). */
  strict: boolean;
}

/** Internal signal for a line error; carries C's message. */
class LineError extends Error {}

const NFIELDS = 11;
const MAX_XATTR_PART = 0xffff;
const U64_MAX = (1n << 64n) - 1n;
const TWO53 = 2 ** 53;

function validType(mode: number): boolean {
  switch (mode & S_IFMT) {
    case S_IFREG:
    case S_IFDIR:
    case S_IFLNK:
    case S_IFBLK:
    case S_IFCHR:
    case S_IFSOCK:
    case S_IFIFO:
      return true;
    default:
      return false;
  }
}

function isSpace(c: number): boolean {
  return c === 0x20 || (c >= 0x09 && c <= 0x0d);
}

/** C strtoull(s, base) requiring the whole string to be consumed; wraps negatives, saturates. */
function parseU64(s: string, base: 8 | 10): bigint | number {
  const n = s.length;
  // Fast path: short plain digit strings.
  if (n > 0 && n <= 15) {
    let v = 0;
    let ok = true;
    for (let i = 0; i < n; i++) {
      const d = s.charCodeAt(i) - 0x30;
      if (d < 0 || d >= base) {
        ok = false;
        break;
      }
      v = v * base + d;
    }
    if (ok) return v;
  }
  let i = 0;
  while (i < n && isSpace(s.charCodeAt(i))) i++;
  let neg = false;
  if (i < n && (s[i] === '+' || s[i] === '-')) {
    neg = s[i] === '-';
    i++;
  }
  const start = i;
  let v = 0n;
  const b = BigInt(base);
  let overflow = false;
  for (; i < n; i++) {
    const d = s.charCodeAt(i) - 0x30;
    if (d < 0 || d >= base) break;
    v = v * b + BigInt(d);
    if (v > U64_MAX) overflow = true;
  }
  if (i === start || i !== n) throw new LineError(`Invalid integer ${s}`);
  if (overflow) return U64_MAX;
  return neg && v !== 0n ? (1n << 64n) - v : v;
}

/** parseU64 of s[a, b) without slicing in the common case (plain short digit runs). */
function numField(s: string, a: number, b: number, base: 8 | 10): bigint | number {
  if (b > a && b - a <= 15) {
    let v = 0;
    let i = a;
    for (; i < b; i++) {
      const d = s.charCodeAt(i) - 0x30;
      if (d < 0 || d >= base) break;
      v = v * base + d;
    }
    if (i === b) return v;
  }
  return parseU64(s.slice(a, b), base);
}

function u32(v: bigint | number): number {
  return typeof v === 'number' ? v >>> 0 : Number(v & 0xffffffffn);
}
/** Sizes above 2^53 only ever lead to "too large" (external files) or extended inodes; 2^53 itself is exact (1024 chunks of 2^43). */
function sizeOf(v: bigint | number): number {
  if (typeof v === 'bigint') return v > BigInt(TWO53) ? TWO53 + 2 : Number(v);
  return v > TWO53 ? TWO53 + 2 : v;
}
/** C stores the u64 in a signed 64-bit time field. */
function signed64(v: bigint | number, what: string): number {
  if (typeof v === 'number') return v;
  const s = BigInt.asIntN(64, v);
  if (s > BigInt(Number.MAX_SAFE_INTEGER) || s < BigInt(Number.MIN_SAFE_INTEGER)) throw new LineError(`${what} out of range`);
  return Number(s);
}

function unesc(s: string): string {
  try {
    return unescape(s);
  } catch (e) {
    if (e instanceof EscapeError) throw new LineError(e.message);
    throw e;
  }
}
function noNul(s: string, what: string): string {
  if (s.includes('\0')) throw new LineError(`Invalid NUL byte in ${what}`);
  return s;
}

function hexDigit(c: number): number {
  if (c >= 0x30 && c <= 0x39) return c - 0x30;
  const l = c | 0x20;
  return l >= 0x61 && l <= 0x66 ? l - 0x57 : -1;
}

/** Digests are cut from shared slabs (like Buffer's pool) and decoded here, not in C++. */
const SLAB_SIZE = 64 * 1024;
let slab = Buffer.alloc(0);
let slabAt = 0;

function parseDigest(s: string): Buffer | null {
  if (s.length === 0) return null;
  if (s.length !== 64 && s.length !== 128) throw new LineError(`Invalid digest ${s}`);
  const n = s.length >> 1;
  if (slabAt + n > slab.length) {
    slab = Buffer.allocUnsafeSlow(SLAB_SIZE);
    slabAt = 0;
  }
  for (let k = 0; k < n; k++) {
    const hi = hexDigit(s.charCodeAt(2 * k));
    const lo = hexDigit(s.charCodeAt(2 * k + 1));
    if ((hi | lo) < 0) throw new LineError(`Invalid digest ${s}`);
    slab[slabAt + k] = (hi << 4) | lo;
  }
  const d = slab.subarray(slabAt, slabAt + n);
  slabAt += n;
  return d;
}

interface Fixup {
  node: Inode;
  parent: Inode;
  name: string;
  target: string | null;
  line: number;
}

interface Located {
  node: Inode;
  parent: Inode;
  name: string;
}

/** Longest xattr value text shared between inodes (values repeat a lot in real trees). */
const INTERN_MAX = 256;

class TreeBuilder {
  root: Inode | null = null;
  /** Escaped xattr key text -> key; escaped short value text -> value Buffer (shared, read-only). */
  readonly keys = new Map<string, string>();
  readonly values = new Map<string, Buffer>();
  readonly fixups: Fixup[] = [];
  readonly placeholders = new Set<Inode>();
  /** Directory by the exact text of its path line: lines come parents-first, so this is a cache
   *  of what the name-by-name lookup returns (entries are never removed while parsing). */
  private readonly dirs = new Map<string, Inode>();
  /** Parent and name of the last added entry. */
  parent: Inode | null = null;
  name = '';
  /** Text before the name (through its last slash) of a recent line, and the directory it names:
   *  dumpfiles list a directory's children right after it, so most lines hit this. */
  private lastPrefix = '';
  private lastDir: Inode | null = null;

  /** C lookup_parent_path: skips leading/repeated slashes, intermediate names must exist. */
  private parentOf(path: string): { parent: Inode | null; name: string } {
    const slash = path.lastIndexOf('/');
    if (slash >= 0) {
      const cached = this.dirs.get(path.slice(0, slash));
      if (cached !== undefined) return { parent: cached, name: path.slice(slash + 1) };
    }
    let node: Inode = this.root!;
    let i = 0;
    for (;;) {
      while (path.charCodeAt(i) === 0x2f) i++;
      const slash = path.indexOf('/', i);
      if (slash < 0) return { parent: node, name: path.slice(i) };
      const child = node.children?.get(path.slice(i, slash));
      if (child === undefined) return { parent: null, name: '' };
      node = child;
      i = slash;
    }
  }

  /** C lookup_path: a path made only of slashes (or empty) is the root. */
  lookup(path: string): Located | null {
    let node: Inode = this.root!;
    let parent: Inode = node;
    let name = '';
    let i = 0;
    for (;;) {
      while (path.charCodeAt(i) === 0x2f) i++;
      if (i >= path.length) return { node, parent, name };
      const slash = path.indexOf('/', i);
      const end = slash < 0 ? path.length : slash;
      const n = path.slice(i, end);
      const child = node.children?.get(n);
      if (child === undefined) return null;
      parent = node;
      name = n;
      node = child;
      i = end;
    }
  }

  /** Add `path` (unescaped, non-empty); sets `this.parent` and `this.name` (null parent for the root). */
  add(path: string, node: Inode): void {
    if (path === '/') {
      if ((node.mode & S_IFMT) !== S_IFDIR) throw new LineError('Root must be a directory');
      if (this.root !== null) throw new LineError("Can't have multiple roots");
      this.root = node;
      this.dirs.set('', node);
      this.dirs.set('/', node);
      this.lastPrefix = '/';
      this.lastDir = node;
      this.parent = null;
      return;
    }
    if (this.root === null) throw new LineError('Root node not present');
    let parent: Inode | null;
    let name: string;
    const lp = this.lastPrefix.length;
    if (lp > 0 && path.length > lp && path.startsWith(this.lastPrefix) && path.indexOf('/', lp) < 0) {
      parent = this.lastDir;
      name = path.slice(lp);
    } else {
      ({ parent, name } = this.parentOf(path));
      if (parent !== null) {
        this.lastPrefix = path.slice(0, path.length - name.length);
        this.lastDir = parent;
      }
    }
    if (parent === null) throw new LineError(`Parent directory missing for ${path}`);
    if (parent.children === null) throw new LineError(`Parent must be a directory for ${path}`);
    if (name === '.' || name === '..') throw new LineError(`Invalid . or .. in path: ${path}`);
    if (name.length === 0 || name.length > NAME_MAX) throw new LineError("Can't add child");
    if (parent.children.has(name)) throw new LineError(`Path ${path} already exist`);
    parent.children.set(name, node);
    if (node.children !== null) {
      this.dirs.set(path, node);
      this.lastPrefix = path + '/';
      this.lastDir = node;
    }
    this.parent = parent;
    this.name = name;
  }
}

/** newInode's object, built without its defaults object (same shape: same property order). */
function newNode(mode: number, dir: boolean): Inode {
  return {
    mode,
    nlink: dir ? 2 : 1,
    uid: 0,
    gid: 0,
    rdev: 0,
    size: 0,
    mtimeSec: 0,
    mtimeNsec: 0,
    xattrs: new Map(),
    payload: null,
    content: null,
    digest: null,
    children: dir ? new Map() : null,
  };
}

/** Field boundaries of the current line: field i is s[FS[i], FE[i]). */
const FS = new Int32Array(NFIELDS);
const FE = new Int32Array(NFIELDS);
const F_PATH = 0;
const F_SIZE = 1;
const F_MODE = 2;
const F_NLINK = 3;
const F_UID = 4;
const F_GID = 5;
const F_RDEV = 6;
const F_MTIME = 7;
const F_PAYLOAD = 8;
const F_CONTENT = 9;
const F_DIGEST = 10;

function field(s: string, i: number): string {
  return s.slice(FS[i]!, FE[i]!);
}
function optionalField(s: string, i: number): string | null {
  const a = FS[i]!;
  if (FE[i]! - a === 1 && s.charCodeAt(a) === 0x2d) return null; // '-'
  return unesc(s.slice(a, FE[i]!));
}
function num(s: string, i: number, base: 8 | 10): bigint | number {
  return numField(s, FS[i]!, FE[i]!, base);
}

function parseLine(tb: TreeBuilder, s: string, start: number, end: number, lineNo: number, strict: boolean): void {
  let p = start;
  for (let i = 0; i < NFIELDS; i++) {
    let sp = s.indexOf(' ', p);
    if (sp < 0 || sp > end) sp = end;
    FS[i] = p;
    FE[i] = sp;
    p = sp < end ? sp + 1 : end;
  }
  const path = noNul(unesc(field(s, F_PATH)), 'path');
  if (path.length === 0) throw new LineError('Invalid empty path');

  const isHardlink = FE[F_MODE]! > FS[F_MODE]! && s.charCodeAt(FS[F_MODE]!) === 0x40; // '@'
  const modeFull = u32(numField(s, FS[F_MODE]! + (isHardlink ? 1 : 0), FE[F_MODE]!, 8));
  if (!validType(modeFull)) throw new LineError(`Invalid mode ${modeFull.toString(8)}`);
  const mode = modeFull & 0xffff;
  const type = mode & S_IFMT;

  const node = newNode(mode, type === S_IFDIR);
  tb.add(path, node);

  if (isHardlink) {
    if (type === S_IFDIR) throw new LineError("Directories can't be hardlinked");
    const target = optionalField(s, F_PAYLOAD);
    tb.placeholders.add(node);
    // parent is non-null: a non-directory can't be the root line.
    tb.fixups.push({ node, parent: tb.parent!, name: tb.name, target: target === null ? null : noNul(target, 'hardlink target'), line: lineNo });
    return;
  }

  const size = sizeOf(num(s, F_SIZE, 10));
  const nlink = u32(num(s, F_NLINK, 10));
  const uid = u32(num(s, F_UID, 10));
  const gid = u32(num(s, F_GID, 10));
  const rdevRaw = num(s, F_RDEV, 10);
  const mtA = FS[F_MTIME]!;
  const mtB = FE[F_MTIME]!;
  let dot = s.indexOf('.', mtA);
  if (dot < 0 || dot >= mtB) dot = -1;
  const mtimeSec = signed64(numField(s, mtA, dot < 0 ? mtB : dot, 10), 'mtime');
  // C keeps nanoseconds in 32 bits: 4294967296 is 0 there (and so the least mtime, which decides compact inodes).
  const mtimeNsec = u32(dot < 0 ? parseU64('', 10) : numField(s, dot + 1, mtB, 10));

  const payload = optionalField(s, F_PAYLOAD);
  const content = optionalField(s, F_CONTENT);
  if (content !== null && content.length !== size) {
    throw new LineError(`Invalid content size ${content.length}, must match size ${size}`);
  }
  const digestText = optionalField(s, F_DIGEST);

  const rdevNonZero = typeof rdevRaw === 'number' ? rdevRaw !== 0 : rdevRaw !== 0n;
  if (type === S_IFCHR || type === S_IFBLK) {
    // C keeps the device number in 32 bits while parsing: 2^32 is 0 there, a whiteout.
    node.rdev = u32(rdevRaw);
  } else if (strict && rdevNonZero) {
    throw new LineError('Non-zero devnum on non-device');
  }
  node.size = size;
  node.nlink = nlink;
  node.uid = uid;
  node.gid = gid;
  node.mtimeSec = mtimeSec;
  node.mtimeNsec = mtimeNsec;

  if (type === S_IFLNK) {
    if (payload === null || payload.length === 0 || payload.length >= PATH_MAX) throw new LineError('Invalid symlink');
    noNul(payload, 'symlink target');
    if (strict) {
      if (size !== payload.length) throw new LineError(`Invalid symlink size ${payload.length}, must match size ${size}`);
      if (content !== null && content.length > 0) throw new LineError('Symlink cannot have content');
    }
    node.payload = payload;
    node.size = payload.length;
  } else {
    if (payload !== null && payload.length >= PATH_MAX) throw new LineError('Invalid payload');
    if (content !== null && content.length > MAX_INLINE_CONTENT) {
      throw new LineError(`Inline content size ${content.length} exceeds maximum ${MAX_INLINE_CONTENT}`);
    }
    if (type === S_IFREG) {
      if (payload !== null) node.payload = noNul(payload, 'payload');
      if (content !== null && content.length > 0) node.content = Buffer.from(content, 'latin1');
    }
  }
  if (digestText !== null) {
    const d = parseDigest(digestText);
    if (type === S_IFREG) node.digest = d;
  }

  if (end - p > MAX_XATTR_PART) throw new LineError('Too many xattrs');
  let acct = 0;
  while (p < end) {
    let sp = s.indexOf(' ', p);
    if (sp < 0 || sp > end) sp = end;
    const eq = s.indexOf('=', p);
    if (eq < 0 || eq >= sp) throw new LineError('Missing = in xattr');
    const keyText = s.slice(p, eq);
    let key = tb.keys.get(keyText);
    if (key === undefined) {
      key = noNul(unesc(keyText), 'xattr key');
      tb.keys.set(keyText, key);
    }
    const valueText = s.slice(eq + 1, sp);
    let value = valueText.length <= INTERN_MAX ? tb.values.get(valueText) : undefined;
    if (value === undefined) {
      value = Buffer.from(unesc(valueText), 'latin1');
      if (valueText.length <= INTERN_MAX) tb.values.set(valueText, value);
    }
    const next = setXattrCounted(node.xattrs, acct, key, value);
    if (next === null) throw new LineError("Can't set xattr");
    acct = next;
    p = sp < end ? sp + 1 : end;
  }
}

function resolveHardlinks(tb: TreeBuilder): void {
  // Targets are looked up after the whole file is read, last line first (like C).
  const linkTo = new Map<Inode, Located>();
  for (let i = tb.fixups.length - 1; i >= 0; i--) {
    const fx = tb.fixups[i]!;
    const where = `line ${fx.line}`;
    if (fx.target === null) throw new CfsError('EINVAL', `${where}: No target path for the hardlink`);
    const found = tb.lookup(fx.target);
    if (found === null) throw new CfsError('EINVAL', `${where}: No target at ${fx.target} for hardlink`);
    if (found.node === fx.node) throw new CfsError('EINVAL', `${where}: Self-referential hardlink ${fx.target}`);
    linkTo.set(fx.node, found);
  }
  for (const fx of tb.fixups) {
    let cur = linkTo.get(fx.node)!;
    let steps = 0;
    while (tb.placeholders.has(cur.node)) {
      if (++steps > tb.fixups.length) throw new CfsError('ELOOP', `line ${fx.line}: hardlink cycle at ${fx.target ?? ''}`);
      cur = linkTo.get(cur.node)!;
    }
    if (cur.node.children !== null) throw new CfsError('EINVAL', `line ${fx.line}: hardlink to directory ${fx.target ?? ''}`);
    fx.parent.children!.set(fx.name, cur.node);
    setPrimaryLink(cur.node, cur.parent, cur.name);
  }
}

/** Parse a dumpfile into a tree; returns the root directory. */
export function parseDumpfile(input: Buffer, opts: ParseOptions): Inode {
  const s = input.toString('latin1');
  const tb = new TreeBuilder();
  const n = s.length;
  let pos = 0;
  let lineNo = 0;
  const nulAt = s.indexOf('\0');
  while (pos < n) {
    lineNo++;
    let nl = s.indexOf('\n', pos);
    const terminated = nl >= 0;
    if (!terminated) {
      if (opts.strict) throw new CfsError('EINVAL', `line ${lineNo}: Missing trailing newline`);
      nl = n;
    }
    try {
      if (nulAt >= pos && nulAt < nl) throw new LineError(`Invalid embedded NUL character at position ${nulAt - pos}`);
      parseLine(tb, s, pos, nl, lineNo, opts.strict);
    } catch (e) {
      if (e instanceof LineError) throw new CfsError('EINVAL', `line ${lineNo}: ${e.message}`);
      throw e;
    }
    pos = nl + 1;
  }
  if (tb.root === null) throw new CfsError('EINVAL', 'No files in dump file');
  resolveHardlinks(tb);
  return tb.root;
}
