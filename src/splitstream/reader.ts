/**
 * Split stream reader (brief 2.5). Validates header, info and ref sections up front, then
 * decompresses the chunk stream incrementally from the file (constant memory).
 * Every structural problem is CfsError('ECORRUPT', 'split stream <name>: …').
 */
import type { FileHandle } from 'node:fs/promises';
import { CfsError } from '../errors.js';
import { hashAlgFromId } from '../fsverity/digest.js';
import type { Repository } from '../repository/repository.js';
import { objectRelPath } from '../repository/ids.js';
import { ZstdDecoder, zstdDecompressAll } from './zstd.js';
import {
  contentTypeText, contentTypeValue, FORMAT_VERSION, HDR, HEADER_SIZE, INFO, INFO_SIZE, LG_BLOCKSIZE, MAGIC, OLD_HDR,
  readRange, type ContentTypeSpec, type Range,
} from './format.js';

const READ_SIZE = 128 * 1024;
const NAMED_REFS_LIMIT = 16 * 1024 * 1024;

export type Chunk = { kind: 'inline'; data: Buffer } | { kind: 'external'; id: Buffer };

export interface OpenStreamOptions {
  /** Name for messages (content id); defaults to the object path. */
  name?: string;
  expectedContentType?: ContentTypeSpec;
}

export class SplitStreamReader {
  readonly name: string;
  readonly contentType: bigint;
  /** Total size of the reassembled stream (inline + declared external sizes). */
  readonly streamSize: number;
  readonly streamRefs: Buffer[];
  readonly objectRefs: Buffer[];
  /** Named refs, in section order (sorted by name when written by us). */
  readonly namedRefs: Map<string, Buffer>;
  private readonly fh: FileHandle;
  private readonly decoder = new ZstdDecoder();
  private filePos: number;
  private readonly fileEnd: number;
  private out: Buffer[] = [];
  private outLen = 0;
  private inlineRemaining = 0;
  private pendingExternal: Buffer | null = null;

  private constructor(
    name: string, fh: FileHandle, meta: { contentType: bigint; streamSize: number; streamRefs: Buffer[]; objectRefs: Buffer[]; namedRefs: Map<string, Buffer> },
    stream: Range,
  ) {
    this.name = name;
    this.fh = fh;
    this.contentType = meta.contentType;
    this.streamSize = meta.streamSize;
    this.streamRefs = meta.streamRefs;
    this.objectRefs = meta.objectRefs;
    this.namedRefs = meta.namedRefs;
    this.filePos = stream.start;
    this.fileEnd = stream.end;
  }

  static async open(repo: Repository, objectId: Buffer, opts: OpenStreamOptions = {}): Promise<SplitStreamReader> {
    const name = opts.name ?? objectRelPath(objectId);
    const fh = await repo.openObject(objectId);
    try {
      const corrupt = (why: string): CfsError => new CfsError('ECORRUPT', `split stream ${name}: ${why}`);
      const fileSize = (await fh.stat()).size;
      const readAt = async (r: Range, what: string): Promise<Buffer> => {
        if (r.end > fileSize) throw corrupt(`${what} extends beyond the end of the file`);
        const b = Buffer.alloc(r.end - r.start);
        const { bytesRead } = await fh.read(b, 0, b.length, r.start);
        if (bytesRead !== b.length) throw corrupt(`short read of ${what}`);
        return b;
      };
      const hdr = await readAt({ start: 0, end: HEADER_SIZE }, 'header');
      const H = MAGIC.equals(hdr.subarray(HDR.magic, HDR.magic + MAGIC.length))
        ? HDR
        : MAGIC.equals(hdr.subarray(OLD_HDR.magic, OLD_HDR.magic + MAGIC.length))
          ? OLD_HDR
          : null;
      if (!H) throw corrupt('invalid header magic value');
      if (hdr[H.version] !== FORMAT_VERSION) throw corrupt(`unsupported version ${hdr[H.version]}`);
      if (hashAlgFromId(hdr[H.algorithm]) !== repo.alg) throw corrupt(`hash algorithm ${hdr[H.algorithm]} does not match the repository (${repo.alg})`);
      if (hdr[H.lgBlocksize] !== LG_BLOCKSIZE) throw corrupt(`unsupported block size 2^${hdr[H.lgBlocksize]}`);
      const infoRange = readRange(hdr, H.infoStart, 'info', name);
      if (infoRange.end - infoRange.start < INFO_SIZE) throw corrupt('info section too small');
      const info = await readAt(infoRange, 'info section');
      const contentType = info.readBigUInt64LE(INFO.contentType);
      if (opts.expectedContentType !== undefined && contentType !== contentTypeValue(opts.expectedContentType)) {
        throw corrupt(`invalid content type ${contentTypeText(contentType)} (expected ${contentTypeText(contentTypeValue(opts.expectedContentType))})`);
      }
      const streamSize = info.readBigUInt64LE(INFO.streamSize);
      if (streamSize > BigInt(Number.MAX_SAFE_INTEGER)) throw corrupt('stream size out of range');
      const digests = async (off: number, what: string): Promise<Buffer[]> => {
        const r = readRange(info, off, what, name);
        if ((r.end - r.start) % repo.hashSize !== 0) throw corrupt(`${what} section length is not a multiple of ${repo.hashSize}`);
        const b = await readAt(r, what);
        const ids: Buffer[] = [];
        for (let o = 0; o < b.length; o += repo.hashSize) ids.push(b.subarray(o, o + repo.hashSize));
        return ids;
      };
      const streamRefs = await digests(INFO.streamRefs, 'stream_refs');
      const objectRefs = await digests(INFO.objectRefs, 'object_refs');
      const namedRaw = await readAt(readRange(info, INFO.namedRefs, 'named_refs', name), 'named_refs');
      let namedText: Buffer;
      try {
        namedText = zstdDecompressAll(namedRaw, NAMED_REFS_LIMIT);
      } catch (e) {
        throw corrupt(`named refs: ${(e as Error).message}`);
      }
      const namedRefs = parseNamedRefs(namedText, streamRefs, corrupt);
      const stream = readRange(info, INFO.stream, 'stream', name);
      if (stream.end > fileSize) throw corrupt('stream extends beyond the end of the file');
      return new SplitStreamReader(name, fh, { contentType, streamSize: Number(streamSize), streamRefs, objectRefs, namedRefs }, stream);
    } catch (e) {
      await fh.close();
      throw e;
    }
  }

  async close(): Promise<void> {
    await this.fh.close();
  }

  /**
   * Next piece of the stream: at most `maxInline` bytes of the current inline chunk, or an
   * external reference; null at the end.
   */
  async next(maxInline = 1024 * 1024): Promise<Chunk | null> {
    const kind = await this.peekKind();
    if (kind === 'eof') return null;
    if (kind === 'external') return { kind: 'external', id: this.takeExternal() };
    const n = Math.min(maxInline, this.inlineRemaining);
    const data = await this.readDecoded(n);
    this.inlineRemaining -= n;
    return { kind: 'inline', data };
  }

  async *chunks(maxInline?: number): AsyncGenerator<Chunk> {
    for (let c = await this.next(maxInline); c; c = await this.next(maxInline)) yield c;
  }

  /** What comes next, without consuming it. */
  async peekKind(): Promise<'inline' | 'external' | 'eof'> {
    for (;;) {
      if (this.pendingExternal) return 'external';
      if (this.inlineRemaining > 0) return 'inline';
      const hdr = await this.readDecoded(8, true);
      if (hdr.length === 0) return 'eof';
      if (hdr.length < 8) throw this.corrupt('unexpected EOF in chunk header');
      this.chunkHeader(hdr);
    }
  }

  /*
   * kindNow and inlineNow answer from what is already decompressed, without a promise per call
   * (a layer's thousands of headers are read this way); null means "ask peekKind/readInline".
   */

  /** peekKind when no read is needed; null otherwise. */
  kindNow(): 'inline' | 'external' | null {
    while (!this.pendingExternal && this.inlineRemaining === 0 && this.outLen >= 8) this.chunkHeader(this.take(8));
    return this.pendingExternal ? 'external' : this.inlineRemaining > 0 ? 'inline' : null;
  }

  /** readInline(n) when the bytes are in the current inline chunk and decompressed; null otherwise. */
  inlineNow(n: number): Buffer | null {
    if (this.kindNow() !== 'inline' || this.inlineRemaining < n || this.outLen < n) return null;
    this.inlineRemaining -= n;
    return this.take(n);
  }

  private chunkHeader(hdr: Buffer): void {
    const v = hdr.readBigInt64LE(0);
    if (v < 0n) {
      if (-v > BigInt(Number.MAX_SAFE_INTEGER)) throw this.corrupt('inline chunk too large');
      this.inlineRemaining = Number(-v);
    } else {
      if (v >= BigInt(this.objectRefs.length)) throw this.corrupt(`external reference ${v} out of range (${this.objectRefs.length} object refs)`);
      this.pendingExternal = this.objectRefs[Number(v)];
    }
  }

  /** Consume the external reference announced by peekKind(). */
  takeExternal(): Buffer {
    const id = this.pendingExternal;
    if (!id) throw this.corrupt('expected an external reference');
    this.pendingExternal = null;
    return id;
  }

  /**
   * Exactly `n` inline bytes, spanning adjacent inline chunks. Returns an empty buffer when the
   * stream ends before the first byte; an external reference or a later end is an error.
   */
  async readInline(n: number, what = 'inline data'): Promise<Buffer> {
    const parts: Buffer[] = [];
    let got = 0;
    while (got < n) {
      const kind = await this.peekKind();
      if (kind === 'eof') {
        if (got === 0) return Buffer.alloc(0);
        throw this.corrupt(`unexpected end of stream in ${what}`);
      }
      if (kind === 'external') throw this.corrupt(`unexpected external reference in ${what}`);
      const k = Math.min(n - got, this.inlineRemaining);
      parts.push(await this.readDecoded(k));
      this.inlineRemaining -= k;
      got += k;
    }
    return parts.length === 1 ? parts[0] : Buffer.concat(parts, got);
  }

  corrupt(why: string): CfsError {
    return new CfsError('ECORRUPT', `split stream ${this.name}: ${why}`);
  }

  /** `n` decompressed bytes; with `allowShort`, fewer at the clean end of the stream. */
  private async readDecoded(n: number, allowShort = false): Promise<Buffer> {
    while (this.outLen < n) {
      if (!(await this.decodeMore())) {
        if (!allowShort) throw this.corrupt('unexpected end of chunk stream');
        break;
      }
    }
    const k = Math.min(n, this.outLen);
    return this.take(k);
  }

  private take(k: number): Buffer {
    if (k === 0) return Buffer.alloc(0);
    const first = this.out[0];
    if (first.length >= k) {
      const r = first.subarray(0, k);
      if (first.length === k) this.out.shift();
      else this.out[0] = first.subarray(k);
      this.outLen -= k;
      return r;
    }
    const r = Buffer.allocUnsafe(k);
    let off = 0;
    while (off < k) {
      const b = this.out[0];
      const m = Math.min(b.length, k - off);
      b.copy(r, off, 0, m);
      off += m;
      if (m === b.length) this.out.shift();
      else this.out[0] = b.subarray(m);
    }
    this.outLen -= k;
    return r;
  }

  /** Decompress more output; false at the clean end of the compressed range. */
  private async decodeMore(): Promise<boolean> {
    for (;;) {
      let b: Buffer | null;
      try {
        b = this.decoder.pull();
      } catch (e) {
        throw this.corrupt(`zstd: ${(e as Error).message}`);
      }
      if (b) {
        this.out.push(b);
        this.outLen += b.length;
        return true;
      }
      if (this.filePos >= this.fileEnd) {
        if (!this.decoder.atFrameEnd) throw this.corrupt('truncated zstd chunk stream');
        return false;
      }
      const len = Math.min(READ_SIZE, this.fileEnd - this.filePos);
      const input = Buffer.allocUnsafe(len);
      const { bytesRead } = await this.fh.read(input, 0, len, this.filePos);
      if (bytesRead !== len) throw this.corrupt('short read of the chunk stream');
      this.filePos += len;
      this.decoder.push(input);
    }
  }
}

function parseNamedRefs(text: Buffer, streamRefs: Buffer[], corrupt: (why: string) => CfsError): Map<string, Buffer> {
  const out = new Map<string, Buffer>();
  let off = 0;
  while (off < text.length) {
    const nul = text.indexOf(0, off);
    if (nul < 0) throw corrupt('named refs: trailing data without NUL terminator');
    const rec = text.subarray(off, nul);
    off = nul + 1;
    const colon = rec.indexOf(0x3a);
    if (colon < 0) throw corrupt('named refs: record without colon');
    const idxText = rec.subarray(0, colon).toString('latin1');
    if (!/^[0-9]+$/.test(idxText)) throw corrupt(`named refs: index '${idxText}' is not an integer`);
    const idx = Number(idxText);
    if (idx >= streamRefs.length) throw corrupt(`named refs: index ${idx} out of bounds (${streamRefs.length} stream refs)`);
    out.set(rec.subarray(colon + 1).toString('utf8'), streamRefs[idx]);
  }
  return out;
}

/** Read a stream that must hold exactly one external object (JSON documents, blobs). */
export async function readExternalSplitStream(
  repo: Repository, objectId: Buffer, opts: OpenStreamOptions = {},
): Promise<{ data: Buffer; namedRefs: Map<string, Buffer>; contentType: bigint }> {
  const r = await SplitStreamReader.open(repo, objectId, opts);
  try {
    if (r.objectRefs.length !== 1) throw r.corrupt(`expected exactly 1 external object in splitstream, got ${r.objectRefs.length}`);
    return { data: await repo.readObject(r.objectRefs[0]), namedRefs: r.namedRefs, contentType: r.contentType };
  } finally {
    await r.close();
  }
}
