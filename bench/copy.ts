/**
 * Benchmark: `oci copy` of a sizable image between two repositories on one filesystem (plain,
 * --zerocopy, and into a sha512 repository) versus a fresh pull of the same image, and GetLayer
 * throughput over the varlink socket (an independent Python client rebuilds and hashes every
 * layer from the stream and the received fds).
 * Run: node dist/bench/copy.js   (BENCH_MB = image size in MiB, default 256; needs python3)
 */
import { execFileSync } from 'node:child_process';
import { randomFillSync } from 'node:crypto';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { buildOciLayout, type EntrySpec } from '../test/helpers/oci-fixture.js';
import { Repository } from '../src/repository/repository.js';
import { openImageSource } from '../src/oci/sources.js';
import { importImage } from '../src/oci/import.js';
import { copyImage } from '../src/oci/copy.js';
import { ComposefsService } from '../src/varlink/service.js';

const MB = Number(process.env.BENCH_MB ?? 256);
const LAYERS = 4;
const FILE_SIZE = 256 * 1024;
const root = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..');
const client = [root, path.join(root, '..')].map((r) => path.join(r, 'test/clients/varlink_client.py')).find((p) => {
  try {
    execFileSync('test', ['-f', p]);
    return true;
  } catch {
    return false;
  }
})!;

const work = mkdtempSync(path.join(tmpdir(), 'cfs-bench-copy-'));
const secs = (t0: number): number => (performance.now() - t0) / 1000;
const rate = (bytes: number, s: number): string => `${(bytes / s / 1048576).toFixed(0)} MiB/s`;

try {
  const filesPerLayer = Math.max(1, Math.round((MB * 1048576) / FILE_SIZE / LAYERS));
  const layers: EntrySpec[][] = Array.from({ length: LAYERS }, (_, l) => [
    { path: `usr/`, type: 'directory' },
    { path: `usr/l${l}/`, type: 'directory' },
    ...Array.from({ length: filesPerLayer }, (_, i): EntrySpec => ({ path: `usr/l${l}/f${i}`, content: randomFillSync(Buffer.allocUnsafe(FILE_SIZE)) })),
  ]);
  const layout = await buildOciLayout(path.join(work, 'img'), { images: [{ tag: 'v1', layers, compression: 'zstd' }] });
  const bytes = layout.images[0].layers.reduce((n, l) => n + l.tar.length, 0);
  process.stdout.write(`image: ${LAYERS} layers, ${LAYERS * filesPerLayer} files, ${(bytes / 1048576).toFixed(0)} MiB of tar (zstd-compressed blobs)\n`);

  const open = (name: string, hashAlg: 'sha256' | 'sha512' = 'sha256'): Promise<Repository> => Repository.init(path.join(work, name), { insecure: true, hashAlg });

  const src = await open('src');
  let t0 = performance.now();
  const img = await openImageSource(`oci:${layout.dir}:v1`);
  await importImage(src, img, { name: 'app' });
  await img.close();
  const pull = secs(t0);
  process.stdout.write(`fresh pull:            ${pull.toFixed(2)} s  ${rate(bytes, pull)}\n`);

  for (const [label, name, alg, zerocopy] of [
    ['copy (same fs)', 'plain', 'sha256', false],
    ['copy --zerocopy', 'zc', 'sha256', true],
    ['copy sha256 -> sha512', 'sha512', 'sha512', false],
  ] as const) {
    const dst = await open(name, alg);
    t0 = performance.now();
    const r = await copyImage(src, dst, 'app', { name: 'app', zerocopy });
    const s = secs(t0);
    process.stdout.write(
      `${`${label}:`.padEnd(22)} ${s.toFixed(2)} s  ${rate(bytes, s)}  (${r.objectsHardlinked} hardlinked, ${r.objectsReflinked} reflinked, ${r.objectsCopied} copied; ${(pull / s).toFixed(1)}x pull)\n`,
    );
    dst.close();
  }

  const service = new ComposefsService({ insecure: true });
  const sock = path.join(work, 'sock');
  service.server.listenPath(sock);
  t0 = performance.now();
  const out = await new Promise<string>((resolve, reject) => {
    import('node:child_process').then(({ execFile }) =>
      execFile('python3', [client, 'getlayers', sock, src.path, 'app'], { maxBuffer: 1 << 24 }, (e, stdout) => (e ? reject(e) : resolve(stdout))),
    );
  });
  const s = secs(t0);
  const got = (JSON.parse(out) as { layers: Array<{ size: number; rebuilt: string; diff_id: string }> }).layers;
  if (!got.every((l) => l.rebuilt === l.diff_id)) throw new Error('GetLayer: rebuilt layer digest mismatch');
  const total = got.reduce((n, l) => n + l.size, 0);
  process.stdout.write(`GetLayer over varlink:  ${s.toFixed(2)} s  ${rate(total, s)} of layer data (python client rebuilds + sha256)\n`);
  // The transfer alone: stream and fds received, file-backed chunks checked by name and size.
  t0 = performance.now();
  const xfer = await new Promise<string>((resolve, reject) => {
    import('node:child_process').then(({ execFile }) =>
      execFile('python3', [client, 'transfer', sock, src.path, 'app'], { maxBuffer: 1 << 24 }, (e, stdout) => (e ? reject(e) : resolve(stdout))),
    );
  });
  const xs = secs(t0);
  const xr = JSON.parse(xfer) as { seconds: number; layers: Array<{ file_bytes: number; inline_bytes: number; files: number }> };
  const xl = xr.layers;
  const fileBytes = xl.reduce((n, l) => n + l.file_bytes, 0);
  const files = xl.reduce((n, l) => n + l.files, 0);
  process.stdout.write(`GetLayer transfer:      ${xr.seconds.toFixed(2)} s  ${rate(fileBytes, xr.seconds)} of file-backed data (${files} files; names and fds, no file reads; ${xs.toFixed(2)} s with python start)\n`);
  service.close();
  src.close();
} finally {
  rmSync(work, { recursive: true, force: true });
}
