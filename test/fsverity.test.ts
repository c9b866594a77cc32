import { test } from 'node:test';
import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import { mkdtempSync, writeFileSync, rmSync } from 'node:fs';
import { randomBytes } from 'node:crypto';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { fsverityDigest, fsverityDigestFile, FsVerityHasher } from '../src/fsverity/index.js';

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
      }
    }
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
});

test('streaming in odd-sized chunks gives the same digest', () => {
  const data = randomBytes(300_001);
  const h = new FsVerityHasher('sha256');
  for (let off = 0; off < data.length; off += 7919) h.update(data.subarray(off, off + 7919));
  assert.deepEqual(h.digest(), fsverityDigest(data));
});

test('golden vector: empty file', () => {
  assert.equal(fsverityDigest(Buffer.alloc(0)).toString('hex'), '3d248ca542a24fc62d1c43b916eae5016878e2533c88238480b26128a1f1af95');
});
