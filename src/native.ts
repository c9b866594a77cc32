/**
 * The one gateway to the native addon (native/, node-gyp). The addon is thin: each function is
 * one Linux call; errors come back as Node-style errors with `code` = errno name (e.g. 'ENOTTY',
 * 'EOPNOTSUPP'), `errno` and `syscall`. Policy lives in TypeScript.
 */
import { createRequire } from 'node:module';
import { fileURLToPath } from 'node:url';
import path from 'node:path';

export interface NativeAddon {
  // xattrs (never follow symlinks)
  lgetxattr(path: string, name: string): Buffer | null; // null when ENODATA
  llistxattr(path: string): string[]; // names as latin1 strings
  lsetxattr(path: string, name: string, value: Buffer): void;
  fgetxattr(fd: number, name: string): Buffer | null;
  flistxattr(fd: number): string[];
  // fs-verity
  fsverityEnable(fd: number, hashAlg: 1 | 2, blockSize: number): void;
  fsverityMeasure(fd: number): { hashAlg: number; digest: Buffer };
  // file creation and copies
  openTmpfile(dirPath: string, flags: number, mode: number): number; // O_TMPFILE
  linkFd(fd: number, newPath: string): void; // linkat(AT_FDCWD, /proc/self/fd/N, …, AT_SYMLINK_FOLLOW)
  ficlone(destFd: number, srcFd: number): void;
  renameNoReplace(oldPath: string, newPath: string): void; // renameat2(RENAME_NOREPLACE)
  flock(fd: number, op: number): void; // LOCK_SH=1 LOCK_EX=2 LOCK_NB=4 LOCK_UN=8
  syncfs(fd: number): void;
  // new mount API and classic mount calls
  fsopen(fsType: string, flags: number): number;
  fsconfigSetString(fsfd: number, key: string, value: string): void;
  fsconfigSetFlag(fsfd: number, key: string): void;
  fsconfigSetFd(fsfd: number, key: string, fd: number): void;
  fsconfigCreate(fsfd: number): void;
  fsmount(fsfd: number, flags: number, attrFlags: number): number;
  moveMount(fromFd: number, fromPath: string, toFd: number, toPath: string, flags: number): void;
  openTree(dirfd: number, path: string, flags: number): number;
  mount(source: string | null, target: string, fsType: string | null, flags: number, data: string | null): void;
  umount2(target: string, flags: number): void;
  // directories and fds
  openat2(dirfd: number, path: string, flags: number, mode: number, resolve: number): number;
  // SCM_RIGHTS over a connected unix socket fd
  sendFds(sockFd: number, data: Buffer, fds: number[]): number;
  recvFds(sockFd: number, maxData: number, maxFds: number): { data: Buffer; fds: number[] } | null; // null on EAGAIN
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
  throw new Error(`cfs native addon not built (run scripts/setup): ${String(lastErr)}`);
}
