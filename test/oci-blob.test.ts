import assert from 'node:assert/strict';
import { createHash } from 'node:crypto';
import { mkdtemp, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before, test } from 'node:test';
import { isCfsError, type CfsErrorCode } from '../src/errors.js';
import { OciArchive } from '../src/oci/archive.js';
import { isTarLayer, openLayer, openVerifiedBlob } from '../src/oci/blob.js';
import { resolveImage } from '../src/oci/image.js';
import { OciLayout } from '../src/oci/layout.js';
import { MT } from '../src/oci/media-types.js';
import type { Descriptor, OciRead } from '../src/oci/source.js';
import { buildOciArchive, buildOciLayout, compressBlob, sha256, type Compression, type ImageSpec } from './helpers/oci-fixture.js';

let tmp: string;
let n = 0;
before(async () => {
  tmp = await mkdtemp(join(tmpdir(), 'cfs-oci-blob-'));
});
after(async () => {
  await rm(tmp, { recursive: true, force: true });
});

/** Incompressible-ish content large enough to span many read chunks and decoder outputs. */
function bigContent(size: number): Buffer {
  const out = Buffer.alloc(size);
  let h = createHash('sha256').update('seed').digest();
  for (let off = 0; off < size; off += h.length) {
    h.copy(out, off);
    h = createHash('sha256').update(h).digest();
  }
  return out;
}

async function collect(it: AsyncIterable<Buffer>): Promise<Buffer> {
  const parts: Buffer[] = [];
  for await (const c of it) parts.push(c);
  return Buffer.concat(parts);
}

async function rejects(p: Promise<unknown>, code: CfsErrorCode, msg: RegExp): Promise<void> {
  await assert.rejects(p, (e) => {
    assert.ok(isCfsError(e), `not a CfsError: ${String(e)}`);
    assert.equal(e.code, code, e.message);
    assert.match(e.message, msg);
    return true;
  });
}

async function single(spec: ImageSpec): Promise<{ src: OciRead; layers: Descriptor[]; built: Awaited<ReturnType<typeof buildOciLayout>> }> {
  const dir = join(tmp, `l${n++}`);
  const built = await buildOciLayout(dir, { images: [spec] });
  const src = await OciLayout.open(dir);
  const r = await resolveImage(src, spec.tag ?? null);
  return { src, layers: r.layers, built };
}

const ENTRIES = [{ path: 'usr/' }, { path: 'usr/big', content: bigContent(3 * 1024 * 1024 + 17) }, { path: 'usr/small', content: 'x' }];

for (const compression of ['gzip', 'zstd', 'none'] as Compression[]) {
  for (const kind of ['oci', 'docker'] as const) {
    test(`openLayer: ${kind} ${compression} layer decompresses to the tar written, progress counts blob bytes`, async () => {
      const { src, layers, built } = await single({ tag: 't', layers: [ENTRIES], compression, mediaTypes: kind });
      const seen: number[] = [];
      const opened = openLayer(src, layers[0]!, { progress: (b) => seen.push(b) });
      assert.equal(opened.compression, compression);
      const tar = await collect(opened.stream);
      assert.ok(tar.equals(built.images[0]!.layers[0]!.tar));
      assert.equal(sha256(tar), built.images[0]!.layers[0]!.diffId);
      assert.equal(seen.at(-1), layers[0]!.size);
      assert.ok(seen.every((v, i) => i === 0 || v > seen[i - 1]!));
      await src.close();
    });
  }
}

test('openLayer: every gzip member and zstd frame is decoded (incl. zstd skippable frames)', async () => {
  for (const compression of ['gzip', 'zstd'] as const) {
    const { src, layers, built } = await single({ tag: 't', layers: [{ entries: ENTRIES, pieces: 5 }], compression });
    assert.ok((await collect(openLayer(src, layers[0]!).stream)).equals(built.images[0]!.layers[0]!.tar), compression);
    await src.close();
  }
  // zstd frames with a skippable frame between them.
  const tar = Buffer.concat([bigContent(100000), Buffer.from('tail')]);
  const skippable = Buffer.alloc(8 + 5);
  skippable.writeUInt32LE(0x184d2a5a, 0);
  skippable.writeUInt32LE(5, 4);
  const blob = Buffer.concat([compressBlob(tar.subarray(0, 5000), 'zstd'), skippable, compressBlob(tar.subarray(5000), 'zstd')]);
  const { src, layers } = await single({ tag: 't', layers: [{ blob, mediaType: MT.ociLayerZstd }] });
  assert.ok((await collect(openLayer(src, layers[0]!).stream)).equals(tar));
  await src.close();
});

test('openLayer: a wrong blob digest is reported as EDIGEST, for every compression', async () => {
  for (const compression of ['gzip', 'zstd', 'none'] as Compression[]) {
    // The flipped byte usually breaks the decoder first; the digest mismatch is still reported.
    const { src, layers } = await single({ tag: 't', layers: [ENTRIES], compression, bad: { corruptLayerBlob: [0] } });
    await rejects(collect(openLayer(src, layers[0]!).stream), 'EDIGEST', new RegExp(`^layer blob ${layers[0]!.digest}: content digest is sha256:`));
    await src.close();
  }
});

test('openLayer: the digest error comes before the consumer sees the end of the stream', async () => {
  const { src, layers } = await single({ tag: 't', layers: [ENTRIES], compression: 'none', bad: { corruptLayerBlob: [0] } });
  let bytes = 0;
  await assert.rejects(async () => {
    for await (const c of openLayer(src, layers[0]!).stream) bytes += c.length;
  }, /content digest/);
  assert.equal(bytes, layers[0]!.size);
  await src.close();
});

test('openLayer: a blob whose size differs from the descriptor fails with EDIGEST', async () => {
  const { src, layers, built } = await single({ tag: 't', layers: [ENTRIES], compression: 'gzip' });
  const d = layers[0]!;
  const path = join(built.dir, 'blobs', 'sha256', d.digest.slice(7));
  const blob = built.images[0]!.layers[0]!.blob;
  await writeFile(path, blob.subarray(0, blob.length - 100));
  await rejects(collect(openLayer(src, d).stream), 'EDIGEST', /blob has \d+ bytes, descriptor says/);
  await writeFile(path, Buffer.concat([blob, Buffer.alloc(10)]));
  await rejects(collect(openLayer(src, d).stream), 'EDIGEST', /larger than the descriptor/);
  await src.close();
});

test('openLayer: truncated gzip and zstd streams (descriptor matching the cut blob)', async () => {
  for (const compression of ['gzip', 'zstd'] as const) {
    const { src, layers } = await single({ tag: 't', layers: [ENTRIES], compression, bad: { truncateLayer: 0 } });
    await rejects(collect(openLayer(src, layers[0]!).stream), 'EIO', new RegExp(`layer blob ${layers[0]!.digest}: truncated ${compression} stream`));
    await src.close();
  }
});

test('openLayer: garbage instead of gzip data', async () => {
  const { src, layers } = await single({ tag: 't', layers: [{ blob: Buffer.from('not gzip at all, sorry'), mediaType: MT.ociLayerGzip }] });
  await rejects(collect(openLayer(src, layers[0]!).stream), 'ECORRUPT', /invalid gzip data/);
  await src.close();
});

test('openLayer: missing blob names the digest; non-tar media types', async () => {
  const { src, layers } = await single({ tag: 't', layers: [ENTRIES, ENTRIES.slice(0, 1)], bad: { missingLayerBlob: 1 } });
  await rejects(collect(openLayer(src, layers[1]!).stream), 'ENOENT', new RegExp(`blob ${layers[1]!.digest} not found`));
  assert.equal(await src.hasBlob(layers[1]!.digest), false);
  assert.equal(await src.hasBlob(layers[0]!.digest), true);
  await src.close();
  const art: Descriptor = { mediaType: 'application/vnd.example+json', digest: sha256(Buffer.from('x')), size: 1 };
  assert.equal(isTarLayer(art), false);
  assert.equal(isTarLayer({ ...art, mediaType: MT.dockerForeignGzip }), true);
  assert.throws(() => openLayer(src, art), /is not a tar layer/);
});

test('oci-archive: layers stream from positioned reads, several at once', async () => {
  const dir = join(tmp, `l${n++}`);
  const built = await buildOciLayout(dir, {
    images: [{ tag: 't', layers: [ENTRIES, { entries: ENTRIES, compression: 'zstd' }, { entries: ENTRIES, compression: 'none' }] }],
  });
  const path = join(tmp, `a${n++}.tar`);
  await buildOciArchive(dir, path, { dotSlash: true });
  const a = await OciArchive.open(path);
  try {
    const r = await resolveImage(a, 't');
    const tars = await Promise.all(r.layers.map((l) => collect(openLayer(a, l).stream)));
    tars.forEach((t, i) => assert.ok(t.equals(built.images[0]!.layers[i]!.tar), `layer ${i}`));
    const raw = await collect(openVerifiedBlob(a, r.layers[0]!));
    assert.ok(raw.equals(built.images[0]!.layers[0]!.blob));
  } finally {
    await a.close();
  }
});

test('openLayer: stopping early releases the blob', async () => {
  const { src, layers } = await single({ tag: 't', layers: [ENTRIES], compression: 'zstd' });
  for await (const chunk of openLayer(src, layers[0]!).stream) {
    assert.ok(chunk.length > 0);
    break;
  }
  await src.close();
});
