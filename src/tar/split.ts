/**
 * Tar layer -> split stream (brief 3.5). Every input byte lands in the stream, in order:
 * header blocks (including GNU/PAX metadata entries and their data), small contents, padding,
 * the end-of-archive blocks and anything after them are inline; regular-file contents larger
 * than INLINE_CONTENT_MAX are streamed into objects and referenced. The digest of the whole
 * input is the layer's diff_id, so `catStream` reproduces the exact tar.
 */
import { existsSync } from 'node:fs';
import { CfsError } from '../errors.js';
import type { Repository } from '../repository/repository.js';
import { objectRelPath } from '../repository/ids.js';
import { ObjectSink, ASYNC_OBJECT_MAX } from '../repository/object-sink.js';
import { countWritten, noObjects, recountPresent, type ObjectCounts } from '../repository/object-counts.js';
import { SplitStreamWriter } from '../splitstream/writer.js';
import { SplitStreamReader } from '../splitstream/reader.js';
import { CONTENT_TYPES } from '../splitstream/format.js';
import { INLINE_CONTENT_MAX } from './entry.js';
import { BLOCK_SIZE, isZeroBlock, roundUp } from './header.js';
import { TarEntryParser, type ParsedEntry } from './parser.js';
import { HashingSource } from './source.js';
import { EntryCollector } from './collected.js';
import type { TarEntry } from './entry.js';

const COPY_CHUNK = 1024 * 1024;
const EMPTY = Buffer.alloc(0);
type DiffIdAlg = 'sha256' | 'sha384' | 'sha512';
const DIFF_ID_HEX: Record<DiffIdAlg, number> = { sha256: 64, sha384: 96, sha512: 128 };

export interface ImportTarOptions {
  /** `sha256:<hex>` (also sha384/sha512); verified after the whole stream was read. */
  expectedDiffId?: string;
  /** Name for messages; defaults to the expected diff_id. */
  layerName?: string;
  /** Incremented for every file content stored as an object. */
  counts?: ObjectCounts;
  /** Keep the layer's entries for an image build right after (ImportTarResult.entries). */
  collectEntries?: boolean;
}

export interface ImportTarResult {
  /** Object id of the split stream. */
  streamId: Buffer;
  diffId: string;
  /** Size of the uncompressed tar in bytes. */
  size: number;
  /** With collectEntries, a layer stored now: its entries (EntryCollector); else null. */
  entries: TarEntry[] | null;
}

/** The byte reader splitTar pulls the archive from (HashingSource, the splitdirfdstream consumer). */
export interface TarInput {
  /** Offset of the next byte, for messages. */
  readonly position: number;
  /** Up to `max` bytes (at least 1 unless at EOF). */
  readUpTo(max: number): Promise<Buffer>;
  /** Exactly `n` bytes, or fewer only at EOF. */
  readExact(n: number): Promise<Buffer>;
}

/**
 * Stores the content of a regular file larger than INLINE_CONTENT_MAX, consuming it from the
 * input; returns its object id (or what `TarSink` takes for one).
 */
export type StoreContent<R> = (entry: ParsedEntry) => Promise<R>;

/** Where splitTar writes: a SplitStreamWriter (R = object id) or an OrderedSplitWriter. */
export interface TarSink<R> {
  writeInline(data: Uint8Array): void;
  addExternal(ref: R, size: number): void;
}

export function layerContentId(diffId: string): string {
  return `oci-layer-${diffId}`;
}

/** A diff_id (`sha256:<hex>`, or sha384/sha512) as its algorithm and hex digest. */
export function parseDiffId(d: string): { alg: DiffIdAlg; hex: string } {
  const m = /^(sha256|sha384|sha512):([0-9a-f]+)$/.exec(d);
  const alg = m?.[1] as DiffIdAlg | undefined;
  if (!m || !alg || m[2].length !== DIFF_ID_HEX[alg]) throw new CfsError('EINVAL', `invalid diff_id '${d}' (expected sha256:<hex>)`);
  return { alg, hex: m[2] };
}

/**
 * Import an uncompressed tar as the split stream `streams/oci-layer-<diff_id>`. With an
 * expected diff_id whose stream already exists, nothing is read. On a diff_id mismatch nothing
 * is linked under streams/ (objects already written are unreferenced garbage for GC).
 */
export async function importTarLayer(repo: Repository, tar: AsyncIterable<Uint8Array>, opts: ImportTarOptions = {}): Promise<ImportTarResult> {
  const expected = opts.expectedDiffId !== undefined ? parseDiffId(opts.expectedDiffId) : null;
  const name = opts.layerName ?? opts.expectedDiffId ?? 'tar';
  const existing = await existingLayer(repo, opts.expectedDiffId);
  if (existing) return existing;
  await repo.ensureWritable();
  const src = new HashingSource(tar, expected?.alg ?? 'sha256');
  const w = new SplitStreamWriter(repo, { contentType: CONTENT_TYPES.layer });
  const counts = opts.counts ?? noObjects();
  const sink = new ObjectSink(repo);
  const collect = opts.collectEntries ? new EntryCollector() : undefined;
  try {
    await splitTar(src, w, new TarEntryParser(name), name, async (e) => {
      if (sink.usable && e.dataSize <= ASYNC_OBJECT_MAX) {
        counts.copied++;
        return sink.store(await readContent(src, e, name));
      }
      return copyContent(repo, src, e, name, counts);
    }, collect);
  } finally {
    // Never leave writes running past the import, also when it failed.
    await sink.drain().catch(() => undefined);
  }
  await sink.drain();
  recountPresent(counts, sink.takePresent());
  const r = await publishLayer(repo, w, `${expected?.alg ?? 'sha256'}:${src.digestHex()}`, { name, expectedDiffId: opts.expectedDiffId, size: src.total });
  return { ...r, entries: (await collect?.entries()) ?? null };
}

/**
 * The already imported layer for an expected diff_id, when its stream and every object the stream
 * names are there; else null, so importing it again repairs a damaged repository (objects lost or
 * removed by hand). Synchronous existence checks: thousands of page-cached lookups cost less
 * than as many promises (and existsSync less than lstatSync, which builds a Stats each time).
 */
export async function existingLayer(repo: Repository, expectedDiffId: string | undefined): Promise<ImportTarResult | null> {
  if (expectedDiffId === undefined) return null;
  const existing = await repo.hasStream(layerContentId(expectedDiffId));
  if (!existing) return null;
  let r: SplitStreamReader;
  try {
    // Fails also when the stream's own object is gone.
    r = await SplitStreamReader.open(repo, existing, { name: layerContentId(expectedDiffId) });
  } catch {
    return null;
  }
  await r.close();
  const objects = `${repo.path}/objects/`;
  for (const o of r.objectRefs) if (!existsSync(objects + objectRelPath(o))) return null;
  return { streamId: existing, diffId: expectedDiffId, size: r.streamSize, entries: null };
}

/** Check the computed diff_id, then finish the stream and publish it as `oci-layer-<diff_id>`. */
async function publishLayer(
  repo: Repository,
  w: SplitStreamWriter,
  diffId: string,
  info: { name: string; expectedDiffId: string | undefined; size: number },
): Promise<Omit<ImportTarResult, 'entries'>> {
  if (info.expectedDiffId !== undefined && diffId !== info.expectedDiffId) {
    throw new CfsError('EDIGEST', `layer ${info.name}: diff_id mismatch: expected ${info.expectedDiffId}, got ${diffId}`);
  }
  const streamId = await w.finish();
  await repo.linkStream(layerContentId(diffId), streamId);
  return { streamId, diffId, size: info.size };
}

function eofError(name: string, src: TarInput, what: string): CfsError {
  return new CfsError('EINVAL', `layer ${name}: unexpected EOF ${what} at offset ${src.position}`);
}

/** A (small) file's whole content from the tar bytes. */
async function readContent(src: TarInput, e: ParsedEntry, name: string): Promise<Buffer> {
  const parts: Buffer[] = [];
  for (let left = e.dataSize; left > 0;) {
    const b = await src.readUpTo(Math.min(left, COPY_CHUNK));
    if (b.length === 0) throw eofError(name, src, `reading tar entry ${e.path}`);
    parts.push(Buffer.from(b));
    left -= b.length;
  }
  return parts.length === 1 ? parts[0] : Buffer.concat(parts, e.dataSize);
}

/** Stream a file's content from the tar bytes into a new object, counted in `counts`. */
export async function copyContent(repo: Repository, src: TarInput, e: ParsedEntry, name: string, counts: ObjectCounts): Promise<Buffer> {
  const ow = repo.createObjectWriter();
  try {
    for (let left = e.dataSize; left > 0;) {
      const b = await src.readUpTo(Math.min(left, COPY_CHUNK));
      if (b.length === 0) throw eofError(name, src, `reading tar entry ${e.path}`);
      await ow.write(b);
      left -= b.length;
    }
  } catch (err) {
    ow.abort();
    throw err;
  }
  const id = await ow.commit();
  countWritten(counts, ow.alreadyPresent);
  return id;
}

/**
 * The splitting state machine: every byte of `src` goes inline into `w`, except the contents
 * of regular files larger than INLINE_CONTENT_MAX, which `storeContent` consumes (from `src`
 * or otherwise) and which become external references.
 */
export async function splitTar<R extends Buffer | { readonly pending: Promise<Buffer> }>(
  src: TarInput, w: TarSink<R>, parser: TarEntryParser, name: string, storeContent: StoreContent<R>, collect?: EntryCollector,
): Promise<void> {
  const eofIn = (what: string): CfsError => eofError(name, src, what);

  /** Copy `n` bytes inline; returns them when `keep` (metadata contents, bounded by limits). */
  const inline = async (n: number, what: string, keep: boolean): Promise<Buffer | null> => {
    const kept: Buffer[] = [];
    for (let left = n; left > 0;) {
      const b = await src.readUpTo(Math.min(left, COPY_CHUNK));
      if (b.length === 0) throw eofIn(what);
      w.writeInline(b);
      if (keep) kept.push(b);
      left -= b.length;
    }
    return keep ? Buffer.concat(kept, n) : null;
  };

  for (;;) {
    let block = await src.readExact(BLOCK_SIZE);
    if (block.length === 0) break; // EOF at a header boundary: accepted as the end
    if (block.length < BLOCK_SIZE) throw eofIn('in tar stream (truncated header)');
    w.writeInline(block);
    if (isZeroBlock(block)) {
      const next = await src.readExact(BLOCK_SIZE);
      w.writeInline(next);
      // A single stray zero block followed by a header is skipped.
      if (next.length === BLOCK_SIZE && !isZeroBlock(next)) block = next;
    }
    if (isZeroBlock(block)) {
      // End of archive: keep every remaining byte (GNU record padding, trailing data).
      for (let b = await src.readUpTo(COPY_CHUNK); b.length > 0; b = await src.readUpTo(COPY_CHUNK)) w.writeInline(b);
      break;
    }
    const h = parser.header(block);
    if (h.kind === 'meta') {
      const data = await inline(h.dataSize, 'reading tar metadata', true);
      await inline(roundUp(h.dataSize) - h.dataSize, 'reading tar padding', false);
      parser.metaData(data!);
    } else {
      const e = h.entry;
      if (e.type === 'file' && e.dataSize > INLINE_CONTENT_MAX) {
        const ref = await storeContent(e);
        collect?.external(e, ref);
        w.addExternal(ref, e.dataSize);
        // (Nothing to read, no call: most entries have no padding or no data, and each async call costs.)
        if (e.dataSize % BLOCK_SIZE !== 0) await inline(roundUp(e.dataSize) - e.dataSize, `reading tar padding of ${e.path}`, false);
      } else {
        // Inline contents are kept for the collector as readLayerEntries gives them (a copy of the content bytes).
        const keep = collect !== undefined && e.type === 'file';
        const data = e.dataSize === 0 ? EMPTY : await inline(roundUp(e.dataSize), `reading tar entry ${e.path}`, keep);
        collect?.entry(e, keep ? { kind: 'inline', data: data!.subarray(0, e.dataSize) } : null);
      }
    }
  }
  parser.end();
}
