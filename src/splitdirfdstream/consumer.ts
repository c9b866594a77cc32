/**
 * splitdirfdstream → layer split stream in a repository (brief 5.3, PutLayer, copy).
 *
 * The consumer does not trust the producer's chunking: it re-splits the reconstructed bytes by
 * tar structure with the tar importer's own state machine (headers, padding, metadata and files of at most
 * 64 bytes inline; larger file contents as objects). A FileBackedData chunk that covers exactly
 * one large file's content is stored without copying where possible (see place.ts); any other
 * chunking is read and re-split. The sha256 (or the diff_id's algorithm) of all bytes must equal
 * the expected diff_id, otherwise no layer stream is stored. Objects already placed stay,
 * unreferenced, until gc: a concurrent import (same shared lock) may have found them present and
 * refer to them, so they are not removed here.
 *
 * Files are named by (dirfd index, relative name), so any source that can hand out directory
 * fds (another repository, containers-storage) feeds the same consumer.
 */
import { closeSync, read as fsRead, readSync } from 'node:fs';
import { promisify } from 'node:util';
import { CfsError } from '../errors.js';
import { StreamFeed, type StreamHashName } from '../fsverity/file-hash.js';
import type { HashAlg } from '../fsverity/digest.js';
import type { Repository } from '../repository/repository.js';
import { SplitStreamWriter } from '../splitstream/writer.js';
import { OrderedSplitWriter, type ObjectRef } from '../splitstream/ordered.js';
import { CONTENT_TYPES } from '../splitstream/format.js';
import { TarEntryParser, type ParsedEntry } from '../tar/parser.js';
import { EntryCollector } from '../tar/collected.js';
import type { TarEntry } from '../tar/entry.js';
import { copyContent, existingLayer, layerContentId, parseDiffId, splitTar, type TarInput } from '../tar/split.js';
import { SplitdirfdReader } from './reader.js';
import { checkDirSlot, openBeneath, type OpenedFile } from './open.js';
import { ObjectPlacer, PLACEMENTS_IN_FLIGHT, type StreamTap } from './place.js';
import { countWritten, noObjects, type ObjectCounts } from '../repository/object-counts.js';

const readFd = promisify(fsRead);
const COPY_CHUNK = 1024 * 1024;
/** Queued, unhashed stream bytes beyond which reading waits for the digest to catch up. */
const FEED_BACKLOG_MAX = 64 * 1024 * 1024;

export interface ConsumeOptions {
  /** Expected digest of the reconstructed stream (`sha256:<hex>`); also names the stream. */
  diffId: string;
  /** tar layer (default) or opaque artifact blob (one object). */
  kind?: 'tar' | 'blob';
  /** Fail instead of copying when neither reflink nor hardlink works. */
  zerocopy?: boolean;
  /** The dirfds belong to a local image store cfs opened itself (place.ts: every owner, every name). */
  localStore?: boolean;
  /** Called with the number of stream bytes reconstructed so far. */
  onProgress?: (bytes: number) => void;
  /** Keep the layer's entries for an image build right after (ConsumeResult.entries). */
  collectEntries?: boolean;
}

export interface ConsumeResult {
  streamId: Buffer;
  /** How the layer's file contents reached objects/ (all zero when the layer was present). */
  objects: ObjectCounts;
  alreadyPresent: boolean;
  /** Bytes of the reconstructed layer. */
  size: number;
  /** With collectEntries, a tar layer stored now: its entries (EntryCollector); else null. */
  entries: TarEntry[] | null;
}

type Segment = { kind: 'bytes' } | { kind: 'file'; file: OpenedFile; length: number; pos: number };

/** The reconstructed byte stream, its digest fed as it is read (StreamFeed), with access to whole file chunks. */
class LogicalSource implements TarInput, StreamTap {
  readonly feed: StreamFeed;
  total = 0;
  private seg: Segment | null = null;
  private eof = false;
  private readonly open: OpenedFile[] = [];
  /** Directory slots already checked (the fds stay put for the whole stream). */
  private readonly checkedSlots = new Map<number, number>();

  constructor(
    private readonly reader: SplitdirfdReader, private readonly what: string, private readonly dirfds: readonly number[],
    hashAlg: StreamHashName, private readonly sourceDir: (dirfd: number) => number, private readonly onProgress?: (n: number) => void,
  ) {
    this.feed = new StreamFeed(hashAlg);
  }

  get position(): number {
    return this.total;
  }

  count(b: Buffer): void {
    this.feed.bytes(b);
    this.advance(b.length);
  }

  file(fd: number, length: number, label: string): Promise<void> {
    this.advance(length);
    return this.feed.file(fd, length, label);
  }

  fileWithVerity(fd: number, length: number, label: string, alg: HashAlg): Promise<Buffer> {
    this.advance(length);
    return this.feed.fileWithVerity(fd, length, label, alg);
  }

  flush(): void {
    this.feed.flush();
  }

  /** Bound what waits to be hashed (bytes are staged in memory) by waiting for the feed. */
  async relieve(): Promise<void> {
    if (this.feed.backlog > FEED_BACKLOG_MAX) await this.feed.settled();
  }

  private advance(n: number): void {
    this.total += n;
    this.onProgress?.(this.total);
  }

  /** Up to `max` bytes (≥ 1 unless at the end). */
  async readUpTo(max: number): Promise<Buffer> {
    // The common case (bytes of the current chunk already received) takes no await but the
    // caller's: a tar header costs several reads, each awaited promise a microtask and garbage.
    // (relieve(), inlined: calling it would cost a promise per read.)
    if (this.feed.backlog > FEED_BACKLOG_MAX) await this.feed.settled();
    if (!this.ready() && !(await this.current())) return Buffer.alloc(0);
    const s = this.seg!;
    if (s.kind === 'bytes') {
      const b = this.reader.bodyNow(max) ?? (await this.reader.body(max));
      this.count(b);
      return b;
    }
    const buf = Buffer.allocUnsafe(Math.min(max, s.length - s.pos, COPY_CHUNK));
    // Small files synchronously: page-cached, the promise round trip costs more than the read.
    const bytesRead = s.length <= COPY_CHUNK ? readSync(s.file.fd, buf, 0, buf.length, s.pos) : (await readFd(s.file.fd, buf, 0, buf.length, s.pos)).bytesRead;
    if (bytesRead === 0) throw new CfsError('EIO', `${s.file.name}: file is shorter than the declared ${s.length} bytes`);
    s.pos += bytesRead;
    const b = buf.subarray(0, bytesRead);
    this.count(b);
    return b;
  }

  /** Exactly `n` bytes, or fewer only at the end. */
  async readExact(n: number): Promise<Buffer> {
    const parts: Buffer[] = [];
    let got = 0;
    while (got < n) {
      const b = await this.readUpTo(n - got);
      if (b.length === 0) break;
      parts.push(Buffer.from(b));
      got += b.length;
    }
    return parts.length === 1 ? parts[0] : Buffer.concat(parts, got);
  }

  /** The next chunk when it is a whole, unread FileBackedData chunk of `length` bytes (of whatever length when null). */
  async wholeFile(length: number | null): Promise<{ file: OpenedFile; length: number } | null> {
    if (!(await this.current())) return null;
    const s = this.seg!;
    if (s.kind !== 'file' || s.pos !== 0 || (length !== null && s.length !== length)) return null;
    return { file: s.file, length: s.length };
  }

  /** Hand over the chunk returned by wholeFile (and its fd) to the caller, which counts its bytes. */
  takeWholeFile(): void {
    const s = this.seg;
    if (s?.kind === 'file') this.open.splice(this.open.indexOf(s.file), 1);
    this.seg = null;
  }

  close(): void {
    for (const f of this.open.splice(0)) closeSync(f.fd);
  }

  private finishFile(): void {
    const s = this.seg;
    if (s?.kind === 'file') {
      closeSync(s.file.fd);
      this.open.splice(this.open.indexOf(s.file), 1);
    }
    this.seg = null;
  }

  /** A segment with data is current (what current() makes sure of, when it need not wait). */
  private ready(): boolean {
    const s = this.seg;
    return s !== null && (s.kind === 'bytes' ? this.reader.remainingBody > 0 : s.pos < s.length);
  }

  /** Make sure a segment with data is current; false at the end of the stream. */
  private async current(): Promise<boolean> {
    for (;;) {
      if (this.seg?.kind === 'bytes' && this.reader.remainingBody === 0) this.seg = null;
      else if (this.seg?.kind === 'file' && this.seg.pos === this.seg.length) this.finishFile();
      if (this.seg) return true;
      if (this.eof) return false;
      const h = await this.reader.next();
      if (!h) {
        this.eof = true;
        return false;
      }
      if (h.type !== 'file') {
        if (h.length > 0) this.seg = { kind: 'bytes' };
        continue;
      }
      const where = `${this.what}, chunk ending at offset ${this.reader.offset}`;
      let dirfd = this.checkedSlots.get(h.index);
      if (dirfd === undefined) {
        dirfd = this.sourceDir(checkDirSlot(this.dirfds, h.index, where));
        this.checkedSlots.set(h.index, dirfd);
      }
      const file = openBeneath(dirfd, h.name, where);
      this.open.push(file);
      if (file.stat.size !== h.length) {
        throw new CfsError('EIO', `${where}: ${file.name}: declared length ${h.length} != actual size ${file.stat.size}`);
      }
      this.seg = { kind: 'file', file, length: h.length, pos: 0 };
    }
  }
}

/** Drain a stream without storing anything (the layer is already present). */
async function drain(reader: SplitdirfdReader): Promise<void> {
  for (let h = await reader.next(); h; h = await reader.next()) {
    if (h.type !== 'file') while ((await reader.body(COPY_CHUNK)).length > 0);
  }
}

/**
 * Store the layer carried by `input` (a splitdirfdstream) with files beneath `dirfds` as
 * `streams/oci-layer-<diffId>`. The input is always read to its end.
 */
export async function consumeLayerStream(repo: Repository, input: AsyncIterable<Uint8Array>, dirfds: readonly number[], opts: ConsumeOptions): Promise<ConsumeResult> {
  const { alg } = parseDiffId(opts.diffId);
  const what = `layer ${opts.diffId}: splitdirfdstream`;
  const reader = new SplitdirfdReader(input, what);
  const contentId = layerContentId(opts.diffId);
  // A layer whose stream lost objects is stored again (that repairs it).
  const existing = (await existingLayer(repo, opts.diffId))?.streamId;
  if (existing) {
    await drain(reader);
    return { streamId: existing, alreadyPresent: true, size: 0, objects: noObjects(), entries: null };
  }
  await repo.ensureWritable();
  const placer = new ObjectPlacer(repo, { zerocopy: !!opts.zerocopy, localStore: opts.localStore });
  const src = new LogicalSource(reader, what, dirfds, alg, (d) => placer.sourceDir(d), opts.onProgress);
  const kind = opts.kind ?? 'tar';
  const w = new SplitStreamWriter(repo, { contentType: kind === 'tar' ? CONTENT_TYPES.layer : CONTENT_TYPES.blob });
  const ordered = new OrderedSplitWriter(w);
  const collect = opts.collectEntries && kind === 'tar' ? new EntryCollector() : undefined;
  try {
    if (kind === 'tar') await splitTar(src, ordered, new TarEntryParser(opts.diffId), opts.diffId, (e) => contentObject(src, placer, ordered, repo, e, opts.diffId), collect);
    else await storeBlob(src, w, placer, repo);
  } catch (e) {
    // Stop the producer: it releases what it holds (open files, the store's lock).
    await reader.close().catch(() => undefined);
    throw e;
  } finally {
    src.close();
    // Never leave writes running past the consumer, also when it failed.
    await placer.drain(src).catch(() => undefined);
    placer.close();
  }
  await placer.drain(src);
  await ordered.settle();
  const actual = `${alg}:${(await src.feed.digest()).toString('hex')}`;
  if (actual !== opts.diffId) throw new CfsError('EDIGEST', `layer ${opts.diffId}: diff_id mismatch: reconstructed stream has ${actual}`, { expected: opts.diffId, actual });
  const streamId = await w.finish();
  await repo.linkStream(contentId, streamId);
  return { streamId, alreadyPresent: false, size: src.total, objects: placer.stats, entries: (await collect?.entries()) ?? null };
}

/** A file content (> 64 bytes) as an object: zero-copy for a matching whole file chunk. */
async function contentObject(src: LogicalSource, placer: ObjectPlacer, ordered: OrderedSplitWriter, repo: Repository, e: ParsedEntry, name: string): Promise<ObjectRef> {
  ordered.throwIfFailed();
  const whole = await src.wholeFile(e.dataSize);
  if (whole) {
    await placer.waitBelow(PLACEMENTS_IN_FLIGHT, src);
    src.takeWholeFile();
    return placer.place(whole.file, whole.length, src);
  }
  if (placer.zerocopy) {
    // Inline bytes (e.g. a containers-storage member whose name is not UTF-8, which the wire format cannot name) can only be copied.
    throw new CfsError('ENOTSUP', `layer ${name}: ${JSON.stringify(Buffer.from(e.path, 'latin1').toString())} (${e.dataSize} bytes) reaches the consumer as inline data, not as a file it could link; copy fallback is disabled (zerocopy mode)`);
  }
  return copyContent(repo, src, e, name, placer.stats);
}

/** An artifact blob: all bytes as one object. */
async function storeBlob(src: LogicalSource, w: SplitStreamWriter, placer: ObjectPlacer, repo: Repository): Promise<void> {
  const whole = await src.wholeFile(null);
  if (whole) {
    src.takeWholeFile();
    const placed = await placer.place(whole.file, whole.length, src);
    if ((await src.readUpTo(1)).length > 0) throw new CfsError('EINVAL', 'artifact blob: data after the file-backed chunk');
    await placer.drain(src);
    w.addExternal(await placed.pending, whole.length);
    return;
  }
  const ow = repo.createObjectWriter();
  let size = 0;
  try {
    for (let b = await src.readUpTo(COPY_CHUNK); b.length > 0; b = await src.readUpTo(COPY_CHUNK)) {
      await ow.write(b);
      size += b.length;
    }
  } catch (e) {
    ow.abort();
    throw e;
  }
  const id = await ow.commit();
  countWritten(placer.stats, ow.alreadyPresent);
  w.addExternal(id, size);
}
