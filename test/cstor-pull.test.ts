/**
 * `cfs oci pull containers-storage:…` through the real CLI against a store made by skopeo:
 * same image id as pulling the layout via oci:, every layer rebuilds to its diff_id, and a diff
 * file changed behind podman's back is caught.
 */
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { createHash } from 'node:crypto';
import { execFileSync, spawn } from 'node:child_process';
import { appendFileSync, mkdirSync, readFileSync, readdirSync, renameSync, rmSync, statSync, writeFileSync } from 'node:fs';
import path from 'node:path';
import { makeCstorStore, cstorSkipReason, patternBytes, standardLayers, type CstorFixture } from './helpers/cstor-fixture.js';
import { buildOciLayout, type EntrySpec } from './helpers/oci-fixture.js';
import { cfsCommand, cfsOk, PROJECT_ROOT, runCfs } from './helpers/cli.js';
import { firstOutput } from './helpers/child.js';
import { repoProblems } from './helpers/repo-check.js';

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

test('containers-storage pull equals the oci: pull of the same image', { skip: skip ?? false }, () => {
  const img = fx.images[0];
  const repo = path.join(fx.dir, 'repo');
  const a = cfsOk(['--repo', repo, 'oci', 'pull', '-q', `containers-storage:${img.name}`, 'cs'], { env: fx.env });
  const b = cfsOk(['--repo', path.join(fx.dir, 'repo-oci'), 'oci', 'pull', '-q', `oci:${path.join(fx.dir, 'layout0')}:img`, 'o'], { env: fx.env });
  assert.equal(imageIdOf(a.stdout), imageIdOf(b.stdout));
  for (const l of img.built.layers) {
    const cat = cfsOk(['--repo', repo, 'cat', `oci-layer-${l.diffId}`]);
    assert.equal(`sha256:${createHash('sha256').update(cat.stdoutBuf).digest('hex')}`, l.diffId);
  }
  assert.deepEqual(repoProblems(repo), []);
});

test('cfs mount --zerocopy containers-storage:NAME imports through the pull path (counts printed) and mounts the image (kernel)', { skip: skip ?? false }, () => {
  const img = fx.images[0];
  const mp = path.join(fx.dir, 'mnt');
  mkdirSync(mp);
  const mounted = (): boolean => readFileSync('/proc/self/mountinfo', 'utf8').split('\n').some((l) => l.split(' ')[4] === mp);
  try {
    const r = cfsOk(['--repo', path.join(fx.dir, 'repo-mount'), 'mount', '--zerocopy', '--fuse', 'no', `containers-storage:${img.name}`, mp], { env: fx.env });
    assert.ok(mounted());
    // The import's object counts, as pull prints them: nothing copied with --zerocopy.
    const counts = /objects: (\d+) reflinked \+ (\d+) hardlinked \+ (\d+) copied/.exec(r.stderr);
    assert.ok(counts && Number(counts[1]) + Number(counts[2]) > 0 && counts[3] === '0', r.stderr);
    // Layer 2 replaced etc/hundred, deleted etc/ten and made opq/ opaque.
    assert.ok(readFileSync(path.join(mp, 'usr/big')).equals(patternBytes(1024 * 1024, 3)));
    assert.ok(readFileSync(path.join(mp, 'etc/hundred')).equals(patternBytes(100, 8)));
    assert.equal(statSync(path.join(mp, 'etc/ten'), { throwIfNoEntry: false }), undefined);
    assert.deepEqual(readdirSync(path.join(mp, 'opq')).sort(), ['c']);
    assert.equal(readFileSync(path.join(mp, 'new/deep/file')).length, 513);
  } finally {
    if (mounted()) cfsOk(['umount', mp]);
  }
  assert.ok(!mounted());
});

test('cfs mount of a containers-storage reference podman no longer has mounts the image imported under that name before', { skip: skip ?? false }, async () => {
  const img = await fx.add('localhost/gone:1', { layers: [[{ path: 'usr/' }, { path: 'usr/kept', content: patternBytes(5000, 41) }]] });
  const repo = path.join(fx.dir, 'repo-gone');
  const ref = `containers-storage:${img.name}`;
  const mp = path.join(fx.dir, 'mnt-gone');
  mkdirSync(mp);
  cfsOk(['--repo', repo, 'mount', '--fuse', 'no', ref, mp], { env: fx.env });
  cfsOk(['umount', mp]);
  execFileSync('skopeo', ['delete', ref], { env: fx.env });
  // However the reference is spelled: the tag the pull gave is found.
  // -q hides progress, not this: what is mounted is not what the source has now.
  for (const [spelling, quiet] of [[ref, []], ['containers-storage:gone:1', ['-q']]] as const) {
    try {
      const r = cfsOk(['--repo', repo, 'mount', ...quiet, '--fuse', 'no', spelling, mp], { env: fx.env });
      assert.match(r.stderr, /^cfs: note: \S+ is no longer in its source; mounting the image imported as 'containers-storage:localhost\/gone:1' before$/m, spelling);
      assert.ok(readFileSync(path.join(mp, 'usr/kept')).equals(patternBytes(5000, 41)));
    } finally {
      runCfs(['umount', mp]);
    }
  }
  // With --platform, never (tags do not say which platform they are).
  const plat = runCfs(['--repo', repo, 'mount', '--fuse', 'no', '--platform', 'linux/amd64', ref, mp], { env: fx.env });
  assert.equal(plat.status, 1);
  assert.match(plat.stderr, /no such image/);
  // Never imported here: the source's error stands.
  const never = runCfs(['--repo', path.join(fx.dir, 'repo-gone-2'), 'mount', '--fuse', 'no', ref, mp], { env: fx.env });
  assert.equal(never.status, 1);
  assert.match(never.stderr, /no such image/);
});

test('an image whose base layers are in an additional image store, and a store that lost its overlay/l links', { skip: skip ?? false }, async () => {
  const main = path.join(fx.dir, 'main-store');
  mkdirSync(main);
  const conf = path.join(main, 'storage.conf');
  writeFileSync(conf, [
    '[storage]', `driver = "${fx.driver}"`, `graphroot = "${main}/graph"`, `runroot = "${main}/run"`,
    '[storage.options]', `additionalimagestores = ["${fx.graphroot}"]`,
    '[storage.options.overlay]', 'skip_mount_home = "true"', '',
  ].join('\n'));
  const env = { ...fx.env, CONTAINERS_STORAGE_CONF: conf };
  const layers = [...standardLayers(), [{ path: 'ext/' }, { path: 'ext/file', content: patternBytes(5000, 21) }]];
  const layout = (await buildOciLayout(path.join(main, 'layout'), { images: [{ tag: 'ext', layers }] })).dir;
  execFileSync('skopeo', ['--insecure-policy', 'copy', '--quiet', `oci:${layout}:ext`, 'containers-storage:localhost/ext:latest'], { env });
  const own = JSON.parse(readFileSync(path.join(main, 'graph', `${fx.driver}-layers`, 'layers.json'), 'utf8')) as unknown[];
  assert.equal(own.length, 1, 'skopeo reused the base layers of the additional store');
  const viaOci = imageIdOf(cfsOk(['--repo', path.join(main, 'repo-oci'), 'oci', 'pull', '-q', `oci:${layout}:ext`, 'o']).stdout);
  for (const fetch of ['auto', 'disabled']) {
    const r = cfsOk(['--repo', path.join(main, `repo-${fetch}`), 'oci', 'pull', '-q', '--local-fetch', fetch, 'containers-storage:localhost/ext:latest', 'ext'], { env });
    assert.equal(imageIdOf(r.stdout), viaOci, fetch);
  }
  // containers/storage recreates lost short links; a reader must not depend on them.
  if (fx.driver === 'overlay') {
    for (const l of [path.join(fx.graphroot, 'overlay/l'), path.join(main, 'graph/overlay/l')]) for (const n of readdirSync(l)) rmSync(path.join(l, n));
    const r = cfsOk(['--repo', path.join(main, 'repo-nolinks'), 'oci', 'pull', '-q', 'containers-storage:localhost/ext:latest', 'ext'], { env });
    assert.equal(imageIdOf(r.stdout), viaOci);
  }
});

test('@LIST-DIGEST with --platform picks that platform\'s image among those podman keeps under one manifest list', { skip: skip ?? false }, async () => {
  const dir = path.join(fx.dir, 'multi');
  const files = (tag: string): EntrySpec[] => [{ path: 'usr/' }, { path: 'usr/arch', content: `${tag} bits, more than sixty-four bytes of them, to be stored as an object` }];
  const layout = await buildOciLayout(dir, {
    images: [{ tag: 'amd', platform: 'linux/amd64', layers: [files('amd64')] }, { tag: 'arm', platform: 'linux/arm64', layers: [files('arm64')] }],
    index: 'manifest-list',
    indexTag: 'multi',
  });
  for (const [arch, name] of [['amd64', 'localhost/multi:amd'], ['arm64', 'localhost/multi:arm']]) {
    execFileSync('skopeo', ['--insecure-policy', '--override-arch', arch!, '--override-os', 'linux', 'copy', '--quiet', `oci:${dir}:multi`, `containers-storage:${name}`], { env: fx.env });
  }
  const ids = new Map<string, string>();
  for (const [arch, i] of [['amd64', 0], ['arm64', 1]] as const) {
    const viaOci = cfsOk(['--repo', path.join(dir, `repo-oci-${arch}`), 'oci', 'pull', '-q', '--platform', `linux/${arch}`, `oci:${dir}:multi`], { env: fx.env });
    ids.set(arch, imageIdOf(viaOci.stdout));
    const r = cfsOk(['--repo', path.join(dir, `repo-${arch}`), 'oci', 'pull', '-q', '--platform', `linux/${arch}`, `containers-storage:@${layout.indexDigest}`], { env: fx.env });
    assert.equal(imageIdOf(r.stdout), ids.get(arch), `${arch}: ${layout.images[i].manifestDigest}`);
  }
  assert.notEqual(ids.get('amd64'), ids.get('arm64'));
});

test('a pull waits for a containers/storage writer\'s lock as long as it is held, and says so', { skip: skip ?? false }, async () => {
  // A POSIX write lock on layers.lock, as podman holds while it applies a layer, until stdin closes.
  const lock = path.join(fx.graphroot, `${fx.driver}-layers`, 'layers.lock');
  const holder = spawn('python3', ['-c', `import fcntl,sys\nf=open(${JSON.stringify(lock)},'r+')\nfcntl.lockf(f,fcntl.LOCK_EX)\nprint('locked',flush=True)\nsys.stdin.read()`], {
    stdio: ['pipe', 'pipe', 'inherit'],
  });
  try {
    assert.equal((await firstOutput(holder, 'the lock holder')).trim(), 'locked');
    // With a timeout shorter than the writer's hold: a clear failure, nothing tagged.
    const impatient = runCfs(['--repo', path.join(fx.dir, 'repo-wait'), 'oci', 'pull', '-q', '--lock-timeout', '0.5', `containers-storage:${fx.images[0].name}`], { env: fx.env });
    assert.equal(impatient.status, 1, impatient.stderr);
    assert.match(impatient.stderr, /^cfs: \S+layers\.lock: locked by another process \(a containers-storage writer\?\); gave up after 0\.5 s$/m);
    assert.equal(runCfs(['--repo', path.join(fx.dir, 'repo-wait'), 'oci', 'pull', '--lock-timeout', 'soon', 'containers-storage:x']).stderr, "cfs: --lock-timeout: 'soon' is not a number of seconds\n");
    // Without a timeout: it waits, says so, and goes on once the writer lets go (released when it said so).
    const [node, ...cli] = cfsCommand();
    const patient = spawn(node!, [...cli, '--repo', path.join(fx.dir, 'repo-wait'), 'oci', 'pull', `containers-storage:${fx.images[0].name}`], { env: fx.env, cwd: PROJECT_ROOT, stdio: ['ignore', 'pipe', 'pipe'] });
    let stdout = '';
    let stderr = '';
    patient.stdout!.on('data', (d: Buffer) => (stdout += d.toString()));
    const said = new Promise<void>((resolve) => {
      patient.stderr!.on('data', (d: Buffer) => {
        stderr += d.toString();
        if (/waiting for .*\n/.test(stderr)) resolve();
      });
    });
    const exited = new Promise<number | null>((resolve) => patient.on('exit', (code) => resolve(code)));
    await Promise.race([said, exited]);
    assert.match(stderr, new RegExp(`^waiting for ${lock.replace(/[.*+?^${}()|[\]\\]/g, '\\$&')}: another process \\(podman\\?\\) is writing to the store$`, 'm'));
    holder.stdin!.end();
    assert.equal(await exited, 0, stderr);
    assert.match(stdout, /^image [0-9a-f]{64}$/m);
    assert.equal(stderr.split('waiting for').length - 1, 1, 'said once, not once per layer');
  } finally {
    holder.kill();
  }
});

test('containers-storage: unknown image lists similar names; --platform, store spec and name errors; changed diff file is caught', { skip: skip ?? false }, async () => {
  const repo = path.join(fx.dir, 'repo-bad');
  const unknown = runCfs(['--repo', repo, 'oci', 'pull', '-q', 'containers-storage:localhost/y:latest'], { env: fx.env });
  assert.notEqual(unknown.status, 0);
  assert.match(unknown.stderr, /localhost\/x:latest/);
  // A registry with a port: the name after it is compared.
  const ported = runCfs(['--repo', repo, 'oci', 'pull', '-q', 'containers-storage:localhost:5000/team/x'], { env: fx.env });
  assert.match(ported.stderr, /similar: localhost\/x:latest/);
  // --platform is checked against the stored image; a store named in the reference is blamed as such; an empty name is refused.
  const arm = await fx.add('localhost/arm:1', { platform: 'linux/arm64', layers: [[{ path: 'usr/' }, { path: 'usr/f', content: 'arm64 bits, more than sixty-four bytes of them to make an object!' }]] });
  const plat = runCfs(['--repo', repo, 'oci', 'pull', '-q', '--platform', 'linux/s390x', `containers-storage:${arm.name}`], { env: fx.env });
  assert.notEqual(plat.status, 0);
  assert.match(plat.stderr, /^cfs: containers-storage:localhost\/arm:1: the image is linux\/arm64, not linux\/s390x\n$/m);
  cfsOk(['--repo', repo, 'oci', 'pull', '-q', '--platform', 'linux/arm64', `containers-storage:${arm.name}`], { env: fx.env });
  // A short name is reported as the name the store gave the image, not as its docker.io expansion.
  const short = cfsOk(['--repo', path.join(fx.dir, 'repo-short'), 'oci', 'pull', 'containers-storage:x'], { env: fx.env });
  assert.match(short.stderr, /^Importing \d+ layers? from containers-storage:localhost\/x:latest$/m);
  // …and tagged so by default: `x`, `localhost/x` and `localhost/x:latest` are one image, one tag.
  assert.match(short.stdout, /^tagged containers-storage:localhost\/x:latest$/m);
  cfsOk(['--repo', path.join(fx.dir, 'repo-short'), 'oci', 'pull', '-q', 'containers-storage:localhost/x'], { env: fx.env });
  const tags = (JSON.parse(cfsOk(['--repo', path.join(fx.dir, 'repo-short'), 'oci', 'images', '--json']).stdout) as { images: Array<{ name: string }> }).images;
  assert.deepEqual(tags.map((t) => t.name), ['containers-storage:localhost/x:latest']);
  // NAME@ID-PREFIX names one image: the ID must match too.
  const images = JSON.parse(readFileSync(path.join(fx.graphroot, `${fx.driver}-images`, 'images.json'), 'utf8')) as Array<{ id: string; names: string[] }>;
  const id = images.find((i) => i.names.includes(fx.images[0].name))!.id;
  const other = id.startsWith('0') ? '1234567' : '0123456';
  const byNameAndId = cfsOk(['--repo', path.join(fx.dir, 'repo-by-id'), 'oci', 'pull', '-q', `containers-storage:${fx.images[0].name}@${id.slice(0, 12)}`], { env: fx.env });
  assert.match(byNameAndId.stdout, /image [0-9a-f]{64}/);
  // A short NAME:TAG@DIGEST, as NAME@DIGEST already works.
  const digest = (JSON.parse(readFileSync(path.join(fx.graphroot, `${fx.driver}-images`, 'images.json'), 'utf8')) as Array<{ names: string[]; digest: string }>).find((i) => i.names.includes('localhost/x:latest'))!.digest;
  cfsOk(['--repo', path.join(fx.dir, 'repo-by-id'), 'oci', 'pull', '-q', `containers-storage:x:latest@${digest}`], { env: fx.env });
  // A reference by ID (or digest) is its own default tag; a store spec's path is normalised.
  const byId = cfsOk(['--repo', path.join(fx.dir, 'repo-by-id'), 'oci', 'pull', '-q', `containers-storage:${id.slice(0, 12)}`], { env: fx.env });
  assert.match(byId.stdout, new RegExp(`^tagged containers-storage:${id.slice(0, 12)}$`, 'm'));
  const bySpec = cfsOk(['--repo', path.join(fx.dir, 'repo-by-id'), 'oci', 'pull', '-q', `containers-storage:[${fx.graphroot}/./]x`], { env: fx.env });
  assert.match(bySpec.stdout, new RegExp(`^tagged containers-storage:\\[${fx.graphroot.replace(/[.*+?^${}()|[\]\\]/g, '\\$&')}\\]localhost/x:latest$`, 'm'));
  const wrongId = runCfs(['--repo', repo, 'oci', 'pull', '-q', `containers-storage:${fx.images[0].name}@${other}`], { env: fx.env });
  assert.notEqual(wrongId.status, 0, 'NAME@ID-PREFIX with another ID');
  assert.match(wrongId.stderr, /no such image/);
  const given = runCfs(['--repo', repo, 'oci', 'pull', '-q', `containers-storage:[${path.join(fx.dir, 'nowhere')}]${fx.images[0].name}`], { env: fx.env });
  assert.match(given.stderr, /graph root \S+nowhere does not exist \(given in the reference\)/);
  const empty = runCfs(['--repo', repo, 'oci', 'pull', '-q', `containers-storage:${fx.images[0].name}`, ''], { env: fx.env });
  assert.match(empty.stderr, /^cfs: the name to tag the image with is empty$/m);

  // A layer in composefs form (use_composefs) cannot be read from diff/: said so, before any work.
  if (fx.driver === 'overlay') {
    const layerIds = (JSON.parse(readFileSync(path.join(fx.graphroot, 'overlay-layers', 'layers.json'), 'utf8')) as Array<{ id: string }>).map((l) => l.id);
    const cfsData = path.join(fx.graphroot, 'overlay', layerIds[0]!, 'composefs-data');
    mkdirSync(cfsData);
    try {
      const r = runCfs(['--repo', path.join(fx.dir, 'repo-composefs'), 'oci', 'pull', '-q', `containers-storage:${fx.images[0].name}`], { env: fx.env });
      assert.equal(r.status, 1);
      assert.match(r.stderr, /layer [0-9a-f]{64} is stored in composefs form \(use_composefs in containers-storage overlay@\S+\); cfs cannot read such layers/);
    } finally {
      rmSync(cfsData, { recursive: true });
    }
  }
  // A layer whose files are gone (a store damaged, or a layer being removed): named, in both fetch modes.
  {
    const layerIds = (JSON.parse(readFileSync(path.join(fx.graphroot, `${fx.driver}-layers`, 'layers.json'), 'utf8')) as Array<{ id: string }>).map((l) => l.id);
    const dir = path.join(fx.graphroot, fx.driver === 'overlay' ? path.join('overlay', layerIds[0]!, 'diff') : path.join('vfs', 'dir', layerIds[0]!));
    renameSync(dir, `${dir}.gone`);
    try {
      for (const fetch of ['disabled', 'auto']) {
        const r = runCfs(['--repo', path.join(fx.dir, `repo-gone-${fetch}`), 'oci', 'pull', '-q', '--local-fetch', fetch, `containers-storage:${fx.images[0].name}`], { env: fx.env });
        assert.equal(r.status, 1, fetch);
        assert.match(r.stderr, new RegExp(`^cfs: containers-storage ${fx.driver}@\\S+: layer ${layerIds[0]}: cannot open its files: ENOENT`, 'm'), fetch);
      }
    } finally {
      renameSync(`${dir}.gone`, dir);
    }
  }

  // Append to the largest regular file of a layer's diff directory (what podman would never do).
  const overlay = path.join(fx.graphroot, fx.driver === 'overlay' ? 'overlay' : 'vfs/dir');
  let victim: string | null = null;
  let size = -1;
  const walk = (d: string): void => {
    for (const e of readdirSync(d, { withFileTypes: true })) {
      const p = path.join(d, e.name);
      if (e.isDirectory()) walk(p);
      else if (e.isFile() && statSync(p).size > size && p.includes(fx.driver === 'overlay' ? '/diff/' : '/')) {
        victim = p;
        size = statSync(p).size;
      }
    }
  };
  walk(overlay);
  assert.ok(victim);
  appendFileSync(victim, 'tampered');
  const r = runCfs(['--repo', repo, 'oci', 'pull', '-q', `containers-storage:${fx.images[0].name}`, 'cs'], { env: fx.env });
  assert.notEqual(r.status, 0);
  assert.match(r.stderr, /changed since import|crc64|diff_id/);
  assert.deepEqual(repoProblems(repo), []);
});
