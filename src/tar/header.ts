/**
 * One 512-byte tar header block: field table, numeric fields (octal or GNU base-256),
 * checksum, and the ustar / GNU / v7 variants.
 */
import { CfsError } from '../errors.js';

export const BLOCK_SIZE = 512;

/** [offset, length] of each header field (POSIX ustar; GNU reuses name..devminor). */
const F = {
  name: [0, 100],
  mode: [100, 8],
  uid: [108, 8],
  gid: [116, 8],
  size: [124, 12],
  mtime: [136, 12],
  chksum: [148, 8],
  typeflag: [156, 1],
  linkname: [157, 100],
  magic: [257, 6],
  version: [263, 2],
  devmajor: [329, 8],
  devminor: [337, 8],
  prefix: [345, 155],
} as const;

type Field = keyof typeof F;

const USTAR_MAGIC = Buffer.from('ustar\0', 'latin1');
const USTAR_VERSION = Buffer.from('00', 'latin1');
const GNU_MAGIC = Buffer.from('ustar ', 'latin1');
const GNU_VERSION = Buffer.from(' \0', 'latin1');

export type HeaderFormat = 'ustar' | 'gnu' | 'v7';

export interface RawHeader {
  format: HeaderFormat;
  /** Name field up to its first NUL. */
  name: Buffer;
  /** ustar prefix field (POSIX format only), up to its first NUL; null otherwise. */
  prefix: Buffer | null;
  linkname: Buffer;
  typeflag: number;
  mode: number;
  uid: number;
  gid: number;
  size: number;
  mtime: number;
  /** Device numbers (ustar/GNU only); null for v7 headers. */
  devmajor: number | null;
  devminor: number | null;
}

function field(block: Buffer, f: Field): Buffer {
  const [off, len] = F[f];
  return block.subarray(off, off + len);
}

function cstr(b: Buffer): Buffer {
  const nul = b.indexOf(0);
  return nul < 0 ? b : b.subarray(0, nul);
}

export function roundUp(n: number): number {
  return Math.ceil(n / BLOCK_SIZE) * BLOCK_SIZE;
}

export function isZeroBlock(b: Buffer): boolean {
  for (let i = 0; i < b.length; i++) if (b[i] !== 0) return false;
  return true;
}

/**
 * Numeric field: octal digits (optionally space-padded, NUL/space terminated), or GNU base-256
 * (first byte 0x80 = positive, 0xff = negative two's complement). Throws a message string.
 */
export function parseNumeric(b: Buffer, what: string): number {
  if (b.length > 0 && (b[0] & 0x80) !== 0) {
    let v = BigInt(b[0] & 0x7f);
    const negative = b[0] === 0xff;
    for (let i = 1; i < b.length; i++) v = (v << 8n) | BigInt(b[i]);
    if (negative) v -= 1n << BigInt(8 * b.length - 1);
    if (v > BigInt(Number.MAX_SAFE_INTEGER) || v < BigInt(Number.MIN_SAFE_INTEGER)) throw new Error(`${what} field out of range`);
    return Number(v);
  }
  let i = 0;
  while (i < b.length && b[i] === 0x20) i++;
  let v = 0;
  let digits = 0;
  for (; i < b.length && b[i] >= 0x30 && b[i] <= 0x37; i++, digits++) v = v * 8 + (b[i] - 0x30);
  for (; i < b.length; i++) {
    if (b[i] !== 0 && b[i] !== 0x20) throw new Error(`invalid ${what} field '${b.toString('latin1').replace(/\0/g, '')}'`);
  }
  if (digits === 0) return 0;
  return v;
}

/** Stored checksum vs. the sum of all bytes with the checksum field taken as spaces. */
function checksumOk(block: Buffer): boolean {
  let stored: number;
  try {
    stored = parseNumeric(field(block, 'chksum'), 'checksum');
  } catch {
    return false;
  }
  let unsigned = 0;
  let signed = 0;
  for (let i = 0; i < BLOCK_SIZE; i++) {
    const c = i >= F.chksum[0] && i < F.chksum[0] + F.chksum[1] ? 0x20 : block[i];
    unsigned += c;
    signed += c > 127 ? c - 256 : c;
  }
  return stored === unsigned || stored === signed;
}

/** Decode a non-zero header block. Errors are message strings for the caller to wrap. */
export function decodeHeader(block: Buffer): RawHeader {
  if (!checksumOk(block)) throw new Error('tar header checksum mismatch');
  const magic = field(block, 'magic');
  const version = field(block, 'version');
  const format: HeaderFormat = magic.equals(USTAR_MAGIC) && version.equals(USTAR_VERSION)
    ? 'ustar'
    : magic.equals(GNU_MAGIC) && version.equals(GNU_VERSION)
      ? 'gnu'
      : magic.equals(USTAR_MAGIC) ? 'ustar' : 'v7';
  const ext = format !== 'v7';
  const prefix = format === 'ustar' ? cstr(field(block, 'prefix')) : null;
  return {
    format,
    name: cstr(field(block, 'name')),
    prefix: prefix && prefix.length > 0 ? prefix : null,
    linkname: cstr(field(block, 'linkname')),
    typeflag: block[F.typeflag[0]],
    mode: parseNumeric(field(block, 'mode'), 'mode'),
    uid: parseNumeric(field(block, 'uid'), 'uid'),
    gid: parseNumeric(field(block, 'gid'), 'gid'),
    size: parseNumeric(field(block, 'size'), 'size'),
    mtime: parseNumeric(field(block, 'mtime'), 'mtime'),
    devmajor: ext ? parseNumeric(field(block, 'devmajor'), 'devmajor') : null,
    devminor: ext ? parseNumeric(field(block, 'devminor'), 'devminor') : null,
  };
}

/**
 * glibc/rustix makedev(major, minor) for 32-bit major and minor, with arithmetic instead of
 * 32-bit operators: minor bits 0-7 -> 0-7, major bits 0-11 -> 8-19, minor bits 8-31 -> 20-43,
 * major bits 12-31 -> 44-63 (exact in a double while major < 2^21).
 */
export function makedev(major: number, minor: number): number {
  return (minor % 256) + (major % 4096) * 2 ** 8 + Math.floor(minor / 256) * 2 ** 20 + Math.floor(major / 4096) * 2 ** 44;
}
