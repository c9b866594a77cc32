/**
 * splitdirfdstream: wire format (parser limits and errors, filename rules), the repository
 * producer, and the verifying consumer (zero-copy, re-splitting, every bad stream).
 */
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { createHash } from 'node:crypto';
import { execFileSync } from 'node:child_process';
import { closeSync, mkdirSync, mkdtempSync, openSync, rmSync, symlinkSync, writeFileSync, readdirSync, constants as C } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { Repository } from '../src/repository/repository.js';
import { importTarLayer, layerContentId } from '../src/tar/split.js';
import { catStream } from '../src/splitstream/cat.js';
import { SplitdirfdReader } from '../src/splitdirfdstream/reader.js';
import { checkFileName, fileHeader, metadataHeader, LIMITS } from '../src/splitdirfdstream/format.js';
import { openBeneath } from '../src/splitdirfdstream/open.js';
import { openObjectsDir, produceLayerStream } from '../src/splitdirfdstream/producer.js';
import { consumeLayerStream } from '../src/splitdirfdstream/consumer.js';
import { makeTar } from './helpers/oci-fixture.js';

let work: string;
let src: Repository;
let tar: Buffer;
let diffId: string;
let streamId: Buffer;

async function* once(...bufs: Buffer[]): AsyncGenerator<Buffer> {
  for (const b of bufs) yield b;
}

async function collect(it: AsyncIterable<Buffer>): Promise<Buffer> {
  const parts: Buffer[] = [];
  for await (const b of it) parts.push(b);
  return Buffer.concat(parts);
}

async function readAll(r: SplitdirfdReader): Promise<Array<{ type: string; body?: string; name?: string; length: number; index?: number }>> {
  const out = [];
  for (let h = await r.next(); h; h = await r.next()) {
    if (h.type === 'file') out.push({ type: h.type, length: h.length, index: h.index, name: h.name.toString() });
    else out.push({ type: h.type, length: h.length, body: (await r.bodyAll()).toString() });
  }
  return out;
}

let dirCounter = 0;
async function freshRepo(alg: 'sha256' | 'sha512' = 'sha256'): Promise<Repository> {
  return Repository.init(path.join(work, `repo-${dirCounter++}`), { insecure: true, hashAlg: alg });
}

before(async () => {
  work = mkdtempSync(path.join(tmpdir(), 'cfs-sdfd-'));
  src = await freshRepo();
  tar = await makeTar([
    { path: 'usr/', type: 'directory' },
    { path: 'usr/big', content: Buffer.alloc(300_000, 'b') },
    { path: 'usr/edge65', content: 'e'.repeat(65) },
    { path: 'usr/small', content: 'tiny' },
    { path: 'usr/empty', content: '' },
    { path: 'usr/big-again', content: Buffer.alloc(300_000, 'b') },
    { path: 'usr/other', content: Buffer.alloc(70_000, 'o') },
  ]);
  diffId = `sha256:${createHash('sha256').update(tar).digest('hex')}`;
  streamId = (await importTarLayer(src, once(tar), { expectedDiffId: diffId })).streamId;
});
after(() => {
  src.close();
  rmSync(work, { recursive: true, force: true });
});

test('reader: chunk types round-trip, clean EOF only at a type byte', async () => {
  const wire = Buffer.concat([metadataHeader('metadata', 3), Buffer.from('abc'), metadataHeader('inline', 0), fileHeader(42, 7, Buffer.from('ab/cd'))]);
  assert.deepEqual(await readAll(new SplitdirfdReader(once(wire))), [
    { type: 'metadata', length: 3, body: 'abc' },
    { type: 'inline', length: 0, body: '' },
    { type: 'file', length: 42, index: 7, name: 'ab/cd' },
  ]);
  // Byte-at-a-time delivery parses the same.
  const bytes = [...wire].map((b) => Buffer.from([b]));
  assert.equal((await readAll(new SplitdirfdReader(once(...bytes)))).length, 3);
  for (let cut = 1; cut < wire.length; cut++) {
    if (cut === 8 || cut === 13) continue; // chunk boundaries: a clean end
    await assert.rejects(readAll(new SplitdirfdReader(once(wire.subarray(0, cut)))), /truncated/, `cut at ${cut}`);
  }
});

test('reader: unknown type, empty Metadata, oversized bodies and names are refused', async () => {
  await assert.rejects(readAll(new SplitdirfdReader(once(Buffer.from([3, 0, 0, 0, 0])))), /unknown chunk type 0x03/);
  await assert.rejects(readAll(new SplitdirfdReader(once(metadataHeader('metadata', 0)))), /empty Metadata chunk/);
  await assert.rejects(readAll(new SplitdirfdReader(once(metadataHeader('inline', LIMITS.inlineBody + 1)))), /exceeds the 268435456 byte limit/);
  const h = fileHeader(1, 0, Buffer.alloc(0));
  h.writeUInt32LE(LIMITS.name + 1, 13);
  await assert.rejects(readAll(new SplitdirfdReader(once(h))), /file name of 4097 bytes exceeds/);
  const huge = fileHeader(0, 0, Buffer.from('x'));
  huge.writeBigUInt64LE(1n << 60n, 1);
  await assert.rejects(readAll(new SplitdirfdReader(once(huge))), /out of range/);
});

test('filename rules and openat2 beneath the directory', () => {
  const ok = (s: string): string => checkFileName(Buffer.from(s), 't');
  assert.equal(ok('ab/cdef'), 'ab/cdef');
  assert.equal(ok('a..b/c'), 'a..b/c');
  assert.throws(() => ok(''), /is empty/);
  assert.throws(() => ok('/etc/passwd'), /is absolute/);
  assert.throws(() => ok('a/../../b'), /'\.\.' component/);
  assert.throws(() => ok('..'), /'\.\.' component/);
  assert.throws(() => checkFileName(Buffer.from('a\0b'), 't'), /contains NUL/);
  assert.throws(() => checkFileName(Buffer.from([0xff, 0xfe]), 't'), /not UTF-8/);
  assert.throws(() => checkFileName(Buffer.alloc(4097, 'a'), 't'), /longer than 4096/);

  const dir = path.join(work, 'beneath');
  mkdirSync(path.join(dir, 'sub'), { recursive: true });
  writeFileSync(path.join(dir, 'sub', 'f'), 'data');
  writeFileSync(path.join(work, 'outside'), 'secret');
  symlinkSync('../../outside', path.join(dir, 'sub', 'escape'));
  symlinkSync('/proc/self/root/etc/hostname', path.join(dir, 'magic'));
  const dfd = openSync(dir, C.O_RDONLY | C.O_DIRECTORY);
  try {
    const f = openBeneath(dfd, Buffer.from('sub/f'), 't');
    assert.equal(f.stat.size, 4);
    closeSync(f.fd);
    assert.throws(() => openBeneath(dfd, Buffer.from('sub/escape'), 't'), /"sub\/escape" leads outside its directory \(through a symlink or a mount point\); refused/);
    assert.throws(() => openBeneath(dfd, Buffer.from('magic'), 't'), /"magic" leads outside its directory/);
    assert.throws(() => openBeneath(dfd, Buffer.from('sub'), 't'), /not a regular file/);
    assert.throws(() => openBeneath(dfd, Buffer.from('nope'), 't'), /cannot open/);
  } finally {
    closeSync(dfd);
  }
});

test('producer: metadata inline, objects by name beneath objects/, no object data in the stream', async () => {
  const wire = await collect(produceLayerStream(src, streamId, 5));
  const chunks = await readAll(new SplitdirfdReader(once(wire)));
  const files = chunks.filter((c) => c.type === 'file');
  assert.equal(files.length, 4, 'big, edge65, big-again, other');
  assert.ok(files.every((f) => f.index === 5 && /^[0-9a-f]{2}\/[0-9a-f]{62}$/.test(f.name!)));
  assert.deepEqual(files.map((f) => f.length), [300_000, 65, 300_000, 70_000]);
  assert.ok(wire.length < 20_000, `stream is ${wire.length} bytes`);
  assert.ok(chunks.every((c) => c.type !== 'metadata' || c.length > 0));
});

test('consumer: same-algorithm copy hardlinks, rebuilds the identical stream; again → already present', async () => {
  const dst = await freshRepo();
  const ofd = openObjectsDir(src);
  try {
    const dummy = openSync('/dev/null', C.O_RDONLY);
    const r = await consumeLayerStream(dst, produceLayerStream(src, streamId, 1), [dummy, ofd], { diffId });
    closeSync(dummy);
    assert.equal(r.streamId.toString('hex'), streamId.toString('hex'), 'byte-identical split stream');
    assert.equal(r.objects.hardlinked + r.objects.reflinked, 3);
    assert.equal(r.objects.present, 1, 'big-again dedups');
    assert.equal(r.objects.copied, 0);
    assert.deepEqual(await collect(catStream(dst, layerContentId(diffId))), tar);
    const again = await consumeLayerStream(dst, produceLayerStream(src, streamId, 0), [ofd], { diffId });
    assert.equal(again.alreadyPresent, true);
  } finally {
    closeSync(ofd);
    dst.close();
  }
});

test('consumer: sha512 destination re-hashes; zerocopy refuses to copy', async () => {
  const dst = await freshRepo('sha512');
  const ofd = openObjectsDir(src);
  try {
    await assert.rejects(
      consumeLayerStream(dst, produceLayerStream(src, streamId, 0), [ofd], { diffId, zerocopy: true }),
      /copy fallback is disabled \(zerocopy mode\)/,
    );
    assert.equal(await dst.hasStream(layerContentId(diffId)), null);
    const r = await consumeLayerStream(dst, produceLayerStream(src, streamId, 0), [ofd], { diffId });
    assert.equal(r.objects.hardlinked, 0);
    assert.equal(r.streamId.length, 64);
    assert.deepEqual(await collect(catStream(dst, layerContentId(diffId))), tar);
  } finally {
    closeSync(ofd);
    dst.close();
  }
});

test('consumer: any chunking is re-split by tar structure (whole tar inline, odd file-backed pieces)', async () => {
  const dst = await freshRepo();
  try {
    const pieces: Buffer[] = [];
    for (let off = 0; off < tar.length; off += 777) {
      const b = tar.subarray(off, off + 777);
      pieces.push(metadataHeader('inline', b.length), b);
    }
    const r = await consumeLayerStream(dst, once(...pieces), [], { diffId });
    assert.equal(r.streamId.toString('hex'), streamId.toString('hex'));
  } finally {
    dst.close();
  }
  // The tar as one file split at arbitrary offsets: file-backed chunks that do not match files.
  const dst2 = await freshRepo();
  const dir = path.join(work, 'rawtar');
  mkdirSync(dir, { recursive: true });
  writeFileSync(path.join(dir, 'a'), tar.subarray(0, 1000));
  writeFileSync(path.join(dir, 'b'), tar.subarray(1000));
  const dfd = openSync(dir, C.O_RDONLY | C.O_DIRECTORY);
  try {
    const wire = [fileHeader(1000, 0, Buffer.from('a')), fileHeader(tar.length - 1000, 0, Buffer.from('b'))];
    const r = await consumeLayerStream(dst2, once(...wire), [dfd], { diffId });
    assert.equal(r.streamId.toString('hex'), streamId.toString('hex'));
  } finally {
    closeSync(dfd);
    dst2.close();
  }
});

test('consumer: bad streams fail and link nothing', async () => {
  const dst = await freshRepo();
  const ofd = openObjectsDir(src);
  const devnull = openSync('/dev/null', C.O_RDONLY);
  const wire = await collect(produceLayerStream(src, streamId, 0));
  const first = (await readAll(new SplitdirfdReader(once(wire)))).find((c) => c.type === 'file')!;
  /** The producer's stream with the first file chunk replaced. */
  const withFirstFile = (hdr: Buffer): Buffer => {
    const orig = fileHeader(first.length, 0, Buffer.from(first.name!));
    const at = wire.indexOf(orig);
    return Buffer.concat([wire.subarray(0, at), hdr, wire.subarray(at + orig.length)]);
  };
  // A FIFO named by the stream must fail, not block the consumer in open(2).
  const fifoDir = mkdtempSync(path.join(tmpdir(), 'cfs-sdfd-fifo-'));
  execFileSync('mkfifo', [path.join(fifoDir, 'pipe')]);
  const fifoDirFd = openSync(fifoDir, C.O_RDONLY | C.O_DIRECTORY);
  const cases: Array<[string, Buffer, number[], RegExp]> = [
    ['fifo', withFirstFile(fileHeader(first.length, 1, Buffer.from('pipe'))), [ofd, fifoDirFd], /"pipe" is not a regular file/],
    ['index out of range', withFirstFile(fileHeader(first.length, 9, Buffer.from(first.name!))), [ofd], /dirfd index 9 out of range \(1 directory fds\)/],
    ['dummy in the slot', withFirstFile(fileHeader(first.length, 1, Buffer.from(first.name!))), [ofd, devnull], /slot 1 is not a directory.*dummy/],
    ['length lie', withFirstFile(fileHeader(first.length + 1, 0, Buffer.from(first.name!))), [ofd], /declared length 300001 != actual size 300000/],
    ['escape', withFirstFile(fileHeader(first.length, 0, Buffer.from('../meta.json'))), [ofd], /'\.\.' component/],
    ['missing file', withFirstFile(fileHeader(first.length, 0, Buffer.from('00/00'))), [ofd], /cannot open "00\/00"/],
    ['truncated', wire.subarray(0, wire.length - 100), [ofd], /truncated|unexpected (end|EOF)/],
    ['inline lie', Buffer.concat([metadataHeader('inline', 5000), tar.subarray(0, 10)]), [], /truncated chunk body/],
  ];
  try {
    for (const [what, bytes, fds, re] of cases) {
      await assert.rejects(consumeLayerStream(dst, once(bytes), fds, { diffId }), re, what);
    }
    await assert.rejects(consumeLayerStream(dst, once(wire), [ofd], { diffId: `sha256:${'0'.repeat(64)}` }), /diff_id mismatch/);
    assert.deepEqual(readdirSync(path.join(dst.path, 'streams')), []);
  } finally {
    closeSync(ofd);
    closeSync(devnull);
    closeSync(fifoDirFd);
    rmSync(fifoDir, { recursive: true, force: true });
    dst.close();
  }
});

test('consumer: hundreds of files in flight keep stream order; a late failure leaves no fd open and nothing linked', async () => {
  const openFds = (): number => readdirSync('/proc/self/fd').length;
  // More files than PLACEMENTS_IN_FLIGHT, sizes on both sides of the batching limit, with repeats.
  const sizes = [65, 4096, 20_000, 300_000, 1_100_000];
  const entries = [{ path: 'd/', type: 'directory' as const }];
  for (let i = 0; i < 420; i++) {
    const size = sizes[i % sizes.length] + (i % 7);
    entries.push({ path: `d/f${i}`, content: Buffer.alloc(size, i % 50) } as never);
  }
  const bigTar = await makeTar(entries);
  const bigDiffId = `sha256:${createHash('sha256').update(bigTar).digest('hex')}`;
  const bigStream = (await importTarLayer(src, once(bigTar), { expectedDiffId: bigDiffId })).streamId;
  const ofd = openObjectsDir(src);
  const dst = await freshRepo();
  try {
    const before = openFds();
    const r = await consumeLayerStream(dst, produceLayerStream(src, bigStream, 0), [ofd], { diffId: bigDiffId, zerocopy: true });
    assert.equal(r.streamId.toString('hex'), bigStream.toString('hex'), 'byte-identical split stream: ids in tar order');
    assert.equal(r.objects.copied, 0);
    assert.equal(r.objects.hardlinked + r.objects.present, 420);
    assert.equal(openFds(), before, 'every file fd closed');

    // The 400th file chunk lies about its length: placements before it are in flight when it fails.
    const dst2 = await freshRepo();
    const wire = await collect(produceLayerStream(src, bigStream, 0));
    const files = (await readAll(new SplitdirfdReader(once(wire)))).filter((c) => c.type === 'file');
    const victim = files[400];
    const orig = fileHeader(victim.length, 0, Buffer.from(victim.name!));
    const at = wire.lastIndexOf(orig);
    const bad = Buffer.concat([wire.subarray(0, at), fileHeader(victim.length + 1, 0, Buffer.from(victim.name!)), wire.subarray(at + orig.length)]);
    await assert.rejects(consumeLayerStream(dst2, once(bad), [ofd], { diffId: bigDiffId }), /declared length \d+ != actual size/);
    assert.deepEqual(readdirSync(path.join(dst2.path, 'streams')), []);
    dst2.close();
    assert.equal(openFds(), before, 'no fd left open after the failure');
  } finally {
    closeSync(ofd);
    dst.close();
  }
});
