import { open } from 'node:fs/promises';
import { closeSync, openSync, readSync, type PathLike } from 'node:fs';
import { FsVerityHasher, fsverityDigest, type HashAlg } from './digest.js';
import { verityDigestOfFd } from './file-hash.js';

const READ_CHUNK = 1 << 20;

/**
 * fs-verity digest of a file, computed in userspace with constant memory: a regular file is read
 * and hashed on libuv's threadpool (verityDigestOfFd), so the JS thread only waits.
 */
export async function fsverityDigestFile(filePath: PathLike, alg: HashAlg = 'sha256'): Promise<Buffer> {
  const fh = await open(filePath, 'r');
  try {
    const st = await fh.stat();
    if (st.isFile()) return await verityDigestOfFd(fh.fd, st.size, alg, String(filePath));
    // Pipes and devices: no size to go by, read to the end.
    const h = new FsVerityHasher(alg);
    const buf = Buffer.allocUnsafe(READ_CHUNK);
    for (let r = await fh.read(buf, 0, READ_CHUNK, null); r.bytesRead > 0; r = await fh.read(buf, 0, READ_CHUNK, null)) {
      h.update(buf.subarray(0, r.bytesRead));
    }
    return h.digest();
  } finally {
    await fh.close();
  }
}

let syncBuf: Buffer | null = null;

/**
 * Synchronous variant for scanners of many (mostly cached) files, where a promise round trip per
 * file costs more than the read itself. Reuses one module-level buffer; hashing is native.
 */
export function fsverityDigestFileSync(filePath: PathLike, alg: HashAlg = 'sha256'): Buffer {
  syncBuf ??= Buffer.allocUnsafe(READ_CHUNK);
  const fd = openSync(filePath, 'r');
  try {
    // Most files fit the buffer: read to EOF, then one native call (no hasher object).
    let filled = 0;
    for (let n = readSync(fd, syncBuf, 0, READ_CHUNK, null); n > 0 && (filled += n) < READ_CHUNK; n = readSync(fd, syncBuf, filled, READ_CHUNK - filled, null));
    if (filled < READ_CHUNK) return fsverityDigest(syncBuf.subarray(0, filled), alg);
    const h = new FsVerityHasher(alg).update(syncBuf);
    for (let n = readSync(fd, syncBuf, 0, READ_CHUNK, null); n > 0; n = readSync(fd, syncBuf, 0, READ_CHUNK, null)) {
      h.update(syncBuf.subarray(0, n));
    }
    return h.digest();
  } finally {
    closeSync(fd);
  }
}

/** fs-verity digest of an open file's bytes from offset 0 to its end, synchronously (positioned reads: the fd's offset is untouched). */
export function fsverityDigestFdSync(fd: number, alg: HashAlg = 'sha256'): Buffer {
  const h = new FsVerityHasher(alg);
  const buf = Buffer.allocUnsafe(READ_CHUNK);
  for (let pos = 0; ; ) {
    const n = readSync(fd, buf, 0, READ_CHUNK, pos);
    if (n === 0) break;
    h.update(buf.subarray(0, n));
    pos += n;
  }
  return h.digest();
}
