/**
 * Userspace fs-verity digests of object files for fsck: synchronous reads into one reused
 * buffer (objects are mostly small; per-call buffers and async I/O cost more than the hashing),
 * on the calling thread or in worker threads so hashing uses every core.
 * Worker messages: {seq, path} → {seq, hex} | {seq, error}.
 */
import { closeSync, openSync, readSync } from 'node:fs';
import { isMainThread, parentPort, workerData } from 'node:worker_threads';
import { FsVerityHasher, type HashAlg } from '../fsverity/digest.js';

const READ_CHUNK = 1 << 20;
let buf: Buffer | null = null;

export function digestObjectFile(p: string, alg: HashAlg): Buffer {
  buf ??= Buffer.allocUnsafe(READ_CHUNK);
  const fd = openSync(p, 'r');
  try {
    const h = new FsVerityHasher(alg);
    for (let n = readSync(fd, buf, 0, READ_CHUNK, null); n > 0; n = readSync(fd, buf, 0, READ_CHUNK, null)) h.update(buf.subarray(0, n));
    return h.digest();
  } finally {
    closeSync(fd);
  }
}

export interface HashWorkerData {
  cfsHashWorker: true;
  alg: HashAlg;
}

const data = workerData as HashWorkerData | null;
if (!isMainThread && parentPort && data?.cfsHashWorker) {
  const port = parentPort;
  port.on('message', (m: { seq: number; path: string }) => {
    try {
      port.postMessage({ seq: m.seq, hex: digestObjectFile(m.path, data.alg).toString('hex') });
    } catch (e) {
      port.postMessage({ seq: m.seq, error: (e as Error).message });
    }
  });
}
