/**
 * One 512-byte tar header block: field table, numeric fields (octal or GNU base-256),
 * checksum, and the ustar / GNU / v7 variants.
 */

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

/** A NUL-terminated field (up to its first NUL). */
function cstrField(block: Buffer, f: Field): Buffer {
  const [off, len] = F[f];
  let end = off;
  while (end < off + len && block[end] !== 0) end++;
  return block.subarray(off, end);
}

/** Whether a field holds exactly `want` (same length). */
function fieldIs(block: Buffer, f: Field, want: Buffer): boolean {
  const off = F[f][0];
  for (let i = 0; i < want.length; i++) if (block[off + i] !== want[i]) return false;
  return true;
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
  return numericAt(b, 0, b.length, what);
}

/** parseNumeric of b[off, off + len), read in place (header fields are decoded by the thousand). */
function numericAt(b: Buffer, off: number, len: number, what: string): number {
  const end = off + len;
  if (len > 0 && (b[off] & 0x80) !== 0) {
    let v = BigInt(b[off] & 0x7f);
    const negative = b[off] === 0xff;
    for (let i = off + 1; i < end; i++) v = (v << 8n) | BigInt(b[i]);
    if (negative) v -= 1n << BigInt(8 * len - 1);
    if (v > BigInt(Number.MAX_SAFE_INTEGER) || v < BigInt(Number.MIN_SAFE_INTEGER)) throw new Error(`${what} field out of range`);
    return Number(v);
  }
  let i = off;
  while (i < end && b[i] === 0x20) i++;
  let v = 0;
  for (; i < end && b[i] >= 0x30 && b[i] <= 0x37; i++) v = v * 8 + (b[i] - 0x30);
  for (; i < end; i++) {
    if (b[i] !== 0 && b[i] !== 0x20) throw new Error(`invalid ${what} field '${b.toString('latin1', off, end).replace(/\0/g, '')}'`);
  }
  return v;
}

function num(block: Buffer, f: Field): number {
  const [off, len] = F[f];
  return numericAt(block, off, len, f);
}

/** Stored checksum vs. the sum of all bytes with the checksum field taken as spaces. */
function checksumOk(block: Buffer): boolean {
  const [off, len] = F.chksum;
  let stored: number;
  try {
    stored = numericAt(block, off, len, 'checksum');
  } catch {
    return false;
  }
  let unsigned = 0x20 * len;
  for (let i = 0; i < off; i++) unsigned += block[i];
  for (let i = off + len; i < BLOCK_SIZE; i++) unsigned += block[i];
  if (stored === unsigned) return true;
  // Some old tar writers summed signed chars.
  let signed = 0x20 * len;
  for (let i = 0; i < BLOCK_SIZE; i++) {
    if (i === off) i += len;
    const c = block[i];
    signed += c > 127 ? c - 256 : c;
  }
  return stored === signed;
}

/** Decode a non-zero header block. Errors are message strings for the caller to wrap. */
export function decodeHeader(block: Buffer): RawHeader {
  if (!checksumOk(block)) throw new Error('tar header checksum mismatch');
  const ustarMagic = fieldIs(block, 'magic', USTAR_MAGIC);
  const format: HeaderFormat = ustarMagic && fieldIs(block, 'version', USTAR_VERSION)
    ? 'ustar'
    : fieldIs(block, 'magic', GNU_MAGIC) && fieldIs(block, 'version', GNU_VERSION)
      ? 'gnu'
      : ustarMagic ? 'ustar' : 'v7';
  const ext = format !== 'v7';
  const prefix = format === 'ustar' ? cstrField(block, 'prefix') : null;
  return {
    format,
    name: cstrField(block, 'name'),
    prefix: prefix && prefix.length > 0 ? prefix : null,
    linkname: cstrField(block, 'linkname'),
    typeflag: block[F.typeflag[0]],
    mode: num(block, 'mode'),
    uid: num(block, 'uid'),
    gid: num(block, 'gid'),
    size: num(block, 'size'),
    mtime: num(block, 'mtime'),
    devmajor: ext ? num(block, 'devmajor') : null,
    devminor: ext ? num(block, 'devminor') : null,
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
