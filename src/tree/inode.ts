/**
 * The in-memory filesystem tree shared by the dumpfile parser/printer, the EROFS writer and
 * reader, the directory scanner and the OCI layer merge.
 *
 * Names, xattr keys, symlink targets and payloads are byte strings. We carry them as
 * "latin1" JS strings (one code unit per byte, 0..255): lossless via Buffer.from(s, 'latin1'),
 * usable as Map keys, and JS `<` on such strings is exactly unsigned byte order (= C strcmp,
 * Rust [u8] order), which the image format's sort rules need.
 */
export type ByteString = string;

export const S_IFMT = 0o170000;
export const S_IFSOCK = 0o140000;
export const S_IFLNK = 0o120000;
export const S_IFREG = 0o100000;
export const S_IFBLK = 0o060000;
export const S_IFDIR = 0o040000;
export const S_IFCHR = 0o020000;
export const S_IFIFO = 0o010000;

/**
 * One inode. Hardlinks are several directory entries referencing the same Inode object.
 * Directories have `children`; other types never do.
 */
export interface Inode {
  /** st_mode including the type bits (S_IF*). */
  mode: number;
  /** Link count as given by the source; directories are recomputed by the writer. */
  nlink: number;
  uid: number;
  gid: number;
  /** Device number (raw st_rdev), meaningful for char/block devices only. */
  rdev: number;
  /** File size (regular files); symlinks: target length. Safe integer up to 2^53. */
  size: number;
  mtimeSec: number;
  mtimeNsec: number;
  /** xattr key (byte string) -> value bytes. Writers sort keys themselves. */
  xattrs: Map<ByteString, Buffer>;
  /** Symlink target, or for regular files the backing path in the object store ("ab/cdef…"). */
  payload: ByteString | null;
  /** Inline content of a regular file (stored in the image). */
  content: Buffer | null;
  /** fs-verity digest of the backing object (32 bytes sha256, 64 bytes sha512). */
  digest: Buffer | null;
  /** Directory entries (name -> inode). Present iff the inode is a directory. */
  children: Map<ByteString, Inode> | null;
}

/** An overlay whiteout: a character device 0/0. */
export function isWhiteout(n: Inode): boolean {
  return (n.mode & S_IFMT) === S_IFCHR && n.rdev === 0;
}
export function isDir(n: Inode): boolean {
  return (n.mode & S_IFMT) === S_IFDIR;
}
export function isReg(n: Inode): boolean {
  return (n.mode & S_IFMT) === S_IFREG;
}
export function isSymlink(n: Inode): boolean {
  return (n.mode & S_IFMT) === S_IFLNK;
}

export function newInode(mode: number, init: Partial<Omit<Inode, 'mode'>> = {}): Inode {
  const dir = (mode & S_IFMT) === S_IFDIR;
  return {
    mode,
    nlink: init.nlink ?? (dir ? 2 : 1),
    uid: init.uid ?? 0,
    gid: init.gid ?? 0,
    rdev: init.rdev ?? 0,
    size: init.size ?? 0,
    mtimeSec: init.mtimeSec ?? 0,
    mtimeNsec: init.mtimeNsec ?? 0,
    xattrs: init.xattrs ?? new Map(),
    payload: init.payload ?? null,
    content: init.content ?? null,
    digest: init.digest ?? null,
    children: dir ? (init.children ?? new Map()) : null,
  };
}

/** Children of a directory in unsigned byte order of their names. */
export function sortedEntries(dir: Inode): Array<[ByteString, Inode]> {
  const entries = [...(dir.children ?? new Map<ByteString, Inode>()).entries()];
  entries.sort((a, b) => (a[0] < b[0] ? -1 : a[0] > b[0] ? 1 : 0));
  return entries;
}

