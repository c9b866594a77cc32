import assert from 'node:assert/strict';
import { mkdir, mkdtemp, readFile, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before, test } from 'node:test';
import { gzipSync } from 'node:zlib';
import { execFileSync } from 'node:child_process';
import { isCfsError, type CfsErrorCode } from '../src/errors.js';
import { OciArchive } from '../src/oci/archive.js';
import { openOciSource, resolveImage, type ResolvedImage } from '../src/oci/image.js';
import { OciLayout } from '../src/oci/layout.js';
import { MT } from '../src/oci/media-types.js';
import { formatPlatform, hostPlatform } from '../src/oci/platform.js';
import type { OciRead } from '../src/oci/source.js';
import { buildOciArchive, buildOciLayout, type ImageSpec, type LayoutSpec } from './helpers/oci-fixture.js';

let tmp: string;
let n = 0;
before(async () => {
  tmp = await mkdtemp(join(tmpdir(), 'cfs-oci-image-'));
});
after(async () => {
  await rm(tmp, { recursive: true, force: true });
});

const HOST = formatPlatform(hostPlatform());
const FOREIGN = hostPlatform().architecture === 'amd64' ? 'linux/arm64' : 'linux/amd64';

function img(tag: string | null, extra: Partial<ImageSpec> = {}): ImageSpec {
  return {
    tag,
    layers: [[{ path: 'usr/' }, { path: 'usr/hello', content: `hello from ${tag}` }], [{ path: 'etc/os-release', content: 'ID=test\n' }]],
    ...extra,
  };
}

async function layout(spec: LayoutSpec) {
  const dir = join(tmp, `layout-${n++}`);
  return buildOciLayout(dir, spec);
}

async function withSource<T>(src: OciRead, f: (s: OciRead) => Promise<T>): Promise<T> {
  try {
    return await f(src);
  } finally {
    await src.close();
  }
}

async function resolveIn(dir: string, tag: string | null, platform?: string): Promise<ResolvedImage> {
  return withSource(await OciLayout.open(dir), (s) => resolveImage(s, tag, platform ? { platform } : {}));
}

async function rejects(p: Promise<unknown>, code: CfsErrorCode, msg: RegExp): Promise<void> {
  await assert.rejects(p, (e) => {
    assert.ok(isCfsError(e), `not a CfsError: ${String(e)}`);
    assert.equal(e.code, code, e.message);
    assert.match(e.message, msg);
    return true;
  });
}

test('resolveImage: tagged images in a layout, diff_ids and layers from the manifest', async () => {
  const l = await layout({ images: [img('one', { platform: HOST }), img('two', { platform: HOST, compression: 'zstd' })] });
  for (const [i, tag] of ['one', 'two'].entries()) {
    const r = await resolveIn(l.dir, tag);
    const b = l.images[i]!;
    assert.equal(r.manifestDigest, b.manifestDigest);
    assert.deepEqual(r.manifestBytes, b.manifestBytes);
    assert.equal(r.configDigest, b.configDigest);
    assert.deepEqual(r.configBytes, b.configBytes);
    assert.deepEqual(r.diffIds, b.layers.map((x) => x.diffId));
    assert.deepEqual(r.layers.map((x) => [x.digest, x.size, x.mediaType]), b.layers.map((x) => [x.digest, x.size, x.mediaType]));
    assert.equal(r.artifact, false);
    assert.equal(r.config.os, 'linux');
  }
});

test('resolveImage: layout and oci-archive give the same result (tar-stream, ./ names, GNU tar)', async () => {
  const l = await layout({ images: [img('a', { platform: HOST }), img('b')] });
  const want = await resolveIn(l.dir, 'b');
  const archives: Array<[string, Parameters<typeof buildOciArchive>[2]]> = [
    ['plain.tar', {}],
    ['dotslash.tar', { dotSlash: true, extraMembers: [{ name: `docs/${'x'.repeat(150)}/README`, content: 'long name via PAX' }] }],
    ['gnu.tar', { tool: 'gnu-tar' }],
  ];
  for (const [name, opts] of archives) {
    const path = join(tmp, `${n++}-${name}`);
    await buildOciArchive(l.dir, path, opts);
    const got = await withSource(await openOciSource({ transport: 'oci-archive', path }), (s) => resolveImage(s, 'b'));
    assert.deepEqual(got, want, name);
  }
});

test('oci-archive: GNU long names are indexed', async () => {
  const l = await layout({ images: [img('a')] });
  const long = `${'d'.repeat(120)}/${'f'.repeat(110)}`;
  await mkdir(join(l.dir, 'd'.repeat(120)));
  await writeFile(join(l.dir, long), 'x');
  const path = join(tmp, `${n++}-gnu-long.tar`);
  await buildOciArchive(l.dir, path, { tool: 'gnu-tar' });
  const a = await OciArchive.open(path);
  try {
    assert.ok(a.memberNames().includes(long));
    assert.ok(a.memberNames().includes('index.json'));
    await resolveImage(a, 'a');
  } finally {
    await a.close();
  }
});

test('oci-archive: truncated in the middle of a blob names the archive and member', async () => {
  const l = await layout({ images: [img('a')] });
  const blob = `blobs/sha256/${l.images[0]!.layers[0]!.digest.slice(7)}`;
  const path = join(tmp, `${n++}-trunc.tar`);
  await buildOciArchive(l.dir, path, { truncateMember: blob });
  await rejects(OciArchive.open(path), 'EIO', new RegExp(`oci archive ${path}: member ${blob} is truncated`));
});

test('oci-archive: bad inputs', async () => {
  const l = await layout({ images: [img('a')] });
  const plain = join(tmp, `${n++}.tar`);
  await buildOciArchive(l.dir, plain);
  const gz = join(tmp, `${n++}.tar.gz`);
  await writeFile(gz, gzipSync(await readFile(plain)));
  await rejects(OciArchive.open(gz), 'ENOTSUP', /compressed archives are not supported/);
  await rejects(OciArchive.open(join(tmp, 'nope.tar')), 'ENOENT', /nope\.tar: no such file/);
  const junk = join(tmp, `${n++}-junk.tar`);
  await writeFile(junk, Buffer.alloc(1024, 0x41));
  await rejects(OciArchive.open(junk), 'ECORRUPT', /bad tar header checksum at offset 0/);
  // The other transport's input: each says which transport reads it.
  await rejects(OciArchive.open(l.dir), 'EINVAL', new RegExp(`a directory, not an archive \\(an OCI layout directory is read with oci:${l.dir}\\)`));
  await rejects(OciLayout.open(plain), 'EINVAL', new RegExp(`a file, not a directory \\(an OCI archive is read with oci-archive:${plain}\\)`));
  // A FIFO is refused, not waited on; as a blob too.
  const fifo = join(tmp, `${n++}.fifo`);
  execFileSync('mkfifo', [fifo]);
  await rejects(OciArchive.open(fifo), 'EINVAL', /not a regular file/);
  const manifest = join(l.dir, 'blobs/sha256', l.images[0]!.manifestDigest.slice(7));
  await rm(manifest);
  execFileSync('mkfifo', [manifest]);
  await rejects(resolveIn(l.dir, 'a'), 'ECORRUPT', /blob sha256:[0-9a-f]{64} is not a regular file/);
  // A layout under a directory of the archive; an archive cut short at a member boundary.
  const other = await layout({ images: [img('a')] });
  const nested = join(tmp, `${n++}-nested.tar`);
  execFileSync('tar', ['-cf', nested, '-C', join(other.dir, '..'), other.dir.split('/').pop()!]);
  await rejects(OciArchive.open(nested), 'ECORRUPT', /no oci-layout member; the layout is under [^ ]+\/ in the archive, it must be at the top/);
  const cut = join(tmp, `${n++}-cut.tar`);
  await buildOciArchive(other.dir, cut);
  const whole = await readFile(cut);
  await writeFile(cut, whole.subarray(0, 1024)); // the first member, nothing after it
  await rejects(OciArchive.open(cut), 'ECORRUPT', /no oci-layout member; the archive has no end-of-archive marker: it may be truncated/);
});

test('platform selection: manifest list with two platforms, --platform override, no match', async () => {
  const l = await layout({
    images: [img('x', { platform: FOREIGN }), img('x', { platform: HOST })],
    index: 'manifest-list',
    indexTag: 'multi',
  });
  const host = await resolveIn(l.dir, 'multi');
  assert.equal(host.manifestDigest, l.images[1]!.manifestDigest);
  const foreign = await resolveIn(l.dir, 'multi', FOREIGN);
  assert.equal(foreign.manifestDigest, l.images[0]!.manifestDigest);
  await rejects(resolveIn(l.dir, 'multi', 'linux/s390x'), 'EPLATFORM', new RegExp(`no manifest for platform linux/s390x; available: ${FOREIGN}.*, ${HOST}`));
  // Untagged: index.json's only entry.
  assert.equal((await resolveIn(l.dir, null)).manifestDigest, host.manifestDigest);
});

test('platform selection: variants (arm64 defaults to v8, arm to v7)', async () => {
  const l = await layout({
    images: [img(null, { platform: 'linux/arm/v6' }), img(null, { platform: 'linux/arm' }), img(null, { platform: 'linux/arm64/v8' })],
    index: 'manifest-list',
    indexTag: 't',
  });
  assert.equal((await resolveIn(l.dir, 't', 'linux/arm/v6')).manifestDigest, l.images[0]!.manifestDigest);
  assert.equal((await resolveIn(l.dir, 't', 'linux/arm/v7')).manifestDigest, l.images[1]!.manifestDigest);
  assert.equal((await resolveIn(l.dir, 't', 'linux/arm64')).manifestDigest, l.images[2]!.manifestDigest);
  await rejects(resolveIn(l.dir, 't', 'linux/arm/v5'), 'EPLATFORM', /available: linux\/arm\/v6, linux\/arm, linux\/arm64\/v8/);
  await rejects(resolveIn(l.dir, 't', 'linux'), 'EINVAL', /expected os\/arch/);
});

test('platform selection: platform from the config when the descriptor has none', async () => {
  const l = await layout({ images: [img('f', { platform: FOREIGN, platformInDescriptor: false })] });
  // The only image is taken whatever its platform (as skopeo does), and says which it is; asked
  // for another platform, it is refused.
  const only = await resolveIn(l.dir, 'f');
  assert.equal(only.manifestDigest, l.images[0]!.manifestDigest);
  assert.equal(only.otherPlatform, FOREIGN);
  await rejects(resolveIn(l.dir, 'f', HOST), 'EPLATFORM', new RegExp(`no manifest for platform ${HOST}; available: ${FOREIGN}`));
  const asked = await resolveIn(l.dir, 'f', FOREIGN);
  assert.equal(asked.manifestDigest, l.images[0]!.manifestDigest);
  assert.equal(asked.otherPlatform, null);
});

test('platform selection: a single image without platform info is accepted; two are not', async () => {
  const one = await layout({ images: [img('only')] });
  assert.equal((await resolveIn(one.dir, 'only', 'linux/s390x')).manifestDigest, one.images[0]!.manifestDigest);
  assert.equal((await resolveIn(one.dir, null)).manifestDigest, one.images[0]!.manifestDigest);
  const two = await layout({ images: [img(null), img(null, { layers: [] })], index: 'manifest-list', indexTag: 'x' });
  await rejects(resolveIn(two.dir, 'x'), 'EPLATFORM', /available: \(no platform info\)/);
});

test('untagged lookup: several tagged images need a tag; untagged per-platform manifests are selected', async () => {
  const tagged = await layout({ images: [img('a'), img('b')] });
  await rejects(resolveIn(tagged.dir, null), 'EINVAL', /holds 2 images; name one with :TAG; available tags: "a", "b"/);
  const flat = await layout({ images: [img(null, { platform: FOREIGN }), img(null, { platform: HOST })] });
  assert.equal((await resolveIn(flat.dir, null)).manifestDigest, flat.images[1]!.manifestDigest);
  // Two untagged images for one platform: nothing says which one (skopeo refuses too).
  const same = await layout({ images: [img(null, { platform: HOST }), img(null, { platform: HOST, layers: [] })] });
  await rejects(resolveIn(same.dir, null), 'EINVAL', new RegExp(`holds 2 untagged images for platform ${HOST} \\(sha256:[0-9a-f]{12}, sha256:[0-9a-f]{12}\\); cannot tell which to import`));
});

test('Docker v2 schema 2 media types are treated as OCI', async () => {
  const l = await layout({
    images: [img('x', { platform: FOREIGN, mediaTypes: 'docker' }), img('x', { platform: HOST, mediaTypes: 'docker' })],
    index: 'manifest-list',
    indexTag: 'd',
  });
  const r = await resolveIn(l.dir, 'd');
  assert.equal(r.manifestDigest, l.images[1]!.manifestDigest);
  assert.equal(r.manifest.mediaType, MT.dockerManifest);
  assert.equal(r.layers[0]!.mediaType, MT.dockerLayerGzip);
  assert.equal(r.artifact, false);
  assert.deepEqual(r.diffIds, l.images[1]!.layers.map((x) => x.diffId));
});

test('artifacts: non-image config, diffIds are the layer digests', async () => {
  const l = await layout({
    images: [{ tag: 'art', layers: [{ blob: Buffer.from('{"x":1}'), mediaType: 'application/vnd.example+json' }], artifact: { artifactType: 'application/vnd.example' } }],
  });
  const r = await resolveIn(l.dir, 'art');
  assert.equal(r.artifact, true);
  assert.deepEqual(r.diffIds, [l.images[0]!.layers[0]!.digest]);
  assert.deepEqual(r.config, {});
});

test('resolveImage errors: unknown tag, corrupt index.json, missing or corrupt blobs, bad layout', async () => {
  const l = await layout({ images: [img('a'), img('b')] });
  await rejects(resolveIn(l.dir, 'zz'), 'ENOENT', /tag "zz" not found; available tags: "a", "b"/);

  const corrupt = await layout({ images: [img('a')], corruptIndexJson: true });
  await rejects(resolveIn(corrupt.dir, 'a'), 'ECORRUPT', new RegExp(`oci layout ${corrupt.dir}: index.json: invalid JSON`));

  const noConfig = await layout({ images: [img('a', { bad: { missingConfig: true } })] });
  const cfg = noConfig.images[0]!.configDigest;
  await rejects(resolveIn(noConfig.dir, 'a'), 'ENOENT', new RegExp(`blob ${cfg} not found`));

  const badManifest = await layout({ images: [img('a', { bad: { corruptManifest: true } })] });
  await rejects(resolveIn(badManifest.dir, 'a'), 'EDIGEST', new RegExp(`manifest ${badManifest.images[0]!.manifestDigest}: content digest is sha256:`));

  const wrongDiffIdCount = await layout({ images: [img('a', { config: { rootfs: { type: 'layers', diff_ids: [] } } })] });
  await rejects(resolveIn(wrongDiffIdCount.dir, 'a'), 'ECORRUPT', /lists 0 diff_ids but manifest .* has 2 layers/);

  await rejects(OciLayout.open(join(tmp, 'missing-dir')), 'ENOENT', /no such directory/);
  await rejects(OciLayout.open(tmp), 'ECORRUPT', /not an OCI layout \(no oci-layout file\)/);
});
