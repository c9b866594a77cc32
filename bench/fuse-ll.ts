/**
 * Benchmark (root): one composefs image served three ways — the kernel composefs mount, the
 * fuse-native server (src/mount/fuse.ts) and the /dev/fuse server (src/mount/fuse-ll/) —
 * timing `ls -lR` (warm), a full read `tar cf - . | wc -c` (cold after drop_caches, and warm),
 * and `cat` of the one large file (cold, warm).
 * Tree: BENCH_DIRS directories × BENCH_FILES files (half inline, half external 4-20 KiB
 * objects, some symlinks) plus one BENCH_BIG_MIB MiB external file.
 * Run: node --import tsx bench/fuse-ll.ts   (or node dist/bench/fuse-ll.js)
 */
import { execFile } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { mkdirSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { promisify } from 'node:util';
import { fsverityDigest } from '../src/fsverity/digest.js';
import { writeErofs } from '../src/erofs/writer.js';
import { mountComposefs, unmount } from '../src/mount/kernel.js';
import { startFuse as startFuseNative } from '../src/mount/fuse.js';
import { startFuse as startFuseLl } from '../src/mount/fuse-ll/index.js';
import { S_IFDIR, S_IFLNK, S_IFREG, newInode, type Inode } from '../src/tree/inode.js';
import { objectRelPath } from '../src/repository/ids.js';

const execFileP = promisify(execFile);
const DIRS = Number(process.env.BENCH_DIRS ?? 100);
const FILES = Number(process.env.BENCH_FILES ?? 100);
const BIG_MIB = Number(process.env.BENCH_BIG_MIB ?? 200);
const WARM_ROUNDS = Number(process.env.BENCH_ROUNDS ?? 5);

function putObject(objects: string, data: Buffer): { payload: string; digest: Buffer } {
  const digest = fsverityDigest(data);
  const payload = objectRelPath(digest);
  mkdirSync(path.join(objects, payload.slice(0, 2)), { recursive: true });
  writeFileSync(path.join(objects, payload), data);
  return { payload, digest };
}

function buildTree(objects: string): { root: Inode; entries: number } {
  const t = { mtimeSec: 1700000000, mtimeNsec: 123456789 };
  const root = newInode(S_IFDIR | 0o755, t);
  let entries = 1;
  for (let d = 0; d < DIRS; d++) {
    const dir = newInode(S_IFDIR | 0o755, t);
    root.children!.set(`dir${d}`, dir);
    entries++;
    for (let f = 0; f < FILES; f++) {
      const name = `file${f}`;
      if (f % 10 === 9) {
        dir.children!.set(name, newInode(S_IFLNK | 0o777, { ...t, payload: 'file0', size: 5 }));
      } else if (f % 2 === 0) {
        const content = Buffer.from(`inline ${d}/${f}\n`);
        dir.children!.set(name, newInode(S_IFREG | 0o644, { ...t, size: content.length, content }));
      } else {
        const data = randomBytes(4096 + ((d * FILES + f) % 5) * 4096);
        dir.children!.set(name, newInode(S_IFREG | 0o644, { ...t, size: data.length, ...putObject(objects, data) }));
      }
      entries++;
    }
  }
  const big = Buffer.alloc(BIG_MIB << 20);
  for (let off = 0; off < big.length; off += 1 << 20) randomBytes(1 << 20).copy(big, off);
  root.children!.set('big', newInode(S_IFREG | 0o644, { ...t, size: big.length, ...putObject(objects, big) }));
  return { root, entries: entries + 1 };
}

async function sh(cmd: string): Promise<number> {
  const t0 = performance.now();
  await execFileP('sh', ['-c', cmd], { maxBuffer: 64 << 20 });
  return performance.now() - t0;
}

async function dropCaches(): Promise<void> {
  await execFileP('sh', ['-c', 'sync; echo 3 > /proc/sys/vm/drop_caches']);
}

function median(xs: number[]): number {
  const s = [...xs].sort((a, b) => a - b);
  return s[Math.floor(s.length / 2)];
}

async function warm(cmd: string): Promise<number> {
  await sh(cmd);
  const xs: number[] = [];
  for (let i = 0; i < WARM_ROUNDS; i++) xs.push(await sh(cmd));
  return median(xs);
}

interface Row {
  name: string;
  lsWarm: number;
  tarCold: number;
  tarWarm: number;
  bigCold: number;
  bigWarm: number;
}

async function measure(name: string, mp: string): Promise<Row> {
  const ls = `ls -lR ${mp} > /dev/null`;
  const tar = `cd ${mp} && tar cf - . | wc -c > /dev/null`;
  const cat = `cat ${mp}/big | wc -c > /dev/null`;
  await dropCaches();
  const tarCold = await sh(tar);
  const tarWarm = await warm(tar);
  const lsWarm = await warm(ls);
  await dropCaches();
  const bigCold = await sh(cat);
  const bigWarm = await warm(cat);
  return { name, lsWarm, tarCold, tarWarm, bigCold, bigWarm };
}

async function main(): Promise<void> {
  if (process.getuid?.() !== 0) throw new Error('bench/fuse-ll needs root (mounts, drop_caches)');
  const tmp = mkdtempSync(path.join(os.tmpdir(), 'cfs-bench-fusell-'));
  const objects = path.join(tmp, 'objects');
  mkdirSync(objects);
  try {
    const { root, entries } = buildTree(objects);
    const image = path.join(tmp, 'image.cfs');
    writeFileSync(image, writeErofs(root));
    process.stdout.write(`tree: ${entries} entries + ${BIG_MIB} MiB file; image ${image}\n`);
    const rows: Row[] = [];

    const kmp = path.join(tmp, 'kernel');
    mkdirSync(kmp);
    mountComposefs({ image, objectsDir: objects, mountpoint: kmp });
    try {
      rows.push(await measure('kernel composefs', kmp));
    } finally {
      unmount(kmp);
    }

    const quiet = { log: () => undefined };
    for (const [name, start] of [['fuse-native', startFuseNative], ['fuse-ll', startFuseLl]] as const) {
      if (process.env.BENCH_ONLY && !process.env.BENCH_ONLY.split(',').includes(name)) continue;
      const mp = path.join(tmp, name);
      mkdirSync(mp);
      const h = await start({ root, objectsDir: objects, mountpoint: mp, name, ...quiet });
      try {
        rows.push(await measure(name, mp));
      } finally {
        await h.unmount({ lazy: true });
      }
    }

    const base = rows[0];
    const cell = (v: number, b: number) => `${v.toFixed(0).padStart(6)} ms ${(v / b).toFixed(2).padStart(5)}x`;
    const cols = ['ls -lR warm', 'tar cold', 'tar warm', 'cat big cold', 'cat big warm'] as const;
    const keys = ['lsWarm', 'tarCold', 'tarWarm', 'bigCold', 'bigWarm'] as const;
    process.stdout.write(`${'server'.padEnd(18)}${cols.map((c) => c.padEnd(18)).join('')}\n`);
    for (const r of rows) {
      process.stdout.write(`${r.name.padEnd(18)}${keys.map((k) => cell(r[k], base[k]).padEnd(18)).join('')}\n`);
    }
  } finally {
    rmSync(tmp, { recursive: true, force: true });
  }
}

main().catch((e: unknown) => {
  process.stderr.write(`${(e as Error).stack ?? String(e)}\n`);
  process.exitCode = 1;
});
