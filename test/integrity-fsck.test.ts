/**
 * `cfs fsck` against corruptions injected on purpose, through the real CLI: each is found with
 * the right path and a non-zero exit, and `cfs oci dump` of the affected image fails with a
 * clear one-line error (no crash). Leftover temp files are not errors; --repair removes them.
 */
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { cpSync, mkdirSync, mkdtempSync, readFileSync, readlinkSync, readdirSync, rmSync, symlinkSync, truncateSync, unlinkSync, writeFileSync, existsSync } from 'node:fs';
import { createHash } from 'node:crypto';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { buildOciLayout, type EntrySpec } from './helpers/oci-fixture.js';
import { cfsOk, runCfs } from './helpers/cli.js';

let work: string;
let pristine: string;
let layoutDir: string;
const T = 1_650_000_000;

function files(prefix: string, n: number, size: number): EntrySpec[] {
  const out: EntrySpec[] = [{ path: `${prefix}/`, type: 'directory', mode: 0o755, mtime: T }];
  for (let i = 0; i < n; i++) out.push({ path: `${prefix}/f${i}`, mode: 0o644, mtime: T, content: `${prefix}-${i}-`.padEnd(size, 'x') });
  return out;
}

before(async () => {
  work = mkdtempSync(path.join(tmpdir(), 'cfs-integrity-fsck-'));
  const shared: EntrySpec[] = [{ path: 'usr/', type: 'directory', mode: 0o755, mtime: T }, ...files('shared', 20, 300)];
  const layout = await buildOciLayout(path.join(work, 'layout'), {
    images: [
      { tag: 'a', layers: [shared, files('only-a', 10, 500)] },
      { tag: 'b', layers: [shared, files('only-b', 10, 700)] },
    ],
  });
  layoutDir = layout.dir;
  pristine = path.join(work, 'pristine');
  cfsOk(['--repo', pristine, 'init', '--insecure']);
  cfsOk(['--repo', pristine, 'oci', 'pull', '-q', `oci:${layoutDir}:a`, 'a']);
  cfsOk(['--repo', pristine, 'oci', 'pull', '-q', `oci:${layoutDir}:b`, 'b']);
});
after(() => rmSync(work, { recursive: true, force: true }));

let n = 0;
function freshRepo(): string {
  const r = path.join(work, `repo${n++}`);
  cpSync(pristine, r, { recursive: true, verbatimSymlinks: true });
  return r;
}

/** Object path (relative) behind a first-level stream or image link. */
function objectOf(repo: string, rel: string): string {
  const t = readlinkSync(path.join(repo, rel));
  return path.relative(repo, path.resolve(path.dirname(path.join(repo, rel)), t));
}

/** `streams/oci-layer-<diff_id>` of an image's i-th layer. */
function layerStream(repo: string, tag: string, i: number): string {
  const cfg = JSON.parse(cfsOk(['--repo', repo, 'oci', 'inspect', '--config', tag]).stdout) as { rootfs: { diff_ids: string[] } };
  return `streams/oci-layer-${cfg.rootfs.diff_ids[i]}`;
}

/** An external object of image b only (a file of layer only-b). */
function uniqueObjectOfB(repo: string): string {
  const a = new Set(fsckObjects(repo, 'a'));
  const b = fsckObjects(repo, 'b').filter((o) => !a.has(o));
  assert.ok(b.length > 0);
  return b[0];
}

/** Object paths an image's dump references (regular files with backing objects). */
function fsckObjects(repo: string, tag: string): string[] {
  const dump = cfsOk(['--repo', repo, 'oci', 'dump', tag]).stdout;
  const out: string[] = [];
  for (const line of dump.split('\n')) {
    const m = / ([0-9a-f]{2}\/[0-9a-f]{62}) /.exec(line);
    if (m) out.push(`objects/${m[1]}`);
  }
  return out.sort();
}

function expectFsckError(repo: string, args: string[], kind: string, rel: string): string {
  const r = runCfs(['--repo', repo, 'fsck', ...args]);
  assert.notEqual(r.status, 0, `fsck should fail:\n${r.stdout}`);
  const lines = r.stdout.split('\n').filter((l) => l.startsWith('  - fsck: '));
  assert.ok(lines.some((l) => l.startsWith(`  - fsck: ${kind}: ${rel}:`)), `expected ${kind} at ${rel}, got:\n${r.stdout}`);
  assert.match(r.stdout, /status: \d+ error\(s\)/);
  return r.stdout;
}

function expectCleanFailure(args: string[], pattern: RegExp): void {
  const r = runCfs(args);
  assert.notEqual(r.status, 0, `should fail: ${r.stdout.slice(0, 200)}`);
  const lines = r.stderr.trim().split('\n');
  assert.equal(lines.length, 1, `one-line error, got: ${r.stderr}`);
  assert.match(lines[0], /^cfs: /);
  assert.match(lines[0], pattern);
  assert.doesNotMatch(r.stderr, /internal error|\n\s+at /);
}

test('a healthy repository is clean (text and JSON), also per image', () => {
  const r = cfsOk(['--repo', pristine, 'fsck']);
  assert.match(r.stdout, /^meta\.json: ok$/m);
  assert.match(r.stdout, /^oci images: 2\/2 ok$/m);
  assert.match(r.stdout, /^status: ok$/m);
  const j = JSON.parse(cfsOk(['--repo', pristine, 'fsck', '--json']).stdout) as Record<string, unknown>;
  assert.equal(j.ok, true);
  assert.ok((j.objects_checked as number) > 40);
  assert.deepEqual(j.errors, []);
  const one = cfsOk(['--repo', pristine, 'fsck', 'a']).stdout;
  assert.match(one, /^oci images: 1\/1 ok$/m);
  assert.match(one, /^status: ok$/m);
});

test('flipped byte in a file object: object-digest-mismatch; only the image using it fails', () => {
  const repo = freshRepo();
  const obj = uniqueObjectOfB(repo);
  const b = readFileSync(path.join(repo, obj));
  b[7] ^= 0x01;
  writeFileSync(path.join(repo, obj), b);
  const out = expectFsckError(repo, [], 'object-digest-mismatch', obj);
  assert.match(out, /^objects: \d+\/\d+ ok$/m);
  // The damage is put on the layer stream using the object and on the tag using that layer.
  const layer = layerStream(repo, 'b', 1);
  expectFsckError(repo, [], 'corrupt-object-ref', layer);
  assert.match(out, /^oci images: 1\/2 ok$/m);
  assert.match(out, /layer-damaged: streams\/refs\/oci\/b: layer sha256:[0-9a-f]{64} is damaged .*run `cfs fsck --repair` \(it removes corrupt objects\), then pull the image again/);
  expectFsckError(repo, ['b'], 'object-digest-mismatch', obj);
  assert.match(cfsOk(['--repo', repo, 'fsck', 'a']).stdout, /^status: ok$/m, 'image a does not reach the object');
  // --metadata-only does not read objects: the flipped byte goes unseen, everything else is checked.
  for (const args of [['--metadata-only'], ['--metadata-only', 'b']]) {
    const meta = cfsOk(['--repo', repo, 'fsck', ...args]).stdout;
    assert.match(meta, /^objects: not checked \(--metadata-only\)$/m);
    assert.match(meta, /^status: ok$/m);
  }
  const j = JSON.parse(cfsOk(['--repo', repo, 'fsck', '--json', '--metadata-only']).stdout) as Record<string, unknown>;
  assert.deepEqual([j.ok, j.metadata_only, j.objects_checked], [true, true, 0]);
  // A pull alone cannot see it (present objects count as good); --repair removes the object,
  // which the next pull restores.
  const repaired = expectFsckError(repo, ['--repair'], 'object-digest-mismatch', obj);
  assert.match(repaired, new RegExp(`^repaired: removed ${obj}$`, 'm'));
  assert.match(repaired, /layer-damaged: streams\/refs\/oci\/b: .*pull the image again to repair it/);
  assert.ok(!existsSync(path.join(repo, obj)));
  cfsOk(['--repo', repo, 'oci', 'pull', '-q', `oci:${layoutDir}:b`, 'b']);
  assert.match(cfsOk(['--repo', repo, 'fsck']).stdout, /^status: ok$/m);
});

test('flipped byte in the image object: the tag is image-damaged; pulling again repairs it', () => {
  const repo = freshRepo();
  const hex = readdirSync(path.join(repo, 'images')).find((n) => n !== 'refs')!;
  const obj = objectOf(repo, `images/${hex}`);
  const good = readFileSync(path.join(repo, obj));
  const bad = Buffer.from(good);
  bad[bad.length - 1] ^= 0x01;
  writeFileSync(path.join(repo, obj), bad);
  const out = expectFsckError(repo, [], 'corrupt-object', `images/${hex}`);
  assert.match(out, /image-damaged: streams\/refs\/oci\/[ab]: its composefs image [0-9a-f]{64} is damaged .*pull the image again to repair it/);
  // Both images' pulls find everything present but this image, which they check and rewrite.
  for (const tag of ['a', 'b']) cfsOk(['--repo', repo, 'oci', 'pull', '-q', `oci:${layoutDir}:${tag}`, tag]);
  assert.deepEqual(readFileSync(path.join(repo, obj)), good);
  assert.match(cfsOk(['--repo', repo, 'fsck']).stdout, /^status: ok$/m);
});

test('deleted image object: mount and images say the image is damaged; fsck says pulling again repairs it, and it does', () => {
  const repo = freshRepo();
  const hex = JSON.parse(cfsOk(['--repo', repo, 'oci', 'inspect', 'b']).stdout).imageId as string;
  unlinkSync(path.join(repo, objectOf(repo, `images/${hex}`)));
  const out = expectFsckError(repo, [], 'broken-symlink', `images/${hex}`);
  assert.match(out, /image-damaged: streams\/refs\/oci\/b: its composefs image [0-9a-f]{64} is damaged .*pull the image again to repair it/);
  mkdirSync(path.join(work, 'never-mounted'), { recursive: true });
  expectCleanFailure(['--repo', repo, 'mount', '--fuse', 'yes', 'b', path.join(work, 'never-mounted')], new RegExp(`image ${hex} is damaged: its object objects/${hex.slice(0, 2)}/${hex.slice(2)} is missing`));
  const listed = runCfs(['--repo', repo, 'oci', 'images']);
  assert.match(listed.stdout, /^b +\S+ +- +damaged/m);
  assert.match(listed.stderr, /image b: its composefs image [0-9a-f]{12} is missing/);
  cfsOk(['--repo', repo, 'oci', 'pull', '-q', `oci:${layoutDir}:b`, 'b']);
  assert.match(cfsOk(['--repo', repo, 'fsck']).stdout, /^status: ok$/m);
});

test('an object replaced by a symlink or a directory is corrupt: fsck names it and the images using it; --repair removes it, and a pull writes it again', () => {
  const repo = freshRepo();
  const obj = uniqueObjectOfB(repo);
  const hex = JSON.parse(cfsOk(['--repo', repo, 'oci', 'inspect', 'b']).stdout).imageId as string;
  const imageObj = objectOf(repo, `images/${hex}`);
  unlinkSync(path.join(repo, obj));
  symlinkSync('/etc/passwd', path.join(repo, obj));
  unlinkSync(path.join(repo, imageObj));
  mkdirSync(path.join(repo, imageObj));
  const out = expectFsckError(repo, [], 'object-not-regular', obj);
  assert.match(out, new RegExp(`object-not-regular: ${imageObj}: not a regular file but a directory`));
  assert.match(out, /corrupt-object-ref: streams\/oci-layer-sha256:.*is corrupt \(it is a symlink, not a regular file\)/);
  assert.doesNotMatch(out, /stream-size-mismatch/);
  assert.match(out, /layer-damaged: streams\/refs\/oci\/b: .*run `cfs fsck --repair` \(it removes corrupt objects\), then pull the image again/);
  const rep = runCfs(['--repo', repo, 'fsck', '--repair']);
  assert.notEqual(rep.status, 0);
  assert.ok(!existsSync(path.join(repo, obj)) && !existsSync(path.join(repo, imageObj)), 'both removed');
  cfsOk(['--repo', repo, 'oci', 'pull', '-q', `oci:${layoutDir}:b`, 'b']);
  assert.match(cfsOk(['--repo', repo, 'fsck']).stdout, /^status: ok$/m);
  // A pull also replaces a non-regular image object by itself (it compares the image it builds).
  unlinkSync(path.join(repo, imageObj));
  symlinkSync('/etc/passwd', path.join(repo, imageObj));
  cfsOk(['--repo', repo, 'oci', 'pull', '-q', `oci:${layoutDir}:b`, 'b']);
  assert.match(cfsOk(['--repo', repo, 'fsck']).stdout, /^status: ok$/m);
});

test('a layer stream name removed while its object stays: fsck --repair links it again from the config', () => {
  const repo = freshRepo();
  const layer = layerStream(repo, 'b', 1);
  const target = readlinkSync(path.join(repo, layer));
  unlinkSync(path.join(repo, layer));
  const out = expectFsckError(repo, [], 'layer-stream-missing', layer);
  assert.match(out, /not in the repository under its name \(`cfs fsck --repair` links it again\)/);
  const rep = runCfs(['--repo', repo, 'fsck', '--repair', '--json']);
  assert.equal(rep.status, 0, rep.stdout);
  assert.deepEqual((JSON.parse(rep.stdout) as { relinked: string[] }).relinked, [layer]);
  assert.equal(readlinkSync(path.join(repo, layer)), target);
  assert.match(cfsOk(['--repo', repo, 'fsck']).stdout, /^status: ok$/m);
});

test('flipped byte in the manifest object: digest mismatch, dump fails clearly', () => {
  const repo = freshRepo();
  // The manifest JSON is the single external object of the manifest stream; find it by content.
  const aManifest = `streams/${path.basename(readlinkSync(path.join(repo, 'streams/refs/oci/a')))}`;
  const json = cfsOk(['--repo', repo, 'oci', 'inspect', '--manifest', 'a']).stdoutBuf;
  // Byte for byte: the printed manifest hashes to its digest.
  const { manifestDigest } = JSON.parse(cfsOk(['--repo', repo, 'oci', 'inspect', '--json', 'a']).stdout) as { manifestDigest: string };
  assert.equal(`sha256:${createHash('sha256').update(json).digest('hex')}`, manifestDigest);
  assert.match(runCfs(['--repo', repo, 'oci', 'inspect', '--manifest', '--config', 'a']).stderr, /^cfs: --manifest and --config: choose one\n$/);
  let jsonObj: string | null = null;
  for (const xx of readdirSync(path.join(repo, 'objects'))) {
    for (const f of readdirSync(path.join(repo, 'objects', xx))) {
      if (readFileSync(path.join(repo, 'objects', xx, f)).equals(json)) jsonObj = `objects/${xx}/${f}`;
    }
  }
  assert.ok(jsonObj);
  const b = readFileSync(path.join(repo, jsonObj));
  b[0] = 0x5b; // '{' -> '['
  writeFileSync(path.join(repo, jsonObj), b);
  expectFsckError(repo, [], 'object-digest-mismatch', jsonObj);
  expectFsckError(repo, [], 'manifest-digest-mismatch', aManifest);
  expectFsckError(repo, ['a'], 'manifest-digest-mismatch', aManifest);
  expectCleanFailure(['--repo', repo, 'oci', 'dump', 'a'], /manifest/);
});

test('deleted objects: missing refs in streams and images; dump of a lost layer stream fails clearly', () => {
  const repo = freshRepo();
  const obj = uniqueObjectOfB(repo);
  unlinkSync(path.join(repo, obj));
  const out = expectFsckError(repo, [], 'missing-object-ref', layerStream(repo, 'b', 1));
  assert.match(out, new RegExp(`image-missing-object: images/[0-9a-f]{64}: /only-b/f\\d+: object ${obj.slice('objects/'.length)} does not exist`));
  assert.match(out, /^missing objects: 1$/m);
  // The damage is put on the image that uses it, which a plain re-pull repairs.
  assert.match(out, /^oci images: 1\/2 ok$/m);
  assert.match(out, /layer-damaged: streams\/refs\/oci\/b: layer sha256:[0-9a-f]{64} is damaged .*pull the image again to repair it/);
  expectFsckError(repo, ['--metadata-only'], 'missing-object-ref', layerStream(repo, 'b', 1));
  const again = cfsOk(['--repo', repo, 'oci', 'pull', `oci:${layoutDir}:b`, 'b']);
  assert.match(again.stderr, /objects: 0 reflinked \+ 0 hardlinked \+ \d+ copied/);
  assert.match(cfsOk(['--repo', repo, 'fsck']).stdout, /^status: ok$/m);

  // Delete the object of one of b's layer streams: the stream link dangles.
  const repo2 = freshRepo();
  const layer = layerStream(repo2, 'b', 1);
  unlinkSync(path.join(repo2, objectOf(repo2, layer)));
  expectFsckError(repo2, [], 'broken-symlink', layer);
  expectFsckError(repo2, ['b'], 'broken-symlink', layer);
  expectCleanFailure(['--repo', repo2, 'oci', 'dump', 'b'], /not found|does not exist|missing/);
  // --repair removes the dangling link (never the tag); the image is still reported broken.
  const rep = runCfs(['--repo', repo2, 'fsck', '--repair']);
  assert.match(rep.stdout, new RegExp(`repaired: removed ${layer.replace(/[.*+?^${}()|[\]\\]/g, '\\$&')}`));
  assert.ok(!existsSync(path.join(repo2, layer)));
  assert.ok(existsSync(path.join(repo2, 'streams/refs/oci/b')), 'tag kept');
  assert.notEqual(rep.status, 0);
  // Untag, gc, pull again: the image is complete again. (A plain re-pull does not repair: the
  // importer trusts an existing manifest stream and composefs image.)
  cfsOk(['--repo', repo2, 'oci', 'untag', 'b']);
  cfsOk(['--repo', repo2, 'gc']);
  cfsOk(['--repo', repo2, 'oci', 'pull', '-q', `oci:${layoutDir}:b`, 'b']);
  assert.match(cfsOk(['--repo', repo2, 'fsck']).stdout, /^status: ok$/m);
});

test('dangling stream link and broken/odd refs', () => {
  const repo = freshRepo();
  const zero = '00'.repeat(32);
  symlinkSync(`../objects/00/${zero.slice(2)}`, path.join(repo, 'streams/oci-layer-sha256:' + 'ab'.repeat(32)));
  symlinkSync('../../nothing-here', path.join(repo, 'streams/refs/dangling'));
  writeFileSync(path.join(repo, 'images/refs-not-a-link'), 'x');
  const out = expectFsckError(repo, [], 'broken-symlink', `streams/oci-layer-sha256:${'ab'.repeat(32)}`);
  assert.match(out, /fsck: broken-symlink: streams\/refs\/dangling: /);
  assert.match(out, /fsck: entry-not-symlink: images\/refs-not-a-link: /);
  assert.match(out, /^broken symlinks: 2$/m);
});

test('truncated split stream: corrupt at the stream (open/read failure without the object check), dump fails clearly', () => {
  const repo = freshRepo();
  const layer = layerStream(repo, 'a', 1);
  const obj = objectOf(repo, layer);
  const size = readFileSync(path.join(repo, obj)).length;
  truncateSync(path.join(repo, obj), size - 9);
  const out = expectFsckError(repo, [], 'corrupt-object', layer);
  assert.match(out, new RegExp(`object-digest-mismatch: ${obj}:`));
  expectFsckError(repo, ['--metadata-only'], 'stream-open-failed', layer);
  expectCleanFailure(['--repo', repo, 'oci', 'dump', 'a'], /split stream .*(beyond|truncated|end)/);
});

test('bad meta.json: reported at meta.json, non-zero exit; dump fails clearly', () => {
  const repo = freshRepo();
  writeFileSync(path.join(repo, 'meta.json'), '{"version": 1, "algorithm": ');
  const r = runCfs(['--repo', repo, 'fsck']);
  assert.notEqual(r.status, 0);
  assert.match(r.stdout, /^meta\.json: error$/m);
  assert.match(r.stdout, /fsck: metadata-parse-failed: meta\.json: .*invalid JSON/);
  expectCleanFailure(['--repo', repo, 'oci', 'dump', 'a'], /meta\.json/);

  writeFileSync(path.join(repo, 'meta.json'), `${JSON.stringify({ version: 7, algorithm: 'fsverity-sha256-12' })}\n`);
  assert.match(runCfs(['--repo', repo, 'fsck']).stdout, /metadata-parse-failed: meta\.json: .*version 7/);
  unlinkSync(path.join(repo, 'meta.json'));
  const gone = runCfs(['--repo', repo, 'fsck', '--json']);
  assert.notEqual(gone.status, 0);
  assert.equal((JSON.parse(gone.stdout) as { has_metadata: boolean }).has_metadata, false);
});

test('leftover temp files are not errors; fsck --repair removes them; foreign names are errors', () => {
  const repo = freshRepo();
  symlinkSync('objects/00/11', path.join(repo, '.symlink-AbCdEfGhIjKl'));
  writeFileSync(path.join(repo, 'objects/.tmp-object-AbCdEfGhIjKl'), 'partial');
  const r = cfsOk(['--repo', repo, 'fsck']);
  assert.match(r.stdout, /^temporary files: 2 /m);
  assert.match(r.stdout, /^status: ok$/m);
  const rep = cfsOk(['--repo', repo, 'fsck', '--repair']);
  assert.match(rep.stdout, /repaired: removed \.symlink-AbCdEfGhIjKl/);
  assert.match(rep.stdout, /repaired: removed objects\/\.tmp-object-AbCdEfGhIjKl/);
  assert.ok(!existsSync(path.join(repo, 'objects/.tmp-object-AbCdEfGhIjKl')));
  mkdirSync(path.join(repo, 'objects/00'), { recursive: true });
  writeFileSync(path.join(repo, 'objects/00/not-an-object'), 'x');
  expectFsckError(repo, [], 'object-invalid-name', 'objects/00/not-an-object');
});
