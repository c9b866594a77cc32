/**
 * A splitdirfdstream as the plain byte stream it describes (a layer's tar): Metadata and
 * InlineData bodies as they come, FileBackedData read from the named file beneath its directory
 * fd (opened as the consumer opens it: beneath, regular files only, of the declared size).
 */
import { closeSync, read as fsRead } from 'node:fs';
import { promisify } from 'node:util';
import { CfsError } from '../errors.js';
import { SplitdirfdReader } from './reader.js';
import { checkDirSlot, openBeneath } from './open.js';

const readFd = promisify(fsRead);
const PIECE = 1024 * 1024;

export async function* rebuildStream(input: AsyncIterable<Uint8Array>, dirfds: readonly number[], what: string): AsyncGenerator<Buffer> {
  const reader = new SplitdirfdReader(input, what);
  try {
    for (let h = await reader.next(); h; h = await reader.next()) {
      if (h.type !== 'file') {
        for (let b = await reader.body(PIECE); b.length > 0; b = await reader.body(PIECE)) yield Buffer.from(b);
        continue;
      }
      const where = `${what}, chunk ending at offset ${reader.offset}`;
      const f = openBeneath(checkDirSlot(dirfds, h.index, where), h.name, where);
      try {
        if (f.stat.size !== h.length) throw new CfsError('EIO', `${where}: ${f.name}: declared length ${h.length} != actual size ${f.stat.size}`);
        for (let pos = 0; pos < h.length; ) {
          const buf = Buffer.allocUnsafe(Math.min(PIECE, h.length - pos));
          const { bytesRead } = await readFd(f.fd, buf, 0, buf.length, pos);
          if (bytesRead === 0) throw new CfsError('EIO', `${where}: ${f.name}: shorter than the declared ${h.length} bytes`);
          pos += bytesRead;
          yield buf.subarray(0, bytesRead);
        }
      } finally {
        closeSync(f.fd);
      }
    }
  } finally {
    await reader.close();
  }
}
