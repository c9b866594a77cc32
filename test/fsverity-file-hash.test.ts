import { test } from 'node:test';
import assert from 'node:assert/strict';
import { closeSync, mkdtempSync, openSync, rmSync, writeFileSync } from 'node:fs';
import { createHash, randomBytes } from 'node:crypto';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { fsverityDigest, FsVerityHasher, StreamHash, verityDigestOfFd } from '../src/fsverity/index.js';
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

test('verityDigestOfFd equals FsVerityHasher; the stream hash sees prefix, file and suffix in order', async () => {
  const dir = mkdtempSync(path.join(tmpdir(), 'cfs-fsv-fd-'));
  try {
    // 256 KiB and up: the stream hash runs on a second thread in parallel with the Merkle tree.
    for (const size of [0, 1, 4095, 4096, 1 << 20, (1 << 20) + 17, 3 * (1 << 20) + 5, 4 << 20, 9 * (1 << 20) + 3]) {
      const data = randomBytes(size);
      const file = path.join(dir, `f${size}`);
      writeFileSync(file, data);
      const fd = openSync(file, 'r');
      try {
        for (const [alg, streamAlg] of [['sha256', 'sha256'], ['sha512', 'sha384'], ['sha256', 'sha512']] as const) {
          const prefix = randomBytes(513);
          const suffix = randomBytes(1029);
          const stream = new StreamHash(streamAlg).update(prefix);
          const d = await verityDigestOfFd(fd, size, alg, stream, file);
          stream.update(suffix);
          assert.deepEqual(d, new FsVerityHasher(alg).update(data).digest(), `${alg} size ${size}`);
          const expected = createHash(streamAlg).update(prefix).update(data).update(suffix).digest('hex');
          assert.equal(stream.digestHex(), expected, `${streamAlg} stream size ${size}`);
        }
      } finally {
        closeSync(fd);
      }
    }
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
});

test('verityDigestOfFd hashes only [0, length); length 0 is the empty digest', async () => {
  const data = randomBytes(10_000);
  await withFile(data, async (fd) => {
    assert.deepEqual(await verityDigestOfFd(fd, 4097, 'sha512'), fsverityDigest(data.subarray(0, 4097), 'sha512'));
    const empty = await verityDigestOfFd(fd, 0, 'sha256');
    assert.equal(empty.toString('hex'), '3d248ca542a24fc62d1c43b916eae5016878e2533c88238480b26128a1f1af95');
  })();
});

for (const size of [(1 << 20) + 100, (5 << 20) + 100]) test(`a file shorter than length rejects with EDIGEST naming the offset (${size} bytes)`, async () => {
  const data = randomBytes(size);
  await withFile(data, async (fd, file) => {
    const stream = new StreamHash('sha256');
    await assert.rejects(verityDigestOfFd(fd, data.length + 1, 'sha256', stream, file), (e: Error & { code?: string }) => {
      assert.equal(e.name, 'CfsError');
      assert.equal(e.code, 'EDIGEST');
      assert.ok(e.message.startsWith(`${file}: shorter than ${data.length + 1} bytes`), e.message);
      assert.match(e.message, new RegExp(`offset ${data.length}\\b`));
      return true;
    });
    // Not busy any more; it saw the whole (short) file.
    assert.equal(stream.digestHex(), createHash('sha256').update(data).digest('hex'));
  })();
});

test('a busy StreamHash throws EBUSY until verityDigestOfFd settles', async () => {
  const data = randomBytes(16 << 20);
  await withFile(data, async (fd) => {
    const stream = new StreamHash('sha512');
    const pending = verityDigestOfFd(fd, data.length, 'sha256', stream);
    assert.throws(() => stream.update(Buffer.from('x')), { name: 'CfsError', code: 'EBUSY' });
    assert.throws(() => stream.digest(), { name: 'CfsError', code: 'EBUSY' });
    await assert.rejects(verityDigestOfFd(fd, data.length, 'sha256', stream), { name: 'CfsError', code: 'EBUSY' });
    assert.deepEqual(await pending, fsverityDigest(data));
    stream.update(Buffer.from('x'));
    assert.equal(stream.digestHex(), createHash('sha512').update(data).update('x').digest('hex'));
    assert.throws(() => stream.update(Buffer.from('x')), { name: 'CfsError', code: 'EINVAL' });
    await assert.rejects(verityDigestOfFd(fd, 1, 'sha256', stream), { name: 'CfsError', code: 'EINVAL' });
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
