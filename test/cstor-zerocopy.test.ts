/**
 * containers-storage local fetch: the layer's splitdirfdstream, through the consumer, writes
 * exactly the split streams the byte importer writes; `--local-fetch auto|zerocopy` links file contents instead of copying them,
 * gives the same image as the oci: pull, and fails clearly when zero-copy is impossible (other
 * filesystem, non-local source), when a store file changed behind podman's back, and when a
 * rootless store holds a file the invoking user cannot read.
 */
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { createHash } from 'node:crypto';
import { execFileSync, spawn, spawnSync } from 'node:child_process';
import { chmodSync, chownSync, lstatSync, mkdirSync, mkdtempSync, openSync, readdirSync, readFileSync, readlinkSync, readSync, renameSync, rmSync, statSync, symlinkSync, writeFileSync, writeSync, closeSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { makeCstorStore, cstorSkipReason, patternBytes, type CstorFixture } from './helpers/cstor-fixture.js';
import type { EntrySpec } from './helpers/oci-fixture.js';
import { cfsCommand, cfsOk, PROJECT_ROOT, runCfs } from './helpers/cli.js';
import { repoProblems } from './helpers/repo-check.js';
import { checkoutUnreadableReason, ensureUnprivUser, openUpDir, runAsUser } from './helpers/unpriv.js';
import { Repository } from '../src/repository/repository.js';
import { importTarLayer } from '../src/tar/split.js';
import { consumeLayerStream } from '../src/splitdirfdstream/consumer.js';
import { openContainersStorageImage } from '../src/oci/cstor-source.js';
import type { ImageToImport } from '../src/oci/import.js';

const skip = await cstorSkipReason();
let fx: CstorFixture;

before(async () => {
  if (skip) return;
  fx = await makeCstorStore();
});
after(async () => {
  if (fx) await fx.cleanup();
});

function imageIdOf(out: string): string {
  const m = /image ([0-9a-f]+)/.exec(out);
  assert.ok(m, out);
  return m[1];
}

function objectCounts(stderr: string): { reflinked: number; hardlinked: number; copied: number } {
  const m = /objects: (\d+) reflinked \+ (\d+) hardlinked \+ (\d+) copied/.exec(stderr);
  assert.ok(m, stderr);
  return { reflinked: Number(m[1]), hardlinked: Number(m[2]), copied: Number(m[3]) };
}

/** The fixture image through the source, with this process pointed at the fixture store. */
async function openFixtureImage(): Promise<ImageToImport> {
  process.env['CONTAINERS_STORAGE_CONF'] = fx.confPath;
  return openContainersStorageImage(fx.images[0].name, {});
}

/** The regular file of a layer diff holding `rel` (the first layer that has it). */
function diffFile(rel: string): string;
function diffFile(rel: Buffer): Buffer;
function diffFile(rel: string | Buffer): string | Buffer {
  const base = path.join(fx.graphroot, fx.driver === 'overlay' ? 'overlay' : 'vfs/dir');
  for (const id of readdirSync(base)) {
    const dir = path.join(base, id, fx.driver === 'overlay' ? 'diff' : '');
    const p = typeof rel === 'string' ? path.join(dir, rel) : Buffer.concat([Buffer.from(`${dir}/`), rel]);
    try {
      if (lstatSync(p).isFile()) return p;
    } catch {
      // not in this layer (or not a layer directory)
    }
  }
  throw new Error(`${rel} not found in ${base}`);
}

test('local layer streams store the same split stream as the tar bytes, hardlinked or reflinked', { skip: skip ?? false }, async () => {
  const img = await openFixtureImage();
  const dir = mkdtempSync(path.join(tmpdir(), 'cfs-zc-det-'));
  try {
    const names = ['bytes', 'auto', 'zerocopy'];
    const repos = await Promise.all(names.map((n) => Repository.init(path.join(dir, n), { insecure: true })));
    for (const layer of img.layers) {
      const fromBytes = await importTarLayer(repos[0], layer.open(() => undefined), { expectedDiffId: layer.id });
      for (const [i, zerocopy] of [[1, false], [2, true]] as const) {
        const local = await layer.openLocal!();
        try {
          const r = await consumeLayerStream(repos[i], local.chunks, local.dirfds, { diffId: layer.id, zerocopy, localStore: true });
          assert.deepEqual(r.streamId, fromBytes.streamId);
          assert.equal(r.size, fromBytes.size);
          assert.ok(r.objects.hardlinked + r.objects.reflinked > 0, `layer ${layer.id}: nothing linked (${JSON.stringify(r)})`);
          assert.equal(r.objects.copied, 0);
        } finally {
          await local.close();
        }
      }
    }
    for (const r of repos) r.close();
    for (const n of names) assert.deepEqual(repoProblems(path.join(dir, n)), []);
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
});

test('--local-fetch auto and --zerocopy: same image as oci:, layers rebuild to their diff_ids, nothing copied', { skip: skip ?? false }, () => {
  const img = fx.images[0];
  const ref = `oci:${path.join(fx.dir, 'layout0')}:img`;
  const viaOci = imageIdOf(cfsOk(['--repo', path.join(fx.dir, 'zc-oci'), 'oci', 'pull', '-q', ref, 'o'], { env: fx.env }).stdout);
  for (const args of [['--local-fetch', 'auto'], ['--zerocopy']]) {
    const repo = path.join(fx.dir, `zc${args.length}`);
    const r = cfsOk(['--repo', repo, 'oci', 'pull', ...args, `containers-storage:${img.name}`, 'cs'], { env: fx.env });
    assert.equal(imageIdOf(r.stdout), viaOci);
    const counts = objectCounts(r.stderr);
    assert.ok(counts.hardlinked + counts.reflinked > 0, r.stderr);
    assert.equal(counts.copied, 0, r.stderr);
    for (const l of img.built.layers) {
      const cat = cfsOk(['--repo', repo, 'cat', `oci-layer-${l.diffId}`]);
      assert.equal(`sha256:${createHash('sha256').update(cat.stdoutBuf).digest('hex')}`, l.diffId);
    }
    assert.deepEqual(repoProblems(repo), []);
  }
  // The default is auto; --local-fetch disabled copies.
  const plain = cfsOk(['--repo', path.join(fx.dir, 'zc-plain'), 'oci', 'pull', `containers-storage:${img.name}`], { env: fx.env });
  assert.equal(imageIdOf(plain.stdout), viaOci);
  assert.ok(objectCounts(plain.stderr).hardlinked + objectCounts(plain.stderr).reflinked > 0, plain.stderr);
  assert.equal(objectCounts(plain.stderr).copied, 0, plain.stderr);
  const copying = cfsOk(['--repo', path.join(fx.dir, 'zc-copying'), 'oci', 'pull', '--local-fetch', 'disabled', `containers-storage:${img.name}`], { env: fx.env });
  assert.equal(imageIdOf(copying.stdout), viaOci);
  assert.deepEqual({ ...objectCounts(copying.stderr), copied: 0 }, { reflinked: 0, hardlinked: 0, copied: 0 });
  assert.ok(objectCounts(copying.stderr).copied > 0);
  const bad = runCfs(['--repo', path.join(fx.dir, 'zc-bad'), 'oci', 'pull', '--local-fetch', 'sometimes', `containers-storage:${img.name}`], { env: fx.env });
  assert.notEqual(bad.status, 0);
  assert.match(bad.stderr, /--local-fetch: 'sometimes' is not one of disabled, auto, zerocopy/);
});

test('a low fd limit (ulimit -n 64) does not stop a zero-copy pull of two layers of 400 files, nor a zero-copy oci copy of them', { skip: skip ?? false }, async () => {
  // Two layers, imported at once: the bound is the process's, not each layer's.
  const layers: EntrySpec[][] = [0, 1].map((l) => {
    const many: EntrySpec[] = [{ path: 'usr/' }, { path: `many${l}/` }];
    for (let i = 0; i < 400; i++) many.push({ path: `many${l}/f${i}`, content: patternBytes(200 + i, 1000 * l + i + 1) });
    return many;
  });
  const img = await fx.add('localhost/many:latest', { layers });
  const limited = (args: string[]) => {
    const [node, ...pre] = cfsCommand();
    return spawnSync('sh', ['-c', 'ulimit -n 64 && exec "$@"', 'sh', node!, ...pre, ...args], { cwd: PROJECT_ROOT, env: fx.env, encoding: 'utf8' });
  };
  const src = path.join(fx.dir, 'fd-src');
  const pulled = limited(['--repo', src, 'oci', 'pull', '--zerocopy', `containers-storage:${img.name}`, 'many']);
  assert.equal(pulled.status, 0, pulled.stderr);
  assert.equal(objectCounts(pulled.stderr).hardlinked + objectCounts(pulled.stderr).reflinked, 800, pulled.stderr);
  const copied = limited(['--repo', path.join(fx.dir, 'fd-dst'), 'oci', 'copy', 'many', '--from', src, '--zerocopy', '--name', 'many']);
  assert.equal(copied.status, 0, copied.stderr);
  assert.equal(/Image ID:\s+([0-9a-f]{64})/.exec(copied.stdout)?.[1], imageIdOf(pulled.stdout));
  assert.deepEqual(repoProblems(path.join(fx.dir, 'fd-dst')), []);
});

test('--zerocopy links through a store whose overlay/ is bind-mounted onto itself (as podman leaves it)', { skip: skip ?? false }, () => {
  if (fx.driver !== 'overlay') return;
  const overlay = path.join(fx.graphroot, 'overlay');
  execFileSync('mount', ['--bind', overlay, overlay]);
  try {
    const repo = path.join(fx.dir, 'zc-bind');
    const r = cfsOk(['--repo', repo, 'oci', 'pull', '--zerocopy', `containers-storage:${fx.images[0].name}`, 'cs'], { env: fx.env });
    const counts = objectCounts(r.stderr);
    assert.ok(counts.hardlinked + counts.reflinked > 0, r.stderr);
    assert.deepEqual(repoProblems(repo), []);
    // In a user namespace (podman unshare) the inherited mounts are locked: no bridge, and the error says why.
    const inNs = path.join(fx.dir, 'zc-bind-userns');
    const [node, ...cfs] = cfsCommand();
    const ns = spawnSync('unshare', ['--user', '--map-root-user', '--mount', node!, ...cfs, '--repo', inNs, 'oci', 'pull', '-q', '--zerocopy', `containers-storage:${fx.images[0].name}`, 'cs'], { env: fx.env, encoding: 'utf8', cwd: PROJECT_ROOT });
    assert.equal(ns.status, 1, ns.stderr);
    assert.match(ns.stderr, /hardlink \(EXDEV: \S+ is on another mount of the repository's filesystem, and no bridge to it: cloning mount \/\S* failed: EINVAL \(mounts a user namespace inherits are locked \(as inside podman unshare\)\)\) both failed; copy fallback is disabled \(zerocopy mode\)$/m);
  } finally {
    execFileSync('umount', [overlay]);
  }
});

test('--zerocopy fails clearly for a repository on another filesystem and for oci: sources', { skip: skip ?? false }, () => {
  const mnt = mkdtempSync(path.join(tmpdir(), 'cfs-zc-tmpfs-'));
  execFileSync('mount', ['-t', 'tmpfs', '-o', 'size=64m', 'tmpfs', mnt]);
  try {
    const repo = path.join(mnt, 'repo');
    const r = runCfs(['--repo', repo, 'oci', 'pull', '-q', '--zerocopy', `containers-storage:${fx.images[0].name}`, 'cs'], { env: fx.env });
    assert.notEqual(r.status, 0);
    assert.match(r.stderr, /zero-copy import impossible: \/\S+ is on a different filesystem than repository/);
    assert.deepEqual(readdirSync(path.join(repo, 'streams')), []);
    // auto falls back to copying.
    const auto = cfsOk(['--repo', repo, 'oci', 'pull', '--local-fetch', 'auto', `containers-storage:${fx.images[0].name}`, 'cs'], { env: fx.env });
    assert.deepEqual({ ...objectCounts(auto.stderr), copied: 0 }, { reflinked: 0, hardlinked: 0, copied: 0 });
  } finally {
    execFileSync('umount', [mnt]);
    rmSync(mnt, { recursive: true, force: true });
  }
  const oci = runCfs(['--repo', path.join(fx.dir, 'zc-oci2'), 'oci', 'pull', '-q', '--zerocopy', `oci:${path.join(fx.dir, 'layout0')}:img`], { env: fx.env });
  assert.notEqual(oci.status, 0);
  assert.match(oci.stderr, /zero-copy import impossible: layer sha256:[0-9a-f]+ .* not available as local files/);
});

test('a store file changed in place (same size) is caught before anything is published', { skip: skip ?? false }, () => {
  const victim = diffFile('usr/big');
  const fd = openSync(victim, 'r+');
  const b = Buffer.alloc(1);
  try {
    readSync(fd, b, 0, 1, 4096);
    writeSync(fd, Buffer.from([b[0] ^ 0xff]), 0, 1, 4096);
    const repo = path.join(fx.dir, 'zc-tampered');
    const r = runCfs(['--repo', repo, 'oci', 'pull', '-q', '--zerocopy', `containers-storage:${fx.images[0].name}`, 'cs'], { env: fx.env });
    assert.notEqual(r.status, 0);
    assert.match(r.stderr, /usr\/big changed since import \(crc64 mismatch\)/);
    assert.deepEqual(repoProblems(repo), []);
    assert.equal(readdirSync(path.join(repo, 'images')).length, 0);
    // The copying pull reads the tar bytes; the diff_id mismatch is explained the same way.
    const copied = runCfs(['--repo', path.join(fx.dir, 'zc-tampered-copy'), 'oci', 'pull', '-q', '--local-fetch', 'disabled', `containers-storage:${fx.images[0].name}`, 'cs'], { env: fx.env });
    assert.notEqual(copied.status, 0);
    assert.match(copied.stderr, /usr\/big changed since import \(crc64 mismatch\)/);
    assert.deepEqual(repoProblems(path.join(fx.dir, 'zc-tampered-copy')), []);
  } finally {
    writeSync(fd, b, 0, 1, 4096);
    closeSync(fd);
  }
  // Shorter, then gone: the local import names the file and what happened to it.
  const saved = readFileSync(victim);
  try {
    writeFileSync(victim, saved.subarray(1));
    const repo = path.join(fx.dir, 'zc-shorter');
    const r = runCfs(['--repo', repo, 'oci', 'pull', '-q', '--zerocopy', `containers-storage:${fx.images[0].name}`, 'cs'], { env: fx.env });
    assert.match(r.stderr, /usr\/big changed since import \(size \d+, recorded \d+\)/);
    rmSync(victim);
    const gone = runCfs(['--repo', repo, 'oci', 'pull', '-q', '--zerocopy', `containers-storage:${fx.images[0].name}`, 'cs'], { env: fx.env });
    assert.match(gone.stderr, /usr\/big is missing from the layer's files/);
    assert.deepEqual(repoProblems(repo), []);
  } finally {
    writeFileSync(victim, saved);
  }
});

test('a store directory swapped for a symlink leading outside the layer is refused by every path, even with the right bytes there', { skip: skip ?? false }, () => {
  const big = diffFile('usr/big');
  const usr = path.dirname(big);
  const outside = mkdtempSync(path.join(tmpdir(), 'cfs-outside-'));
  renameSync(usr, `${usr}.real`);
  try {
    // The same content outside the store: following the link would rebuild the layer exactly.
    execFileSync('cp', ['-a', `${usr}.real/.`, outside]);
    symlinkSync(outside, usr);
    for (const args of [['--local-fetch', 'disabled'], ['--local-fetch', 'auto']]) {
      const repo = path.join(fx.dir, `zc-symlinked-${args[1]}`);
      const r = runCfs(['--repo', repo, 'oci', 'pull', '-q', ...args, `containers-storage:${fx.images[0].name}`, 'cs'], { env: fx.env });
      assert.notEqual(r.status, 0, args.join(' '));
      assert.match(r.stderr, /usr\/(big|attr|link|hard)\b.*(leads out of the layer's directory|leads outside its directory)/, r.stderr);
      assert.equal(r.stderr.trim().split('\n').filter((l) => !l.startsWith('cfs: note:')).length, 1, r.stderr);
      assert.deepEqual(repoProblems(repo), []);
    }
  } finally {
    rmSync(usr, { force: true });
    renameSync(`${usr}.real`, usr);
    rmSync(outside, { recursive: true, force: true });
  }
});

test('corrupt layers.json is reported, not guessed around', { skip: skip ?? false }, () => {
  const file = path.join(fx.graphroot, `${fx.driver}-layers`, 'layers.json');
  const saved = execFileSync('cat', [file]);
  writeFileSync(file, '[{"id": "abc", ');
  try {
    const r = runCfs(['--repo', path.join(fx.dir, 'zc-corrupt'), 'oci', 'pull', '-q', '--local-fetch', 'auto', `containers-storage:${fx.images[0].name}`], { env: fx.env });
    assert.notEqual(r.status, 0);
    assert.match(r.stderr, /layers\.json/);
  } finally {
    writeFileSync(file, saved);
  }
});

test('rootless store: a file the invoking user cannot read is named, with the reason; a store of another user is said to be one', { skip: skip ?? false }, async (t) => {
  const why = checkoutUnreadableReason(PROJECT_ROOT);
  if (why) return void t.skip(why);
  const user = await ensureUnprivUser();
  // A copy of the store owned by the user, except one file owned by a mapped id, as in a
  // rootless podman store (container root = the user, other container users = subuids).
  const names = await addNamesImage();
  const dir = mkdtempSync(path.join(tmpdir(), 'cfs-zc-rootless-'));
  try {
    openUpDir(dir);
    const graph = path.join(dir, 'graph');
    execFileSync('cp', ['-a', fx.graphroot, graph]);
    execFileSync('chown', ['-R', `${user.uid}:${user.gid}`, graph]);
    const conf = path.join(dir, 'storage.conf');
    writeFileSync(conf, `[storage]\ndriver = "${fx.driver}"\ngraphroot = "${graph}"\nrunroot = "${path.join(dir, 'run')}"\n[storage.options.overlay]\nskip_mount_home = "true"\n`);
    // A file the user may not read, by a UTF-8 name (opened by the consumer) and by one that is
    // not (read by the producer, sent inline): either is named, with its owner and what to do.
    const secrets: Array<{ image: string; file: string | Buffer; shown: RegExp }> = [
      { image: fx.images[0].name, file: diffFile('private'), shown: /cannot read private \(\S+\/private, owned by uid 100000 gid 100000, mode 0600\): permission denied/ },
    ];
    secrets.push({ image: names.name, file: diffFile(Buffer.from('usr/caf\xe9', 'latin1')), shown: /cannot read usr\/caf\ufffd \(\S+\/usr\/caf\ufffd, owned by uid 100000 gid 100000, mode 0600\): permission denied/ });
    for (const { image, file, shown } of secrets) {
      const secret = Buffer.concat([Buffer.from(`${graph}/`), Buffer.from(file).subarray(Buffer.byteLength(`${fx.graphroot}/`))]);
      chownSync(secret, 100000, 100000);
      chmodSync(secret, 0o600);
      mkdirSync(path.join(dir, 'repo'), { recursive: true });
      chownSync(path.join(dir, 'repo'), user.uid, user.gid);
      for (const mode of ['auto', 'disabled']) {
        const r = await runAsUser(user, [...cfsCommand(), '--repo', path.join(dir, 'repo'), 'oci', 'pull', '-q', '--local-fetch', mode, `containers-storage:${image}`], {
          cwd: PROJECT_ROOT,
          // The direct path: without the userns helper (cstor-helper.test.ts) files are read as the user.
          env: { CONTAINERS_STORAGE_CONF: conf, CFS_USERNS_HELPER: '0' },
        });
        assert.notEqual(r.code, 0, r.stdout);
        assert.match(r.stderr, shown, r.stderr);
        // The user owns the store: it is their rootless store, to be read inside podman unshare.
        assert.match(r.stderr, /; the store \S+ is your rootless store, whose files belong to ids of its user namespace: run cfs inside `podman unshare`$/m, r.stderr);
      }
      assert.equal(statSync(secret).mode & 0o777, 0o600);
    }
    // Someone else's store as a whole (its lock files): said so, with what to do.
    execFileSync('chown', ['-R', '0:0', graph]);
    execFileSync('chmod', ['-R', 'go-rwx', graph]);
    const other = await runAsUser(user, [...cfsCommand(), '--repo', path.join(dir, 'repo'), 'oci', 'pull', '-q', `containers-storage:${fx.images[0].name}`], { cwd: PROJECT_ROOT, env: { CONTAINERS_STORAGE_CONF: conf } });
    assert.notEqual(other.code, 0);
    assert.match(other.stderr, /^cfs: .*permission denied.*; the store belongs to another user \(rootless stores are read as their owner, e\.g\. inside `podman unshare`; the system store as root\)$/m);
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
});

/** One ustar member with a name given as bytes (not necessarily UTF-8). */
function ustarMember(name: Buffer, type: '0' | '5', content: Buffer = Buffer.alloc(0)): Buffer {
  const h = Buffer.alloc(512);
  name.copy(h, 0);
  const octal = (v: number, off: number, len: number): void => void h.write(`${v.toString(8).padStart(len - 1, '0')}\0`, off, 'latin1');
  octal(type === '5' ? 0o755 : 0o644, 100, 8);
  octal(0, 108, 8);
  octal(0, 116, 8);
  octal(content.length, 124, 12);
  octal(1700000000, 136, 12);
  h.write(type, 156, 'latin1');
  h.write('ustar\0' + '00', 257, 'latin1');
  h.fill(0x20, 148, 156);
  let sum = 0;
  for (const b of h) sum += b;
  h.write(`${sum.toString(8).padStart(6, '0')}\0 `, 148, 'latin1');
  const padded = Buffer.alloc(Math.ceil(content.length / 512) * 512);
  content.copy(padded);
  return Buffer.concat([h, padded]);
}

/** A layer whose member names are not UTF-8 (usr/caf\xe9) or not normalized. */
const NAMES_TAR = (): Buffer => Buffer.concat([
  ustarMember(Buffer.from('usr/'), '5'),
  ustarMember(Buffer.from('./usr/dot'), '0', Buffer.alloc(300, 1)),
  ustarMember(Buffer.from('usr//double'), '0', Buffer.alloc(400, 2)),
  ustarMember(Buffer.from('usr/caf\xe9', 'latin1'), '0', Buffer.alloc(500, 3)),
  ustarMember(Buffer.from('usr/plain'), '0', Buffer.alloc(600, 4)),
  Buffer.alloc(1024),
]);
let namesImage: ReturnType<CstorFixture['add']> | null = null;
/** localhost/names:latest in the store (added once). */
function addNamesImage(): ReturnType<CstorFixture['add']> {
  return (namesImage ??= fx.add('localhost/names:latest', { layers: [{ tar: NAMES_TAR() }] }));
}

test('member names that are not UTF-8 or not normalized (./x, a//b) import the same through every path', { skip: skip ?? false }, async () => {
  const tar = NAMES_TAR();
  const img = await addNamesImage();
  // The OCI layout the store's copy was made from.
  const layout = readdirSync(fx.dir)
    .filter((d) => d.startsWith('layout'))
    .map((d) => path.join(fx.dir, d))
    .find((d) => readFileSync(path.join(d, 'index.json'), 'utf8').includes(img.built.manifestDigest));
  assert.ok(layout);
  const ids = new Set<string>();
  ids.add(imageIdOf(cfsOk(['--repo', path.join(fx.dir, 'names-oci'), 'oci', 'pull', '-q', `oci:${layout}:img`], { env: fx.env }).stdout));
  for (const [i, args] of [['--local-fetch', 'disabled'], []].entries()) {
    const repo = path.join(fx.dir, `names-cs${i}`);
    const r = cfsOk(['--repo', repo, 'oci', 'pull', ...args, `containers-storage:${img.name}`], { env: fx.env });
    ids.add(imageIdOf(r.stdout));
    const cat = cfsOk(['--repo', repo, 'cat', `oci-layer-${img.built.layers[0]!.diffId}`]);
    assert.deepEqual(cat.stdoutBuf, tar);
    if (args.length !== 2) {
      // The member whose name is not UTF-8 cannot be named on the wire: it travels inline and is copied.
      const counts = objectCounts(r.stderr);
      assert.equal(counts.copied, 1, r.stderr);
      assert.equal(counts.hardlinked + counts.reflinked, 3, r.stderr);
    }
    assert.deepEqual(repoProblems(repo), []);
  }
  assert.equal(ids.size, 1);
  // …which --zerocopy forbids: a clear error, nothing published.
  const zc = path.join(fx.dir, 'names-zc');
  const r = runCfs(['--repo', zc, 'oci', 'pull', '--zerocopy', `containers-storage:${img.name}`], { env: fx.env });
  assert.equal(r.status, 1);
  assert.match(r.stderr, /^cfs: layer sha256:[0-9a-f]{64}: "usr\/caf\ufffd" \(500 bytes\) reaches the consumer as inline data, not as a file it could link; copy fallback is disabled \(zerocopy mode\)\n$/m);
  assert.deepEqual(readdirSync(path.join(zc, 'streams')).filter((n) => n !== 'refs'), []);
  assert.deepEqual(repoProblems(zc), []);
});

test('ownership in a user namespace: the owner\'s own and subordinate ids (podman unshare) are its; a namespace root made maps other users\' ids, which stay theirs', async () => {
  const { parseIdMap, subordinateRanges, ownerControls } = await import('../src/userns.js');
  // podman unshare as uid 1002: 0 → 1002, 1.. → subordinate ids.
  const rootless = parseIdMap('         0       1002          1\n         1     100000      65536\n');
  const sub = subordinateRanges('alice:200000:65536\nrl:100000:65536\n', 'rl', 1002);
  assert.deepEqual(sub, [{ start: 100000, count: 65536 }]);
  assert.deepEqual([0, 1, 1000, 65536].map((u) => ownerControls(u, 0, rootless, sub)), [true, true, true, true]);
  assert.equal(ownerControls(70000, 0, rootless, sub), false, 'not mapped');
  assert.equal(ownerControls(1000, 0, rootless, subordinateRanges('rl:300000:65536\n', 'rl', 1002)), false, 'mapped to ids not granted to the owner');
  assert.deepEqual(subordinateRanges('1002:5:10\n', null, 1002), [{ start: 5, count: 10 }]);
  // A namespace root made with an identity map: uid 1000 is the real uid 1000.
  const identity = parseIdMap('0 0 65536');
  assert.deepEqual([0, 1000].map((u) => ownerControls(u, 0, identity, [])), [true, false]);
});

test('in a user namespace root made (identity map), another user\'s store file is not hardlinked into an insecure repository', { skip: skip ?? false }, async () => {
  const img = await fx.add('localhost/alice:latest', { layers: [[{ path: 'usr/' }, { path: 'usr/alice', content: patternBytes(700, 31), mode: 0o644, uid: 1000, gid: 1000 }]] });
  const holder = spawn('unshare', ['--user', 'sleep', '120'], { stdio: 'ignore' });
  try {
    // Once the child is in its own namespace, map it from here, as root.
    for (let i = 0; i < 100 && readlinkSync(`/proc/${holder.pid}/ns/user`) === readlinkSync('/proc/self/ns/user'); i++) await new Promise((r) => setTimeout(r, 20));
    writeFileSync(`/proc/${holder.pid}/uid_map`, '0 0 65536');
    writeFileSync(`/proc/${holder.pid}/gid_map`, '0 0 65536');
    const inNs = (args: string[]) => spawnSync('nsenter', ['-t', String(holder.pid), '--user', '--', ...cfsCommand(), ...args], { env: fx.env, encoding: 'utf8', cwd: PROJECT_ROOT });
    const auto = inNs(['--repo', path.join(fx.dir, 'ns-auto'), 'oci', 'pull', `containers-storage:${img.name}`]);
    assert.equal(auto.status, 0, auto.stderr);
    const a = objectCounts(auto.stderr);
    assert.equal(a.hardlinked, 0, auto.stderr);
    const zc = inNs(['--repo', path.join(fx.dir, 'ns-zc'), 'oci', 'pull', '--zerocopy', `containers-storage:${img.name}`]);
    if (a.reflinked === 0) {
      assert.equal(zc.status, 1, zc.stderr);
      assert.match(zc.stderr, /not for usr\/alice: it is owned by uid 1000, who could then change the object/);
    }
  } finally {
    holder.kill();
  }
});

test('auto never gives another user\'s, a setuid/setgid or a group/other-writable store file a second name in objects/; --zerocopy links setuid files only into a private repository, and files others may write into none that lacks fs-verity', { skip: skip ?? false }, async () => {
  const setid = [
    { path: 'usr/' },
    { path: 'usr/bin/' },
    { path: 'usr/bin/su', content: patternBytes(200, 21), mode: 0o4755 },
    { path: 'usr/bin/wall', content: patternBytes(300, 22), mode: 0o2755 },
    { path: 'usr/plain', content: patternBytes(500, 24), mode: 0o644 },
  ];
  const img = await fx.add('localhost/modes:latest', {
    layers: [[
      ...setid,
      { path: 'usr/shared', content: patternBytes(400, 23), mode: 0o666 },
      { path: 'usr/theirs', content: patternBytes(600, 25), mode: 0o644, uid: 65534, gid: 65534 },
    ]],
  });
  const setidImg = await fx.add('localhost/setid:latest', { layers: [setid] });
  assert.equal(lstatSync(diffFile('usr/bin/su')).mode & 0o7777, 0o4755, 'the store keeps the setuid bit');
  assert.equal(lstatSync(diffFile('usr/theirs')).uid, 65534);
  /** Objects whose inode has a mode bit (of `bits`) or an owner a copied object never has. */
  const sharedModes = (repo: string, bits = 0o6022): string[] => {
    const found: string[] = [];
    const objects = path.join(repo, 'objects');
    for (const d of readdirSync(objects)) {
      for (const f of readdirSync(path.join(objects, d))) {
        const st = lstatSync(path.join(objects, d, f));
        if (st.mode & bits || st.uid !== process.geteuid!()) found.push(`${d}/${f}`);
      }
    }
    return found;
  };
  const auto = cfsOk(['--repo', path.join(fx.dir, 'modes-auto'), 'oci', 'pull', `containers-storage:${img.name}`], { env: fx.env });
  const a = objectCounts(auto.stderr);
  assert.equal(a.reflinked + a.hardlinked + a.copied, 5, auto.stderr);
  // Without reflinks (ext4), usr/plain alone is ours, plain and private: the one hardlink.
  if (a.reflinked === 0) assert.equal(a.hardlinked, 1, auto.stderr);
  else assert.equal(a.hardlinked, 0, auto.stderr);
  assert.deepEqual(sharedModes(path.join(fx.dir, 'modes-auto')), []);
  // Files another user may write: linked, their owner could change what the (insecure) repository's images show.
  const writable = path.join(fx.dir, 'modes-writable');
  const w = runCfs(['--repo', writable, 'oci', 'pull', '--zerocopy', `containers-storage:${img.name}`], { env: fx.env });
  if (a.reflinked === 0) {
    assert.equal(w.status, 1, w.stderr);
    assert.match(w.stderr, /^cfs: usr\/(shared|theirs): .*hardlink \(not for usr\/\1: it is (writable by group or others|owned by uid 65534), who could then change the object behind repository \S+modes-writable's back \(an insecure repository has no fs-verity to prevent it; import without --zerocopy to copy it\)\) both failed; copy fallback is disabled \(zerocopy mode\)$/m);
    // (The setuid files it may have linked before it stopped are fine in this private repository.)
    assert.deepEqual(sharedModes(writable, 0o022), []);
    assert.deepEqual(repoProblems(writable), []);
  } else assert.equal(w.status, 0, 'reflinks: private clones, nothing shared');
  // Setuid/setgid files of ours: linked into a repository other users cannot enter.
  const zc = cfsOk(['--repo', path.join(fx.dir, 'modes-zc'), 'oci', 'pull', '--zerocopy', `containers-storage:${setidImg.name}`], { env: fx.env });
  const z = objectCounts(zc.stderr);
  assert.equal(z.copied, 0, zc.stderr);
  assert.equal(z.reflinked + z.hardlinked, 3, zc.stderr);
  assert.equal(sharedModes(path.join(fx.dir, 'modes-zc')).length, z.hardlinked === 3 ? 2 : 0);
  assert.deepEqual(repoProblems(path.join(fx.dir, 'modes-zc')), []);
  // A repository other users can enter would expose the setuid file: --zerocopy refuses to link it there.
  const open = path.join(fx.dir, 'modes-open');
  cfsOk(['init', '--insecure', open]);
  chmodSync(open, 0o755);
  const exposed = runCfs(['--repo', open, 'oci', 'pull', '--zerocopy', `containers-storage:${setidImg.name}`], { env: fx.env });
  if (a.reflinked === 0) {
    assert.equal(exposed.status, 1, exposed.stderr);
    assert.match(exposed.stderr, /^cfs: usr\/bin\/(su|wall): .*hardlink \(not for usr\/bin\/\1: it is setuid or setgid, and other users can enter repository \S+modes-open \(mode 755\) to reach it \(chmod go-x the repository to allow it\)\) both failed; copy fallback is disabled \(zerocopy mode\)$/m);
    assert.deepEqual(sharedModes(open), []);
    assert.deepEqual(repoProblems(open), []);
  } else assert.equal(exposed.status, 0, 'reflinks: private clones, nothing shared');
});
