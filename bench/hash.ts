/**
 * Benchmark: hashing throughput in MB/s (10^6 bytes per second, best of BENCH_RUNS).
 * In memory: createHash('sha256') over 1 MiB chunks (baseline) and FsVerityHasher (native Merkle
 * tree) over the same chunks. From a file in the page cache: verityDigestOfFd, alone and with a
 * StreamFeed digesting the same file on a second thread.
 * Run: node dist/bench/hash.js   (BENCH_MB = data size in MiB, default 256; BENCH_RUNS, default 3)
 */
import { createHash, randomFillSync } from 'node:crypto';
import { closeSync, mkdtempSync, openSync, readSync, rmSync, writeSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { FsVerityHasher } from '../src/fsverity/digest.js';
import { StreamFeed, verityDigestOfFd } from '../src/fsverity/file-hash.js';

const MB = Number(process.env.BENCH_MB ?? 256);
const RUNS = Number(process.env.BENCH_RUNS ?? 3);
const CHUNK = 1 << 20;
const bytes = MB * CHUNK;
const chunk = randomFillSync(Buffer.allocUnsafe(CHUNK));

async function best(name: string, f: () => unknown): Promise<void> {
  let secs = Infinity;
  for (let i = 0; i < RUNS; i++) {
    const t0 = performance.now();
    await f();
    secs = Math.min(secs, (performance.now() - t0) / 1000);
  }
  process.stdout.write(`${name}\t${(bytes / secs / 1e6).toFixed(0)} MB/s\n`);
}

const work = mkdtempSync(path.join(tmpdir(), 'cfs-bench-hash-'));
try {
  await best('createHash sha256 (1 MiB chunks)', () => {
    const h = createHash('sha256');
    for (let i = 0; i < MB; i++) h.update(chunk);
    return h.digest();
  });
  for (const alg of ['sha256', 'sha512'] as const) {
    await best(`FsVerityHasher ${alg} (1 MiB chunks)`, () => {
      const h = new FsVerityHasher(alg);
      for (let i = 0; i < MB; i++) h.update(chunk);
      return h.digest();
    });
  }

  const file = path.join(work, 'data');
  const wfd = openSync(file, 'w');
  for (let i = 0; i < MB; i++) writeSync(wfd, randomFillSync(chunk));
  closeSync(wfd);
  const fd = openSync(file, 'r');
  try {
    for (let n = readSync(fd, chunk, 0, CHUNK, null); n > 0; n = readSync(fd, chunk, 0, CHUNK, null)); // into the page cache
    for (const alg of ['sha256', 'sha512'] as const) {
      await best(`verityDigestOfFd ${alg} (page cache)`, () => verityDigestOfFd(fd, bytes, alg));
    }
    await best('verityDigestOfFd sha256 + StreamFeed sha256, in parallel (page cache)', async () => {
      const s = new StreamFeed('sha256');
      void s.file(fd, bytes, 'data');
      const [d] = await Promise.all([verityDigestOfFd(fd, bytes, 'sha256'), s.digest()]);
      return d;
    });
    await best('readSync 1 MiB + FsVerityHasher sha256 (page cache)', () => {
      const h = new FsVerityHasher('sha256');
      for (let n = readSync(fd, chunk, 0, CHUNK, 0), off = 0; n > 0; n = readSync(fd, chunk, 0, CHUNK, off)) {
        h.update(chunk.subarray(0, n));
        off += n;
      }
      return h.digest();
    });
  } finally {
    closeSync(fd);
  }
} finally {
  rmSync(work, { recursive: true, force: true });
}
