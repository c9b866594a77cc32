/**
 * CRC-64 with the ISO polynomial, as Go's hash/crc64 with crc64.ISO computes it (reflected,
 * init and final xor all-ones; "123456789" → 0xb90956c775a41001). tar-split stores this sum
 * big-endian for every file it records. Slicing-by-8 on pairs of 32-bit halves, because BigInt
 * arithmetic per byte would be far too slow for layer-sized inputs.
 */

/** x^64 + x^4 + x^3 + x + 1, reflected: 0xD800000000000000. */
const POLY_HI = 0xd8000000;

const LO = new Uint32Array(8 * 256);
const HI = new Uint32Array(8 * 256);

for (let i = 0; i < 256; i++) {
  let lo = i;
  let hi = 0;
  for (let k = 0; k < 8; k++) {
    const carry = lo & 1;
    lo = ((lo >>> 1) | ((hi & 1) << 31)) >>> 0;
    hi = hi >>> 1;
    if (carry) hi = (hi ^ POLY_HI) >>> 0;
  }
  LO[i] = lo;
  HI[i] = hi;
}
for (let t = 1; t < 8; t++) {
  for (let i = 0; i < 256; i++) {
    const plo = LO[(t - 1) * 256 + i]!;
    const phi = HI[(t - 1) * 256 + i]!;
    const idx = plo & 0xff;
    LO[t * 256 + i] = (((plo >>> 8) | (phi << 24)) ^ LO[idx]!) >>> 0;
    HI[t * 256 + i] = ((phi >>> 8) ^ HI[idx]!) >>> 0;
  }
}

export class Crc64 {
  // Running register, already inverted (Go inverts on entry and exit of every Update).
  private lo = 0xffffffff;
  private hi = 0xffffffff;

  update(buf: Uint8Array): this {
    let lo = this.lo;
    let hi = this.hi;
    let i = 0;
    const n8 = buf.length - (buf.length % 8);
    for (; i < n8; i += 8) {
      lo = (lo ^ (buf[i]! | (buf[i + 1]! << 8) | (buf[i + 2]! << 16) | (buf[i + 3]! << 24))) >>> 0;
      hi = (hi ^ (buf[i + 4]! | (buf[i + 5]! << 8) | (buf[i + 6]! << 16) | (buf[i + 7]! << 24))) >>> 0;
      const a = 7 * 256 + (lo & 0xff);
      const b = 6 * 256 + ((lo >>> 8) & 0xff);
      const c = 5 * 256 + ((lo >>> 16) & 0xff);
      const d = 4 * 256 + (lo >>> 24);
      const e = 3 * 256 + (hi & 0xff);
      const f = 2 * 256 + ((hi >>> 8) & 0xff);
      const g = 256 + ((hi >>> 16) & 0xff);
      const h = hi >>> 24;
      lo = (LO[a]! ^ LO[b]! ^ LO[c]! ^ LO[d]! ^ LO[e]! ^ LO[f]! ^ LO[g]! ^ LO[h]!) >>> 0;
      hi = (HI[a]! ^ HI[b]! ^ HI[c]! ^ HI[d]! ^ HI[e]! ^ HI[f]! ^ HI[g]! ^ HI[h]!) >>> 0;
    }
    for (; i < buf.length; i++) {
      const idx = (lo ^ buf[i]!) & 0xff;
      lo = (((lo >>> 8) | (hi << 24)) ^ LO[idx]!) >>> 0;
      hi = ((hi >>> 8) ^ HI[idx]!) >>> 0;
    }
    this.lo = lo;
    this.hi = hi;
    return this;
  }

  /** The sum as tar-split stores it: 8 bytes, big-endian. */
  digest(): Buffer {
    const out = Buffer.alloc(8);
    out.writeUInt32BE(~this.hi >>> 0, 0);
    out.writeUInt32BE(~this.lo >>> 0, 4);
    return out;
  }
}

export function crc64(buf: Uint8Array): Buffer {
  return new Crc64().update(buf).digest();
}
