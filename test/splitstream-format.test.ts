import { test } from 'node:test';
import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import { mkdtempSync, readFileSync, rmSync, truncateSync, writeFileSync } from 'node:fs';
import { randomBytes } from 'node:crypto';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { Repository } from '../src/repository/index.js';
import {
  SplitStreamWriter, SplitStreamReader, writeSplitStream, writeExternalSplitStream, readExternalSplitStream, catStream,
  CONTENT_TYPES, contentTypeValue, INLINE_CHUNK_MAX, type Chunk,
} from '../src/splitstream/index.js';
import { CfsError } from '../src/errors.js';

async function withRepo(fn: (repo: Repository, dir: string) => Promise<void>, hashAlg: 'sha256' | 'sha512' = 'sha256'): Promise<void> {
  const d = mkdtempSync(path.join(tmpdir(), 'cfs-ss-'));
  const repo = await Repository.init(path.join(d, 'r'), { insecure: true, hashAlg });
  try {
    await fn(repo, d);
  } finally {
    repo.close();
    rmSync(d, { recursive: true, force: true });
  }
}

async function readAll(repo: Repository, id: Buffer): Promise<Chunk[]> {
  const r = await SplitStreamReader.open(repo, id);
  try {
    const out: Chunk[] = [];
    for await (const c of r.chunks()) out.push(c.kind === 'inline' ? { kind: 'inline', data: Buffer.from(c.data) } : c);
    return out;
  } finally {
    await r.close();
  }
}

/** Merge adjacent inline pieces (the reader may return one chunk in several pieces). */
function logical(chunks: Chunk[]): Array<string> {
  const out: string[] = [];
  let inl = '';
  for (const c of chunks) {
    if (c.kind === 'inline') inl += c.data.toString('hex');
    else {
      if (inl) out.push(`i:${inl}`);
      inl = '';
      out.push(`e:${c.id.toString('hex')}`);
    }
  }
  if (inl) out.push(`i:${inl}`);
  return out;
}

function isCorrupt(re?: RegExp) {
  return (e: unknown): boolean => e instanceof CfsError && e.code === 'ECORRUPT' && (!re || re.test(e.message));
}

test('writer layout: header, info, refs, named refs, chunk stream (brief 2.1)', async () => {
  for (const hashAlg of ['sha256', 'sha512'] as const) {
    await withRepo(async (repo) => {
      const H = repo.hashSize;
      const w = new SplitStreamWriter(repo, { contentType: CONTENT_TYPES.config });
      w.writeInline(Buffer.from('hello '));
      w.writeInline(Buffer.from('world'));
      const big = randomBytes(1000);
      const ext = await w.writeExternal(big);
      w.writeInline(Buffer.from('tail'));
      w.addExternal(ext, big.length); // the same object again reuses its index
      const s1 = await repo.writeObject(Buffer.from('other stream 1'));
      const s2 = await repo.writeObject(Buffer.from('other stream 2'));
      w.addNamedRef('zeta', s1);
      w.addNamedRef('alpha:with:colons', s2);
      w.addNamedRef('beta', s1);
      const id = await w.finish();
      const f = readFileSync(repo.objectPath(id));
      assert.equal(f.subarray(0, 11).toString('ascii'), 'SplitStream');
      assert.equal(f[11], 0);
      assert.equal(f.readUInt16LE(12), 0);
      assert.equal(f[14], hashAlg === 'sha256' ? 1 : 2);
      assert.equal(f[15], 12);
      const u64 = (o: number): number => Number(f.readBigUInt64LE(o));
      assert.deepEqual([u64(16), u64(24)], [32, 112]);
      const info = 32;
      const streamRefs = [u64(info), u64(info + 8)];
      const objectRefs = [u64(info + 16), u64(info + 24)];
      const stream = [u64(info + 32), u64(info + 40)];
      const named = [u64(info + 48), u64(info + 56)];
      assert.deepEqual(streamRefs, [112, 112 + 2 * H]); // s1, s2 in insertion order
      assert.deepEqual(objectRefs, [112 + 2 * H, 112 + 3 * H]);
      assert.deepEqual(named, [112 + 3 * H, stream[0]]);
      assert.equal(stream[1], f.length);
      assert.equal(f.subarray(info + 64, info + 72).toString('ascii'), 'ociconfg');
      assert.equal(u64(info + 72), 11 + 1000 + 4 + 1000);
      assert.deepEqual(f.subarray(112, 112 + H), s1);
      assert.deepEqual(f.subarray(112 + H, 112 + 2 * H), s2);
      assert.deepEqual(f.subarray(112 + 2 * H, 112 + 3 * H), ext);
      // Both compressed sections are standard zstd frames.
      const unz = (b: Buffer): Buffer => execFileSync('zstd', ['-d', '-c'], { input: b });
      assert.equal(unz(f.subarray(named[0], named[1])).toString('latin1'), '1:alpha:with:colons\x000:beta\x000:zeta\x00');
      const chunks = unz(f.subarray(stream[0], stream[1]));
      const expect = Buffer.concat([
        Buffer.from('f5ffffffffffffff', 'hex'), Buffer.from('hello world'), Buffer.alloc(8),
        Buffer.from('fcffffffffffffff', 'hex'), Buffer.from('tail'), Buffer.alloc(8),
      ]);
      assert.deepEqual(chunks, expect);

      const r = await SplitStreamReader.open(repo, id, { expectedContentType: CONTENT_TYPES.config });
      assert.equal(r.contentType, contentTypeValue('ociconfg'));
      assert.equal(r.streamSize, 2015);
      assert.deepEqual(r.objectRefs, [ext]);
      assert.deepEqual([...r.namedRefs], [['alpha:with:colons', s2], ['beta', s1], ['zeta', s1]]);
      await r.close();
      assert.deepEqual(logical(await readAll(repo, id)), [
        `i:${Buffer.from('hello world').toString('hex')}`, `e:${ext.toString('hex')}`, `i:${Buffer.from('tail').toString('hex')}`, `e:${ext.toString('hex')}`,
      ]);
    }, hashAlg);
  }
});

test('output depends only on the logical content (deterministic), large inline runs are cut', async () => {
  await withRepo(async (repo) => {
    const inline = randomBytes(3 * INLINE_CHUNK_MAX + 777);
    const ext = randomBytes(5000);
    const build = async (pieces: number[]): Promise<Buffer> => {
      const w = new SplitStreamWriter(repo, { contentType: CONTENT_TYPES.layer });
      let off = 0;
      for (const p of pieces) {
        w.writeInline(inline.subarray(off, off + p));
        off += p;
      }
      w.writeInline(inline.subarray(off));
      await w.writeExternal(ext);
      return w.finish();
    };
    const a = await build([]);
    const b = await build([1, 511, 4096, 100_000, INLINE_CHUNK_MAX]);
    const c = await build(Array.from({ length: 200 }, () => 4999));
    assert.deepEqual(a, b);
    assert.deepEqual(a, c);
    const chunks = await readAll(repo, a);
    assert.deepEqual(Buffer.concat(chunks.filter((x) => x.kind === 'inline').map((x) => (x as { data: Buffer }).data)), inline);
    const out: Buffer[] = [];
    await repo.linkStream('test-stream', a);
    for await (const x of catStream(repo, 'test-stream')) out.push(Buffer.from(x));
    assert.deepEqual(Buffer.concat(out), Buffer.concat([inline, ext]));
    const raw = readFileSync(repo.objectPath(a));
    const s0 = Number(raw.readBigUInt64LE(32 + 32));
    const first = execFileSync('zstd', ['-d', '-c'], { input: raw.subarray(s0), maxBuffer: 64 << 20 });
    assert.equal(first.readBigInt64LE(0), -BigInt(INLINE_CHUNK_MAX)); // the first inline chunk is cut at 1 MiB
  });
});

test('empty stream; writeSplitStream skips existing; external JSON streams', async () => {
  await withRepo(async (repo) => {
    const empty = await new SplitStreamWriter(repo).finish();
    assert.deepEqual(await readAll(repo, empty), []);
    let calls = 0;
    const fill = (w: SplitStreamWriter): void => {
      calls++;
      w.writeInline(Buffer.from('abc'));
    };
    const s1 = await writeSplitStream(repo, 'oci-blob-sha256:aa', fill, { refName: 'blob' });
    const s2 = await writeSplitStream(repo, 'oci-blob-sha256:aa', fill);
    assert.deepEqual(s1, s2);
    assert.equal(calls, 1);
    assert.deepEqual((await repo.resolveStream('refs/blob')).objectId, s1);

    const json = Buffer.from('{"a":1}');
    const cfg = await writeExternalSplitStream(repo, 'oci-config-sha256:bb', json, {
      contentType: CONTENT_TYPES.config, namedRefs: [['sha256:layer', s1]], refName: 'cfg',
    });
    const back = await readExternalSplitStream(repo, cfg, { expectedContentType: CONTENT_TYPES.config });
    assert.deepEqual(back.data, json); // stored external even though it is small
    assert.deepEqual([...back.namedRefs], [['sha256:layer', s1]]);
    await assert.rejects(readExternalSplitStream(repo, s1), isCorrupt(/expected exactly 1 external object in splitstream, got 0/));
    await assert.rejects(SplitStreamReader.open(repo, cfg, { expectedContentType: CONTENT_TYPES.manifest, name: 'cfgstream' }),
      isCorrupt(/split stream cfgstream: invalid content type ociconfg \(expected ocimanif\)/));
  });
});

test('reader accepts the old header layout (bootc <= 1.15)', async () => {
  await withRepo(async (repo) => {
    const w = new SplitStreamWriter(repo);
    w.writeInline(Buffer.from('old layout'));
    const f = readFileSync(repo.objectPath(await w.finish()));
    const old = Buffer.from(f);
    f.copy(old, 0, 16, 32); // info range
    old.writeUInt16LE(0, 16);
    f.copy(old, 18, 0, 11); // magic
    old[29] = f[11];
    old[30] = f[14];
    old[31] = f[15];
    const id = await repo.writeObject(old);
    assert.deepEqual(logical(await readAll(repo, id)), [`i:${Buffer.from('old layout').toString('hex')}`]);
  });
});

test('corrupt split streams are ECORRUPT errors naming the stream', async () => {
  await withRepo(async (repo, dir) => {
    const w = new SplitStreamWriter(repo, { contentType: CONTENT_TYPES.layer });
    w.writeInline(randomBytes(300_000)); // incompressible, so truncation hits the middle of the frame
    await w.writeExternal(randomBytes(100));
    w.addNamedRef('x', await repo.writeObject(Buffer.from('y')));
    const good = readFileSync(repo.objectPath(await w.finish()));
    const streamStart = Number(good.readBigUInt64LE(32 + 32));
    const namedStart = Number(good.readBigUInt64LE(32 + 48));
    const variant = async (mutate: (b: Buffer) => Buffer): Promise<Buffer> => repo.writeObject(mutate(Buffer.from(good)));
    const open = async (id: Buffer, re: RegExp, name = 'bad'): Promise<void> => {
      await repo.linkStream(name, id);
      const consume = async (): Promise<void> => {
        for await (const _ of catStream(repo, name)) void _;
      };
      await assert.rejects(consume(), (e: unknown) => isCorrupt(re)(e) && (e as Error).message.includes(`split stream ${name}:`));
    };
    await open(await variant((b) => { b[0] = 0x58; return b; }), /invalid header magic/);
    await open(await variant((b) => { b[11] = 1; return b; }), /unsupported version 1/);
    await open(await variant((b) => { b[14] = 2; return b; }), /hash algorithm 2 does not match the repository \(sha256\)/);
    await open(await variant((b) => { b[15] = 16; return b; }), /block size/);
    await open(await variant((b) => { b.writeBigUInt64LE(10n, 32 + 8); return b; }), /negative-sized stream_refs range/);
    await open(await variant((b) => { b.writeBigUInt64LE(BigInt(112 + 33), 32 + 24); return b; }), /not a multiple of 32/);
    await open(await variant((b) => b.subarray(0, streamStart + 1000)), /stream extends beyond the end of the file/);
    // Truncated chunk stream (ranges consistent with the shorter file).
    await open(await variant((b) => { b.writeBigUInt64LE(BigInt(streamStart + 1000), 32 + 40); return b.subarray(0, streamStart + 1000); }),
      /truncated zstd chunk stream/);
    // Garbled compressed data (zstd has no checksum here: garble the frame and block headers).
    await open(await variant((b) => { b[streamStart] ^= 0x5a; return b; }), /zstd: /);
    await open(await variant((b) => { for (let i = streamStart + 4; i < streamStart + 12; i++) b[i] = 0xff; return b; }), /zstd: |truncated|unexpected/);
    // Named refs with an out-of-range index: rebuild that section.
    const zstdFrame = (s: string): Buffer => execFileSync('zstd', ['-c', '-q'], { input: Buffer.from(s, 'latin1') });
    const withNamed = (payload: Buffer) => (b: Buffer): Buffer => {
      const named = Buffer.concat([b.subarray(0, namedStart), payload]);
      named.writeBigUInt64LE(BigInt(namedStart + payload.length), 32 + 56);
      named.writeBigUInt64LE(BigInt(namedStart + payload.length), 32 + 32);
      named.writeBigUInt64LE(BigInt(namedStart + payload.length + (b.length - streamStart)), 32 + 40);
      return Buffer.concat([named, b.subarray(streamStart)]);
    };
    await open(await variant(withNamed(zstdFrame('5:x\0'))), /index 5 out of bounds/);
    await open(await variant(withNamed(zstdFrame('x\0'))), /without colon/);
    await open(await variant(withNamed(zstdFrame('a:x\0'))), /not an integer/);
    await open(await variant(withNamed(zstdFrame('0:x'))), /without NUL/);
    // The good stream still reads, and a truncated object file (on disk) is caught too.
    const goodId = await repo.writeObject(good);
    await repo.linkStream('good', goodId);
    let n = 0;
    for await (const b of catStream(repo, 'good')) n += b.length;
    assert.equal(n, 300_100);
    truncateSync(repo.objectPath(goodId), good.length - 10);
    await open(goodId, /beyond the end of the file/, 'good');
    void dir;
    writeFileSync(repo.objectPath(goodId), good.subarray(0, 20));
    await open(goodId, /short read of header|header/, 'good');
  });
});
