/**
 * Split stream writer. Output depends only on the logical content: the sequence of inline bytes
 * and external references, the named refs, and the content type.
 *
 * Coalescing rule: adjacent inline bytes form one chunk, cut at every external reference, at
 * the end, and every INLINE_CHUNK_MAX bytes (composefs-rs does not cut; readers handle any
 * chunking, and the cut keeps memory bounded for layers made of many small files).
 *
 * The compressed chunk stream is held in memory until finish() (tar headers and small files
 * compress well; file contents above 64 bytes are external objects).
 */
import { CfsError } from '../errors.js';
import type { Repository } from '../repository/repository.js';
import { ZstdFrameWriter, zstdFrame } from './zstd.js';
import {
  chunkHeader, contentTypeValue, FORMAT_VERSION, HDR, HEADER_SIZE, INFO, INFO_SIZE, LG_BLOCKSIZE, MAGIC, writeRange,
  type ContentTypeSpec,
} from './format.js';
import { HASH_ALG_ID } from '../fsverity/digest.js';

export const INLINE_CHUNK_MAX = 1024 * 1024;

export interface SplitStreamWriterOptions {
  /** 8-character ASCII name (see CONTENT_TYPES) or raw u64; default 0. */
  contentType?: ContentTypeSpec;
}

/** Unique IDs in order of first appearance. */
class IdTable {
  readonly ids: Buffer[] = [];
  private readonly index = new Map<string, number>();
  add(id: Buffer): number {
    const key = id.toString('hex');
    let i = this.index.get(key);
    if (i === undefined) {
      i = this.ids.length;
      this.ids.push(Buffer.from(id));
      this.index.set(key, i);
    }
    return i;
  }
}

export class SplitStreamWriter {
  private readonly repo: Repository;
  private readonly contentType: bigint;
  private readonly frame = new ZstdFrameWriter();
  private pending: Buffer[] = [];
  private pendingLen = 0;
  private readonly objectRefs = new IdTable();
  private readonly streamRefs = new IdTable();
  private readonly named = new Map<string, number>();
  private size = 0;
  private finished = false;

  constructor(repo: Repository, opts: SplitStreamWriterOptions = {}) {
    this.repo = repo;
    this.contentType = contentTypeValue(opts.contentType ?? 0n);
  }

  /** Append inline bytes (copied; the caller may reuse its buffer). */
  writeInline(data: Uint8Array): void {
    this.checkOpen();
    let off = 0;
    while (off < data.length) {
      const n = Math.min(INLINE_CHUNK_MAX - this.pendingLen, data.length - off);
      this.pending.push(Buffer.from(data.subarray(off, off + n)));
      this.pendingLen += n;
      off += n;
      if (this.pendingLen === INLINE_CHUNK_MAX) this.flushInline();
    }
    this.size += data.length;
  }

  /** Append a reference to an existing object whose content is `size` bytes. */
  addExternal(objectId: Buffer, size: number): void {
    this.checkOpen();
    if (objectId.length !== this.repo.hashSize) throw new CfsError('EINVAL', `external reference: object id must be ${this.repo.hashSize} bytes`);
    this.flushInline();
    this.frame.write(chunkHeader(this.objectRefs.add(objectId)));
    this.size += size;
  }

  /** Store `data` as an object and append an external reference to it. Returns the object id. */
  async writeExternal(data: Uint8Array): Promise<Buffer> {
    const id = await this.repo.writeObject(data);
    this.addExternal(id, data.length);
    return id;
  }

  /** Named reference to another stream's object (same name again: last one wins). */
  addNamedRef(name: string, streamObjectId: Buffer): void {
    this.checkOpen();
    if (name.includes('\0')) throw new CfsError('EINVAL', `named ref '${name}' contains NUL`);
    if (streamObjectId.length !== this.repo.hashSize) throw new CfsError('EINVAL', `named ref '${name}': object id must be ${this.repo.hashSize} bytes`);
    this.named.set(name, this.streamRefs.add(streamObjectId));
  }

  /** Write the split stream as an object; returns its object id (not linked under streams/). */
  async finish(): Promise<Buffer> {
    this.checkOpen();
    this.flushInline();
    this.finished = true;
    const stream = this.frame.end();
    const namedRefs = zstdFrame(this.namedRefsSection());
    const H = this.repo.hashSize;
    const streamRefsStart = HEADER_SIZE + INFO_SIZE;
    const objectRefsStart = streamRefsStart + this.streamRefs.ids.length * H;
    const namedStart = objectRefsStart + this.objectRefs.ids.length * H;
    const streamStart = namedStart + namedRefs.length;

    const head = Buffer.alloc(HEADER_SIZE + INFO_SIZE);
    MAGIC.copy(head, HDR.magic);
    head[HDR.version] = FORMAT_VERSION;
    head.writeUInt16LE(0, HDR.flags);
    head[HDR.algorithm] = HASH_ALG_ID[this.repo.alg];
    head[HDR.lgBlocksize] = LG_BLOCKSIZE;
    writeRange(head, HDR.infoStart, { start: HEADER_SIZE, end: HEADER_SIZE + INFO_SIZE });
    const info = HEADER_SIZE;
    writeRange(head, info + INFO.streamRefs, { start: streamRefsStart, end: objectRefsStart });
    writeRange(head, info + INFO.objectRefs, { start: objectRefsStart, end: namedStart });
    writeRange(head, info + INFO.stream, { start: streamStart, end: streamStart + stream.length });
    writeRange(head, info + INFO.namedRefs, { start: namedStart, end: streamStart });
    head.writeBigUInt64LE(this.contentType, info + INFO.contentType);
    head.writeBigUInt64LE(BigInt(this.size), info + INFO.streamSize);

    const w = this.repo.createObjectWriter();
    try {
      await w.write(head);
      for (const id of this.streamRefs.ids) await w.write(id);
      for (const id of this.objectRefs.ids) await w.write(id);
      await w.write(namedRefs);
      for (const p of stream.pieces) await w.write(p);
    } catch (e) {
      w.abort();
      throw e;
    }
    return w.commit();
  }

  /** `<idx>:<name>\0` records sorted by name bytes. */
  private namedRefsSection(): Buffer {
    const entries = [...this.named].map(([name, idx]) => ({ key: Buffer.from(name, 'utf8'), idx }));
    entries.sort((a, b) => Buffer.compare(a.key, b.key));
    return Buffer.concat(entries.map(({ key, idx }) => Buffer.concat([Buffer.from(`${idx}:`), key, Buffer.from([0])])));
  }

  private flushInline(): void {
    if (this.pendingLen === 0) return;
    this.frame.write(chunkHeader(-this.pendingLen));
    for (const p of this.pending) this.frame.write(p);
    this.pending = [];
    this.pendingLen = 0;
  }

  private checkOpen(): void {
    if (this.finished) throw new Error('SplitStreamWriter: already finished');
  }
}

export interface ExternalStreamOptions extends SplitStreamWriterOptions {
  /** Named refs to other streams' objects, in insertion order. */
  namedRefs?: Iterable<[string, Buffer]>;
  /** Also create `streams/refs/<refName>`. */
  refName?: string;
}

/**
 * Store `data` (a JSON document or blob) as a split stream holding exactly one external chunk,
 * publish it as `streams/<contentId>` and return the stream's object id.
 */
export async function writeExternalSplitStream(repo: Repository, contentId: string, data: Uint8Array, opts: ExternalStreamOptions = {}): Promise<Buffer> {
  const w = new SplitStreamWriter(repo, opts);
  await w.writeExternal(data);
  for (const [name, id] of opts.namedRefs ?? []) w.addNamedRef(name, id);
  const streamId = await w.finish();
  await repo.linkStream(contentId, streamId);
  if (opts.refName !== undefined) await repo.setRef('streams', opts.refName, contentId);
  return streamId;
}

/**
 * Build a split stream with `fill` and publish it as `streams/<contentId>`. When the stream
 * already exists, `fill` is not called and the existing object id is returned.
 */
export async function writeSplitStream(
  repo: Repository,
  contentId: string,
  fill: (w: SplitStreamWriter) => Promise<void> | void,
  opts: SplitStreamWriterOptions & { refName?: string } = {},
): Promise<Buffer> {
  let streamId = await repo.hasStream(contentId);
  if (!streamId) {
    const w = new SplitStreamWriter(repo, opts);
    await fill(w);
    streamId = await w.finish();
    await repo.linkStream(contentId, streamId);
  }
  if (opts.refName !== undefined) await repo.setRef('streams', opts.refName, contentId);
  return streamId;
}
