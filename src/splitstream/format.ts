/**
 * Split stream file format (brief section 2): fixed header, info section, raw digest arrays,
 * a zstd frame of named refs and a zstd frame of chunks. All integers little-endian.
 */
import { CfsError } from '../errors.js';

export const MAGIC = Buffer.from('SplitStream', 'ascii');
export const FORMAT_VERSION = 0;
export const LG_BLOCKSIZE = 12;
export const HEADER_SIZE = 32;
export const INFO_SIZE = 80;

/** Header field offsets (current layout). */
export const HDR = { magic: 0, version: 11, flags: 12, algorithm: 14, lgBlocksize: 15, infoStart: 16, infoEnd: 24 } as const;
/** Header field offsets of the old layout written by bootc <= 1.15 (read-only support). */
export const OLD_HDR = { infoStart: 0, infoEnd: 8, flags: 16, magic: 18, version: 29, algorithm: 30, lgBlocksize: 31 } as const;
/** Info field offsets (relative to the info section); each range is {start u64, end u64}. */
export const INFO = { streamRefs: 0, objectRefs: 16, stream: 32, namedRefs: 48, contentType: 64, streamSize: 72 } as const;

/** Content types: 8 ASCII bytes read as a little-endian u64. 0 = unspecified. */
export const CONTENT_TYPES = {
  layer: 'ocilayer',
  config: 'ociconfg',
  manifest: 'ocimanif',
  blob: 'oci_blob',
} as const;

export type ContentTypeSpec = string | bigint;

export function contentTypeValue(t: ContentTypeSpec): bigint {
  if (typeof t === 'bigint') return t;
  const b = Buffer.from(t, 'ascii');
  if (b.length !== 8) throw new CfsError('EINVAL', `split stream content type '${t}' must be 8 ASCII characters`);
  return b.readBigUInt64LE(0);
}

/** Text form of a content type when it is printable ASCII, else its number. */
export function contentTypeText(v: bigint): string {
  const b = Buffer.alloc(8);
  b.writeBigUInt64LE(v);
  return b.every((c) => c >= 0x20 && c < 0x7f) ? b.toString('ascii') : `0x${v.toString(16)}`;
}

export interface Range {
  start: number;
  end: number;
}

export function writeRange(buf: Buffer, off: number, r: Range): void {
  buf.writeBigUInt64LE(BigInt(r.start), off);
  buf.writeBigUInt64LE(BigInt(r.end), off + 8);
}

export function readRange(buf: Buffer, off: number, what: string, stream: string): Range {
  const start = buf.readBigUInt64LE(off);
  const end = buf.readBigUInt64LE(off + 8);
  if (end < start) throw new CfsError('ECORRUPT', `split stream ${stream}: negative-sized ${what} range`);
  if (end > BigInt(Number.MAX_SAFE_INTEGER)) throw new CfsError('ECORRUPT', `split stream ${stream}: ${what} range out of bounds`);
  return { start: Number(start), end: Number(end) };
}

/** Inline chunk header: -n as i64. External: the object_refs index as i64. */
export function chunkHeader(value: number): Buffer {
  const b = Buffer.allocUnsafe(8);
  b.writeBigInt64LE(BigInt(value));
  return b;
}
