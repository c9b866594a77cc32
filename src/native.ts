/**
 * The one gateway to the native addon (native/, node-gyp). The addon is thin: each function is
 * one Linux call; errors come back as Node-style errors with `code` = errno name (e.g. 'ENOTTY',
 * 'EOPNOTSUPP'), `errno` (negative, as Node's own errors) and `syscall`; the message reads
 * "<syscall>[ <path or key>]: <strerror>". Every fd the addon creates is close-on-exec.
 * Policy lives in TypeScript.
 */
import { createRequire } from 'node:module';
import { fileURLToPath } from 'node:url';
import path from 'node:path';
import { CfsError } from './errors.js';

export interface NativeAddon {
  // xattrs (never follow symlinks)
  lgetxattr(path: string | Buffer, name: string): Buffer | null; // null when ENODATA; a Buffer path for names that are not UTF-8
  llistxattr(path: string | Buffer): string[]; // names as latin1 strings
  lsetxattr(path: string, name: string, value: Buffer, flags?: number): void; // flags: XATTR_CREATE/REPLACE
  fgetxattr(fd: number, name: string): Buffer | null;
  flistxattr(fd: number): string[];
  // fs-verity
  fsverityEnable(fd: number, hashAlg: 1 | 2, blockSize: number): void;
  fsverityMeasure(fd: number): { hashAlg: number; digest: Buffer };
  // file creation and copies
  openTmpfile(dirPath: string, flags: number, mode: number): number; // O_TMPFILE added; flags need O_WRONLY or O_RDWR
  linkFd(fd: number, newPath: string): void; // linkat(AT_FDCWD, /proc/self/fd/N, …, AT_SYMLINK_FOLLOW)
  ficlone(destFd: number, srcFd: number): void;
  renameNoReplace(oldPath: string, newPath: string): void; // renameat2(RENAME_NOREPLACE)
  flock(fd: number, op: number): void; // LOCK_SH=1 LOCK_EX=2 LOCK_NB=4 LOCK_UN=8
  /** POSIX whole-file lock via fcntl(F_SETLK[W]); op takes flock's LOCK_* bits. */
  fcntlLock(fd: number, op: number): void;
  syncfs(fd: number): void;
  /**
   * Write objects on the threadpool, in order: O_TMPFILE in `dir`, write `datas[i]`, link it to
   * `names[i]` ("xx/yyyy…" in hex; names joined by '\n'), creating the fan-out directory; an
   * existing name wins. For insecure repositories (no fs-verity). The Buffers must not change
   * until the promise settles; the first failure rejects, naming the object. Resolves with how
   * many of the objects were there already.
   */
  storeObjects(dir: string, names: string, datas: Buffer[]): Promise<number>;
  // hashing (OpenSSL from the node binary). Handles are single-use: after *Digest, further use throws EINVAL.
  /** Streaming fs-verity digest (4096-byte blocks, no salt); constant memory. */
  verityNew(hashAlg: 1 | 2): VerityHasherHandle;
  verityUpdate(hasher: VerityHasherHandle, data: Uint8Array): void;
  verityDigest(hasher: VerityHasherHandle): Buffer; // finalizes
  verityDigestBuffer(data: Uint8Array, algId: number): Buffer; // one-shot, no hasher object
  /** Plain streaming digest. Throws EBUSY while a hashFeed job is feeding it. */
  hashNew(name: StreamHashName): StreamHashHandle;
  hashUpdate(hash: StreamHashHandle, data: Uint8Array): void;
  hashDigest(hash: StreamHashHandle): Buffer; // finalizes
  /**
   * On the threadpool, one job: the fs-verity digests of [0, length) of each (fd, length) pair,
   * concatenated in order. A shorter file rejects with code 'ESHORT', `index` (the pair) and
   * `offset` (where it ended); read errors keep their errno and carry `index`. The fds must stay
   * open until the promise settles.
   */
  verityHashFds(pairs: Float64Array, hashAlg: 1 | 2): Promise<Buffer>;
  /**
   * On the threadpool, one job: appends each (fd, offset, length) segment to `stream` in order;
   * fd -1 takes bytes [offset, offset + length) of `data`. `stream` is busy (EBUSY) until the
   * promise settles; errors as for verityHashFds. With `hashAlg` and `verity` (ascending indexes
   * of fd segments), also the fs-verity digests of those segments from the same reads,
   * concatenated in order.
   */
  hashFeed(stream: StreamHashHandle, data: Buffer | null, triples: Float64Array): Promise<void>;
  hashFeed(stream: StreamHashHandle, data: Buffer | null, triples: Float64Array, hashAlg: 1 | 2, verity: Uint32Array): Promise<Buffer>;
  // new mount API and classic mount calls
  fsopen(fsType: string, flags: number): number; // FSOPEN_CLOEXEC always added
  fsconfigSetString(fsfd: number, key: string, value: string): void;
  fsconfigSetFlag(fsfd: number, key: string): void;
  fsconfigSetFd(fsfd: number, key: string, fd: number): void;
  fsconfigCreate(fsfd: number): void;
  fsmount(fsfd: number, flags: number, attrFlags: number): number; // FSMOUNT_CLOEXEC always added
  moveMount(fromFd: number, fromPath: string, toFd: number, toPath: string, flags: number): void;
  openTree(dirfd: number, path: string, flags: number): number; // OPEN_TREE_CLOEXEC always added
  mount(source: string | null, target: string, fsType: string | null, flags: number, data: string | null): void;
  umount2(target: string, flags: number): void;
  // directories and fds
  /** `path`: a Buffer for names that are not UTF-8 (no NUL either way). */
  /** O_CLOEXEC added; with `out`, the new fd is also fstat'ed into it (see fstatFields), and closed again if that fails. */
  openat2(dirfd: number, path: string | Buffer, flags: number, mode: number, resolve: number, out?: Float64Array): number;
  /** fstat into `out`: [st_dev, st_mode, st_uid, st_gid, st_size, mtime s, mtime ns] (7 elements at least). */
  fstatFields(fd: number, out: Float64Array): void;
  // SCM_RIGHTS over a connected unix socket fd
  socketpair(): [number, number]; // AF_UNIX SOCK_STREAM
  sendFds(sockFd: number, data: Buffer, fds: number[]): number; // empty data is sent as one 0 byte
  recvFds(sockFd: number, maxData: number, maxFds: number): RecvFdsResult | null; // MSG_DONTWAIT; null on EAGAIN
  // unix stream sockets (non-blocking, close-on-exec) and fd readiness on Node's event loop (uv_poll)
  listenUnix(path: string, backlog: number): number; // socket + bind + listen; "@name": abstract namespace
  connectUnix(path: string): number; // "@name": abstract namespace
  accept(listenFd: number): number | null; // accept4; null on EAGAIN
  setNonBlocking(fd: number): void;
  peerHungUp(sockFd: number): boolean; // poll(2) POLLHUP now: the peer closed the socket, not just its write side
  peerCredentials(sockFd: number): { pid: number; uid: number; gid: number }; // getsockopt SO_PEERCRED: who connected
  pollStart(fd: number, events: number, cb: (status: number, events: number) => void): PollHandle; // events: POLL_* bits
  pollUpdate(handle: PollHandle, events: number): void; // 0 pauses
  pollStop(handle: PollHandle): void; // must precede close(fd)
  // FUSE passthrough (kernel 6.9+, CAP_SYS_ADMIN): register/unregister a backing file on a /dev/fuse fd
  fuseBackingOpen(devFd: number, fd: number): number; // FUSE_DEV_IOC_BACKING_OPEN -> backing id
  fuseBackingClose(devFd: number, id: number): void; // FUSE_DEV_IOC_BACKING_CLOSE
  constants: NativeConstants;
}

/** Opaque fs-verity hasher state from verityNew. */
export interface VerityHasherHandle {
  readonly __verityHasher: unique symbol;
}

/** Opaque stream hash state from hashNew. */
export interface StreamHashHandle {
  readonly __streamHash: unique symbol;
}

export type StreamHashName = 'sha256' | 'sha384' | 'sha512';

/** Opaque uv_poll handle from pollStart. */
export interface PollHandle {
  readonly __pollHandle: unique symbol;
}

export interface RecvFdsResult {
  data: Buffer; // empty at end of stream
  fds: number[];
  truncated: boolean; // MSG_TRUNC or MSG_CTRUNC: data or fds were cut off
}

/** Kernel constants the TypeScript side needs, taken from the C headers at build time. */
export interface NativeConstants {
  O_TMPFILE: number;
  O_PATH: number;
  O_DIRECTORY: number;
  O_RDONLY: number;
  O_WRONLY: number;
  O_RDWR: number;
  AT_FDCWD: number;
  AT_EMPTY_PATH: number;
  MOVE_MOUNT_F_EMPTY_PATH: number;
  MOUNT_ATTR_RDONLY: number;
  MOUNT_ATTR_NOSUID: number;
  MOUNT_ATTR_NODEV: number;
  MOUNT_ATTR_NOEXEC: number;
  MOUNT_ATTR_NOATIME: number;
  MOUNT_ATTR_STRICTATIME: number;
  MOUNT_ATTR_NODIRATIME: number;
  OPEN_TREE_CLONE: number;
  MNT_DETACH: number;
  UMOUNT_NOFOLLOW: number;
  MS_RDONLY: number;
  MS_NOSUID: number;
  MS_NODEV: number;
  RESOLVE_NO_XDEV: number;
  RESOLVE_NO_MAGICLINKS: number;
  RESOLVE_BENEATH: number;
  LOCK_SH: number;
  LOCK_EX: number;
  LOCK_NB: number;
  LOCK_UN: number;
  XATTR_CREATE: number;
  POLL_READABLE: number;
  POLL_WRITABLE: number;
  POLL_DISCONNECT: number;
}

const here = path.dirname(fileURLToPath(import.meta.url));
// Compiled layout: dist/src/native.js -> ../../native/build/Release; tsx layout: src/native.ts -> ../native/…
const candidates = [
  path.resolve(here, '../../native/build/Release/cfs_native.node'),
  path.resolve(here, '../native/build/Release/cfs_native.node'),
];

let cached: NativeAddon | null = null;

export function native(): NativeAddon {
  if (cached) return cached;
  const require = createRequire(import.meta.url);
  let lastErr: unknown;
  for (const c of candidates) {
    try {
      cached = require(c) as NativeAddon;
      return cached;
    } catch (e) {
      lastErr = e;
    }
  }
  const why = lastErr instanceof Error ? lastErr.message.split('\n')[0] : String(lastErr);
  throw new CfsError('ENOTSUP', `cfs native addon not built (${candidates[0]}): run \`npm rebuild cfs\` (in a checkout: scripts/setup) [${why}]`);
}
