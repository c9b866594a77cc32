/**
 * What a user types and reads: image ids as other commands print them, relative `oci:` paths,
 * the repository's hash for compute-id, mkcomposefs's C options, and one-line errors for
 * mistakes (options that cannot apply, a bad FUSE server choice, a missing file).
 */
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { execFileSync, spawnSync } from 'node:child_process';
import { existsSync, mkdirSync, mkdtempSync, readlinkSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { buildOciLayout } from './helpers/oci-fixture.js';
import { cfsCommand, cfsOk, runCfs } from './helpers/cli.js';
import { cfs } from './helpers/cli-detached.js';
import { isRoot } from './helpers/unpriv.js';

const ROOT = isRoot() ? false : 'needs root (kernel mounts, device nodes)';
let work = '';
let repo = '';
let imageId = '';
const layoutName = 'layout';

before(async () => {
  work = mkdtempSync(path.join(tmpdir(), 'cfs-ux-'));
  repo = path.join(work, 'repo');
  await buildOciLayout(path.join(work, layoutName), { images: [{ tag: 'v1', layers: [[{ path: 'usr/' }, { path: 'etc/' }, { path: 'etc/hostname', content: 'ux\n' }]] }] });
  // A relative oci: path, pulled from the layout's parent directory.
  const r = cfsOk(['--repo', repo, '--insecure', 'oci', 'pull', '-q', `oci:${layoutName}:v1`], { cwd: work });
  imageId = /^image ([0-9a-f]{64})$/m.exec(r.stdout)![1]!;
  assert.match(r.stdout, new RegExp(`^tagged oci:${path.join(work, layoutName).replace(/[/.]/g, '\\$&')}:v1$`, 'm'), 'the tag records the absolute path');
});

after(() => {
  for (const mp of ['by-sha', 'by-prefix', 'elsewhere', 'by-manifest']) runCfs(['umount', path.join(work, mp)]);
  rmSync(work, { recursive: true, force: true });
});

test('cfs mount takes an image id as create-image prints it (sha256:HEX) and a unique prefix; an unknown one is said so', { skip: ROOT }, () => {
  for (const [dir, source] of [['by-sha', `sha256:${imageId}`], ['by-prefix', imageId.slice(0, 12)]] as const) {
    const mp = path.join(work, dir);
    mkdirSync(mp);
    cfsOk(['--repo', repo, 'mount', source, mp]);
    assert.equal(execFileSync('cat', [path.join(mp, 'etc/hostname')], { encoding: 'utf8' }), 'ux\n');
    cfsOk(['umount', mp]);
  }
  const r = runCfs(['--repo', repo, 'mount', 'abcdef0', path.join(work, 'by-sha')]);
  assert.match(r.stderr, /^cfs: image 'abcdef0' not found in repository/);
  // A ref named in hex is found by its name before any id starting with those digits.
  const tree = path.join(work, 'hex-ref-tree');
  mkdirSync(path.join(tree, 'usr'), { recursive: true });
  writeFileSync(path.join(tree, 'usr/from-ref'), 'ref\n');
  cfsOk(['--repo', repo, 'create-image', tree, imageId.slice(0, 8)]);
  const mp = path.join(work, 'by-sha');
  cfsOk(['--repo', repo, 'mount', imageId.slice(0, 8), mp]);
  try {
    assert.equal(execFileSync('cat', [path.join(mp, 'usr/from-ref')], { encoding: 'utf8' }), 'ref\n');
  } finally {
    cfsOk(['umount', mp]);
  }
});

test('oci inspect, tag and dump take the short ids cfs oci images shows (manifest digest or image id); an ambiguous or unknown one is said so', () => {
  const listed = cfsOk(['--repo', repo, 'oci', 'images']).stdout.split('\n')[1]!.split(/\s+/);
  const [, shortManifest, shortImage] = listed;
  assert.match(shortManifest!, /^[0-9a-f]{12}$/);
  assert.equal(shortImage, imageId.slice(0, 12));
  const full = (JSON.parse(cfsOk(['--repo', repo, 'oci', 'inspect', shortManifest!]).stdout) as { manifestDigest: string; imageId: string });
  assert.ok(full.manifestDigest.startsWith(`sha256:${shortManifest}`));
  assert.equal(full.imageId, imageId);
  assert.equal((JSON.parse(cfsOk(['--repo', repo, 'oci', 'inspect', shortImage!]).stdout) as { manifestDigest: string }).manifestDigest, full.manifestDigest);
  assert.equal((JSON.parse(cfsOk(['--repo', repo, 'oci', 'inspect', `sha256:${shortManifest!.slice(0, 6)}`]).stdout) as { manifestDigest: string }).manifestDigest, full.manifestDigest);
  // A bare full manifest digest, as other tools print it, is a (long) short id.
  assert.match(cfsOk(['--repo', repo, 'oci', 'tag', full.manifestDigest.slice(7), 'by-bare-hex']).stdout, /^Tagged sha256:/);
  assert.match(cfsOk(['--repo', repo, 'oci', 'tag', shortImage!, 'by-short']).stdout, new RegExp(`^Tagged ${full.manifestDigest} as by-short\n$`));
  assert.match(cfsOk(['--repo', repo, 'oci', 'dump', shortManifest!]).stdout, /^\/etc\/hostname 3 /m);
  cfsOk(['--repo', repo, 'oci', 'untag', 'by-short']);
  cfsOk(['--repo', repo, 'oci', 'untag', 'by-bare-hex']);
  const unknown = runCfs(['--repo', repo, 'oci', 'inspect', 'abcdef0123']);
  assert.equal(unknown.status, 1);
  assert.match(unknown.stderr, /^cfs: image 'abcdef0123' not found in repository \S+ \(not a tag, manifest digest or image id; see 'cfs oci images'\)\n$/);
  // Too short to be an id: a tag name only.
  assert.match(runCfs(['--repo', repo, 'oci', 'inspect', shortManifest!.slice(0, 5)]).stderr, /not found/);
});

test('oci pull --json prints the result as one JSON document on stdout; moving a tag to another image is said', async () => {
  const r = cfsOk(['--repo', repo, 'oci', 'pull', '--json', `oci:${path.join(work, layoutName)}:v1`, 'json-tag']);
  const j = JSON.parse(r.stdout) as Record<string, unknown>;
  assert.deepEqual(Object.keys(j).sort(), ['configDigest', 'imageId', 'layersImported', 'layersSkipped', 'manifestDigest', 'objects', 'replacedManifest', 'tag']);
  assert.equal(j.imageId, imageId);
  assert.equal(j.tag, 'json-tag');
  assert.equal(j.layersSkipped, 1);
  assert.doesNotMatch(r.stderr, /^objects:/m, 'the object counts are in the JSON');
  assert.equal(j.replacedManifest, null);
  // Pulling another image under the tag says so, whatever -q.
  const other = path.join(work, 'other-layout');
  await buildOciLayout(other, { images: [{ tag: 'v2', layers: [[{ path: 'usr/' }, { path: 'usr/two', content: 'two\n' }]] }] });
  const moved = cfsOk(['--repo', repo, 'oci', 'pull', '-q', '--json', `oci:${other}:v2`, 'json-tag']);
  assert.equal((JSON.parse(moved.stdout) as { replacedManifest: string }).replacedManifest, j.manifestDigest);
  assert.match(moved.stderr, new RegExp(`^cfs: note: tag 'json-tag' moved from ${String(j.manifestDigest).slice(0, 19)}… to sha256:[0-9a-f]{12}… \\(the earlier image stays until gc while untagged, and while mounted\\)\n$`));
  cfsOk(['--repo', repo, 'oci', 'untag', 'json-tag']);
});

test('cfs mount takes a manifest digest (sha256:… or @sha256:…) and its short id too, as the oci commands do', { skip: ROOT }, () => {
  const manifest = (JSON.parse(cfsOk(['--repo', repo, 'oci', 'inspect', imageId.slice(0, 12)]).stdout) as { manifestDigest: string }).manifestDigest;
  const mp = path.join(work, 'by-manifest');
  mkdirSync(mp, { recursive: true });
  for (const source of [manifest, `@${manifest}`, manifest.slice(7, 19)]) {
    cfsOk(['--repo', repo, 'mount', source, mp]);
    try {
      assert.equal(execFileSync('cat', [path.join(mp, 'etc/hostname')], { encoding: 'utf8' }), 'ux\n', source);
    } finally {
      cfsOk(['umount', mp]);
    }
  }
});

test('tag names: control characters, a leading @ and over-long names are refused before anything is imported; tags with colons pull as skopeo names them', async () => {
  const empty = path.join(work, 'no-import-repo');
  for (const [name, why] of [['evil\nname', /control characters are not allowed/], ['@bad', /reserved for digests/], ['x'.repeat(300), /longer than 255 bytes/]] as const) {
    const r = runCfs(['--repo', empty, '--insecure', 'oci', 'pull', '-q', `oci:${path.join(work, layoutName)}:v1`, name]);
    assert.equal(r.status, 1);
    assert.match(r.stderr, why);
    assert.match(r.stderr, /^cfs: invalid image name .*\n$/);
    assert.equal(existsSync(path.join(empty, 'objects')) ? execFileSync('find', [path.join(empty, 'objects'), '-type', 'f'], { encoding: 'utf8' }) : '', '', 'nothing imported');
    assert.match(runCfs(['--repo', repo, 'oci', 'tag', imageId.slice(0, 12), name]).stderr, why);
  }
  const colons = path.join(work, 'colons');
  await buildOciLayout(colons, { images: [{ tag: 'docker.io/library/foo:1.0', layers: [[{ path: 'usr/' }]] }] });
  const r = cfsOk(['--repo', repo, 'oci', 'pull', '-q', `oci:${colons}:docker.io/library/foo:1.0`]);
  assert.match(r.stdout, new RegExp(`^tagged oci:${colons.replace(/[/.]/g, '\\$&')}:docker\\.io/library/foo:1\\.0$`, 'm'));
});

test('oci images: damaged images are listed (JSON error field, ARCH damaged), -q short ids, -n no header, variants, nothing on stdout when empty', async () => {
  const r2 = path.join(work, 'images-repo');
  const arm = path.join(work, 'arm-layout');
  await buildOciLayout(arm, { images: [{ tag: 'v7', platform: 'linux/arm/v7', layers: [[{ path: 'usr/' }, { path: 'usr/arm', content: 'arm\n' }]] }] });
  cfsOk(['--repo', r2, '--insecure', 'init']);
  const empty = cfsOk(['--repo', r2, 'oci', 'images']);
  assert.deepEqual([empty.stdout, empty.stderr], ['', 'No images found\n']);
  cfsOk(['--repo', r2, 'oci', 'pull', '-q', `oci:${path.join(work, layoutName)}:v1`, 'good']);
  const armPull = cfsOk(['--repo', r2, 'oci', 'pull', '-q', '--platform', 'linux/arm/v7', `oci:${arm}:v7`, 'arm']);
  const armManifest = /^manifest (sha256:[0-9a-f]+)$/m.exec(armPull.stdout)![1]!;
  const table = cfsOk(['--repo', r2, 'oci', 'images']).stdout;
  assert.match(table, /^arm +[0-9a-f]{12} +[0-9a-f]{12} +arm\/v7 +1$/m);
  assert.equal(cfsOk(['--repo', r2, 'oci', 'images', '-n']).stdout, table.split('\n').slice(1).join('\n'));
  assert.equal(cfsOk(['--repo', r2, 'oci', 'images', '-q']).stdout.split('\n').filter(Boolean).length, 2);
  // Damage the arm image: its manifest stream's object goes.
  const link = path.join(r2, 'streams', `oci-manifest-${armManifest}`);
  rmSync(path.resolve(path.dirname(link), readlinkSync(link)));
  const damaged = cfsOk(['--repo', r2, 'oci', 'images', '--json']);
  type Row = { name: string; error?: string; variant: string | null };
  const rows = (JSON.parse(damaged.stdout) as { images: Row[] }).images;
  assert.deepEqual(rows.map((r) => [r.name, r.error !== undefined]), [['arm', true], ['good', false]]);
  assert.match(damaged.stderr, /^cfs: warning: image arm: .* \(see 'cfs fsck'\)$/m);
  assert.match(cfsOk(['--repo', r2, 'oci', 'images']).stdout, /^arm +[0-9a-f]{12} +- +damaged +-$/m);
});

test('the same relative oci: path in another directory is another image: not mounted from the earlier import', { skip: ROOT }, () => {
  const elsewhere = path.join(work, 'elsewhere');
  mkdirSync(elsewhere);
  const r = runCfs(['--repo', repo, 'mount', `oci:${layoutName}:v1`, elsewhere], { cwd: elsewhere });
  assert.equal(r.status, 1);
  assert.match(r.stderr, /^cfs: .*layout.*no such directory\n$/);
});

test('mount options that cannot apply and an unknown FUSE server are one-line errors', { skip: ROOT }, async () => {
  const mp = path.join(work, 'by-sha');
  const fg = runCfs(['--repo', repo, 'mount', '--foreground', imageId, mp]);
  assert.match(fg.stderr, /^cfs: --foreground keeps a FUSE server attached; a kernel mount has none \(add --fuse yes\)\n$/);
  const bogus = await cfs(['--repo', repo, 'mount', '--fuse', 'yes', imageId, mp], { env: { CFS_FUSE_SERVER: 'bogus' } });
  assert.notEqual(bogus.status, 0);
  assert.match(bogus.stderr, /CFS_FUSE_SERVER=bogus: unknown FUSE server \(fuse-ll, the default, or fuse-native\)/);
});

test('compute-id hashes with the selected repository\'s algorithm; a conflicting --hash is an error', () => {
  const tree = path.join(work, 'tree');
  mkdirSync(path.join(tree, 'usr'), { recursive: true });
  writeFileSync(path.join(tree, 'usr/file'), 'x'.repeat(100));
  const r512 = path.join(work, 'r512');
  cfsOk(['init', '--insecure', '--hash', 'sha512', r512]);
  assert.match(cfsOk(['--repo', r512, 'compute-id', tree]).stdout, /^[0-9a-f]{128}\n$/);
  assert.match(cfsOk(['--repo', path.join(work, 'none'), 'compute-id', tree]).stdout, /^[0-9a-f]{64}\n$/);
  assert.match(runCfs(['--repo', r512, 'compute-id', '--hash', 'sha256', tree]).stderr, /repository is configured for fsverity-sha512-12 \(from meta.json\) but --hash sha256 was specified/);
});

test('mkcomposefs: --skip-devices leaves out device nodes; an empty version range is refused', { skip: ROOT }, () => {
  const src = path.join(work, 'devs');
  mkdirSync(src);
  writeFileSync(path.join(src, 'file'), 'f');
  execFileSync('mknod', [path.join(src, 'null'), 'c', '1', '3']);
  const img = path.join(work, 'devs.img');
  cfsOk(['mkcomposefs', '--skip-devices', src, img]);
  const dump = cfsOk(['info', 'dump', img]).stdout;
  assert.match(dump, /^\/file /m);
  assert.doesNotMatch(dump, /^\/null /m);
  assert.match(runCfs(['mkcomposefs', '--min-version', '1', '--max-version', '0', src, img]).stderr, /^cfs: --min-version 1 is above --max-version 0\n$/);
});

test('C tool options: mkcomposefs --threads and its output errors, composefs-info --filter, measure-file and a missing --basedir', () => {
  const src = path.join(work, 'c-opts');
  mkdirSync(path.join(src, 'a'), { recursive: true });
  mkdirSync(path.join(src, 'b'));
  writeFileSync(path.join(src, 'a/x'), 'x'.repeat(100));
  const img = path.join(work, 'c-opts.img');
  cfsOk(['mkcomposefs', '--threads=2', src, img]);
  assert.match(runCfs(['mkcomposefs', '--threads=0', src, img]).stderr, /^cfs: --threads 0: invalid threads count\n$/);
  const noDir = path.join(work, 'no-dir', 'x.img');
  assert.equal(runCfs(['mkcomposefs', src, noDir]).stderr, `cfs: ${noDir}: cannot write the image: directory ${path.dirname(noDir)} does not exist\n`);
  assert.equal(cfsOk(['info', 'ls', '--filter', 'a', img]).stdout, '/a/\t\n/a/x\t@ ' + cfsOk(['info', 'objects', img]).stdout.trim() + '\n');
  assert.match(runCfs(['info', 'missing-objects', '--basedir', path.join(work, 'no-basedir'), img]).stderr, /^cfs: can't open basedir .*no-basedir: not a directory\n$/);
  // As C mkcomposefs: no binary image onto a terminal (script(1) gives the command one).
  const onTty = spawnSync('script', ['-qec', [...cfsCommand(), 'mkcomposefs', src, '-'].map((a) => `'${a}'`).join(' '), '/dev/null'], { encoding: 'utf8' });
  assert.notEqual(onTty.status, 0);
  assert.match(onTty.stdout, /stdout is a tty: refusing to write the image to it/);
  // No fs-verity on this kernel's filesystems (CI): the reason is said, naming the file.
  const m = runCfs(['info', 'measure-file', img]);
  if (m.status === 0) assert.match(m.stdout, /^[0-9a-f]{64}\n$/);
  else assert.match(m.stderr, new RegExp(`^cfs: ${img.replace(/[/.]/g, '\\$&')}: fs-verity`));
});

test('a pull or mount that fails at its source, or names no image, leaves no new repository behind', { skip: ROOT }, () => {
  const fresh = path.join(work, 'never-created');
  const mp = path.join(work, 'by-sha');
  for (const args of [['oci', 'pull', `oci:${path.join(work, 'no-layout')}:v1`], ['oci', 'pull', `oci:${path.join(work, layoutName)}:no-tag`], ['mount', `oci:${path.join(work, 'no-layout')}:v1`, mp], ['mount', 'some-name', mp]]) {
    const r = runCfs(['--repo', fresh, ...args]);
    assert.equal(r.status, 1, r.stderr);
    assert.match(r.stderr, /^cfs: .*(no such directory|tag "no-tag" not found|does not exist)/);
    assert.ok(!existsSync(fresh), `${args.join(' ')} created the repository`);
  }
});

test('an image without /usr (a scratch image) is imported; its root keeps its own metadata, /run is still emptied', async () => {
  const layout = path.join(work, 'no-usr');
  await buildOciLayout(layout, { images: [{ tag: 'x', layers: [[{ path: './', mode: 0o750, mtime: 1_650_000_000 }, { path: 'hello', mode: 0o755, content: 'static binary' }, { path: 'run/' }, { path: 'run/x', content: 'gone' }]] }] });
  const r = runCfs(['--repo', repo, 'oci', 'pull', '-q', `oci:${layout}:x`, 'scratch']);
  assert.equal(r.status, 0, r.stderr);
  const dump = cfsOk(['--repo', repo, 'oci', 'dump', 'scratch']).stdout;
  assert.match(dump, /^\/ 0 40750 3 0 0 0 1650000000\.0 - - -$/m);
  assert.match(dump, /^\/hello 13 100755 1 0 0 0 /m);
  assert.match(dump, /^\/run 0 40755 2 /m);
  assert.doesNotMatch(dump, /^\/run\/x/m);
  // The ID the dump gives through mkcomposefs, as for every image.
  const id = /^image ([0-9a-f]{64})$/m.exec(r.stdout)![1];
  assert.equal(cfsOk(['--repo', repo, 'oci', 'compute-id', 'scratch']).stdout.trim(), id);
});

test('root of a user namespace (podman unshare, unshare -r) keeps its records where its owner does, not in /run/cfs', { skip: ROOT }, () => {
  const script = `import(${JSON.stringify(path.join(import.meta.dirname, '../src/runtime-dir.js'))}).then((m) => console.log(m.runtimeDir()))`;
  const env = { ...process.env };
  delete env['XDG_RUNTIME_DIR'];
  assert.equal(execFileSync(process.execPath, ['-e', script], { env, encoding: 'utf8' }).trim(), '/run/cfs');
  assert.equal(execFileSync('unshare', ['-Ur', process.execPath, '-e', script], { env, encoding: 'utf8' }).trim(), path.join(tmpdir(), 'cfs-0'));
  assert.equal(execFileSync('unshare', ['-Ur', process.execPath, '-e', script], { env: { ...env, XDG_RUNTIME_DIR: '/run/user/1234' }, encoding: 'utf8' }).trim(), '/run/user/1234/cfs');
});

test('fsck of a name that is not a tag is a one-line error, not a damage report', () => {
  const r = runCfs(['--repo', repo, 'fsck', '--json', 'no-such-tag']);
  assert.equal(r.status, 1);
  assert.equal(r.stdout, '');
  assert.match(r.stderr, /^cfs: image 'no-such-tag' is not tagged in repository \S+ \(fsck IMAGE takes a tag; see 'cfs oci images'\)\n$/);
});

test('a missing file is named with the reason, not as Node words it', () => {
  const missing = path.join(work, 'no-such.img');
  assert.equal(runCfs(['info', 'dump', missing]).stderr, `cfs: ${missing}: no such file or directory\n`);
});
