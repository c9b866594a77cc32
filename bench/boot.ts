/**
 * Benchmark: `compute-karg` of an unpacked tree and `setup-root` wall time (process spawn to
 * mounted root). The tree is a hardlinked copy of BENCH_SRC (default /usr/share) as /usr, plus
 * empty /boot, /sysroot, /etc, /var. setup-root needs root; it is skipped otherwise.
 *
 * Run: node --import tsx bench/boot.ts   (CLI spawned through tsx)
 *      node dist/bench/boot.js          (after `npx tsc -p .`: CLI spawned as bin/cfs runs it)
 */
import { execFileSync, spawnSync } from 'node:child_process';
import { mkdirSync, mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { computeDirKarg, treeFromDirectory } from '../src/boot/image.js';
import { formatKarg } from '../src/boot/karg.js';
import { deploymentStateDir, teardownRoot } from '../src/boot/setup-root.js';
import { hasMountPrivilege } from '../src/mount/caps.js';
import { erofsForFormat } from '../src/oci/image-build.js';
import { Repository } from '../src/repository/repository.js';

const src = process.env.BENCH_SRC ?? '/usr/share';
const rounds = Number(process.env.BENCH_ROUNDS ?? 5);
const here = path.dirname(fileURLToPath(import.meta.url));
const compiled = import.meta.url.endsWith('.js');
// Compiled: dist/src/cli/entry.js, what bin/cfs runs; else the sources through tsx.
const cli = compiled ? [path.resolve(here, '../src/cli/entry.js')] : ['--import', 'tsx', path.resolve(here, '../src/cli/entry.ts')];

const ms = (t: number): string => `${t.toFixed(1)} ms`;
const tmp = mkdtempSync(path.join(tmpdir(), 'cfs-bench-boot-'));
try {
  const rootfs = path.join(tmp, 'rootfs');
  mkdirSync(rootfs);
  // Hardlinks when on the same filesystem (fast); a real copy otherwise.
  execFileSync('cp', ['-al', src, path.join(rootfs, 'usr')]);
  for (const d of ['boot', 'sysroot', 'etc', 'var']) mkdirSync(path.join(rootfs, d));
  const entries = Number(execFileSync('sh', ['-c', `find '${rootfs}' | wc -l`], { encoding: 'utf8' }).trim());
  const bytes = execFileSync('du', ['-sb', rootfs], { encoding: 'utf8' }).split('\t')[0];

  const t0 = performance.now();
  const karg = await computeDirKarg(rootfs, { alg: 'sha256' });
  const t1 = performance.now();
  process.stdout.write(`compute-karg (library, in-process): ${ms(t1 - t0)} for ${entries} entries, ${bytes} bytes\n  ${karg.slice(0, 40)}…\n`);
  const c0 = performance.now();
  execFileSync(process.execPath, [...cli, '--repo', path.join(tmp, 'none'), 'compute-karg', '--hash', 'sha256', rootfs]);
  process.stdout.write(`compute-karg (CLI ${compiled ? 'dist' : 'tsx'}, spawn to exit): ${ms(performance.now() - c0)}\n`);

  if (!hasMountPrivilege()) {
    process.stdout.write('setup-root: skipped (needs root)\n');
  } else {
    const sysroot = path.join(tmp, 'sysroot');
    const repo = await Repository.init(path.join(sysroot, 'composefs'), { insecure: true });
    const erofs = erofsForFormat(await treeFromDirectory(rootfs, { alg: 'sha256', bootable: true }), 1);
    const hex = await repo.writeImage(erofs);
    repo.close();
    for (const d of ['var', 'etc/upper', 'etc/work']) mkdirSync(path.join(deploymentStateDir(sysroot, hex), d), { recursive: true });
    const target = path.join(tmp, 'newroot');
    mkdirSync(target);
    const times: number[] = [];
    for (let i = 0; i < rounds; i++) {
      const s0 = performance.now();
      const r = spawnSync(process.execPath, [...cli, 'setup-root', '--cmdline', formatKarg(hex, 'sha256', { insecure: true }), '--sysroot', sysroot, '--target', target]);
      times.push(performance.now() - s0);
      if (r.status !== 0) throw new Error(`setup-root failed: ${r.stderr}`);
      teardownRoot(target);
    }
    times.sort((a, b) => a - b);
    process.stdout.write(
      `setup-root (CLI ${compiled ? 'dist' : 'tsx'}, spawn to mounted root, image ${erofs.length} bytes): ` +
        `median ${ms(times[Math.floor(times.length / 2)])}, min ${ms(times[0])}, max ${ms(times[times.length - 1])} over ${rounds} runs\n`,
    );
  }
} finally {
  rmSync(tmp, { recursive: true, force: true });
}
