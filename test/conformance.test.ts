/**
 * Conformance with C mkcomposefs: every vector of ../shared/conformance (image sha256 equals the
 * C tool's; should-fail inputs are rejected), the golden vectors of the format brief (9.2), the
 * dump -> re-parse -> re-write round trip, and fsck.erofs on every image written.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import { createHash } from 'node:crypto';
import { existsSync, mkdtempSync, readdirSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { gunzipSync } from 'node:zlib';
import { CfsError } from '../src/errors.js';
import { parseDumpfile } from '../src/dumpfile/parse.js';
import { printDumpfile } from '../src/dumpfile/print.js';
import { writeErofs, type WriteOptions } from '../src/erofs/writer.js';
import { readErofs } from '../src/erofs/reader.js';
import { fsverityDigest } from '../src/fsverity/index.js';

const here = path.dirname(fileURLToPath(import.meta.url));
// test/ (tsx) or dist/test/ (compiled): the shared directory sits beside the checkout.
const VECTORS = [path.resolve(here, '../../shared/conformance'), path.resolve(here, '../../../shared/conformance')].find((d) =>
  existsSync(d),
);
const NON_STRICT = new Set(['no-newline.dump', 'longlink.dump', 'honggfuzz-longlink-unterminated.dump']);

const sha256 = (b: Buffer): string => createHash('sha256').update(b).digest('hex');

const tmp = mkdtempSync(path.join(tmpdir(), 'cfs-conf-'));
test.after(() => rmSync(tmp, { recursive: true, force: true }));

function fsck(image: Buffer, name: string): void {
  const f = path.join(tmp, `${name}.img`);
  writeFileSync(f, image);
  try {
    execFileSync('fsck.erofs', [f], { stdio: 'pipe' });
  } catch (e) {
    const err = e as { stdout?: Buffer; stderr?: Buffer };
    assert.fail(`fsck.erofs ${name}: ${String(err.stdout)}${String(err.stderr)}`);
  } finally {
    rmSync(f, { force: true });
  }
}

interface Vector {
  name: string;
  input: Buffer;
  strict: boolean;
  opts: WriteOptions;
  sha: string | null;
}

function vectors(): Vector[] {
  if (VECTORS === undefined) return [];
  const out: Vector[] = [];
  for (const name of readdirSync(VECTORS).sort()) {
    if (!/\.dump(\.gz)?$/.test(name)) continue;
    const raw = readFileSync(path.join(VECTORS, name));
    const input = name.endsWith('.gz') ? gunzipSync(raw) : raw;
    const opts: WriteOptions = {};
    const vf = path.join(VECTORS, `${name}.version`);
    if (existsSync(vf)) {
      const v = Number(readFileSync(vf, 'utf8').trim());
      opts.minVersion = v;
      opts.maxVersion = v;
    }
    const sf = path.join(VECTORS, `${name}.sha256`);
    const sha = existsSync(sf) ? readFileSync(sf, 'utf8').trim().split(/\s+/)[0]! : null;
    out.push({ name, input, strict: !NON_STRICT.has(name), opts, sha });
  }
  return out;
}

const all = vectors();

test('conformance vectors are present', () => {
  // Every vector must run: a missing directory is a failure, not a skip.
  assert.ok(VECTORS !== undefined, '../shared/conformance not found beside the checkout');
  assert.ok(all.filter((v) => v.sha !== null).length >= 14);
  assert.ok(all.filter((v) => v.name.startsWith('should-fail-')).length >= 14);
});

for (const v of all.filter((x) => x.sha !== null)) {
  test(`conformance: ${v.name} gives the C image (sha256), passes fsck.erofs and round-trips`, () => {
    const root = parseDumpfile(v.input, { strict: v.strict });
    const image = writeErofs(root, v.opts);
    assert.equal(sha256(image), v.sha);
    // The writer must not modify its input: writing again gives the same bytes.
    assert.ok(writeErofs(root, v.opts).equals(image), 'second write of the same tree differs');
    fsck(image, v.name);
    // dump(image) re-parsed and re-written with the image's own version reproduces it.
    const dumped = printDumpfile(readErofs(image));
    const version = image.readUInt32LE(12);
    const again = writeErofs(parseDumpfile(dumped, { strict: true }), { minVersion: version, maxVersion: version });
    assert.equal(sha256(again), v.sha, 'round trip through the reader and printer');
  });
}

for (const v of all.filter((x) => x.name.startsWith('should-fail-'))) {
  test(`conformance: ${v.name} is rejected`, () => {
    // C's test-suite runs these without CFS_PARSE_STRICT.
    assert.throws(
      () => writeErofs(parseDumpfile(v.input, { strict: false }), v.opts),
      (e: unknown) => e instanceof CfsError && e.message.length > 0 && !e.message.includes('\n'),
    );
  });
}

const A = '5a'.repeat(32);
const EMPTY = '/ 0 40755 2 0 0 0 0.0 - - -\n';
const SIMPLE =
  EMPTY +
  '/blkdev 0 60000 1 0 0 123 0.0 - - -\n' +
  '/chrdev 0 20000 1 0 0 123 0.0 - - -\n' +
  '/fifo 0 10000 1 0 0 0 0.0 - - -\n' +
  `/regular-external 1234 100000 1 0 0 0 0.0 5a/${A.slice(2)} - ${A}\n` +
  '/regular-inline 4 100000 1 0 0 0 0.0 - hihi -\n' +
  '/socket 0 140000 1 0 0 0 0.0 - - -\n' +
  '/symlink 7 120000 1 0 0 0 0.0 /target - -\n';

const GOLDEN: Array<[string, string, number, string, string]> = [
  ['empty', EMPTY, 0, 'c3dc5b0fc4afb0693a95e017fe5815e1f88f204d485df617541b5ea659aefb8b', '8f589e8f57ecb88823736b0d857ddca1e1068a23e264fad164b28f7038eb3682'],
  ['empty', EMPTY, 1, '18e13c704e2aae7f84be9fda89fdc4c5001c184d279b90a93434e872e5e7c190', '14a26c957c84f6eb774b91205476adc13196c7c33b9dd97d08d43725ecb90b63'],
  ['simple', SIMPLE, 0, '850f94a6374fc4a920e8bc65d10bac1d1e2f3dd7b5c203d351e3ed74c08398aa', '9f3f5620ee0c54708516467d0d58741e7963047c7106b245d94c298259d0fa01'],
  ['simple', SIMPLE, 1, 'c2ef36f4493efe3d15c85789b2ead2b0ece9917ef663339484c8ae35927bc1a1', 'ad6db6427568a1e4fdc772cbab7b6063f5eb4b33cb62982a740ba9213e5962b5'],
];

for (const [name, text, version, sha, verity] of GOLDEN) {
  test(`golden vector ${name} v${version}: sha256 and fs-verity digest of the image`, () => {
    const image = writeErofs(parseDumpfile(Buffer.from(text, 'latin1'), { strict: true }), { minVersion: version, maxVersion: version });
    assert.equal(image.length, 16384);
    assert.equal(sha256(image), sha);
    assert.equal(fsverityDigest(image, 'sha256').toString('hex'), verity);
    fsck(image, `${name}-v${version}`);
  });
}

test('edge values as C mkcomposefs keeps them: a 2^53-byte file, nanoseconds and device numbers of 32 bits (hashes of C mkcomposefs 6fc335c)', () => {
  const cases: Array<[string, string]> = [
    ['/ 0 40755 2 0 0 0 0.0 - - -\n/f 9007199254740992 100644 1 0 0 0 0.0 - - -\n', '6f2e6c06d8e7a359ed343bcd75b4f6f4484aec305afe053ceb13c6d0adac8188'],
    // 4294967296 ns is 0 in C: the root's (5, 0) is the least mtime, compact inodes follow.
    ['/ 0 40755 2 0 0 0 5.4294967296 - - -\n/a 0 100644 1 0 0 0 5.1 - - -\n', '68e567a71d746f8f4f901f3ea101ebe4c37a04aeec08608dcb6aa09196e2fb2b'],
    // Device 2^32 is 0 in C: a whiteout (escaped, version 1).
    ['/ 0 40755 2 0 0 0 0.0 - - -\n/c 0 20644 1 0 0 4294967296 0.0 - - -\n', '4f12bf239275994853c7b82b0a3714df1f5245407e1bec6c51d4e1caca5056ce'],
  ];
  for (const [dump, want] of cases) assert.equal(sha256(writeErofs(parseDumpfile(Buffer.from(dump), { strict: false }))), want, dump);
});

test('default options write version 0 unless the tree has whiteouts', () => {
  const empty = writeErofs(parseDumpfile(Buffer.from(EMPTY), { strict: true }));
  assert.equal(sha256(empty), GOLDEN[0]![3]);
  const wh = writeErofs(parseDumpfile(Buffer.from(EMPTY + '/wh 0 20000 1 0 0 0 0.0 - - -\n'), { strict: true }));
  assert.equal(wh.readUInt32LE(12), 1);
  assert.throws(() => writeErofs(parseDumpfile(Buffer.from(EMPTY), { strict: true }), { maxVersion: 2 }), CfsError);
});
