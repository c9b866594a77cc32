import { test } from 'node:test';
import assert from 'node:assert/strict';
import { closeSync, mkdtempSync, openSync, rmSync, writeFileSync } from 'node:fs';
import { createHash, randomBytes } from 'node:crypto';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { fsverityDigest, FsVerityHasher, StreamFeed, StreamHash, VerityBatcher, verityDigestOfFd } from '../src/fsverity/index.js';
import { native, type StreamHashHandle } from '../src/native.js';

function withFile(data: Uint8Array, f: (fd: number, file: string) => Promise<void>): () => Promise<void> {
  return async () => {
    const dir = mkdtempSync(path.join(tmpdir(), 'cfs-fsv-fd-'));
    const file = path.join(dir, 'f');
    writeFileSync(file, data);
    const fd = openSync(file, 'r');
    try {
      await f(fd, file);
    } finally {
      closeSync(fd);
      rmSync(dir, { recursive: true, force: true });
    }
  };
}

test('verityDigestOfFd and VerityBatcher equal FsVerityHasher; StreamFeed sees bytes and file ranges in order', async () => {
  const dir = mkdtempSync(path.join(tmpdir(), 'cfs-fsv-fd-'));
  const fds: number[] = [];
  try {
    const sizes = [0, 1, 4095, 4096, 70_000, 1 << 20, (1 << 20) + 17, 3 * (1 << 20) + 5, 9 * (1 << 20) + 3];
    const files = sizes.map((size) => {
      const data = randomBytes(size);
      const file = path.join(dir, `f${size}`);
      writeFileSync(file, data);
      fds.push(openSync(file, 'r'));
      return { data, fd: fds[fds.length - 1], file };
    });
    for (const [alg, streamAlg] of [['sha256', 'sha256'], ['sha512', 'sha384'], ['sha256', 'sha512']] as const) {
      const feed = new StreamFeed(streamAlg);
      const batcher = new VerityBatcher(alg);
      const expected = createHash(streamAlg);
      const released: Promise<void>[] = [];
      const digests: Promise<Buffer>[] = [];
      for (const { data, fd, file } of files) {
        const prefix = randomBytes(513);
        feed.bytes(prefix);
        expected.update(prefix);
        released.push(feed.file(fd, data.length, file));
        expected.update(data);
        digests.push(batcher.digest(fd, data.length, file));
        assert.deepEqual(await verityDigestOfFd(fd, data.length, alg, file), new FsVerityHasher(alg).update(data).digest(), `${alg} size ${data.length}`);
      }
      batcher.flush();
      const got = await Promise.all(digests);
      got.forEach((d, i) => assert.deepEqual(d, fsverityDigest(files[i].data, alg), `batched ${alg} size ${files[i].data.length}`));
      feed.bytes(Buffer.from('suffix'));
      expected.update('suffix');
      assert.equal((await feed.digest()).toString('hex'), expected.digest('hex'), `${streamAlg} stream`);
      await Promise.all(released);
    }
  } finally {
    for (const fd of fds) closeSync(fd);
    rmSync(dir, { recursive: true, force: true });
  }
});

test('StreamFeed.fileWithVerity: one read gives the stream its bytes and the file its fs-verity digest; failures reject', async () => {
  const data = randomBytes(70_000);
  await withFile(data, async (fd, file) => {
    for (const alg of ['sha256', 'sha512'] as const) {
      const feed = new StreamFeed('sha256');
      feed.bytes(Buffer.from('head'));
      const small = feed.fileWithVerity(fd, 100, file, alg);
      const plain = feed.file(fd, data.length, file);
      const whole = feed.fileWithVerity(fd, data.length, file, alg);
      assert.throws(() => feed.fileWithVerity(fd, 1, file, alg === 'sha256' ? 'sha512' : 'sha256'));
      assert.deepEqual(await small, fsverityDigest(data.subarray(0, 100), alg));
      assert.deepEqual(await whole, fsverityDigest(data, alg));
      await plain;
      const expected = createHash('sha256').update('head').update(data.subarray(0, 100)).update(data).update(data).digest('hex');
      assert.equal((await feed.digest()).toString('hex'), expected);
    }
    const feed = new StreamFeed('sha256');
    const bad = feed.fileWithVerity(fd, data.length + 1, file, 'sha256');
    await assert.rejects(bad, { code: 'EDIGEST' });
    await assert.rejects(feed.digest(), { code: 'EDIGEST' });
  })();
});

test('verityDigestOfFd hashes only [0, length); length 0 is the empty digest', async () => {
  const data = randomBytes(10_000);
  await withFile(data, async (fd) => {
    assert.deepEqual(await verityDigestOfFd(fd, 4097, 'sha512'), fsverityDigest(data.subarray(0, 4097), 'sha512'));
    const empty = await verityDigestOfFd(fd, 0, 'sha256');
    assert.equal(empty.toString('hex'), '3d248ca542a24fc62d1c43b916eae5016878e2533c88238480b26128a1f1af95');
  })();
});

for (const size of [1000, (1 << 20) + 100, (5 << 20) + 100]) test(`a file shorter than declared: EDIGEST naming it and the offset (${size} bytes)`, async () => {
  const data = randomBytes(size);
  await withFile(data, async (fd, file) => {
    const named = (e: Error & { code?: string }): boolean => {
      assert.equal(e.name, 'CfsError');
      assert.equal(e.code, 'EDIGEST');
      assert.ok(e.message.startsWith(`${file}: shorter than ${data.length + 1} bytes`), e.message);
      assert.match(e.message, new RegExp(`offset ${data.length}\\b`));
      return true;
    };
    await assert.rejects(verityDigestOfFd(fd, data.length + 1, 'sha256', file), named);
    const batcher = new VerityBatcher('sha256');
    const ok = batcher.digest(fd, 10, 'other');
    const bad = batcher.digest(fd, data.length + 1, file);
    batcher.flush();
    await assert.rejects(bad, named);
    // Small files share a job: the whole batch fails, naming the file that caused it.
    if (data.length + 1 <= 256 * 1024) await assert.rejects(ok, named);
    else assert.deepEqual(await ok, fsverityDigest(data.subarray(0, 10)));
    const feed = new StreamFeed('sha256');
    feed.bytes(Buffer.from('head'));
    const released = feed.file(fd, data.length + 1, file);
    feed.bytes(Buffer.from('tail'));
    await assert.rejects(feed.digest(), named);
    await released; // never rejects
  })();
});

test('a StreamHash being fed on the threadpool throws EBUSY until the job settles', async () => {
  const data = randomBytes(16 << 20);
  await withFile(data, async (fd) => {
    const stream = new StreamHash('sha512');
    const n = native();
    const pending = n.hashFeed(stream.handle, null, Float64Array.of(fd, 0, data.length));
    assert.throws(() => stream.update(Buffer.from('x')), { name: 'CfsError', code: 'EBUSY' });
    assert.throws(() => stream.digest(), { name: 'CfsError', code: 'EBUSY' });
    assert.throws(() => n.hashFeed(stream.handle, null, Float64Array.of(fd, 0, 1)), { code: 'EBUSY' });
    await pending;
    stream.update(Buffer.from('x'));
    assert.equal(stream.digestHex(), createHash('sha512').update(data).update('x').digest('hex'));
    assert.throws(() => stream.update(Buffer.from('x')), { name: 'CfsError', code: 'EINVAL' });
    assert.throws(() => n.hashFeed(stream.handle, null, Float64Array.of(fd, 0, 1)), { code: 'EINVAL' });
    // Segments are checked before anything runs.
    const h = new StreamHash('sha256');
    assert.throws(() => n.hashFeed(h.handle, Buffer.alloc(4), Float64Array.of(-1, 2, 3)), { code: 'ERANGE' });
    for (const bad of [[-1, NaN, NaN], [-1, 0, Infinity], [-1, 1e300, 1], [fd, 0.5, 1], [NaN, 0, 1], [-2, 0, 1]]) {
      assert.throws(() => n.hashFeed(h.handle, Buffer.alloc(4), Float64Array.from(bad)), { code: 'EINVAL' }, String(bad));
    }
    assert.throws(() => n.hashFeed(h.handle, null, Float64Array.of(fd, 0)), TypeError);
    assert.throws(() => n.verityHashFds(Float64Array.of(-1, 0), 1), { code: 'EINVAL' });
    assert.throws(() => n.verityHashFds([fd, 1] as unknown as Float64Array, 1), TypeError);
  })();
});

test('many verityDigestOfFd at once on the threadpool', async () => {
  const files = Array.from({ length: 12 }, (_, i) => randomBytes(i * 300_001 + 7));
  const dir = mkdtempSync(path.join(tmpdir(), 'cfs-fsv-fd-'));
  const fds: number[] = [];
  try {
    files.forEach((d, i) => {
      const f = path.join(dir, `f${i}`);
      writeFileSync(f, d);
      fds.push(openSync(f, 'r'));
    });
    const got = await Promise.all(fds.map((fd, i) => verityDigestOfFd(fd, files[i].length, i % 2 ? 'sha512' : 'sha256')));
    got.forEach((d, i) => assert.deepEqual(d, fsverityDigest(files[i], i % 2 ? 'sha512' : 'sha256'), `file ${i}`));
  } finally {
    for (const fd of fds) closeSync(fd);
    rmSync(dir, { recursive: true, force: true });
  }
});

test('read errors keep their errno code; bad handles are TypeErrors', async () => {
  const dir = mkdtempSync(path.join(tmpdir(), 'cfs-fsv-fd-'));
  const fd = openSync(dir, 'r');
  try {
    await assert.rejects(verityDigestOfFd(fd, 10, 'sha256'), { code: 'EISDIR', syscall: 'pread' });
  } finally {
    closeSync(fd);
    rmSync(dir, { recursive: true, force: true });
  }
  const n = native();
  const verity = n.verityNew(1);
  assert.throws(() => n.hashUpdate(verity as unknown as StreamHashHandle, Buffer.alloc(1)), TypeError);
  assert.throws(() => n.hashNew('md5' as 'sha256'), { code: 'EINVAL' });
  assert.throws(() => n.verityNew(3 as 1), { code: 'EINVAL' });
  n.verityDigest(verity);
  assert.throws(() => n.verityDigest(verity), { code: 'EINVAL' });
});
