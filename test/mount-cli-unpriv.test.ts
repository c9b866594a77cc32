/**
 * `cfs mount` as an unprivileged user through the real CLI: `--fuse auto` picks FUSE, the
 * mounted tree equals the layers (as far as the image's permissions let that user see),
 * `cfs mounts` lists it and `cfs umount` by the same user unmounts it. Also the user's default
 * repository ($HOME/.var/lib/composefs) and the refusal of `--fuse no`.
 */
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { chmodSync, chownSync, existsSync, mkdirSync, mkdtempSync, readdirSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { buildOciLayout } from './helpers/oci-fixture.js';
import { cfs, runDetached } from './helpers/cli-detached.js';
import { PROJECT_ROOT } from './helpers/cli.js';
import { mountFixtureLayers } from './helpers/mount-fixture.js';
import { compareTree, expectedTree, type ModelNode, type SnapEntry } from './helpers/mount-tree.js';
import { checkoutUnreadableReason, ensureUnprivUser, isRoot, openUpDir, withDevFuseMode, type UnprivUser } from './helpers/unpriv.js';

const SKIP = !isRoot()
  ? 'needs root to run commands as the test user'
  : (() => {
      const why = checkoutUnreadableReason(PROJECT_ROOT);
      return why ? `the test user cannot read the checkout: ${why}` : false;
    })();

let work = '';
let layoutDir = '';
let user: UnprivUser;
let expected: ModelNode;

function userDir(name: string): string {
  const d = path.join(work, name);
  mkdirSync(d, { recursive: true });
  chownSync(d, user.uid, user.gid);
  return d;
}

function isMounted(mp: string): boolean {
  return readFileSync('/proc/self/mountinfo', 'utf8').split('\n').some((l) => l.split(' ')[4] === mp);
}

/** cfs as the test user, with /dev/fuse opened up for libfuse. */
function asUser(args: string[], env: Record<string, string> = {}) {
  return withDevFuseMode(0o666, () => cfs(args, { user, env }));
}

async function snapshotAsUser(dir: string): Promise<Record<string, SnapEntry>> {
  const script = path.join(PROJECT_ROOT, 'test/helpers/mount-tree.ts');
  const r = await runDetached([process.execPath, '--import', 'tsx', script, dir], { user });
  assert.equal(r.status, 0, r.stderr);
  return JSON.parse(r.stdout) as Record<string, SnapEntry>;
}

before(async () => {
  if (SKIP) return;
  user = await ensureUnprivUser();
  work = mkdtempSync(path.join(tmpdir(), 'cfs-mount-unpriv-'));
  openUpDir(work);
  const layers = mountFixtureLayers();
  layoutDir = (await buildOciLayout(path.join(work, 'layout'), { images: [{ tag: 'v1', layers: layers.map((entries) => ({ entries })) }] })).dir;
  expected = expectedTree(layers);
});

after(() => {
  if (SKIP) return;
  for (const l of readFileSync('/proc/self/mountinfo', 'utf8').split('\n').reverse()) {
    const mp = l.split(' ')[4];
    if (mp?.startsWith(`${work}/`)) spawnSync('umount', ['--lazy', mp]);
  }
  rmSync(work, { recursive: true, force: true });
});

test('unprivileged: cfs mount oci:… (auto → FUSE) shows the tree; mounts lists it; cfs umount by the user', { skip: SKIP }, async () => {
  const home = userDir('u1');
  const repo = path.join(home, 'repo');
  const mp = userDir('u1/mnt');
  const r = await asUser(['--repo', repo, 'mount', '-q', `oci:${layoutDir}:v1`, mp]);
  assert.equal(r.status, 0, r.stderr);
  try {
    const line = readFileSync('/proc/self/mountinfo', 'utf8').split('\n').find((l) => l.split(' ')[4] === mp) ?? '';
    assert.match(line, new RegExp(` - fuse\\.cfs cfs:oci:.*user_id=${user.uid}`), 'a FUSE mount owned by the user');
    // What the image's modes deny this user (etc/keep, etc/secret, …) must be denied (EACCES).
    const problems = compareTree(expected, await snapshotAsUser(mp), { asUser: user });
    assert.deepEqual(problems, []);
    const list = await asUser(['mounts', '--json']);
    assert.equal(list.status, 0, list.stderr);
    const rows = (JSON.parse(list.stdout) as { mounts: Array<{ mountpoint: string; kind: string; state: string; repository: string }> }).mounts.filter((m) => m.mountpoint === mp);
    assert.deepEqual(rows.map((m) => [m.kind, m.state, m.repository]), [['fuse', 'active', repo]]);
    // Another (unprivileged) user is told whose mount it is, not fusermount3's table.
    const other = await withDevFuseMode(0o666, () => cfs(['umount', mp], { user: { ...user, uid: 65534, gid: 65534 } }));
    assert.equal(other.status, 1);
    assert.equal(other.stderr, `cfs: ${mp} is a FUSE mount of uid ${user.uid}: only that user or root can unmount it\n`);
  } finally {
    const u = await asUser(['umount', mp]);
    assert.equal(u.status, 0, u.stderr);
  }
  assert.ok(!isMounted(mp), 'unmounted by the user');
});

test('unprivileged: the default user repository under $HOME', { skip: SKIP }, async () => {
  const home = userDir('u2');
  const mp = userDir('u2/mnt');
  const r = await asUser(['mount', '-q', `oci:${layoutDir}:v1`, mp], { HOME: home });
  assert.equal(r.status, 0, r.stderr);
  try {
    assert.ok(existsSync(path.join(home, '.var/lib/composefs/images')), 'user repository created under $HOME');
    const snap = await snapshotAsUser(mp);
    assert.equal(snap['/usr/bin/tool']?.size, 200_000);
  } finally {
    const u = await asUser(['umount', mp], { HOME: home });
    assert.equal(u.status, 0, u.stderr);
  }
  assert.ok(!isMounted(mp));
});

test("unprivileged: a failed FUSE mount leaves no empty log; the first mount (no runtime directory yet) logs its server's errors", { skip: SKIP }, async () => {
  const home = userDir('u5');
  const repo = path.join(home, 'repo');
  const mp = userDir('u5/mnt');
  const env = { XDG_RUNTIME_DIR: userDir('u5/run') };
  const runtime = path.join(env.XDG_RUNTIME_DIR, 'cfs');
  // A /dev/fuse only root may open: fusermount3 fails, after the server opened its log.
  const failed = await withDevFuseMode(0o600, () => cfs(['--repo', repo, 'mount', '-q', `oci:${layoutDir}:v1`, mp], { user, env }));
  assert.notEqual(failed.status, 0);
  assert.match(failed.stderr, /^cfs: .*FUSE mount failed: .*\/dev\/fuse.*$/m);
  assert.deepEqual(readdirSync(runtime).filter((n) => n.endsWith('.log')), [], 'no empty log is left');
  rmSync(runtime, { recursive: true, force: true });
  const r = await asUser(['--repo', repo, 'mount', '-q', `oci:${layoutDir}:v1`, mp], env);
  assert.equal(r.status, 0, r.stderr);
  try {
    const dump = await cfs(['--repo', repo, 'oci', 'dump', `oci:${layoutDir}:v1`], { user, env });
    assert.equal(dump.status, 0, dump.stderr);
    const tool = dump.stdout.split('\n').find((l) => l.startsWith('/usr/bin/hard '));
    const object = / ([0-9a-f]{2}\/[0-9a-f]{62}) /.exec(tool ?? '')?.[1];
    assert.ok(object, `an object for /usr/bin/hard in:\n${dump.stdout}`);
    chmodSync(path.join(repo, 'objects', object), 0);
    const cat = await runDetached(['cat', path.join(mp, 'usr/bin/hard')], { user });
    assert.notEqual(cat.status, 0);
    const logs = readdirSync(runtime).filter((n) => n.endsWith('.log'));
    assert.equal(logs.length, 1, `one server log in ${runtime}`);
    assert.match(readFileSync(path.join(runtime, logs[0]!), 'utf8'), /permission denied|EACCES/i);
  } finally {
    const u = await asUser(['umount', mp], env);
    assert.equal(u.status, 0, u.stderr);
  }
});

test('unprivileged: --fuse no is refused with one clear line; nothing mounted', { skip: SKIP }, async () => {
  const home = userDir('u3');
  const mp = userDir('u3/mnt');
  const r = await asUser(['--repo', path.join(home, 'repo'), 'mount', '--fuse', 'no', `oci:${layoutDir}:v1`, mp]);
  assert.notEqual(r.status, 0);
  assert.match(r.stderr, /^cfs: kernel mount \(--fuse no\) needs CAP_SYS_ADMIN.*\n$/);
  assert.ok(!isMounted(mp));
  // Unmounting what is not mounted is an error too, not a crash.
  const u = await asUser(['umount', mp]);
  assert.notEqual(u.status, 0);
  assert.match(u.stderr, /^cfs: .*not a mount point\n$/);
});
