import { open } from 'node:fs/promises';
import { FsVerityHasher, type HashAlg } from './digest.js';

const READ_CHUNK = 1 << 20;

/** fs-verity digest of a file, computed in userspace with constant memory. */
export async function fsverityDigestFile(filePath: string, alg: HashAlg = 'sha256'): Promise<Buffer> {
  const fh = await open(filePath, 'r');
  try {
    const h = new FsVerityHasher(alg);
    const buf = Buffer.allocUnsafe(READ_CHUNK);
    for (;;) {
      const { bytesRead } = await fh.read(buf, 0, READ_CHUNK, null);
      if (bytesRead === 0) break;
      h.update(buf.subarray(0, bytesRead));
    }
    return h.digest();
  } finally {
    await fh.close();
  }
}
