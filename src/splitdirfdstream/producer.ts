/**
 * Layer split stream → splitdirfdstream (brief 5.3): inline runs become Metadata chunks,
 * external objects FileBackedData chunks naming `XX/YYYY…` beneath the repository's objects/
 * directory fd. No object data is copied into the stream.
 */
import { constants as C, openSync } from 'node:fs';
import path from 'node:path';
import type { Repository } from '../repository/repository.js';
import { objectRelPath } from '../repository/ids.js';
import { SplitStreamReader } from '../splitstream/reader.js';
import { ChunkBatch } from './batch.js';
import { fileHeader, LIMITS, metadataHeader } from './format.js';

const INLINE_PIECE = 1024 * 1024;

/** A read-only directory fd of the repository's objects/ (the caller closes it). */
export function openObjectsDir(repo: Repository): number {
  return openSync(path.join(repo.path, 'objects'), C.O_RDONLY | C.O_DIRECTORY);
}

/**
 * The splitdirfdstream of the split stream `streamObjectId`, with every object named relative
 * to dirfd slot `dirIndex`. Object sizes come from the objects themselves (secure repositories
 * also check their fs-verity digests), synchronously: a layer names thousands of objects.
 */
export async function* produceLayerStream(repo: Repository, streamObjectId: Buffer, dirIndex: number, name?: string): AsyncGenerator<Buffer> {
  const r = await SplitStreamReader.open(repo, streamObjectId, { name });
  try {
    const batch = new ChunkBatch();
    for (let c = await r.next(Math.min(INLINE_PIECE, LIMITS.inlineBody)); c; c = await r.next(INLINE_PIECE)) {
      if (c.kind === 'inline') {
        if (c.data.length === 0) continue;
        batch.add(metadataHeader('metadata', c.data.length));
        batch.add(c.data);
      } else {
        batch.add(fileHeader(repo.objectSize(c.id), dirIndex, Buffer.from(objectRelPath(c.id))));
      }
      if (batch.full) yield batch.take();
    }
    if (!batch.empty) yield batch.take();
  } finally {
    await r.close();
  }
}
