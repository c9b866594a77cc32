/**
 * Tar layer -> split stream (brief 3.5). Every input byte lands in the stream, in order:
 * header blocks (including GNU/PAX metadata entries and their data), small contents, padding,
 * the end-of-archive blocks and anything after them are inline; regular-file contents larger
 * than INLINE_CONTENT_MAX are streamed into objects and referenced. The digest of the whole
 * input is the layer's diff_id, so `catStream` reproduces the exact tar.
 */
import { CfsError } from '../errors.js';
import type { Repository } from '../repository/repository.js';
import { SplitStreamWriter } from '../splitstream/writer.js';
import { SplitStreamReader } from '../splitstream/reader.js';
import { CONTENT_TYPES } from '../splitstream/format.js';
import { INLINE_CONTENT_MAX } from './entry.js';
import { BLOCK_SIZE, isZeroBlock, roundUp } from './header.js';
import { TarEntryParser } from './parser.js';
import { HashingSource } from './source.js';

const COPY_CHUNK = 1024 * 1024;
const DIFF_ID_ALGS = new Set(['sha256', 'sha384', 'sha512']);

export interface ImportTarOptions {
  /** `sha256:<hex>` (also sha384/sha512); verified after the whole stream was read. */
  expectedDiffId?: string;
  /** Name for messages; defaults to the expected diff_id. */
  layerName?: string;
}

export interface ImportTarResult {
  /** Object id of the split stream. */
  streamId: Buffer;
  diffId: string;
  /** Size of the uncompressed tar in bytes. */
  size: number;
}

export function layerContentId(diffId: string): string {
  return `oci-layer-${diffId}`;
}

function parseDigest(d: string): { alg: string; hex: string } {
  const m = /^([a-z0-9]+):([0-9a-f]+)$/.exec(d);
  if (!m || !DIFF_ID_ALGS.has(m[1])) throw new CfsError('EINVAL', `invalid diff_id '${d}' (expected sha256:<hex>)`);
  return { alg: m[1], hex: m[2] };
}

/**
 * Import an uncompressed tar as the split stream `streams/oci-layer-<diff_id>`. With an
 * expected diff_id whose stream already exists, nothing is read. On a diff_id mismatch nothing
 * is linked under streams/ (objects already written are unreferenced garbage for GC).
 */
export async function importTarLayer(repo: Repository, tar: AsyncIterable<Uint8Array>, opts: ImportTarOptions = {}): Promise<ImportTarResult> {
  const expected = opts.expectedDiffId !== undefined ? parseDigest(opts.expectedDiffId) : null;
  const name = opts.layerName ?? opts.expectedDiffId ?? 'tar';
  if (expected) {
    const existing = await repo.hasStream(layerContentId(opts.expectedDiffId!));
    if (existing) {
      const r = await SplitStreamReader.open(repo, existing, { name: layerContentId(opts.expectedDiffId!) });
      await r.close();
      return { streamId: existing, diffId: opts.expectedDiffId!, size: r.streamSize };
    }
  }
  await repo.ensureWritable();
  const src = new HashingSource(tar, expected?.alg ?? 'sha256');
  const w = new SplitStreamWriter(repo, { contentType: CONTENT_TYPES.layer });
  await splitTar(repo, src, w, new TarEntryParser(name), name);
  const diffId = `${expected?.alg ?? 'sha256'}:${src.digestHex()}`;
  if (expected && diffId !== opts.expectedDiffId) {
    throw new CfsError('EDIGEST', `layer ${name}: diff_id mismatch: expected ${opts.expectedDiffId}, got ${diffId}`);
  }
  const streamId = await w.finish();
  await repo.linkStream(layerContentId(diffId), streamId);
  return { streamId, diffId, size: src.total };
}

async function splitTar(repo: Repository, src: HashingSource, w: SplitStreamWriter, parser: TarEntryParser, name: string): Promise<void> {
  const eofIn = (what: string): CfsError => new CfsError('EINVAL', `layer ${name}: unexpected EOF ${what} at offset ${src.position}`);

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
        const ow = repo.createObjectWriter();
        try {
          for (let left = e.dataSize; left > 0;) {
            const b = await src.readUpTo(Math.min(left, COPY_CHUNK));
            if (b.length === 0) throw eofIn(`reading tar entry ${e.path}`);
            await ow.write(b);
            left -= b.length;
          }
        } catch (err) {
          ow.abort();
          throw err;
        }
        w.addExternal(await ow.commit(), e.dataSize);
        await inline(roundUp(e.dataSize) - e.dataSize, `reading tar padding of ${e.path}`, false);
      } else {
        await inline(roundUp(e.dataSize), `reading tar entry ${e.path}`, false);
      }
    }
  }
  parser.end();
}
