/**
 * splitdirfdstream wire format (brief 5.1): a sequence of chunks, no header or trailer; a clean
 * end of input at a type byte ends the stream. All integers little-endian.
 *
 *   0x00 Metadata        u32 length, bytes (tar headers and padding; never length 0)
 *   0x01 InlineData      u32 length, bytes (file content sent inline; length 0 allowed)
 *   0x02 FileBackedData  u64 length, u32 dirfd index, u32 name length, name bytes (no NUL):
 *                        bytes [0, length) of the file `name` beneath dirfds[index]
 */
import { CfsError } from '../errors.js';

export const CHUNK = { metadata: 0x00, inline: 0x01, file: 0x02 } as const;

/** Bytes after the type byte. */
export const HEADER_SIZE = { metadata: 4, inline: 4, file: 16 } as const;
/** Offsets inside a FileBackedData header (after the type byte). */
export const FILE_HDR = { length: 0, index: 8, nameLength: 12 } as const;

export const LIMITS = {
  /** Largest Metadata / InlineData body. */
  inlineBody: 256 * 1024 * 1024,
  /** Longest file name. */
  name: 4096,
} as const;

export type ChunkHeader =
  | { type: 'metadata' | 'inline'; length: number }
  | { type: 'file'; length: number; index: number; name: Buffer };

/**
 * Filename rules: not empty, no NUL, not absolute, no `..` component; `/` descends into
 * subdirectories. Returns the name as a string (it must be UTF-8).
 */
export function checkFileName(name: Buffer, where: string): string {
  const bad = (why: string): CfsError => new CfsError('EINVAL', `${where}: file name ${JSON.stringify(name.toString('utf8'))} ${why}`);
  if (name.length === 0) throw bad('is empty');
  if (name.length > LIMITS.name) throw bad(`is longer than ${LIMITS.name} bytes`);
  if (name.includes(0)) throw bad('contains NUL');
  const text = name.toString('utf8');
  if (!Buffer.from(text, 'utf8').equals(name)) throw bad('is not UTF-8');
  if (text.startsWith('/')) throw bad('is absolute');
  if (text.split('/').includes('..')) throw bad("has a '..' component");
  return text;
}

export function metadataHeader(type: 'metadata' | 'inline', length: number): Buffer {
  const b = Buffer.allocUnsafe(1 + 4);
  b[0] = CHUNK[type];
  b.writeUInt32LE(length, 1);
  return b;
}

export function fileHeader(length: number, index: number, name: Buffer): Buffer {
  const b = Buffer.allocUnsafe(1 + HEADER_SIZE.file + name.length);
  b[0] = CHUNK.file;
  b.writeBigUInt64LE(BigInt(length), 1 + FILE_HDR.length);
  b.writeUInt32LE(index, 1 + FILE_HDR.index);
  b.writeUInt32LE(name.length, 1 + FILE_HDR.nameLength);
  name.copy(b, 1 + HEADER_SIZE.file);
  return b;
}
