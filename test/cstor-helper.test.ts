/**
 * The containers-storage layer service and the userns helper of rootless pulls.
 * In-process: GetLayer over a socketpair sends the bytes of files a consumer without DAC
 * override could not open inline, names the rest beneath the layer's directory fds (in their
 * reply slots), and the stream rebuilds to the layer's diff_id. For real: a rootless store made
 * by skopeo as an unprivileged user with subordinate ids, pulled by that user through
 * `podman unshare` (auto, zerocopy, disabled), the same image as root's oci: pull.
 */
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { createHash } from 'node:crypto';
import { execFileSync, spawnSync } from 'node:child_process';
import { chmodSync, chownSync, fstatSync, mkdirSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { makeCstorStore, cstorSkipReason, patternBytes, type CstorFixture } from './helpers/cstor-fixture.js';
import { buildOciLayout, type EntrySpec } from './helpers/oci-fixture.js';
import { cfsCommand, cfsOk, PROJECT_ROOT } from './helpers/cli.js';
import { checkoutUnreadableReason, ensureUnprivUser, openUpDir, runAsUser, type UnprivUser } from './helpers/unpriv.js';
import { native } from '../src/native.js';
import { CstorLayerService } from '../src/varlink/cstor-service.js';
import { VarlinkClient } from '../src/varlink/client.js';
import { VarlinkError } from '../src/varlink/protocol.js';
import { closeQuietly } from '../src/varlink/transport.js';
import { SplitdirfdReader } from '../src/splitdirfdstream/reader.js';
import { rebuildStream } from '../src/splitdirfdstream/rebuild.js';
import { openStorageImage } from '../src/oci/containers-storage/image.js';
import net from 'node:net';

const skip = await cstorSkipReason();
let fx: CstorFixture;

/** Files a consumer without DAC override may open, and files it may not (mode, or a closed directory on the way). */
const LAYER: EntrySpec[] = [
  { path: 'etc/' },
  { path: 'etc/secret', content: patternBytes(300, 1), mode: 0o600, uid: 1000, gid: 1000 },
  { path: 'etc/rootonly', content: patternBytes(400, 2), mode: 0o600 },
  // Readable by everyone but its owner: the owner's bits decide for the owner.
  { path: 'etc/odd', content: patternBytes(200, 5), mode: 0o044 },
  { path: 'home/' },
  { path: 'home/u/', mode: 0o700, uid: 1000, gid: 1000 },
  { path: 'home/u/pub', content: patternBytes(500, 3), mode: 0o644, uid: 1000, gid: 1000 },
  { path: 'usr/' },
  { path: 'usr/tool', content: patternBytes(5000, 4), mode: 0o755 },
  { path: 'usr/small', content: 'x' },
  // The in-process test gives it an ACL denying its owner.
  { path: 'usr/acl', content: patternBytes(300, 6), mode: 0o644 },
];
/** What the store's owner (our uid and gid, no capabilities) may not open: another id's 0600 file, one beneath another id's 0700 directory, and a 0044 file of its own. */
const INLINE_FOR_OTHERS = ['etc/odd', 'etc/secret', 'home/u/pub'];

before(async () => {
  if (skip) return;
  fx = await makeCstorStore({ images: [{ name: 'localhost/perm:latest', spec: { layers: [LAYER] } }] });
});
after(async () => {
  if (fx) await fx.cleanup();
});

async function* once(b: Buffer): AsyncGenerator<Buffer> {
  yield b;
}

interface Fetched {
  files: string[];
  inline: number;
  digest: string;
  dirCount: number;
  realDirs: number;
}

/** GetLayer from the service; the stream's file names, inline chunk count, rebuilt digest and directory slots. */
async function fetchLayer(client: VarlinkClient, root: string, layerId: string, dac: boolean): Promise<Fetched> {
  const fds: number[] = [];
  let dirCount = -1;
  const params = { storage: { storage_path: root, layer_id: layerId }, consumer_has_cap_dac_override: dac };
  for await (const f of client.call('org.composefs.Oci.GetLayer', { handle: 0, params }, { more: true })) {
    fds.push(...f.fds);
    dirCount = Number(f.parameters.dir_count);
  }
  const region = fds.slice(1, dirCount + 1);
  try {
    const parts: Buffer[] = [];
    for await (const b of new net.Socket({ fd: fds[0]!, readable: true, writable: false })) parts.push(b as Buffer);
    const stream = Buffer.concat(parts);
    const files: string[] = [];
    let inline = 0;
    const r = new SplitdirfdReader(once(stream));
    for (let h = await r.next(); h; h = await r.next()) {
      if (h.type === 'file') files.push(h.name.toString());
      else {
        if (h.type === 'inline') inline++;
        await r.bodyAll();
      }
    }
    const hash = createHash('sha256');
    for await (const b of rebuildStream(once(stream), region, 'test')) hash.update(b);
    const realDirs = region.filter((fd) => fstatSync(fd).isDirectory()).length;
    return { files, inline, digest: `sha256:${hash.digest('hex')}`, dirCount, realDirs };
  } finally {
    fds.slice(1).forEach(closeQuietly);
  }
}

test('containers-storage service: GetLayer names what a consumer may open, sends the rest inline, and rebuilds to the diff_id', { skip: skip ?? false }, async () => {
  const img = await openStorageImage(`containers-storage:localhost/perm:latest`, { context: { env: fx.env } });
  const layer = img.layers[0]!;
  const service = new CstorLayerService('test');
  const [a, b] = native().socketpair();
  service.server.serveFd(a);
  const client = new VarlinkClient(b);
  try {
    const info = [];
    for await (const f of client.call('org.varlink.service.GetInfo', {})) info.push(f.parameters);
    assert.equal(info[0]!.product, 'composefs-storage');

    // A POSIX ACL may deny what the mode bits allow: such a file goes inline.
    execFileSync('setfacl', ['-m', 'u:0:---', path.join((await layer.store.layerSearchDirs(layer.layerId))[0]!, 'usr/acl')]);
    const others = await fetchLayer(client, layer.store.root, layer.layerId, false);
    assert.equal(others.digest, layer.diffId);
    assert.deepEqual(others.files.sort(), ['etc/rootonly', 'usr/small', 'usr/tool']);
    assert.equal(others.inline, INLINE_FOR_OTHERS.length + 1);
    assert.ok(others.dirCount > others.realDirs && others.realDirs === 1, `${others.dirCount} slots, ${others.realDirs} real`);

    const privileged = await fetchLayer(client, layer.store.root, layer.layerId, true);
    assert.equal(privileged.digest, layer.diffId);
    assert.deepEqual(privileged.files.sort(), [...INLINE_FOR_OTHERS, 'etc/rootonly', 'usr/acl', 'usr/small', 'usr/tool'].sort());
    assert.equal(privileged.inline, 0);

    const call = async (params: Record<string, unknown>): Promise<VarlinkError> => {
      try {
        for await (const _ of client.call('org.composefs.Oci.GetLayer', { handle: 0, params }));
      } catch (e) {
        if (e instanceof VarlinkError) return e;
        throw e;
      }
      assert.fail('GetLayer succeeded');
    };
    assert.equal((await call({ diff_id: layer.diffId })).errorName, 'org.composefs.Oci.InvalidRequest');
    assert.equal((await call({ storage: { storage_path: layer.store.root, layer_id: 'f'.repeat(64) } })).errorName, 'org.composefs.Oci.NoSuchLayer');
    assert.equal((await call({ storage: { storage_path: layer.store.root, layer_id: '../x' } })).errorName, 'org.composefs.Oci.InvalidRequest');
    assert.equal((await call({ storage: { storage_path: path.join(fx.dir, 'nope'), layer_id: layer.layerId } })).errorName, 'org.composefs.Oci.RepoNotFound');
    // The repository service's own GetLayer still wants a handle and a diff_id; the service has no other method.
    try {
      for await (const _ of client.call('org.composefs.Oci.PutLayer', { handle: 0, diff_id: layer.diffId, zerocopy: false }));
      assert.fail('PutLayer answered');
    } catch (e) {
      assert.ok(e instanceof VarlinkError && e.errorName === 'org.varlink.service.MethodNotFound', String(e));
    }
  } finally {
    client.close();
    service.close();
  }
});

/** Why the real rootless test cannot run here, or null. */
function rootlessSkipReason(): string | null {
  if (skip) return skip;
  if (process.getuid?.() !== 0) return 'needs root (to run as an unprivileged user)';
  for (const tool of ['podman', 'newuidmap']) {
    if (spawnSync('sh', ['-c', `command -v ${tool}`]).status !== 0) return `${tool} is not installed (scripts/setup installs it)`;
  }
  return checkoutUnreadableReason(PROJECT_ROOT);
}

/** Subordinate ids for the user (podman unshare maps them), added when it has none. */
function ensureSubordinateIds(user: UnprivUser): void {
  const has = (file: string): boolean => readFileSync(file, 'utf8').split('\n').some((l) => l.startsWith(`${user.name}:`) || l.startsWith(`${user.uid}:`));
  if (has('/etc/subuid') && has('/etc/subgid')) return;
  execFileSync('usermod', ['--add-subuids', '300000-365535', '--add-subgids', '300000-365535', user.name]);
}

test('rootless store: its owner pulls it through the userns helper (podman unshare): every file, same image as root\'s oci: pull', { skip: rootlessSkipReason() ?? false }, async () => {
  const user = await ensureUnprivUser();
  ensureSubordinateIds(user);
  const dir = mkdtempSync(path.join(tmpdir(), 'cfs-rootless-'));
  try {
    openUpDir(dir);
    const home = path.join(dir, 'home');
    mkdirSync(home);
    chownSync(home, user.uid, user.gid);
    const layout = path.join(dir, 'layout');
    await buildOciLayout(layout, { images: [{ tag: 'img', layers: [LAYER] }] });
    execFileSync('chmod', ['-R', 'a+rX', layout]);
    const conf = path.join(home, 'storage.conf');
    writeFileSync(conf, `[storage]\ndriver = "vfs"\ngraphroot = "${home}/storage"\nrunroot = "${home}/run"\n`);
    chownSync(conf, user.uid, user.gid);
    // XDG_RUNTIME_DIR unset: podman then keeps its rootless state under /tmp.
    const env = { HOME: home, CONTAINERS_STORAGE_CONF: conf };
    const copied = await runAsUser(user, ['skopeo', '--insecure-policy', 'copy', '--quiet', `oci:${layout}:img`, 'containers-storage:localhost/rl:latest'], { cwd: dir, env });
    assert.equal(copied.code, 0, copied.stderr);
    const expected = /image ([0-9a-f]{64})/.exec(cfsOk(['--repo', path.join(dir, 'root-repo'), 'oci', 'pull', '-q', `oci:${layout}:img`]).stdout)?.[1];
    assert.ok(expected);

    const pull = (repo: string, ...flags: string[]) =>
      runAsUser(user, [...cfsCommand(), '--repo', path.join(home, repo), 'oci', 'pull', ...flags, 'containers-storage:localhost/rl'], { cwd: PROJECT_ROOT, env });
    const auto = await pull('auto');
    assert.equal(auto.code, 0, auto.stderr);
    assert.match(auto.stdout, new RegExp(`image ${expected}`));
    // usr/tool, usr/acl and etc/rootonly (the user's own, 0600) are linked; the rest is copied from the helper's bytes.
    assert.match(auto.stderr, /objects: 0 reflinked \+ 3 hardlinked \+ 3 copied/);
    const disabled = await pull('disabled', '--local-fetch', 'disabled');
    assert.equal(disabled.code, 0, disabled.stderr);
    assert.match(disabled.stdout, new RegExp(`image ${expected}`));
    for (const repo of ['auto', 'disabled']) {
      const fsck = await runAsUser(user, [...cfsCommand(), '--repo', path.join(home, repo), 'fsck'], { cwd: PROJECT_ROOT, env });
      assert.equal(fsck.code, 0, fsck.stdout + fsck.stderr);
    }
    // Run inside podman unshare itself (no helper then): what only a subordinate id may read is
    // copied, so outside the namespace the repository is still the user's to read.
    const inside = await runAsUser(user, ['podman', 'unshare', ...cfsCommand(), '--repo', path.join(home, 'inside'), 'oci', 'pull', 'containers-storage:localhost/rl'], { cwd: PROJECT_ROOT, env });
    assert.equal(inside.code, 0, inside.stderr);
    assert.match(inside.stdout, new RegExp(`image ${expected}`));
    const outside = await runAsUser(user, [...cfsCommand(), '--repo', path.join(home, 'inside'), 'fsck'], { cwd: PROJECT_ROOT, env });
    assert.equal(outside.code, 0, outside.stdout + outside.stderr);
    // Root of podman unshare's namespace is the user: its default repository is the user's, not the system one.
    const defaults = await runAsUser(user, ['podman', 'unshare', ...cfsCommand(), 'oci', 'images'], { cwd: PROJECT_ROOT, env });
    assert.equal(defaults.code, 0, defaults.stderr);
    assert.match(defaults.stderr, new RegExp(`repository ${home}/\\.var/lib/composefs does not exist`));
    const zerocopy = await pull('zerocopy', '--zerocopy');
    assert.notEqual(zerocopy.code, 0);
    assert.match(zerocopy.stderr, /reaches the consumer as inline data.*you may not read that file of your rootless store.*pull without --zerocopy/);

    // No helper to be had: the files are read as the user, and the error says why the helper did not start.
    const bin = path.join(dir, 'bin');
    mkdirSync(bin);
    writeFileSync(path.join(bin, 'podman'), '#!/bin/sh\necho "podman: simulated failure" >&2\nexit 125\n');
    chmodSync(path.join(bin, 'podman'), 0o755);
    chmodSync(bin, 0o755);
    const without = await runAsUser(user, [...cfsCommand(), '--repo', path.join(home, 'without'), 'oci', 'pull', 'containers-storage:localhost/rl'], {
      cwd: PROJECT_ROOT, env: { ...env, PATH: `${bin}:/usr/local/bin:/usr/bin:/bin` },
    });
    assert.notEqual(without.code, 0);
    assert.match(without.stderr, /permission denied; the store .* is your rootless store.*run cfs inside `podman unshare` \(cannot start the containers-storage helper in the store's user namespace: podman unshare exited with status 125 \(podman: simulated failure\)\)/);
  } finally {
    // podman leaves a pause process per rootless user (holding a copy of the mounts of its
    // time): the test user's go with the test.
    spawnSync('pkill', ['-KILL', '-u', user.name]);
    // The user's rootless storage holds files of subordinate ids: root removes them.
    rmSync(dir, { recursive: true, force: true });
  }
});
