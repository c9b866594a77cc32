import { open } from 'node:fs/promises';
import { closeSync, openSync, readSync, type PathLike } from 'node:fs';
import { FsVerityHasher, type HashAlg } from './digest.js';

const READ_CHUNK = 1 << 20;

/**
 * fs-verity digest of a file, computed in userspace with constant memory. `sizeHint` (e.g. from
 * an lstat the caller already has) keeps the read buffer small for small files: scanning a tree
 * of many small files must not allocate a megabyte per file.
 */
export async function fsverityDigestFile(filePath: PathLike, alg: HashAlg = 'sha256', sizeHint?: number): Promise<Buffer> {
  const fh = await open(filePath, 'r');
  try {
    const h = new FsVerityHasher(alg);
    const size = sizeHint === undefined ? READ_CHUNK : Math.max(1, Math.min(READ_CHUNK, sizeHint + 1));
    const buf = Buffer.allocUnsafe(size);
    for (;;) {
      const { bytesRead } = await fh.read(buf, 0, size, null);
      if (bytesRead === 0) break;
      h.update(buf.subarray(0, bytesRead));
    }
    return h.digest();
  } finally {
    await fh.close();
  }
}

let syncBuf: Buffer | null = null;

/**
 * Synchronous variant for scanners of many (mostly cached) files, where a promise round trip per
 * read costs more than the read itself. Reuses one module-level buffer.
 */
export function fsverityDigestFileSync(filePath: PathLike, alg: HashAlg = 'sha256'): Buffer {
  syncBuf ??= Buffer.allocUnsafe(READ_CHUNK);
  const fd = openSync(filePath, 'r');
  try {
    const h = new FsVerityHasher(alg);
    for (let n = readSync(fd, syncBuf, 0, READ_CHUNK, null); n > 0; n = readSync(fd, syncBuf, 0, READ_CHUNK, null)) {
      h.update(syncBuf.subarray(0, n));
    }
    return h.digest();
  } finally {
    closeSync(fd);
  }
}
