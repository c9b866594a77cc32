/**
 * The kernel FUSE wire protocol (include/uapi/linux/fuse.h), the part a read-only server
 * speaks: opcodes, flags, and struct sizes/field offsets. All integers are little-endian
 * (the host order of every Linux platform Node runs on that we support).
 */

export const FUSE_KERNEL_VERSION = 7;
/** 7.40 added passthrough; older kernels negotiate down (we only use what both know). */
export const FUSE_KERNEL_MINOR_VERSION = 40;

/** Opcodes (fuse_opcode). */
export const Op = {
  LOOKUP: 1,
  FORGET: 2,
  GETATTR: 3,
  SETATTR: 4,
  READLINK: 5,
  SYMLINK: 6,
  MKNOD: 8,
  MKDIR: 9,
  UNLINK: 10,
  RMDIR: 11,
  RENAME: 12,
  LINK: 13,
  OPEN: 14,
  READ: 15,
  WRITE: 16,
  STATFS: 17,
  RELEASE: 18,
  FSYNC: 20,
  SETXATTR: 21,
  GETXATTR: 22,
  LISTXATTR: 23,
  REMOVEXATTR: 24,
  FLUSH: 25,
  INIT: 26,
  OPENDIR: 27,
  READDIR: 28,
  RELEASEDIR: 29,
  FSYNCDIR: 30,
  ACCESS: 34,
  CREATE: 35,
  INTERRUPT: 36,
  DESTROY: 38,
  BATCH_FORGET: 42,
  FALLOCATE: 43,
  READDIRPLUS: 44,
  RENAME2: 45,
  COPY_FILE_RANGE: 47,
  SETUPMAPPING: 48,
  REMOVEMAPPING: 49,
  SYNCFS: 50,
  TMPFILE: 51,
} as const;

/** Requests that would change the filesystem: answered EROFS. */
export const WRITE_OPS: ReadonlySet<number> = new Set([
  Op.SETATTR, Op.SYMLINK, Op.MKNOD, Op.MKDIR, Op.UNLINK, Op.RMDIR, Op.RENAME, Op.LINK, Op.WRITE,
  Op.SETXATTR, Op.REMOVEXATTR, Op.CREATE, Op.FALLOCATE, Op.RENAME2, Op.COPY_FILE_RANGE, Op.TMPFILE,
]);

/** fuse_init_in.flags / fuse_init_out.flags (low 32 bits; flags2 holds bits 32..63). */
export const Init = {
  ASYNC_READ: 1 << 0,
  DO_READDIRPLUS: 1 << 13,
  READDIRPLUS_AUTO: 1 << 14,
  PARALLEL_DIROPS: 1 << 18,
  POSIX_ACL: 1 << 20,
  MAX_PAGES: 1 << 22,
  CACHE_SYMLINKS: 1 << 23,
  INIT_EXT: 1 << 30,
} as const;
/** Bits of fuse_init_{in,out}.flags2 (the kernel's 1ULL << 32+n). */
export const Init2 = {
  PASSTHROUGH: 1 << (37 - 32),
} as const;

/** fuse_open_out.open_flags */
export const FOPEN_KEEP_CACHE = 1 << 1;
export const FOPEN_NOFLUSH = 1 << 5;
export const FOPEN_PASSTHROUGH = 1 << 7;

/** Struct sizes in bytes. */
export const Size = {
  IN_HEADER: 40,
  OUT_HEADER: 16,
  ATTR: 88,
  ENTRY_OUT: 40 + 88,
  ATTR_OUT: 16 + 88,
  OPEN_OUT: 16,
  KSTATFS: 80,
  GETXATTR_OUT: 8,
  INIT_OUT: 64,
  DIRENT: 24,
  DIRENTPLUS: 128 + 24,
} as const;

/** fuse_in_header: len u32, opcode u32, unique u64, nodeid u64, uid, gid, pid u32, … */
export const InHeader = { len: 0, opcode: 4, unique: 8, nodeid: 16, uid: 32, gid: 36, pid: 40 } as const;
/** fuse_out_header: len u32, error i32 (negative errno), unique u64. */
export const OutHeader = { len: 0, error: 4, unique: 8 } as const;

/** fuse_init_in (after the in header). */
export const InitIn = { major: 0, minor: 4, maxReadahead: 8, flags: 12, flags2: 16 } as const;
/** fuse_init_out. */
export const InitOut = {
  major: 0,
  minor: 4,
  maxReadahead: 8,
  flags: 12,
  maxBackground: 16, // u16
  congestionThreshold: 18, // u16
  maxWrite: 20,
  timeGran: 24,
  maxPages: 28, // u16
  mapAlignment: 30, // u16
  flags2: 32,
  maxStackDepth: 36,
} as const;

/** fuse_attr. */
export const Attr = {
  ino: 0,
  size: 8,
  blocks: 16,
  atime: 24,
  mtime: 32,
  ctime: 40,
  atimensec: 48,
  mtimensec: 52,
  ctimensec: 56,
  mode: 60,
  nlink: 64,
  uid: 68,
  gid: 72,
  rdev: 76,
  blksize: 80,
  flags: 84,
} as const;

/** fuse_entry_out: nodeid, generation, entry_valid, attr_valid (u64), their nsec (u32 ×2), attr. */
export const EntryOut = { nodeid: 0, generation: 8, entryValid: 16, attrValid: 24, entryValidNsec: 32, attrValidNsec: 36, attr: 40 } as const;
/** fuse_attr_out: attr_valid u64, attr_valid_nsec u32, dummy u32, attr. */
export const AttrOut = { attrValid: 0, attrValidNsec: 8, attr: 16 } as const;
/** fuse_open_in: flags u32, open_flags u32. */
export const OpenIn = { flags: 0 } as const;
/** fuse_open_out: fh u64, open_flags u32, backing_id i32. */
export const OpenOut = { fh: 0, openFlags: 8, backingId: 12 } as const;
/** fuse_read_in (READ, READDIR, READDIRPLUS): fh u64, offset u64, size u32, … */
export const ReadIn = { fh: 0, offset: 8, size: 16 } as const;
/** fuse_getxattr_in (GETXATTR, LISTXATTR): size u32, padding u32; GETXATTR's name follows. */
export const GetxattrIn = { size: 0, end: 8 } as const;
/** fuse_access_in: mask u32, padding u32. */
export const AccessIn = { mask: 0 } as const;
/** fuse_kstatfs. */
export const Kstatfs = { blocks: 0, bfree: 8, bavail: 16, files: 24, ffree: 32, bsize: 40, namelen: 44, frsize: 48 } as const;
/** fuse_dirent: ino u64, off u64, namelen u32, type u32, name (padded to 8 bytes). */
export const Dirent = { ino: 0, off: 8, namelen: 16, type: 20, name: 24 } as const;

/** Write a non-negative integer below 2^53 (or a negative one, two's complement) as u64. */
export function writeU64(buf: Buffer, value: number, off: number): void {
  buf.writeUInt32LE(value >>> 0, off);
  buf.writeUInt32LE(Math.floor(value / 0x1_0000_0000) >>> 0, off + 4);
}

/** Read a u64 that is known to be below 2^53 (offsets, fh, node ids). */
export function readU64(buf: Buffer, off: number): number {
  return buf.readUInt32LE(off) + buf.readUInt32LE(off + 4) * 0x1_0000_0000;
}

/** Size of a dirent record (fuse_dirent or fuse_direntplus) with an n-byte name, 8-aligned. */
export function direntSize(base: number, nameLen: number): number {
  return (base + nameLen + 7) & ~7;
}
