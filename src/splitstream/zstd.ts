/**
 * Streaming zstd over zstd-napi's native contexts (synchronous calls, no Node streams).
 *
 * Determinism: the compressor sees the data re-cut into fixed-size pieces with
 * ZSTD_e_continue and then one empty ZSTD_e_end (no pledged size, level 3, no checksum — the
 * same parameters as the Rust `zstd` crate's streaming encoder), so the frame depends only on
 * the bytes, never on how callers happened to split them.
 */
import zstdBinding from 'zstd-napi/binding.js';

// The binding is CommonJS with computed exports: take its members from the default export.
const { CCtx, DCtx, EndDirective, cStreamOutSize, dStreamOutSize } = zstdBinding;

/** Input is fed to the compressor in pieces of exactly this size (one zstd block). */
const FEED_SIZE = 128 * 1024;

export class ZstdFrameWriter {
  private readonly cctx = new CCtx();
  private readonly out = Buffer.allocUnsafe(cStreamOutSize());
  private readonly stage = Buffer.allocUnsafe(FEED_SIZE);
  private fill = 0;
  private readonly pieces: Buffer[] = [];
  private total = 0;

  write(data: Uint8Array): void {
    let off = 0;
    while (off < data.length) {
      const n = Math.min(FEED_SIZE - this.fill, data.length - off);
      this.stage.set(data.subarray(off, off + n), this.fill);
      this.fill += n;
      off += n;
      if (this.fill === FEED_SIZE) this.feed();
    }
  }

  /** End the frame; returns the compressed pieces (in order) and their total length. */
  end(): { pieces: Buffer[]; length: number } {
    if (this.fill > 0) this.feed();
    const empty = Buffer.alloc(0);
    for (;;) {
      const [remaining, produced] = this.cctx.compressStream2(this.out, empty, EndDirective.end);
      this.take(produced);
      if (remaining === 0) break;
    }
    return { pieces: this.pieces, length: this.total };
  }

  private feed(): void {
    let input = this.stage.subarray(0, this.fill);
    while (input.length > 0) {
      const [, produced, consumed] = this.cctx.compressStream2(this.out, input, EndDirective.continue);
      this.take(produced);
      input = input.subarray(consumed);
    }
    this.fill = 0;
  }

  private take(n: number): void {
    if (n === 0) return;
    this.pieces.push(Buffer.from(this.out.subarray(0, n)));
    this.total += n;
  }
}

/** Compress a whole (small) buffer as one frame, with the same parameters as ZstdFrameWriter. */
export function zstdFrame(data: Uint8Array): Buffer {
  const w = new ZstdFrameWriter();
  w.write(data);
  const { pieces, length } = w.end();
  return Buffer.concat(pieces, length);
}

/**
 * Incremental decompression of a byte source (one or more concatenated frames). `push` input,
 * `pull` output; `finish` checks that the input ended on a frame boundary.
 */
export class ZstdDecoder {
  private readonly dctx = new DCtx();
  private readonly out = Buffer.allocUnsafe(dStreamOutSize());
  private input: Buffer = Buffer.alloc(0);
  /** Last return value: 0 means the current frame is complete and fully flushed. */
  private lastRet = 0;
  private outputFull = false;

  push(data: Buffer): void {
    this.input = this.input.length === 0 ? data : Buffer.concat([this.input, data]);
  }

  /** Whether all pushed input was consumed and nothing is left to flush. */
  get drained(): boolean {
    return this.input.length === 0 && !this.outputFull;
  }

  /** Decompress some of the pushed input; null when more input is needed. */
  pull(): Buffer | null {
    for (;;) {
      if (this.input.length === 0 && !this.outputFull) return null;
      const [ret, produced, consumed] = this.dctx.decompressStream(this.out, this.input);
      this.input = this.input.subarray(consumed);
      this.lastRet = ret;
      this.outputFull = produced === this.out.length;
      if (produced > 0) return Buffer.from(this.out.subarray(0, produced));
      if (consumed === 0) return null;
    }
  }

  /** True when the input so far ends exactly at the end of a frame. */
  get atFrameEnd(): boolean {
    return this.lastRet === 0 && this.drained;
  }
}

/** Decompress a complete buffer of zstd frames (small sections only). */
export function zstdDecompressAll(data: Buffer, limit: number): Buffer {
  const d = new ZstdDecoder();
  d.push(data);
  const parts: Buffer[] = [];
  let total = 0;
  for (let b = d.pull(); b; b = d.pull()) {
    total += b.length;
    if (total > limit) throw new RangeError(`decompressed size exceeds ${limit} bytes`);
    parts.push(b);
  }
  if (!d.atFrameEnd) throw new RangeError('truncated zstd frame');
  return Buffer.concat(parts, total);
}
