/**
 * Read-only FUSE server for a composefs image tree (the composefs view, as `composefs-info
 * dump` shows it), on top of the `fuse-native` package (path-based libfuse 2 high-level API).
 *
 * - Inode numbers: root 1, then the order of a depth-first walk over byte-sorted names; a
 *   hardlinked Inode object keeps its first number. Mounted with `use_ino`, so stat shows them.
 * - Hidden as C composefs-fuse hides them: overlay whiteouts (char device 0:0; the kernel mount
 *   shows them as overlay xwhiteouts).
 * - All data I/O is synchronous on purpose: fuse-native hands every request to the JS main
 *   thread anyway, and not touching the libuv thread pool means a process that serves a mount
 *   can also read from it with async fs calls without deadlocking the pool.
 *
 * fuse-native limits (documented, not fixable without patching it): timestamps travel as
 * milliseconds (sub-millisecond nsec are truncated, times before 1970 show as 0); paths, names
 * and symlink targets cross the C boundary as UTF-8, so entries whose names are not valid UTF-8
 * are not listed, and non-UTF-8 link targets/xattr names are not representable.
 */
import { closeSync, readSync, readdirSync, readlinkSync, constants as fsc } from 'node:fs';
import { execFile } from 'node:child_process';
import { createRequire } from 'node:module';
import path from 'node:path';
import { promisify } from 'node:util';
import { CfsError } from '../errors.js';
import type { HashAlg } from '../fsverity/digest.js';
import { objectProblem } from './object-check.js';
import { isDir, isReg, isSymlink, isWhiteout, sortedEntries, type ByteString, type Inode } from '../tree/inode.js';
import { optValue } from './fuse-ll/channel.js';
import { openRegularObject } from './fuse-ll/objects.js';

const execFileP = promisify(execFile);

// ---- fuse-native surface (untyped CommonJS package) -------------------------------------------

interface FuseStat {
  mode: number;
  uid: number;
  gid: number;
  size: number;
  dev: number;
  nlink: number;
  ino: number;
  rdev: number;
  blksize: number;
  blocks: number;
  atime: number; // milliseconds
  mtime: number;
  ctime: number;
}

interface FuseStatfs {
  bsize: number;
  frsize: number;
  blocks: number;
  bfree: number;
  bavail: number;
  files: number;
  ffree: number;
  favail: number;
  fsid: number;
  flag: number;
  namemax: number;
}

/** fuse-native callbacks take a negative errno, or 0 (or a byte count for read) plus results. */
type Done = (code: number) => void;

interface FuseOps {
  init(cb: Done): void;
  getattr(p: string, cb: (code: number, st?: FuseStat) => void): void;
  fgetattr(p: string, fh: number, cb: (code: number, st?: FuseStat) => void): void;
  readdir(p: string, cb: (code: number, names?: string[], stats?: FuseStat[]) => void): void;
  readlink(p: string, cb: (code: number, target?: string) => void): void;
  getxattr(p: string, name: string, position: number, cb: (code: number, value?: Buffer | null) => void): void;
  listxattr(p: string, cb: (code: number, names?: string[]) => void): void;
  open(p: string, flags: number, cb: (code: number, fh?: number) => void): void;
  read(p: string, fh: number, buf: Buffer, len: number, pos: number, cb: Done): void;
  release(p: string, fh: number, cb: Done): void;
  statfs(p: string, cb: (code: number, st?: FuseStatfs) => void): void;
  access(p: string, mode: number, cb: Done): void;
  // Refused: the filesystem is read-only.
  write(p: string, fh: number, buf: Buffer, len: number, pos: number, cb: Done): void;
  create(p: string, mode: number, cb: Done): void;
  truncate(p: string, size: number, cb: Done): void;
  ftruncate(p: string, fh: number, size: number, cb: Done): void;
  utimens(p: string, atime: number, mtime: number, cb: Done): void;
  chmod(p: string, mode: number, cb: Done): void;
  chown(p: string, uid: number, gid: number, cb: Done): void;
  mknod(p: string, mode: number, dev: number, cb: Done): void;
  mkdir(p: string, mode: number, cb: Done): void;
  unlink(p: string, cb: Done): void;
  rmdir(p: string, cb: Done): void;
  rename(src: string, dest: string, cb: Done): void;
  link(src: string, dest: string, cb: Done): void;
  symlink(src: string, dest: string, cb: Done): void;
  setxattr(p: string, name: string, value: Buffer, position: number, flags: number, cb: Done): void;
  removexattr(p: string, name: string, cb: Done): void;
}

interface FuseNative {
  mount(cb: (err: Error | null) => void): void;
  /** Replaced per instance: we pass our own option string (fuse-native has no `ro`/`use_ino`). */
  _fuseOptions: () => string;
  /** Opaque fuse_thread_t buffer the binding needs to release its loop handle. */
  _thread: Buffer | null;
}
interface FuseNativeCtor {
  new (mnt: string, ops: FuseOps, opts: { timeout: false }): FuseNative;
}
interface FuseBinding {
  fuse_native_unmount(mnt: string, thread: Buffer): void;
}

const requireCjs = createRequire(import.meta.url);
let fuseNative: { Fuse: FuseNativeCtor; binding: FuseBinding } | null = null;

function loadFuseNative(): { Fuse: FuseNativeCtor; binding: FuseBinding } {
  if (fuseNative) return fuseNative;
  const Fuse = requireCjs('fuse-native') as FuseNativeCtor;
  // The same addon instance fuse-native loaded (require cache); its JS unmount always runs a
  // lazy `fusermount -uz` and fails on an already unmounted path, so we unmount ourselves and
  // only need the binding's call that drops the loop reference.
  const fromFuse = createRequire(requireCjs.resolve('fuse-native'));
  const gypBuild = fromFuse('node-gyp-build') as (dir: string) => FuseBinding;
  fuseNative = { Fuse, binding: gypBuild(path.dirname(requireCjs.resolve('fuse-native'))) };
  return fuseNative;
}

// ---- errno values (negated for fuse-native) ---------------------------------------------------

const ENOENT = -2;
const EIO = -5;
const EISDIR = -21;
const EROFS = -30;

const O_ACCMODE = 3;
const W_OK = 2;
const ST_RDONLY = 1;
const BLOCK_SIZE = 4096;
const NAME_MAX = 255;
const ENTRY_TTL_SECONDS = 86400;
const CHANNEL_POLL_MS = 200;

// ---- public API --------------------------------------------------------------------------------

export interface FuseServeOptions {
  root: Inode;
  /** Directory that external payloads ("ab/cdef…") are relative to. */
  objectsDir: string;
  mountpoint: string;
  /** Shown as the mount source `cfs:<name>`. */
  name: string;
  /** Check each object's fs-verity digest on its first open; mismatch or failure → EIO. */
  verify?: { alg: HashAlg };
  /** Diagnostics (missing objects, digest mismatches); default: one line to stderr. */
  log?: (line: string) => void;
}

export interface FuseUnmountOptions {
  /** Detach even while files are open (`fusermount3 -u -z`); open files keep being served. */
  lazy?: boolean;
}

export interface FuseHandle {
  readonly mountpoint: string;
  readonly server: FuseImageServer;
  /**
   * Unmount with `fusermount3 -u` (works for root and for the mounting user). Without `lazy`,
   * a busy mount (open files, a cwd inside) fails with CfsError EBUSY and stays mounted. With
   * `lazy` it resolves once detached; open files are served until closed (see `closed`).
   */
  unmount(opts?: FuseUnmountOptions): Promise<void>;
  /**
   * Resolves when the kernel has ended the connection (after an unmount by anyone, and for a
   * lazy unmount once the last open file is closed); the process may then exit.
   */
  readonly closed: Promise<void>;
}

interface ObjectFd {
  fd: number;
  refs: number;
}

interface OpenFile {
  inode: Inode;
  object: ObjectFd | null;
  payload: ByteString | null;
}

/** Byte string (latin1 JS string) → the UTF-8 JS string fuse-native passes, or null if not UTF-8. */
function toUtf8Name(b: ByteString): string | null {
  const buf = Buffer.from(b, 'latin1');
  const s = buf.toString('utf8');
  return Buffer.from(s, 'utf8').equals(buf) ? s : null;
}

function fromUtf8Name(s: string): ByteString {
  return Buffer.from(s, 'utf8').toString('latin1');
}

export class FuseImageServer {
  readonly opts: FuseServeOptions;
  private readonly inos = new Map<Inode, number>();
  private readonly parents = new Map<Inode, Inode>();
  private readonly subdirCount = new Map<Inode, number>();
  /** Directory → its visible entries as fuse-native names, in byte order. */
  private readonly listings = new Map<Inode, Array<[string, Inode]>>();
  private readonly objects = new Map<ByteString, ObjectFd>();
  /** Per object: verified ok (true) or failed (false); absent = not checked yet. */
  private readonly verified = new Map<ByteString, boolean>();
  private readonly open = new Map<number, OpenFile>();
  private nextFh = 1;
  private readonly log: (line: string) => void;

  constructor(opts: FuseServeOptions) {
    this.opts = opts;
    this.log = opts.log ?? ((line) => process.stderr.write(`${line}\n`));
    this.index(opts.root);
  }

  private index(root: Inode): void {
    const stack: Inode[] = [root];
    this.parents.set(root, root);
    while (stack.length > 0) {
      const n = stack.pop()!;
      if (this.inos.has(n)) continue; // a hardlink seen before
      this.inos.set(n, this.inos.size + 1);
      if (!isDir(n)) continue;
      const listing: Array<[string, Inode]> = [];
      let subdirs = 0;
      for (const [name, child] of sortedEntries(n)) {
        if (isWhiteout(child)) continue;
        const shown = toUtf8Name(name);
        if (shown === null) continue;
        listing.push([shown, child]);
        if (isDir(child)) {
          subdirs++;
          this.parents.set(child, n);
        }
      }
      this.listings.set(n, listing);
      this.subdirCount.set(n, subdirs);
      // Reverse push so the walk visits children in byte order (preorder numbering).
      for (let i = listing.length - 1; i >= 0; i--) stack.push(listing[i][1]);
    }
  }

  /** Inode at a fuse-native path ("/a/b"), or undefined. */
  resolve(p: string): Inode | undefined {
    let n: Inode | undefined = this.opts.root;
    for (const part of p.split('/')) {
      if (part === '') continue;
      const child: Inode | undefined = n.children?.get(fromUtf8Name(part));
      if (!child || isWhiteout(child)) return undefined;
      n = child;
    }
    return n;
  }

  stat(n: Inode): FuseStat {
    const ms = Math.max(0, n.mtimeSec * 1000 + Math.floor(n.mtimeNsec / 1e6));
    const size = isSymlink(n) ? (n.payload ?? '').length : n.size;
    return {
      mode: n.mode,
      uid: n.uid,
      gid: n.gid,
      size,
      dev: 0,
      nlink: isDir(n) ? 2 + (this.subdirCount.get(n) ?? 0) : n.nlink,
      ino: this.inos.get(n) ?? 0,
      rdev: n.rdev,
      blksize: BLOCK_SIZE,
      blocks: Math.ceil(size / 4096) * 8, // whole 4 KiB blocks, as the kernel mount shows them
      atime: ms,
      mtime: ms,
      ctime: ms,
    };
  }

  /** The fuse-native operation table. */
  ops(): FuseOps {
    const refuse = (...args: unknown[]): void => (args[args.length - 1] as Done)(EROFS);
    return {
      init: (cb) => cb(0),
      getattr: (p, cb) => {
        const n = this.resolve(p);
        if (n) cb(0, this.stat(n));
        else cb(ENOENT);
      },
      fgetattr: (p, fh, cb) => {
        const n = this.open.get(fh)?.inode ?? this.resolve(p);
        if (n) cb(0, this.stat(n));
        else cb(ENOENT);
      },
      readdir: (p, cb) => {
        const n = this.resolve(p);
        const listing = n ? this.listings.get(n) : undefined;
        if (!n || !listing) return cb(ENOENT);
        const names = ['.', '..'];
        const stats = [this.stat(n), this.stat(this.parents.get(n) ?? n)];
        for (const [name, child] of listing) {
          names.push(name);
          stats.push(this.stat(child));
        }
        cb(0, names, stats);
      },
      readlink: (p, cb) => {
        const n = this.resolve(p);
        if (!n) return cb(ENOENT);
        const target = isSymlink(n) && n.payload !== null ? toUtf8Name(n.payload) : null;
        if (target === null) return cb(EIO);
        cb(0, target);
      },
      getxattr: (p, name, _position, cb) => {
        const n = this.resolve(p);
        if (!n) return cb(ENOENT);
        cb(0, n.xattrs.get(fromUtf8Name(name)) ?? null);
      },
      listxattr: (p, cb) => {
        const n = this.resolve(p);
        if (!n) return cb(ENOENT);
        const names: string[] = [];
        for (const k of [...n.xattrs.keys()].sort()) {
          const s = toUtf8Name(k);
          if (s !== null) names.push(s);
        }
        cb(0, names);
      },
      open: (p, flags, cb) => {
        const n = this.resolve(p);
        if (!n) return cb(ENOENT);
        if ((flags & O_ACCMODE) !== fsc.O_RDONLY || (flags & fsc.O_TRUNC) !== 0) return cb(EROFS);
        if (isDir(n)) return cb(EISDIR);
        const r = this.openFile(p, n);
        if (typeof r === 'number') return cb(r);
        const fh = this.nextFh++;
        this.open.set(fh, r);
        cb(0, fh);
      },
      read: (_p, fh, buf, len, pos, cb) => cb(this.readFile(fh, buf, len, pos)),
      release: (_p, fh, cb) => {
        this.releaseFile(fh);
        cb(0);
      },
      statfs: (_p, cb) =>
        cb(0, {
          bsize: BLOCK_SIZE,
          frsize: BLOCK_SIZE,
          blocks: 0,
          bfree: 0,
          bavail: 0,
          files: this.inos.size,
          ffree: 0,
          favail: 0,
          fsid: 0,
          flag: ST_RDONLY,
          namemax: NAME_MAX,
        }),
      access: (p, mode, cb) => {
        if (!this.resolve(p)) return cb(ENOENT);
        cb(mode & W_OK ? EROFS : 0);
      },
      write: refuse,
      create: refuse,
      truncate: refuse,
      ftruncate: refuse,
      utimens: refuse,
      chmod: refuse,
      chown: refuse,
      mknod: refuse,
      mkdir: refuse,
      unlink: refuse,
      rmdir: refuse,
      rename: refuse,
      link: refuse,
      symlink: refuse,
      setxattr: refuse,
      removexattr: refuse,
    };
  }

  /** An OpenFile for a non-directory, or a negative errno. */
  private openFile(p: string, n: Inode): OpenFile | number {
    if (!isReg(n) || n.content !== null || n.payload === null) return { inode: n, object: null, payload: null };
    const payload = n.payload;
    if (this.verified.get(payload) === false) return EIO;
    let obj = this.objects.get(payload);
    if (!obj) {
      const file = path.join(this.opts.objectsDir, payload);
      let fd: number;
      try {
        fd = openRegularObject(file);
      } catch (e) {
        this.log(`cfs fuse: ${p}: cannot open object ${payload}: ${(e as Error).message}`);
        return EIO;
      }
      if (this.opts.verify && !this.verified.has(payload)) {
        const problem = objectProblem(fd, file, payload, n.digest, this.opts.verify.alg);
        this.verified.set(payload, problem === null);
        if (problem !== null) {
          this.log(`cfs fuse: ${p}: ${problem}`);
          closeSync(fd);
          return EIO;
        }
      }
      obj = { fd, refs: 0 };
      this.objects.set(payload, obj);
    }
    obj.refs++;
    return { inode: n, object: obj, payload };
  }

  /** Bytes read into buf, or a negative errno. */
  private readFile(fh: number, buf: Buffer, len: number, pos: number): number {
    const f = this.open.get(fh);
    if (!f) return EIO;
    const n = f.inode;
    const want = Math.max(0, Math.min(len, n.size - pos));
    if (want === 0) return 0;
    if (n.content !== null) return n.content.copy(buf, 0, pos, pos + want);
    if (!f.object) {
      buf.fill(0, 0, want); // a sized file with neither inline data nor an object reads as a hole
      return want;
    }
    let done = 0;
    try {
      while (done < want) {
        const got = readSync(f.object.fd, buf, done, want - done, pos + done);
        if (got === 0) break;
        done += got;
      }
    } catch (e) {
      this.log(`cfs fuse: read of object ${f.payload} failed: ${(e as Error).message}`);
      return EIO;
    }
    return done;
  }

  private releaseFile(fh: number): void {
    const f = this.open.get(fh);
    if (!f) return;
    this.open.delete(fh);
    if (f.object && f.payload !== null && --f.object.refs === 0) {
      this.objects.delete(f.payload);
      closeSync(f.object.fd);
    }
  }
}

/** This process's fds open on /dev/fuse. */
function devFuseFds(): Set<number> {
  const out = new Set<number>();
  for (const name of readdirSync('/proc/self/fd')) {
    try {
      if (readlinkSync(`/proc/self/fd/${name}`) === '/dev/fuse') out.add(Number(name));
    } catch {
      // closed meanwhile
    }
  }
  return out;
}

/** libfuse option values: `,` separates options and `\` escapes. */
/** The libfuse 2 `-o` option string of a cfs mount. */
export function fuseMountOptions(name: string, privileged: boolean): string {
  const o = [
    'ro',
    'use_ino',
    'default_permissions',
    'kernel_cache',
    `entry_timeout=${ENTRY_TTL_SECONDS}`,
    `negative_timeout=${ENTRY_TTL_SECONDS}`,
    `attr_timeout=${ENTRY_TTL_SECONDS}`,
    `fsname=${optValue(`cfs:${name}`)}`,
    'subtype=cfs',
  ];
  // Root: other users may read (as with a kernel composefs mount), and setuid bits and device
  // nodes keep their meaning instead of libfuse's default nosuid,nodev.
  if (privileged) o.push('allow_other', 'suid', 'dev');
  return `-o${o.join(',')}`;
}

/** `fusermount3 -u [-z] MP`; a busy mount → CfsError EBUSY. */
export async function fusermountUnmount(mountpoint: string, lazy: boolean): Promise<void> {
  try {
    await execFileP('fusermount3', lazy ? ['-u', '-z', '--', mountpoint] : ['-u', '--', mountpoint]);
  } catch (e) {
    const stderr = String((e as { stderr?: unknown }).stderr ?? '').trim();
    if (/busy/i.test(stderr)) {
      throw new CfsError('EBUSY', `${mountpoint}: FUSE mount is busy (a file or directory on it is still in use); close it or unmount lazily`, { path: mountpoint });
    }
    throw new CfsError('EIO', `${mountpoint}: fusermount3 -u failed: ${stderr.split('\n')[0] || (e as Error).message}`, { path: mountpoint });
  }
}

/**
 * Mount `opts.root` at `opts.mountpoint` and serve it from this process. Resolves once the
 * kernel has initialised the connection. The serving process must not use synchronous fs
 * calls on the mount (they would block the thread that answers them).
 */
export async function startFuse(opts: FuseServeOptions): Promise<FuseHandle> {
  const { Fuse, binding } = loadFuseNative();
  const mountpoint = path.resolve(opts.mountpoint);
  const server = new FuseImageServer(opts);
  const fuse = new Fuse(mountpoint, server.ops(), { timeout: false });
  const fdsBefore = devFuseFds();
  const optString = fuseMountOptions(opts.name, process.getuid?.() === 0);
  fuse._fuseOptions = () => optString;
  await new Promise<void>((resolve, reject) => {
    fuse.mount((err) => {
      if (!err) return resolve();
      const why = err.message === 'fuse failed' ? 'libfuse could not mount (see its message above; /dev/fuse access and fusermount are needed)' : err.message;
      reject(new CfsError('EIO', `${mountpoint}: FUSE mount failed: ${why}`, { path: mountpoint }));
    });
  });
  // libfuse closes its /dev/fuse fd when its loop ends (connection gone); nothing else tells JS.
  const channel = [...devFuseFds()].find((fd) => !fdsBefore.has(fd));
  const closed = new Promise<void>((resolve) => {
    const poll = setInterval(() => {
      if (channel !== undefined && devFuseFds().has(channel)) return;
      clearInterval(poll);
      // Drop the binding's event-loop reference so a process that is done can exit.
      if (fuse._thread) binding.fuse_native_unmount(mountpoint, fuse._thread);
      resolve();
    }, CHANNEL_POLL_MS);
    poll.unref();
  });
  let mounted = true;
  return {
    mountpoint,
    server,
    async unmount(u: FuseUnmountOptions = {}): Promise<void> {
      if (!mounted) return;
      await fusermountUnmount(mountpoint, u.lazy ?? false);
      mounted = false;
    },
    closed,
  };
}
