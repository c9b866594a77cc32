/**
 * Benchmark: `oci copy` of the Debian fixture image (bookworm, ../shared/scripts/make-debian-fixtures)
 * between two repositories on one filesystem (plain, --zerocopy, and into a sha512 repository)
 * versus a fresh pull of the same image, and GetLayer over the varlink socket: an independent
 * Python client rebuilding and hashing every layer, and the transfer alone (stream + fds, file
 * chunks checked by name and size). Copies run in-process (no Node start-up in the numbers).
 * Run: node dist/bench/copy.js   (needs python3; BENCH_MB=N uses a synthetic N MiB image instead;
 * BENCH_RUNS, default 3: the pull and each copy are timed that many times, the best is printed)
 */
import { execFileSync } from 'node:child_process';
import { randomFillSync } from 'node:crypto';
import { existsSync, mkdtempSync, rmSync } from 'node:fs';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { buildOciLayout, type EntrySpec } from '../test/helpers/oci-fixture.js';
import { Repository } from '../src/repository/repository.js';
import { openImageSource } from '../src/oci/sources.js';
import { importImage } from '../src/oci/import.js';
import { openStoredImage } from '../src/oci/stored.js';
import { existingLayer } from '../src/tar/split.js';
import { copyImage } from '../src/oci/copy.js';
import { ComposefsService } from '../src/varlink/service.js';

const SYNTHETIC_MB = process.env.BENCH_MB ? Number(process.env.BENCH_MB) : null;
const RUNS = Number(process.env.BENCH_RUNS ?? 3);
const LAYERS = 4;
const FILE_SIZE = 256 * 1024;
const here = path.dirname(fileURLToPath(import.meta.url));
const root = path.resolve(here, here.includes(`${path.sep}dist${path.sep}`) ? '../..' : '..');
const fixtures = process.env['FIXTURES_DIR'] ?? '/var/tmp/cfs-debian-fixtures';
const client = path.join(root, 'test/clients/varlink_client.py');

if (SYNTHETIC_MB === null && !existsSync(path.join(fixtures, '.complete'))) {
  process.stdout.write(`building fixtures in ${fixtures} (1-4 minutes)…\n`);
  execFileSync(path.resolve(root, '../shared/scripts/make-debian-fixtures'), [fixtures], { stdio: 'inherit' });
}
// Next to the fixtures: the repositories share their filesystem (zero-copy applies).
const work = mkdtempSync(path.join(path.dirname(fixtures), 'cfs-bench-copy-'));
const secs = (t0: number): number => (performance.now() - t0) / 1000;
const rate = (bytes: number, s: number): string => `${(bytes / s / 1048576).toFixed(0)} MiB/s`;

/** The image to copy: the fixture's bookworm, or a synthetic one of BENCH_MB MiB. */
async function sourceRef(): Promise<{ ref: string; what: string }> {
  if (SYNTHETIC_MB === null) return { ref: `oci:${path.join(fixtures, 'oci')}:bookworm`, what: 'Debian bookworm fixture' };
  const filesPerLayer = Math.max(1, Math.round((SYNTHETIC_MB * 1048576) / FILE_SIZE / LAYERS));
  const layers: EntrySpec[][] = Array.from({ length: LAYERS }, (_, l) => [
    { path: `usr/`, type: 'directory' },
    { path: `usr/l${l}/`, type: 'directory' },
    ...Array.from({ length: filesPerLayer }, (_, i): EntrySpec => ({ path: `usr/l${l}/f${i}`, content: randomFillSync(Buffer.allocUnsafe(FILE_SIZE)) })),
  ]);
  const layout = await buildOciLayout(path.join(work, 'img'), { images: [{ tag: 'v1', layers, compression: 'zstd' }] });
  return { ref: `oci:${layout.dir}:v1`, what: `synthetic, ${LAYERS} zstd layers of ${FILE_SIZE / 1024} KiB files` };
}

try {
  const open = (name: string, hashAlg: 'sha256' | 'sha512' = 'sha256'): Promise<Repository> => Repository.init(path.join(work, name), { insecure: true, hashAlg });

  const { ref, what } = await sourceRef();
  // Best of RUNS for the pull and each copy, every run into a fresh repository.
  let pull = Infinity;
  let src: Repository | null = null;
  for (let i = 0; i < RUNS; i++) {
    src?.close();
    src = await open(`src${i}`);
    // syncfs (before each stream is published) flushes the whole filesystem: start clean so a
    // run does not pay for the previous runs' dirty pages.
    execFileSync('sync');
    const t0 = performance.now();
    const img = await openImageSource(ref);
    await importImage(src, img, { name: 'app' });
    await img.close();
    pull = Math.min(pull, secs(t0));
  }
  if (!src) throw new Error('BENCH_RUNS must be at least 1');
  const stored = await openStoredImage(src, 'app');
  let bytes = 0;
  for (const d of stored.diffIds) bytes += (await existingLayer(src, d))!.size;
  process.stdout.write(`image: ${what}; ${stored.diffIds.length} layers, ${(bytes / 1048576).toFixed(0)} MiB of tar; best of ${RUNS}\n`);
  process.stdout.write(`fresh pull:            ${pull.toFixed(2)} s  ${rate(bytes, pull)}\n`);

  for (const [label, name, alg, zerocopy] of [
    ['copy (same fs)', 'plain', 'sha256', false],
    ['copy --zerocopy', 'zc', 'sha256', true],
    ['copy sha256 -> sha512', 'sha512', 'sha512', false],
  ] as const) {
    let best = Infinity;
    let counts = '';
    for (let i = 0; i < RUNS; i++) {
      const dst = await open(`${name}${i}`, alg);
      execFileSync('sync');
      const t0 = performance.now();
      const r = await copyImage(src, dst, 'app', { name: 'app', zerocopy });
      best = Math.min(best, secs(t0));
      counts = `${r.objects.hardlinked} hardlinked, ${r.objects.reflinked} reflinked, ${r.objects.copied} copied`;
      dst.close();
    }
    process.stdout.write(`${`${label}:`.padEnd(22)} ${best.toFixed(2)} s  ${rate(bytes, best)}  (${counts}; ${(pull / best).toFixed(1)}x pull)\n`);
  }

  const service = new ComposefsService({ insecure: true });
  const sock = path.join(work, 'sock');
  service.server.listenPath(sock);
  let t0 = performance.now();
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
