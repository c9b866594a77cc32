import { test } from 'node:test';
import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import { mkdtempSync, writeFileSync, rmSync, openSync, closeSync } from 'node:fs';
import { randomBytes } from 'node:crypto';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { fsverityDigest, fsverityDigestFile, FsVerityHasher, verityDigestOfFd } from '../src/fsverity/index.js';
import { cfsOk, runCfs } from './helpers/cli.js';

const SIZES = [0, 1, 4095, 4096, 4097, 8192, 128 * 1024 - 1, 128 * 1024, 128 * 1024 + 1, 512 * 1024, 512 * 1024 + 4096,
  1024 * 1024 + 17, 10 * 1024 * 1024];

test('fs-verity digests equal `fsverity digest` (sha256, sha512)', async () => {
  const dir = mkdtempSync(path.join(tmpdir(), 'cfs-fsv-'));
  try {
    for (const size of SIZES) {
      const data = randomBytes(size);
      const f = path.join(dir, `f${size}`);
      writeFileSync(f, data);
      for (const alg of ['sha256', 'sha512'] as const) {
        const ref = execFileSync('fsverity', ['digest', `--hash-alg=${alg}`, f], { encoding: 'utf8' }).split(' ')[0];
        assert.equal(`${alg}:${(await fsverityDigestFile(f, alg)).toString('hex')}`, ref, `size ${size} ${alg}`);
        assert.equal(`${alg}:${fsverityDigest(data, alg).toString('hex')}`, ref, `buffer size ${size} ${alg}`);
        const fd = openSync(f, 'r');
        try {
          assert.equal(`${alg}:${(await verityDigestOfFd(fd, size, alg)).toString('hex')}`, ref, `fd size ${size} ${alg}`);
        } finally {
          closeSync(fd);
        }
      }
    }
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
});

test('cfs fsverity digest prints what fsverity digest prints, with --compact and --block-size 4096 too', () => {
  const dir = mkdtempSync(path.join(tmpdir(), 'cfs-fsv-cli-'));
  try {
    const files = [0, 5000, 300_001].map((n) => {
      const f = path.join(dir, `f${n}`);
      writeFileSync(f, randomBytes(n));
      return f;
    });
    for (const args of [[], ['--compact'], ['--hash-alg=sha512', '--compact'], ['--block-size=4096']]) {
      assert.equal(cfsOk(['fsverity', 'digest', ...args, ...files]).stdout, execFileSync('fsverity', ['digest', ...args, ...files], { encoding: 'utf8' }), args.join(' '));
    }
    assert.match(runCfs(['fsverity', 'digest', '--block-size=1024', files[0]!]).stderr, /^cfs: --block-size 1024: only 4096 is supported/);
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
});

test('streaming in odd-sized chunks gives the same digest', () => {
  const data = randomBytes(300_001);
  for (const alg of ['sha256', 'sha512'] as const) {
    const whole = fsverityDigest(data, alg);
    for (const chunk of [1, 7, 4095, 7919, 65537]) {
      const h = new FsVerityHasher(alg);
      for (let off = 0; off < data.length; off += chunk) h.update(data.subarray(off, off + chunk));
      assert.deepEqual(h.digest(), whole, `${alg} chunks of ${chunk}`);
      assert.equal(h.bytes, data.length);
    }
  }
});

test('multi-level trees in 65537-byte chunks equal `fsverity digest`', () => {
  // 64*64 + 1 and 128*64 + 1 blocks: three tree levels with sha512 (64 hashes per block), two with sha256 (128).
  const dir = mkdtempSync(path.join(tmpdir(), 'cfs-fsv-'));
  try {
    for (const size of [64 * 64 * 4096 + 1, 128 * 64 * 4096 + 4096]) {
      const data = randomBytes(size);
      const f = path.join(dir, `f${size}`);
      writeFileSync(f, data);
      for (const alg of ['sha256', 'sha512'] as const) {
        const ref = execFileSync('fsverity', ['digest', `--hash-alg=${alg}`, f], { encoding: 'utf8' }).split(' ')[0];
        const h = new FsVerityHasher(alg);
        for (let off = 0; off < data.length; off += 65537) h.update(data.subarray(off, off + 65537));
        assert.equal(`${alg}:${h.digest().toString('hex')}`, ref, `${alg} size ${size}`);
      }
    }
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
});

test('digest is repeatable; update after digest throws EINVAL; Uint8Array input', () => {
  const data = randomBytes(5000);
  const h = new FsVerityHasher('sha512');
  h.update(new Uint8Array(data.buffer, data.byteOffset, data.length));
  const d = h.digest();
  assert.equal(d.length, 64);
  assert.deepEqual(h.digest(), d);
  assert.deepEqual(d, fsverityDigest(data, 'sha512'));
  assert.throws(() => h.update(Buffer.alloc(1)), { name: 'CfsError', code: 'EINVAL' });
});

test('golden vector: empty file', () => {
  assert.equal(fsverityDigest(Buffer.alloc(0)).toString('hex'), '3d248ca542a24fc62d1c43b916eae5016878e2533c88238480b26128a1f1af95');
});
