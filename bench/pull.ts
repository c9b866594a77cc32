/**
 * bench/pull: pull the Debian bookworm fixture (oci:, oci-archive:, zstd, 4-layer) into fresh
 * repositories; wall time, MB/s of uncompressed layer data, peak RSS; re-pull time; and
 * `umoci unpack` of the same image for comparison. Run: node dist/bench/pull.js
 */
import { mkdtempSync, rmSync, readdirSync, statSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { CFS, ensureFixtures, fmt, timed } from './lib/run.js';

/** Bytes of regular files under a directory (the unpacked rootfs: the data a pull must store). */
function treeBytes(dir: string): number {
  let total = 0;
  const walk = (d: string): void => {
    for (const e of readdirSync(d, { withFileTypes: true })) {
      const p = path.join(d, e.name);
      if (e.isDirectory()) walk(p);
      else if (e.isFile()) total += statSync(p).size;
    }
  };
  walk(dir);
  return total;
}

function main(): void {
  const fx = ensureFixtures();
  const work = mkdtempSync(path.join(tmpdir(), 'cfs-bench-pull-'));
  const rootfsBytes = treeBytes(path.join(fx, 'expected/bookworm/rootfs'));
  const rows: string[] = [];
  try {
    const cases: Array<[string, string]> = [
      ['oci: bookworm (1 gzip layer)', `oci:${fx}/oci:bookworm`],
      ['oci-archive: bookworm', `oci-archive:${fx}/bookworm.oci-archive.tar:bookworm`],
      ['oci: layered (4 gzip layers)', `oci:${fx}/oci:layered`],
      ['oci: layered zstd', `oci:${fx}/zstd:layered`],
    ];
    for (const [label, ref] of cases) {
      const repo = path.join(work, `repo-${rows.length}`);
      const cold = timed([...CFS, '--repo', repo, '--insecure', 'oci', 'pull', '-q', ref, 'img']);
      const again = timed([...CFS, '--repo', repo, '--insecure', 'oci', 'pull', '-q', ref, 'img']);
      rows.push(
        `${label.padEnd(32)} cold ${fmt(cold.seconds)} s  ${fmt(rootfsBytes / 1e6 / cold.seconds, 0)} MB/s  peak RSS ${fmt(cold.maxRssMiB ?? NaN, 0)} MiB   re-pull ${fmt(again.seconds)} s`,
      );
      rmSync(repo, { recursive: true, force: true });
    }
    const bundle = path.join(work, 'umoci');
    const u = timed(['umoci', 'unpack', '--image', `${fx}/oci:bookworm`, bundle]);
    rows.push(`${'umoci unpack bookworm'.padEnd(32)} ${fmt(u.seconds)} s  peak RSS ${fmt(u.maxRssMiB ?? NaN, 0)} MiB`);
    process.stdout.write(`rootfs: ${fmt(rootfsBytes / 1e6, 0)} MB\n${rows.join('\n')}\n`);
  } finally {
    rmSync(work, { recursive: true, force: true });
  }
}

main();
