/**
 * The composefs-on-EROFS on-disk format: every constant and field offset in one table.
 * All integers are little-endian. Offsets are relative to the start of each structure.
 */

export const BLOCK_BITS = 12;
export const BLOCK_SIZE = 1 << BLOCK_BITS;
/** Inode slot size (nid = byte offset / SLOT_SIZE). */
export const SLOT_SIZE = 32;

// composefs header (file offset 0)
export const CFS_MAGIC = 0xd078629a;
export const CFS_HEADER_VERSION = 1;
export const CFS_HDR = { magic: 0, version: 4, flags: 8, composefsVersion: 12 } as const;
export const CFS_FLAG_HAS_ACL = 1;
/** Highest composefs format version this implementation writes. */
export const CFS_VERSION_MAX = 1;

// EROFS superblock
export const SB_OFFSET = 1024;
export const SB_SIZE = 128;
export const EROFS_MAGIC = 0xe0f5e1e2;
export const SB = {
  magic: 0,
  checksum: 4,
  featureCompat: 8,
  blkszbits: 12,
  extSlots: 13,
  rootNid: 14,
  inos: 16,
  buildTime: 24,
  buildTimeNsec: 32,
  blocks: 36,
  metaBlkaddr: 40,
  xattrBlkaddr: 44,
  featureIncompat: 80,
} as const;
export const FEATURE_COMPAT_MTIME = 0x2;
export const FEATURE_COMPAT_XATTR_FILTER = 0x4;
/** First inode byte: right after the superblock. */
export const INODES_START = SB_OFFSET + SB_SIZE;

// Inodes
export const COMPACT_SIZE = 32;
export const COMPACT = { format: 0, xattrIcount: 2, mode: 4, nlink: 6, size: 8, u: 16, ino: 20, uid: 24, gid: 26 } as const;
export const EXTENDED_SIZE = 64;
export const EXTENDED = {
  format: 0,
  xattrIcount: 2,
  mode: 4,
  size: 8,
  u: 16,
  ino: 20,
  uid: 24,
  gid: 28,
  mtime: 32,
  mtimeNsec: 40,
  nlink: 44,
} as const;
/** i_format: bit 0 = extended, bits 1..3 = data layout. */
export const I_VERSION_EXTENDED = 1;
export const I_DATALAYOUT_SHIFT = 1;
export const LAYOUT_FLAT_PLAIN = 0;
export const LAYOUT_FLAT_INLINE = 2;
export const LAYOUT_CHUNK_BASED = 4;
/** Chunk-based i_u: low bits hold the chunk size (log2 - BLOCK_BITS). */
export const CHUNK_FORMAT_BLKBITS_MASK = 0x1f;
export const NULL_ADDR = 0xffffffff;

// Xattrs
export const XATTR_HDR_SIZE = 12;
export const XATTR_HDR = { nameFilter: 0, sharedCount: 4 } as const;
export const XATTR_ENTRY_SIZE = 4;
export const XATTR_ENTRY = { nameLen: 0, nameIndex: 1, valueSize: 2 } as const;
export const XATTR_FILTER_SEED = 0x25bbe08f;
export const XATTR_FILTER_BITS = 32;
/** At most this many shared references per inode (C writer cap). */
export const XATTR_MAX_SHARED_REFS = 128;
/** Prefixes the writer uses (first match wins); `lustre.` (5) is deliberately absent, like C. */
export const WRITE_XATTR_PREFIXES: ReadonlyArray<readonly [index: number, prefix: string]> = [
  [1, 'user.'],
  [2, 'system.posix_acl_access'],
  [3, 'system.posix_acl_default'],
  [4, 'trusted.'],
  [6, 'security.'],
];
/** Prefix by index, as readers interpret e_name_index. */
export const READ_XATTR_PREFIXES: ReadonlyArray<string> = [
  '',
  'user.',
  'system.posix_acl_access',
  'system.posix_acl_default',
  'trusted.',
  'lustre.',
  'security.',
];

// Directory entries
export const DIRENT_SIZE = 12;
export const DIRENT = { nid: 0, nameoff: 8, fileType: 10 } as const;
export const FT_UNKNOWN = 0;
export const FT_REG = 1;
export const FT_DIR = 2;
export const FT_CHRDEV = 3;
export const FT_BLKDEV = 4;
export const FT_FIFO = 5;
export const FT_SOCK = 6;
export const FT_SYMLINK = 7;

// composefs limits
export const MAX_INLINE_CONTENT = 5000;
/** Files of at most this size are inlined when scanning a directory. */
export const RECOMMENDED_INLINE_CONTENT = 64;
export const MAX_CHUNKS = 1024;
export const NAME_MAX = 255;
export const PATH_MAX = 4096;
export const XATTR_NAME_MAX = 255;
export const XATTR_VALUE_MAX = 65535;
/** Per-inode xattr budget for external input (see xattr-budget.ts). */
export const XATTR_BUDGET_EXTERNAL = 32767;

// overlayfs xattrs composefs writes or escapes
export const OVL_PREFIX = 'trusted.overlay.';
export const OVL_ESCAPED_PREFIX = 'trusted.overlay.overlay.';
export const OVL_METACOPY = 'trusted.overlay.metacopy';
export const OVL_REDIRECT = 'trusted.overlay.redirect';
export const OVL_OPAQUE = 'trusted.overlay.opaque';
export const OVL_ESCAPED_WHITEOUT = 'trusted.overlay.overlay.whiteout';
export const OVL_ESCAPED_WHITEOUTS = 'trusted.overlay.overlay.whiteouts';
export const OVL_ESCAPED_OPAQUE = 'trusted.overlay.overlay.opaque';
export const OVL_USER_WHITEOUT = 'user.overlay.whiteout';
export const OVL_USER_WHITEOUTS = 'user.overlay.whiteouts';
export const OVL_USER_OPAQUE = 'user.overlay.opaque';
export const ACL_ACCESS = 'system.posix_acl_access';
export const ACL_DEFAULT = 'system.posix_acl_default';
/** trusted.overlay.metacopy value: version 0, length, flags 0, hash algorithm, digest. */
export const METACOPY_HDR_SIZE = 4;

export function roundUp(x: number, align: number): number {
  return Math.ceil(x / align) * align;
}

/** (index, suffix) the writer stores for a full xattr key. */
export function xattrIndexOf(key: string): number {
  for (const [index, prefix] of WRITE_XATTR_PREFIXES) if (key.startsWith(prefix)) return index;
  return 0;
}
export function xattrPrefixLen(index: number): number {
  return index === 0 ? 0 : READ_XATTR_PREFIXES[index]!.length;
}

/** Chunk layout of an external file: log2 of the chunk size and the number of chunks. */
export function chunking(size: number): { chunkBits: number; chunkCount: number } {
  // bit length of (size - 1); for size 1 this is 0, clamped up below.
  const v = size - 1;
  const hi = Math.floor(v / 2 ** 32);
  const bits = hi > 0 ? 64 - Math.clz32(hi) : 32 - Math.clz32(v >>> 0);
  const chunkBits = Math.min(Math.max(bits, BLOCK_BITS), BLOCK_BITS + CHUNK_FORMAT_BLKBITS_MASK);
  return { chunkBits, chunkCount: Math.ceil(size / 2 ** chunkBits) };
}
