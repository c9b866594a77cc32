/**
 * bench/mount: import the Debian bookworm fixture, then time `cfs mount` (kernel and FUSE,
 * process start to return, median of runs) and reading the tree through kernel composefs,
 * cfs FUSE and the plain unpacked directory: every file (`tar cf - . | wc -c`) with cold
 * (dropped) and warm caches, and `ls -lR`. Run as root: node dist/bench/mount.js
 */
import { spawnSync } from 'node:child_process';
import { mkdirSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { CFS, ensureFixtures, fmt, timed } from './lib/run.js';

const MOUNT_RUNS = 7;
const READ_RUNS = 3;

function median(xs: number[]): number {
  const s = [...xs].sort((a, b) => a - b);
  return s[s.length >> 1]!;
}

function dropCaches(): void {
  spawnSync('sync');
  writeFileSync('/proc/sys/vm/drop_caches', '3');
}

function sh(script: string, cwd: string): number {
  return timed(['sh', '-c', script], { cwd }).seconds;
}

interface Reads {
  cold: number;
  warm: number;
  ls: number;
}

function measureReads(dir: string): Reads {
  const colds: number[] = [];
  for (let i = 0; i < READ_RUNS; i++) {
    dropCaches();
    colds.push(sh('tar cf - . | wc -c > /dev/null', dir));
  }
  sh('tar cf - . | wc -c > /dev/null', dir);
  const warm = median(Array.from({ length: READ_RUNS }, () => sh('tar cf - . | wc -c > /dev/null', dir)));
  sh('ls -lR . > /dev/null', dir);
  const ls = median(Array.from({ length: READ_RUNS }, () => sh('ls -lR . > /dev/null', dir)));
  return { cold: median(colds), warm, ls };
}

function main(): void {
  if (process.getuid?.() !== 0) throw new Error('bench/mount needs root (kernel mounts, drop_caches)');
  const fx = ensureFixtures();
  const work = mkdtempSync(path.join(tmpdir(), 'cfs-bench-mount-'));
  const repo = path.join(work, 'repo');
  const mnt = path.join(work, 'mnt');
  mkdirSync(mnt);
  // stderr not a pipe: the FUSE server inherits it, and spawnSync would wait for it to close.
  const cfs = (...args: string[]) => timed([...CFS, '--repo', repo, '--insecure', ...args], { stdio: ['ignore', 'pipe', 'ignore'] });
  try {
    cfs('oci', 'pull', '-q', `oci:${fx}/oci:bookworm`, 'bookworm');
    const mountTimes: Record<'kernel' | 'fuse', number[]> = { kernel: [], fuse: [] };
    for (let i = 0; i < MOUNT_RUNS; i++) {
      for (const kind of ['kernel', 'fuse'] as const) {
        mountTimes[kind].push(cfs('mount', '--fuse', kind === 'kernel' ? 'no' : 'yes', 'bookworm', mnt).seconds);
        timed([...CFS, 'umount', mnt]);
      }
    }
    cfs('mount', '--fuse', 'yes', 'bookworm', mnt);
    const fuseUmount = timed([...CFS, 'umount', mnt]).seconds;

    const reads: Array<[string, Reads]> = [];
    cfs('mount', '--fuse', 'no', 'bookworm', mnt);
    reads.push(['kernel composefs', measureReads(mnt)]);
    timed([...CFS, 'umount', mnt]);
    cfs('mount', '--fuse', 'yes', 'bookworm', mnt);
    reads.push(['cfs FUSE', measureReads(mnt)]);
    timed([...CFS, 'umount', mnt]);
    reads.push(['plain directory', measureReads(path.join(fx, 'expected/bookworm/rootfs'))]);

    const ms = (s: number): string => `${fmt(s * 1000, 0)} ms`.padStart(9);
    const lines = [
      `cfs mount (median of ${MOUNT_RUNS}, process start to return): kernel ${ms(median(mountTimes.kernel))}   FUSE ${ms(median(mountTimes.fuse))}   (FUSE umount ${ms(fuseUmount)})`,
      '',
      `${'bookworm rootfs'.padEnd(18)}${'read all cold'.padStart(15)}${'read all warm'.padStart(15)}${'ls -lR warm'.padStart(15)}`,
    ];
    const k = reads[0]![1];
    for (const [label, r] of reads) {
      const rel = (x: number, base: number): string => (label === 'kernel composefs' ? '' : ` ${fmt(x / base, 2)}x`);
      lines.push(
        `${label.padEnd(18)}${(ms(r.cold) + rel(r.cold, k.cold)).padStart(15)}${(ms(r.warm) + rel(r.warm, k.warm)).padStart(15)}${(ms(r.ls) + rel(r.ls, k.ls)).padStart(15)}`,
      );
    }
    lines.push('', 'goals: kernel mount < 100 ms; FUSE vs kernel: warm read ≤ 1.25x, ls -lR ≤ 2x, cold read ≤ 1.5x');
    process.stdout.write(`${lines.join('\n')}\n`);
  } finally {
    spawnSync('umount', ['--lazy', mnt]);
    rmSync(work, { recursive: true, force: true });
  }
}

main();
