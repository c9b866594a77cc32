/** Pull-based reader over an async byte stream that hashes every byte it takes in. */
import { createHash, type Hash } from 'node:crypto';

export class HashingSource {
  private readonly it: AsyncIterator<Uint8Array>;
  private readonly hash: Hash;
  private cur: Buffer = Buffer.alloc(0);
  private pos = 0;
  private eof = false;
  /** Bytes taken from the underlying stream so far. */
  total = 0;

  constructor(src: AsyncIterable<Uint8Array>, hashAlg: string) {
    this.it = src[Symbol.asyncIterator]();
    this.hash = createHash(hashAlg);
  }

  /** Offset of the next byte to be read. */
  get position(): number {
    return this.total - (this.cur.length - this.pos);
  }

  /** Up to `max` bytes (at least 1 unless at EOF), without copying when possible. */
  async readUpTo(max: number): Promise<Buffer> {
    if (this.pos >= this.cur.length && !(await this.pull())) return Buffer.alloc(0);
    const n = Math.min(max, this.cur.length - this.pos);
    const r = this.cur.subarray(this.pos, this.pos + n);
    this.pos += n;
    return r;
  }

  /** Exactly `n` bytes, or fewer only at EOF. */
  async readExact(n: number): Promise<Buffer> {
    const first = await this.readUpTo(n);
    if (first.length === n || first.length === 0) return first;
    const parts = [first];
    let got = first.length;
    while (got < n) {
      const b = await this.readUpTo(n - got);
      if (b.length === 0) break;
      parts.push(b);
      got += b.length;
    }
    return Buffer.concat(parts, got);
  }

  /** Digest (hex) of everything taken so far; call once, at the end. */
  digestHex(): string {
    return this.hash.digest('hex');
  }

  private async pull(): Promise<boolean> {
    while (!this.eof) {
      const r = await this.it.next();
      if (r.done) {
        this.eof = true;
        break;
      }
      if (r.value.length === 0) continue;
      const b = Buffer.isBuffer(r.value) ? r.value : Buffer.from(r.value.buffer, r.value.byteOffset, r.value.length);
      this.hash.update(b);
      this.total += b.length;
      this.cur = b;
      this.pos = 0;
      return true;
    }
    return false;
  }
}
