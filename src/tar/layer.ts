/** Tar entries read back from a layer split stream (brief 2.9). */
import type { Repository } from '../repository/repository.js';
import { SplitStreamReader } from '../splitstream/reader.js';
import { INLINE_CONTENT_MAX, type TarContent, type TarEntry } from './entry.js';
import { BLOCK_SIZE, isZeroBlock, roundUp } from './header.js';
import { TarEntryParser } from './parser.js';
import { withContent } from './collected.js';

const SKIP_CHUNK = 1024 * 1024;

/**
 * Entries of a layer stream given by object id, content id (`oci-layer-sha256:…`) or
 * `refs/NAME`. Global PAX headers are skipped; the end-of-archive marker ends the entries.
 */
export async function* readLayerEntries(repo: Repository, stream: Buffer | string): AsyncGenerator<TarEntry> {
  let objectId: Buffer;
  let name: string;
  if (typeof stream === 'string') {
    const s = await repo.resolveStream(stream);
    objectId = s.objectId;
    name = s.contentId;
  } else {
    objectId = stream;
    name = stream.toString('hex');
  }
  const r = await SplitStreamReader.open(repo, objectId, { name });
  const parser = new TarEntryParser(name);
  // Most reads are served from what is decompressed already (inlineNow, kindNow), without a promise.
  const skipInline = async (n: number, what: string): Promise<void> => {
    for (let left = n; left > 0;) {
      const k = Math.min(left, SKIP_CHUNK);
      const b = r.inlineNow(k) ?? (await r.readInline(k, what));
      if (b.length !== k) throw r.corrupt(`unexpected end of stream in ${what}`);
      left -= k;
    }
  };
  try {
    for (;;) {
      let block = r.inlineNow(BLOCK_SIZE) ?? (await r.readInline(BLOCK_SIZE, 'tar header'));
      if (block.length === 0) break;
      if (isZeroBlock(block)) {
        const next = r.inlineNow(BLOCK_SIZE) ?? (await r.readInline(BLOCK_SIZE, 'tar header'));
        if (next.length === 0 || isZeroBlock(next)) break;
        block = next;
      }
      const h = parser.header(block);
      if (h.kind === 'meta') {
        const data = r.inlineNow(roundUp(h.dataSize)) ?? (await r.readInline(roundUp(h.dataSize), 'tar metadata'));
        if (data.length !== roundUp(h.dataSize)) throw r.corrupt('unexpected end of stream in tar metadata');
        parser.metaData(data.subarray(0, h.dataSize));
        continue;
      }
      const meta = h.entry;
      const dataSize = meta.dataSize;
      let content: TarContent | null = null;
      if (meta.type === 'file') {
        if (dataSize > 0 && (r.kindNow() ?? (await r.peekKind())) === 'external') {
          if (dataSize <= INLINE_CONTENT_MAX) throw r.corrupt(`${meta.path}: small (${dataSize} byte) file stored external`);
          content = { kind: 'external', id: Buffer.from(r.takeExternal()), size: dataSize };
          await skipInline(roundUp(dataSize) - dataSize, 'tar padding');
        } else {
          if (dataSize > INLINE_CONTENT_MAX) throw r.corrupt(`${meta.path}: large (${dataSize} byte) file stored inline`);
          const data = r.inlineNow(roundUp(dataSize)) ?? (await r.readInline(roundUp(dataSize), 'tar file content'));
          if (data.length !== roundUp(dataSize)) throw r.corrupt(`unexpected end of stream in ${meta.path}`);
          content = { kind: 'inline', data: Buffer.from(data.subarray(0, dataSize)) };
        }
      } else {
        await skipInline(roundUp(dataSize), 'tar entry data');
      }
      yield withContent(meta, content);
    }
    parser.end();
  } finally {
    await r.close();
  }
}
