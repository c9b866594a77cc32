/**
 * `cfs gc` through the real CLI: exactly the unshared objects go (expected set computed from
 * a repository that only ever held the kept image), dry runs delete nothing, --root keeps an
 * untagged image, and the repository lock keeps gc from running under a pull or transaction.
 */
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { execFileSync, spawn, spawnSync } from 'node:child_process';
import { mkdtempSync, readdirSync, rmSync, statSync, existsSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { buildOciLayout, type EntrySpec } from './helpers/oci-fixture.js';
import { cfsCommand, cfsOk, PROJECT_ROOT, runCfs } from './helpers/cli.js';

let work: string;
let layoutDir: string;
const T = 1_660_000_000;

function files(prefix: string, n: number, size: number): EntrySpec[] {
  const out: EntrySpec[] = [{ path: `${prefix}/`, type: 'directory', mode: 0o755, mtime: T }];
  for (let i = 0; i < n; i++) out.push({ path: `${prefix}/f${i}`, mode: 0o644, mtime: T, content: `${prefix}-${i}-`.padEnd(size, 'y') });
  return out;
}

before(async () => {
  work = mkdtempSync(path.join(tmpdir(), 'cfs-integrity-gc-'));
  const shared: EntrySpec[] = [{ path: 'usr/', type: 'directory', mode: 0o755, mtime: T }, ...files('shared', 30, 400)];
  const layout = await buildOciLayout(path.join(work, 'layout'), {
    images: [
      { tag: 'keep', layers: [shared, files('keep', 15, 900)] },
      { tag: 'drop', layers: [shared, files('drop', 15, 1100), files('drop2', 5, 128)] },
    ],
  });
  layoutDir = layout.dir;
});
after(() => rmSync(work, { recursive: true, force: true }));

/** Every object file: relative path → size. */
function objects(repo: string): Map<string, number> {
  const out = new Map<string, number>();
  for (const xx of readdirSync(path.join(repo, 'objects'))) {
    for (const f of readdirSync(path.join(repo, 'objects', xx))) out.set(`${xx}/${f}`, statSync(path.join(repo, 'objects', xx, f)).size);
  }
  return out;
}

function pull(repo: string, tag: string): void {
  cfsOk(['--repo', repo, 'oci', 'pull', '-q', `oci:${layoutDir}:${tag}`, tag]);
}

function gcCounts(out: string): { objects: number; bytes: number } {
  const m = /^Objects: (\d+) (?:would be )?removed \((\d+) bytes\)$/m.exec(out);
  assert.ok(m, out);
  return { objects: Number(m[1]), bytes: Number(m[2]) };
}

test('gc after untagging one of two images sharing a layer frees exactly the unshared objects', () => {
  const only = path.join(work, 'only-keep');
  pull(only, 'keep');
  const expected = objects(only);

  const repo = path.join(work, 'both');
  pull(repo, 'keep');
  pull(repo, 'drop');
  const dumpBefore = cfsOk(['--repo', repo, 'oci', 'dump', 'keep']).stdout;
  const all = objects(repo);
  const unshared = [...all.keys()].filter((k) => !expected.has(k));
  assert.ok(unshared.length >= 20 + 5, `objects only drop uses: ${unshared.length}`);

  // Nothing is garbage while both are tagged.
  assert.equal(gcCounts(cfsOk(['--repo', repo, 'gc']).stdout).objects, 0);
  cfsOk(['--repo', repo, 'oci', 'untag', 'drop']);

  const links = [...readdirSync(path.join(repo, 'streams')), ...readdirSync(path.join(repo, 'images'))];
  const dry = cfsOk(['--repo', repo, 'gc', '--dry-run']).stdout;
  // The dry run names the links it would prune (5 indented lines: 1 image, 4 streams).
  assert.match(dry, /^Dry run \(no files deleted\):\nObjects: \d+ would be removed \(\d+ bytes\)\nWould prune symlinks: 1 images, 4 streams\n  images\/[0-9a-f]{64}\n(  streams\/oci-(config|layer|manifest)-sha256:[0-9a-f]{64}\n){4}$/);
  const dryJson = JSON.parse(cfsOk(['--repo', repo, 'gc', '--dry-run', '--json']).stdout) as {
    dryRun: boolean; objectsRemoved: number; imagesPruned: number; removed: { objects: string[]; images: string[]; streams: string[] };
  };
  assert.deepEqual([dryJson.dryRun, dryJson.objectsRemoved, dryJson.imagesPruned], [true, unshared.length, 1]);
  assert.deepEqual(dryJson.removed.objects.map((o) => o.slice('objects/'.length)).sort(), [...unshared].sort());
  assert.equal(dryJson.removed.streams.length, 4);
  assert.deepEqual(objects(repo), all, 'dry run deletes nothing');
  assert.deepEqual([...readdirSync(path.join(repo, 'streams')), ...readdirSync(path.join(repo, 'images'))], links, 'dry run keeps the links');

  const real = cfsOk(['--repo', repo, 'gc']).stdout;
  const counts = gcCounts(real);
  assert.deepEqual(counts, gcCounts(dry), 'dry run predicted the real run');
  assert.equal(counts.objects, unshared.length);
  assert.equal(counts.bytes, unshared.reduce((s, k) => s + all.get(k)!, 0));
  assert.match(real, /^Pruned symlinks: 1 images, 4 streams$/m, 'drop: its image, manifest, config and 2 own layers');
  assert.deepEqual(objects(repo), expected, 'what remains is exactly what the kept image needs');

  assert.equal(cfsOk(['--repo', repo, 'oci', 'dump', 'keep']).stdout, dumpBefore);
  assert.match(cfsOk(['--repo', repo, 'fsck']).stdout, /^status: ok$/m);
  assert.equal(gcCounts(cfsOk(['--repo', repo, 'gc']).stdout).objects, 0, 'a second gc finds nothing');
});

test('a gc killed at any of its unlinks leaves a repository fsck finds clean; the next gc finishes the job', { skip: spawnSync('sh', ['-c', 'command -v strace']).status === 0 ? false : 'strace is not installed (scripts/setup installs it)' }, () => {
  const base = path.join(work, 'killed-gc');
  pull(base, 'keep');
  pull(base, 'drop');
  cfsOk(['--repo', base, 'oci', 'untag', 'drop']);
  // strace counts per thread, and gc unlinks on the threadpool's four: each sees ≥ 5 here.
  for (const when of [1, 2, 3, 5]) {
    const repo = `${base}-${when}`;
    execFileSync('cp', ['-a', base, repo]);
    // SIGKILL at a thread's when-th unlink: the removal of names and objects stops there.
    const [node, ...args] = cfsCommand();
    const r = spawnSync('strace', ['-f', '-o', '/dev/null', '-e', 'trace=unlink,unlinkat', '-e', `inject=unlink,unlinkat:signal=KILL:when=${when}`, node!, ...args, '--repo', repo, 'gc'], { cwd: PROJECT_ROOT });
    assert.equal(r.signal, 'SIGKILL', `when=${when}: ${r.status} ${String(r.stdout)} ${String(r.stderr)}`);
    const fsck = runCfs(['--repo', repo, 'fsck']);
    assert.equal(fsck.status, 0, `killed at unlink ${when}: ${fsck.stdout}${fsck.stderr}`);
    cfsOk(['--repo', repo, 'gc']);
    assert.match(cfsOk(['--repo', repo, 'fsck']).stdout, /^status: ok$/m);
    assert.equal(gcCounts(cfsOk(['--repo', repo, 'gc']).stdout).objects, 0);
  }
});

test('--root keeps an untagged image alive; gc removes leftovers of killed writers', () => {
  const repo = path.join(work, 'roots');
  pull(repo, 'keep');
  const image = /image ([0-9a-f]{64})/.exec(cfsOk(['--repo', repo, 'oci', 'pull', '-q', `oci:${layoutDir}:drop`, 'drop']).stdout)![1];
  cfsOk(['--repo', repo, 'oci', 'untag', 'drop']);
  const before = objects(repo).size;
  const out = cfsOk(['--repo', repo, 'gc', '--root', image]).stdout;
  // The EROFS and the file objects it references stay; the drop-only streams go.
  assert.ok(existsSync(path.join(repo, 'images', image)));
  const removed = gcCounts(out).objects;
  assert.ok(removed > 0 && removed < before);
  assert.match(cfsOk(['--repo', repo, 'fsck']).stdout, /^status: ok$/m);
  const unknown = runCfs(['--repo', repo, 'gc', '--root', 'no-such-thing']);
  assert.notEqual(unknown.status, 0);
  assert.match(unknown.stderr, /no-such-thing/);
});

interface Child {
  done: Promise<{ code: number | null; stdout: string; stderr: string }>;
  exited: () => boolean;
  output: () => { stdout: string; stderr: string };
  kill: (sig: NodeJS.Signals) => void;
}

function start(args: string[]): Child {
  const [cmd, ...pre] = cfsCommand();
  const child = spawn(cmd, [...pre, ...args], { cwd: PROJECT_ROOT });
  let stdout = '';
  let stderr = '';
  let exited = false;
  child.stdout.on('data', (b: Buffer) => (stdout += b.toString()));
  child.stderr.on('data', (b: Buffer) => (stderr += b.toString()));
  const done = new Promise<{ code: number | null; stdout: string; stderr: string }>((resolve) =>
    child.on('close', (code) => {
      exited = true;
      resolve({ code, stdout, stderr });
    }),
  );
  return { done, exited: () => exited, output: () => ({ stdout, stderr }), kill: (s) => child.kill(s) };
}

async function until(what: string, cond: () => boolean, ms = 60_000): Promise<void> {
  const end = Date.now() + ms;
  while (!cond()) {
    if (Date.now() > end) throw new Error(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 50));
  }
}

test('cfs transaction blocks gc until it ends', async () => {
  const repo = path.join(work, 'tx');
  pull(repo, 'drop');
  cfsOk(['--repo', repo, 'oci', 'untag', 'drop']);
  const tx = start(['--repo', repo, 'transaction']);
  await until('the transaction to hold the lock', () => /Holding the shared lock/.test(tx.output().stdout) || tx.exited());
  assert.equal(tx.exited(), false, tx.output().stderr);
  const gc = start(['--repo', repo, 'gc']);
  await until('gc to wait for the lock', () => /waiting for other users of the repository/.test(gc.output().stderr) || gc.exited());
  assert.equal(gc.exited(), false, 'gc must wait for the transaction');
  assert.ok(objects(repo).size > 0, 'nothing deleted while the transaction runs');
  tx.kill('SIGTERM');
  const t = await tx.done;
  assert.equal(t.code, 0, t.stderr);
  const g = await gc.done;
  assert.equal(g.code, 0, g.stderr);
  assert.ok(gcCounts(g.stdout).objects > 0);
  assert.equal(objects(repo).size, 0);
});

test('gc running while pulls run loses nothing', async () => {
  const repo = path.join(work, 'race');
  pull(repo, 'keep');
  const reference = path.join(work, 'race-ref');
  pull(reference, 'drop');
  const want = cfsOk(['--repo', reference, 'oci', 'dump', 'drop']).stdout;
  for (let round = 0; round < 3; round++) {
    if (round > 0) cfsOk(['--repo', repo, 'oci', 'untag', 'drop']);
    const p = start(['--repo', repo, 'oci', 'pull', '-q', `oci:${layoutDir}:drop`, 'drop']);
    const g = start(['--repo', repo, 'gc']);
    const [pr, gr] = await Promise.all([p.done, g.done]);
    assert.equal(pr.code, 0, pr.stderr);
    assert.equal(gr.code, 0, gr.stderr);
    assert.equal(cfsOk(['--repo', repo, 'oci', 'dump', 'drop']).stdout, want);
    assert.match(cfsOk(['--repo', repo, 'fsck']).stdout, /^status: ok$/m);
  }
});
