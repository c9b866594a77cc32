/**
 * Benchmark: fsck and gc on a repository holding a sizable image under 5 tags, and fsck's
 * object hashing against `fsverity digest` (fsverity-utils) over the same objects.
 *
 * Run: node dist/bench/fsck-gc.js [DEBIAN_FIXTURES_DIR]
 *   DEBIAN_FIXTURES_DIR: output of shared/scripts/make-debian-fixtures (its oci/ layout with
 *   tags bookworm and layered). Without it, a synthetic layout of ~300 MB is generated.
 */
import { execFileSync } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { mkdtempSync, readdirSync, rmSync, statSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { Repository } from '../src/repository/repository.js';
import { fsck } from '../src/repository/fsck.js';
import { collectGarbage } from '../src/repository/gc.js';
import { digestObjectFile } from '../src/repository/hash-worker.js';
import { openImageSource } from '../src/oci/sources.js';
import { importImage } from '../src/oci/import.js';
import { tagImage, untagImage } from '../src/oci/stored.js';
import { buildOciLayout, type EntrySpec } from '../test/helpers/oci-fixture.js';

const work = mkdtempSync(path.join(tmpdir(), 'cfs-bench-fsck-'));
const secs = (t0: number): number => (performance.now() - t0) / 1000;
const mb = (b: number): string => `${(b / 1e6).toFixed(1)} MB`;

async function syntheticLayout(): Promise<{ dir: string; tags: string[] }> {
  const T = 1_700_000_000;
  const layer = (name: string, files: number, bigMiB: number): EntrySpec[] => {
    const out: EntrySpec[] = [{ path: `${name}/`, type: 'directory', mode: 0o755, mtime: T }];
    for (let i = 0; i < files; i++) out.push({ path: `${name}/f${i}`, mode: 0o644, mtime: T, content: randomBytes(200 + ((i * 7919) % 60_000)) });
    for (let i = 0; i < bigMiB; i += 8) out.push({ path: `${name}/big${i}`, mode: 0o644, mtime: T, content: randomBytes(8 << 20) });
    return out;
  };
  const usr: EntrySpec[] = [{ path: 'usr/', type: 'directory', mode: 0o755, mtime: T }];
  const l = [[...usr, ...layer('a', 3000, 64)], layer('b', 3000, 64), layer('c', 2000, 32)];
  const dir = path.join(work, 'layout');
  await buildOciLayout(dir, { images: [{ tag: 'one', layers: l, compression: 'none' }, { tag: 'two', layers: [l[0], l[2]], compression: 'none' }] });
  return { dir, tags: ['one', 'two'] };
}

function objectFiles(repo: string): string[] {
  const out: string[] = [];
  for (const xx of readdirSync(path.join(repo, 'objects'))) {
    if (xx.length !== 2) continue;
    for (const f of readdirSync(path.join(repo, 'objects', xx))) out.push(path.join(repo, 'objects', xx, f));
  }
  return out;
}

async function main(): Promise<void> {
  const fixtures = process.argv[2];
  const src = fixtures ? { dir: path.join(path.resolve(fixtures), 'oci'), tags: ['bookworm', 'layered'] } : await syntheticLayout();
  const repoPath = path.join(work, 'repo');
  const repo = await Repository.init(repoPath, { insecure: true });
  try {
    let t0 = performance.now();
    const manifests: string[] = [];
    for (const tag of src.tags) {
      const img = await openImageSource(`oci:${src.dir}:${tag}`);
      try {
        manifests.push((await importImage(repo, img, { name: tag })).manifestDigest);
      } finally {
        await img.close();
      }
    }
    for (let i = src.tags.length; i < 5; i++) await tagImage(repo, `extra-${i}`, manifests[i % manifests.length]);
    const files = objectFiles(repoPath);
    const bytes = files.reduce((s, f) => s + statSync(f).size, 0);
    process.stdout.write(`source ${fixtures ? `debian fixtures ${src.dir}` : 'synthetic'}: pulled ${src.tags.join(', ')} + ${5 - src.tags.length} more tags in ${secs(t0).toFixed(2)} s\n`);
    process.stdout.write(`repository: ${files.length} objects, ${mb(bytes)}\n`);

    for (const parallel of [1, 2]) {
      t0 = performance.now();
      const r = await fsck(repo, { parallel });
      const s = secs(t0);
      if (!r.ok) throw new Error(`fsck found problems: ${r.errors.map((e) => e.kind).join(', ')}`);
      process.stdout.write(`fsck (hash threads ${parallel}): ${s.toFixed(2)} s, ${Math.round(r.objectsChecked / s)} objects/s, ${mb(r.bytesChecked / s)}/s overall` +
        ` (${r.streamsChecked} streams, ${r.imagesChecked} images, ${r.ociImagesChecked} tags)\n`);
    }

    t0 = performance.now();
    for (const f of files) digestObjectFile(f, repo.alg);
    const ours = secs(t0);
    t0 = performance.now();
    for (let i = 0; i < files.length; i += 500) execFileSync('fsverity', ['digest', '--hash-alg=sha256', ...files.slice(i, i + 500)], { stdio: ['ignore', 'ignore', 'inherit'] });
    const theirs = secs(t0);
    process.stdout.write(`hashing only: cfs ${mb(bytes / ours)}/s (${ours.toFixed(2)} s), fsverity digest ${mb(bytes / theirs)}/s (${theirs.toFixed(2)} s): ${Math.round((100 * theirs) / ours)}%\n`);

    t0 = performance.now();
    const dry = await collectGarbage(repo, { dryRun: true });
    process.stdout.write(`gc --dry-run (all tagged): ${secs(t0).toFixed(2)} s, ${dry.objectsRemoved} objects would go, ${Math.round(files.length / secs(t0))} objects/s marked\n`);
    for (const tag of [...src.tags.slice(1), 'extra-3']) await untagImage(repo, tag).catch(() => undefined);
    t0 = performance.now();
    const gc = await collectGarbage(repo);
    const gs = secs(t0);
    process.stdout.write(`gc after untagging ${src.tags.length > 1 ? src.tags.slice(1).join(', ') + ', ' : ''}extra-3: ${gs.toFixed(2)} s, ${gc.objectsRemoved} objects (${mb(gc.objectsBytes)}) removed, ${Math.round(files.length / gs)} objects/s scanned\n`);
  } finally {
    repo.close();
    rmSync(work, { recursive: true, force: true });
  }
}

await main();
