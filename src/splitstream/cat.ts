/** Reassemble a split stream's original bytes (inline data + external object contents). */
import type { Repository } from '../repository/repository.js';
import { SplitStreamReader } from './reader.js';

const READ_SIZE = 1024 * 1024;

/** The bytes of stream `ref` (a content id or `refs/NAME`), in order, with constant memory. */
export async function* catStream(repo: Repository, ref: string): AsyncGenerator<Buffer> {
  const { contentId, objectId } = await repo.resolveStream(ref);
  yield* catStreamObject(repo, objectId, contentId);
}

/** Same, for a split stream given by its object id. Checks the total against stream_size. */
export async function* catStreamObject(repo: Repository, objectId: Buffer, name?: string): AsyncGenerator<Buffer> {
  const r = await SplitStreamReader.open(repo, objectId, { name });
  try {
    let total = 0;
    for await (const c of r.chunks(READ_SIZE)) {
      if (c.kind === 'inline') {
        total += c.data.length;
        yield c.data;
        continue;
      }
      const fh = await repo.openObject(c.id);
      try {
        for (;;) {
          const buf = Buffer.allocUnsafe(READ_SIZE);
          const { bytesRead } = await fh.read(buf, 0, READ_SIZE, null);
          if (bytesRead === 0) break;
          total += bytesRead;
          yield buf.subarray(0, bytesRead);
        }
      } finally {
        await fh.close();
      }
    }
    if (total !== r.streamSize) throw r.corrupt(`reassembled ${total} bytes, header says ${r.streamSize}`);
  } finally {
    await r.close();
  }
}
