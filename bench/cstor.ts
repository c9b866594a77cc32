/**
 * Benchmark: `cfs oci pull containers-storage:localhost/bookworm:latest` with local fetch
 * disabled / auto / zerocopy, against `cfs oci pull oci:…:bookworm` of the same image and
 * `skopeo copy containers-storage:… oci:…`. Every run uses a fresh repository (same filesystem
 * as the store, so zero-copy applies) and runs the real CLI; wall times, best of BENCH_ROUNDS.
 *
 * Fixtures: /work/shared/scripts/make-debian-fixtures (root, cached), in FIXTURES_DIR
 * (default /var/tmp/cfs-debian-fixtures).
 * Run: node dist/bench/cstor.js   or   node --import tsx bench/cstor.ts
 */
import { execFileSync, spawnSync } from 'node:child_process';
import { existsSync, mkdtempSync, rmSync, statSync } from 'node:fs';
import path from 'node:path';
import { fileURLToPath } from 'node:url';

const here = path.dirname(fileURLToPath(import.meta.url));
const compiled = here.includes(`${path.sep}dist${path.sep}`);
const root = path.resolve(here, compiled ? '../..' : '..');
const fixtures = process.env['FIXTURES_DIR'] ?? '/var/tmp/cfs-debian-fixtures';
const rounds = Number(process.env['BENCH_ROUNDS'] ?? 3);
const cfs = compiled ? [path.join(root, 'dist/src/cli/entry.js')] : ['--import', 'tsx', path.join(root, 'src/cli/entry.ts')];

if (!existsSync(path.join(fixtures, '.complete'))) {
  process.stdout.write(`building fixtures in ${fixtures} (1-4 minutes)…\n`);
  execFileSync(path.resolve(root, '../shared/scripts/make-debian-fixtures'), [fixtures], { stdio: 'inherit' });
}
const env = { ...process.env, CONTAINERS_STORAGE_CONF: path.join(fixtures, 'cstor/storage.conf') };
const image = 'localhost/bookworm:latest';
const work = mkdtempSync(path.join(path.dirname(fixtures), 'cfs-bench-cstor-'));
const sameFs = statSync(work).dev === statSync(path.join(fixtures, 'cstor')).dev;

interface Variant {
  name: string;
  argv: (dir: string) => string[];
}

const pull = (src: string, ...extra: string[]) => (dir: string): string[] => [process.execPath, ...cfs, '--repo', path.join(dir, 'repo'), 'oci', 'pull', ...extra, src, 'bench'];
const variants: Variant[] = [
  { name: 'cfs pull oci:bookworm', argv: pull(`oci:${path.join(fixtures, 'oci')}:bookworm`) },
  { name: 'cfs pull containers-storage --local-fetch disabled', argv: pull(`containers-storage:${image}`, '--local-fetch', 'disabled') },
  { name: 'cfs pull containers-storage (default: auto)', argv: pull(`containers-storage:${image}`) },
  { name: 'cfs pull containers-storage --zerocopy', argv: pull(`containers-storage:${image}`, '--zerocopy') },
  { name: 'skopeo copy containers-storage: oci:', argv: (dir) => ['skopeo', '--insecure-policy', 'copy', '-q', `containers-storage:${image}`, `oci:${path.join(dir, 'out')}:bookworm`] },
];

const best = new Map<string, number>();
const notes = new Map<string, string>();
try {
  process.stdout.write(`repository and store on the same filesystem: ${sameFs}; best of ${rounds}\n`);
  for (let r = 0; r < rounds; r++) {
    for (const v of variants) {
      const dir = mkdtempSync(path.join(work, 'run-'));
      const [cmd, ...args] = v.argv(dir);
      // The repository's syncfs flushes the whole filesystem: without this, a run would also
      // pay for the previous runs' dirty pages.
      execFileSync('sync');
      const t0 = performance.now();
      const res = spawnSync(cmd!, args, { env, encoding: 'utf8', maxBuffer: 64 << 20 });
      const ms = performance.now() - t0;
      if (res.status !== 0) throw new Error(`${v.name} failed (${res.status}): ${res.stderr}`);
      const objects = /objects: .*/.exec(res.stderr ?? '');
      if (objects) notes.set(v.name, objects[0]);
      best.set(v.name, Math.min(best.get(v.name) ?? Infinity, ms));
      rmSync(dir, { recursive: true, force: true });
    }
  }
  const width = Math.max(...variants.map((v) => v.name.length));
  for (const v of variants) {
    process.stdout.write(`${v.name.padEnd(width)}  ${(best.get(v.name)! / 1000).toFixed(2).padStart(7)} s  ${notes.get(v.name) ?? ''}\n`);
  }
  const oci = best.get(variants[0]!.name)!;
  const zc = best.get(variants[3]!.name)!;
  process.stdout.write(`oci: pull / zerocopy pull = ${(oci / zc).toFixed(2)}x\n`);
} finally {
  rmSync(work, { recursive: true, force: true });
}
