/**
 * splitdirfdstream parser (brief 5.1). Checks structure only: type bytes, truncation, body and
 * name limits. Filename rules and dirfd indexes are the consumer's business. Bodies are handed
 * out in pieces, so a 256 MiB InlineData chunk never sits in memory at once.
 */
import { CfsError } from '../errors.js';
import { CHUNK, FILE_HDR, HEADER_SIZE, LIMITS, type ChunkHeader } from './format.js';

export class SplitdirfdReader {
  private readonly it: AsyncIterator<Uint8Array>;
  private readonly what: string;
  private cur: Buffer = Buffer.alloc(0);
  private pos = 0;
  private eof = false;
  private bodyLeft = 0;
  /** Bytes consumed from the input so far. */
  offset = 0;

  constructor(input: AsyncIterable<Uint8Array>, what = 'splitdirfdstream') {
    this.it = input[Symbol.asyncIterator]();
    this.what = what;
  }

  error(why: string): CfsError {
    return new CfsError('EIO', `${this.what}: ${why} at offset ${this.offset}`);
  }

  /** The next chunk's header; null at a clean end. The previous body must be fully read. */
  async next(): Promise<ChunkHeader | null> {
    if (this.bodyLeft > 0) throw new Error('SplitdirfdReader: previous chunk body not consumed');
    const t = await this.take(1);
    if (t === null) return null;
    const type = t[0];
    if (type === CHUNK.metadata || type === CHUNK.inline) {
      const h = await this.need(HEADER_SIZE.metadata, 'chunk header');
      const length = h.readUInt32LE(0);
      if (length > LIMITS.inlineBody) throw this.error(`inline body of ${length} bytes exceeds the ${LIMITS.inlineBody} byte limit`);
      if (type === CHUNK.metadata && length === 0) throw this.error('empty Metadata chunk');
      this.bodyLeft = length;
      return { type: type === CHUNK.metadata ? 'metadata' : 'inline', length };
    }
    if (type === CHUNK.file) {
      const h = await this.need(HEADER_SIZE.file, 'chunk header');
      const length = h.readBigUInt64LE(FILE_HDR.length);
      if (length > BigInt(Number.MAX_SAFE_INTEGER)) throw this.error(`file-backed length ${length} out of range`);
      const index = h.readUInt32LE(FILE_HDR.index);
      const nameLength = h.readUInt32LE(FILE_HDR.nameLength);
      if (nameLength > LIMITS.name) throw this.error(`file name of ${nameLength} bytes exceeds the ${LIMITS.name} byte limit`);
      const name = Buffer.from(await this.need(nameLength, 'file name'));
      return { type: 'file', length: Number(length), index, name };
    }
    throw this.error(`unknown chunk type 0x${type.toString(16).padStart(2, '0')}`);
  }

  /** Up to `max` bytes of the current body (at least one while some remain); empty at its end. */
  async body(max: number): Promise<Buffer> {
    if (this.bodyLeft === 0) return Buffer.alloc(0);
    const b = await this.take(Math.min(max, this.bodyLeft));
    if (b === null) throw this.error('truncated chunk body');
    this.bodyLeft -= b.length;
    return b;
  }

  /** body(max) when it need not wait for input (bytes of the body are here); else null. */
  bodyNow(max: number): Buffer | null {
    if (this.bodyLeft === 0 || this.pos >= this.cur.length) return null;
    const k = Math.min(max, this.bodyLeft, this.cur.length - this.pos);
    const out = this.cur.subarray(this.pos, this.pos + k);
    this.pos += k;
    this.offset += k;
    this.bodyLeft -= k;
    return out;
  }

  /** The whole current body (callers bound it first). */
  async bodyAll(): Promise<Buffer> {
    const parts: Buffer[] = [];
    for (let b = await this.body(this.bodyLeft); b.length > 0; b = await this.body(this.bodyLeft)) parts.push(b);
    return parts.length === 1 ? parts[0] : Buffer.concat(parts);
  }

  /** Stop reading: ends the input's iteration early (its producer cleans up). */
  async close(): Promise<void> {
    this.eof = true;
    await this.it.return?.();
  }

  get remainingBody(): number {
    return this.bodyLeft;
  }

  private async need(n: number, what: string): Promise<Buffer> {
    const parts: Buffer[] = [];
    let got = 0;
    while (got < n) {
      const b = await this.take(n - got);
      if (b === null) throw this.error(`truncated ${what}`);
      parts.push(b);
      got += b.length;
    }
    return parts.length === 1 ? parts[0] : Buffer.concat(parts, n);
  }

  /** Up to n bytes (≥ 1); null at end of input. */
  private async take(n: number): Promise<Buffer | null> {
    while (this.pos >= this.cur.length) {
      if (this.eof) return null;
      const r = await this.it.next();
      if (r.done) {
        this.eof = true;
        return null;
      }
      const v = r.value;
      this.cur = Buffer.isBuffer(v) ? v : Buffer.from(v.buffer, v.byteOffset, v.length);
      this.pos = 0;
    }
    const k = Math.min(n, this.cur.length - this.pos);
    const out = this.cur.subarray(this.pos, this.pos + k);
    this.pos += k;
    this.offset += k;
    return out;
  }
}
