/**
 * A tar entry as the layer merge sees it: metadata decoded from ustar/GNU/PAX headers, content
 * either inline (small files, kept in the split stream) or an external repository object.
 * Produced by the tar splitter (import) and by reading a layer split stream back.
 */
import type { ByteString } from '../tree/inode.js';

export type TarEntryType = 'file' | 'directory' | 'symlink' | 'hardlink' | 'char' | 'block' | 'fifo';

export type TarContent =
  | { kind: 'inline'; data: Buffer }
  /** `id` is the object's fs-verity digest in the repository's algorithm. */
  | { kind: 'external'; id: Buffer; size: number };

export interface TarEntry {
  /** Path exactly as the archive names it (PAX `path` / GNU long name / ustar prefix+name). */
  path: ByteString;
  type: TarEntryType;
  /** Permission bits only (mode & 0o7777). */
  mode: number;
  uid: number;
  gid: number;
  mtimeSec: number;
  mtimeNsec: number;
  /** Symlink target, or hardlink target path (as named in the archive). */
  linkTarget: ByteString | null;
  /** Raw device number (makedev(major, minor)) for char/block devices. */
  rdev: number;
  /** Content size for regular files, 0 otherwise. */
  size: number;
  /** From PAX SCHILY.xattr.* records. */
  xattrs: Map<ByteString, Buffer>;
  /** Regular files only; null for other types. Empty files are inline with a 0-byte buffer. */
  content: TarContent | null;
}

/** Files of at most this many bytes are stored inline (split stream and image alike). */
export const INLINE_CONTENT_MAX = 64;
