/**
 * Producers emit many tiny pieces (a 20-byte FileBackedData header per file); handing them on
 * one by one costs an async hop and a socket write each. A ChunkBatch gathers them into buffers
 * of about BATCH_SIZE bytes.
 */
const BATCH_SIZE = 256 * 1024;

export class ChunkBatch {
  private parts: Buffer[] = [];
  private bytes = 0;

  add(b: Buffer): void {
    this.parts.push(b);
    this.bytes += b.length;
  }

  get full(): boolean {
    return this.bytes >= BATCH_SIZE;
  }

  get empty(): boolean {
    return this.bytes === 0;
  }

  /** Everything added since the last take, as one buffer. */
  take(): Buffer {
    const out = this.parts.length === 1 ? this.parts[0] : Buffer.concat(this.parts, this.bytes);
    this.parts = [];
    this.bytes = 0;
    return out;
  }
}
