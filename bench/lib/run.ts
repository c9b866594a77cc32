/** Helpers for benchmarks: run a command, report wall time and the child's peak RSS (GNU time). */
import { spawnSync, type SpawnSyncOptions } from 'node:child_process';
import { existsSync } from 'node:fs';
import path from 'node:path';
import { fileURLToPath } from 'node:url';

export const ROOT = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '../../..');
export const CFS = [process.execPath, path.join(ROOT, 'dist/src/cli/entry.js')];

export interface Timed {
  seconds: number;
  maxRssMiB: number | null;
  stdout: string;
}

/** Runs argv; fails loudly on a non-zero exit. Peak RSS comes from /usr/bin/time when present. */
export function timed(argv: string[], opts: SpawnSyncOptions = {}): Timed {
  const gnuTime = existsSync('/usr/bin/time');
  const full = gnuTime ? ['/usr/bin/time', '-f', '@@maxrss=%M', ...argv] : argv;
  const t0 = process.hrtime.bigint();
  const r = spawnSync(full[0], full.slice(1), { encoding: 'utf8', maxBuffer: 256 * 1024 * 1024, ...opts });
  const seconds = Number(process.hrtime.bigint() - t0) / 1e9;
  const stderr = String(r.stderr ?? '');
  if (r.status !== 0) throw new Error(`${argv.join(' ')} failed (${r.status}): ${stderr.slice(-2000)}`);
  const m = /@@maxrss=(\d+)/.exec(stderr);
  return { seconds, maxRssMiB: m ? Number(m[1]) / 1024 : null, stdout: String(r.stdout ?? '') };
}

export function fixturesDir(): string {
  return process.env.CFS_FIXTURES ?? '/var/tmp/cfs-debian-fixtures';
}

/** Builds (or reuses) the Debian fixtures with the shared script. */
export function ensureFixtures(): string {
  const dir = fixturesDir();
  if (!existsSync(path.join(dir, '.complete'))) {
    const script = path.resolve(ROOT, '../shared/scripts/make-debian-fixtures');
    process.stderr.write(`building Debian fixtures in ${dir} (1-4 minutes)…\n`);
    const r = spawnSync(script, [dir], { stdio: 'inherit' });
    if (r.status !== 0) throw new Error(`${script} failed`);
  }
  return dir;
}

export function fmt(n: number, digits = 2): string {
  return n.toFixed(digits);
}
