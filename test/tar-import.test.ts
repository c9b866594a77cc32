import { test } from 'node:test';
import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import { createReadStream, lstatSync, mkdirSync, mkdtempSync, readdirSync, readFileSync, rmSync, symlinkSync, linkSync, utimesSync, writeFileSync, truncateSync } from 'node:fs';
import { createHash, randomBytes } from 'node:crypto';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { Repository } from '../src/repository/index.js';
import { importTarLayer, readLayerEntries, catStream, type TarEntry } from '../src/tar/index.js';
import { CfsError } from '../src/errors.js';

const BIG = 5 * 1024 * 1024;

interface Fixture {
  dir: string;
  src: string;
  repo: Repository;
}

async function withFixture(fn: (f: Fixture) => Promise<void>): Promise<void> {
  const dir = mkdtempSync(path.join(tmpdir(), 'cfs-tar-'));
  const repo = await Repository.init(path.join(dir, 'repo'), { insecure: true });
  try {
    const src = path.join(dir, 'src');
    makeTree(src);
    await fn({ dir, src, repo });
  } finally {
    repo.close();
    rmSync(dir, { recursive: true, force: true });
  }
}

const LONG100 = `d/${'a'.repeat(60)}/${'b'.repeat(60)}`;
const LONG255 = `${'x'.repeat(100)}/${'y'.repeat(100)}/${'z'.repeat(100)}`;
const LONG_TARGET = `target/${'t'.repeat(150)}`;

function makeTree(src: string): void {
  mkdirSync(path.join(src, 'd'), { recursive: true, mode: 0o750 });
  mkdirSync(path.dirname(path.join(src, LONG100)));
  mkdirSync(path.join(src, 'x'.repeat(100), 'y'.repeat(100)), { recursive: true });
  writeFileSync(path.join(src, 'empty'), '');
  writeFileSync(path.join(src, 'f64'), randomBytes(64));
  writeFileSync(path.join(src, 'f65'), randomBytes(65), { mode: 0o4755 });
  writeFileSync(path.join(src, 'big'), randomBytes(BIG));
  writeFileSync(path.join(src, LONG100), 'long name');
  writeFileSync(path.join(src, LONG255), randomBytes(1000));
  symlinkSync(LONG_TARGET, path.join(src, 'sl'));
  symlinkSync('f64', path.join(src, 'short-sl'));
  linkSync(path.join(src, 'f65'), path.join(src, 'hl'));
  execFileSync('mknod', [path.join(src, 'cdev'), 'c', '1', '3']);
  execFileSync('mknod', [path.join(src, 'bdev'), 'b', '8', '300']);
  execFileSync('mkfifo', [path.join(src, 'fifo')]);
  execFileSync('setfattr', ['-n', 'user.test', '-v', 'hello', path.join(src, 'f64')]);
  execFileSync('setfattr', ['-n', 'user.bin', '-v', '0x00ff10', path.join(src, 'f64')]);
  execFileSync('touch', ['-h', '-d', '2020-01-01 00:00:00.123456789', path.join(src, 'f65')]);
  utimesSync(path.join(src, 'big'), 1_000_000, 1_600_000_000.5);
}

function sha256(b: Buffer): string {
  return createHash('sha256').update(b).digest('hex');
}

function tarOf(f: Fixture, name: string, args: string[]): Buffer {
  const out = path.join(f.dir, name);
  execFileSync('tar', [...args, '-cf', out, '-C', f.src, '.'], { stdio: 'pipe' });
  return readFileSync(out);
}

async function catBytes(repo: Repository, ref: string): Promise<Buffer> {
  const parts: Buffer[] = [];
  for await (const b of catStream(repo, ref)) parts.push(Buffer.from(b));
  return Buffer.concat(parts);
}

async function entries(repo: Repository, ref: string | Buffer): Promise<Map<string, TarEntry>> {
  const m = new Map<string, TarEntry>();
  for await (const e of readLayerEntries(repo, ref)) m.set(e.path, e);
  return m;
}

async function* chunked(data: Buffer, size: number): AsyncGenerator<Buffer> {
  for (let off = 0; off < data.length; off += size) yield data.subarray(off, off + size);
}

/** Import, then check diff_id, cat round trip and every entry against the source tree. */
async function checkFormat(f: Fixture, tar: Buffer, opts: { nsec: boolean; xattrs: boolean; uid?: number; gid?: number; chunk: number }): Promise<void> {
  const diffId = `sha256:${sha256(tar)}`;
  const res = await importTarLayer(f.repo, chunked(tar, opts.chunk), { expectedDiffId: diffId, layerName: 'test', collectEntries: true });
  assert.equal(res.diffId, diffId);
  // The entries the import kept for the image build are exactly what reading the stream back gives.
  const readBack: TarEntry[] = [];
  for await (const e of readLayerEntries(f.repo, res.streamId)) readBack.push(e);
  assert.deepEqual(res.entries, readBack);
  assert.equal(res.size, tar.length);
  assert.deepEqual(await f.repo.hasStream(`oci-layer-${diffId}`), res.streamId);
  const back = await catBytes(f.repo, `oci-layer-${diffId}`);
  assert.equal(back.length, tar.length);
  assert.equal(sha256(back), sha256(tar));

  const m = await entries(f.repo, `oci-layer-${diffId}`);
  const walk = (rel: string): string[] => {
    const out = [rel];
    const st = lstatSync(path.join(f.src, rel));
    if (st.isDirectory()) for (const n of readdirSync(path.join(f.src, rel))) out.push(...walk(rel === '.' ? n : `${rel}/${n}`));
    return out;
  };
  const paths = walk('.');
  assert.equal(m.size, paths.length);
  for (const rel of paths) {
    const tarPath = rel === '.' ? './' : `./${rel}`;
    const e = m.get(tarPath) ?? m.get(`${tarPath}/`);
    assert.ok(e, `missing entry ${tarPath}`);
    const st = lstatSync(path.join(f.src, rel), { bigint: true });
    const msg = `${tarPath}`;
    assert.equal(e.mode, Number(st.mode) & 0o7777, msg);
    assert.equal(e.uid, opts.uid ?? Number(st.uid), msg);
    assert.equal(e.gid, opts.gid ?? Number(st.gid), msg);
    assert.equal(e.mtimeSec, Number(st.mtimeNs / 1_000_000_000n), msg);
    assert.equal(e.mtimeNsec, opts.nsec ? Number(st.mtimeNs % 1_000_000_000n) : 0, msg);
    if ((rel === 'hl' || rel === 'f65') && e.type === 'hardlink') {
      // Whichever of the two names tar met second is the hardlink.
      assert.equal(e.linkTarget, rel === 'hl' ? './f65' : './hl');
      assert.equal(e.content, null);
      assert.equal(e.size, 0);
      continue;
    }
    if (st.isDirectory()) assert.equal(e.type, 'directory', msg);
    else if (st.isSymbolicLink()) {
      assert.equal(e.type, 'symlink', msg);
      assert.equal(e.linkTarget, rel === 'sl' ? LONG_TARGET : 'f64');
    } else if (st.isCharacterDevice() || st.isBlockDevice()) {
      assert.equal(e.type, st.isCharacterDevice() ? 'char' : 'block', msg);
      assert.equal(e.rdev, Number(st.rdev), msg); // Node's st_rdev uses the same makedev encoding
    } else if (st.isFIFO()) assert.equal(e.type, 'fifo', msg);
    else {
      assert.equal(e.type, 'file', msg);
      const data = readFileSync(path.join(f.src, rel));
      assert.equal(e.size, data.length, msg);
      assert.ok(e.content, msg);
      if (data.length <= 64) assert.deepEqual(e.content, { kind: 'inline', data }, msg);
      else {
        assert.equal(e.content.kind, 'external', msg);
        if (e.content.kind === 'external') {
          assert.equal(e.content.size, data.length);
          assert.deepEqual(await f.repo.readObject(e.content.id), data, msg);
        }
      }
    }
    if (opts.xattrs && rel === 'f64') {
      assert.deepEqual(e.xattrs, new Map([['user.bin', Buffer.from([0, 0xff, 0x10])], ['user.test', Buffer.from('hello')]]));
    } else assert.equal(e.xattrs.size, 0, msg);
  }
  assert.equal(m.get('./bdev')?.rdev, 1050668); // makedev(8, 300): minor bits above 8 go to bits 20+
}

test('GNU tar --format=pax with xattrs: byte-exact round trip, entries match the tree', async () => {
  await withFixture(async (f) => {
    const tar = tarOf(f, 'pax.tar', ['--format=pax', '--xattrs', '--xattrs-include=user.*']);
    await checkFormat(f, tar, { nsec: true, xattrs: true, chunk: 4093 });
  });
});

test('GNU tar --format=gnu (long name/link entries, base-256 uid/gid)', async () => {
  await withFixture(async (f) => {
    const tar = tarOf(f, 'gnu.tar', ['--format=gnu', '--owner=big:3000000000', '--group=big:4000000000']);
    await checkFormat(f, tar, { nsec: false, xattrs: false, uid: 3000000000, gid: 4000000000, chunk: 65536 });
    const pax = tarOf(f, 'pax-uid.tar', ['--format=pax', '--owner=big:3000000000', '--group=big:4000000000']);
    await checkFormat(f, pax, { nsec: true, xattrs: false, uid: 3000000000, gid: 4000000000, chunk: 1 << 20 });
  });
});

test('GNU tar --format=ustar (prefix + name)', async () => {
  await withFixture(async (f) => {
    // ustar cannot hold the >255-byte path or the long link target.
    rmSync(path.join(f.src, 'x'.repeat(100)), { recursive: true });
    rmSync(path.join(f.src, 'sl'));
    symlinkSync(LONG_TARGET.slice(0, 90), path.join(f.src, 'sl'));
    const tar = tarOf(f, 'ustar.tar', ['--format=ustar']);
    const diffId = `sha256:${sha256(tar)}`;
    await importTarLayer(f.repo, chunked(tar, 10_000), { expectedDiffId: diffId });
    assert.equal(sha256(await catBytes(f.repo, `oci-layer-${diffId}`)), sha256(tar));
    const m = await entries(f.repo, `oci-layer-${diffId}`);
    assert.equal(m.get(`./${LONG100}`)?.content?.kind, 'inline');
    assert.equal(m.get('./sl')?.linkTarget, LONG_TARGET.slice(0, 90));
    assert.equal(m.get('./big')?.size, BIG);
  });
});

test('diff_id mismatch links nothing; existing layers are skipped without reading', async () => {
  await withFixture(async (f) => {
    const tar = tarOf(f, 'pax.tar', ['--format=pax']);
    const wrong = `sha256:${'0'.repeat(64)}`;
    await assert.rejects(importTarLayer(f.repo, chunked(tar, 65536), { expectedDiffId: wrong, layerName: 'L1' }), (e: unknown) =>
      e instanceof CfsError && e.code === 'EDIGEST' && e.message === `layer L1: diff_id mismatch: expected ${wrong}, got sha256:${sha256(tar)}`);
    assert.deepEqual(readdirSync(path.join(f.repo.path, 'streams')), []);
    const diffId = `sha256:${sha256(tar)}`;
    const first = await importTarLayer(f.repo, createReadStream(path.join(f.dir, 'pax.tar')), { expectedDiffId: diffId });
    const untouchable: AsyncIterable<Buffer> = {
      [Symbol.asyncIterator]() {
        throw new Error('must not be read');
      },
    };
    const again = await importTarLayer(f.repo, untouchable, { expectedDiffId: diffId });
    assert.deepEqual(again, first);
    // Without an expected digest the layer is named by what was read; same bytes, same stream.
    const third = await importTarLayer(f.repo, chunked(tar, 777));
    assert.deepEqual(third, first);
  });
});

test('truncated tars, sparse files and GNU volume headers are rejected with clear errors', async () => {
  await withFixture(async (f) => {
    const tar = tarOf(f, 'pax.tar', ['--format=pax']);
    const bigAt = tar.indexOf(Buffer.from('./big\0'));
    const cases: Array<[Buffer, RegExp]> = [
      [tar.subarray(0, bigAt + 300), /layer T: unexpected EOF in tar stream \(truncated header\)/],
      [tar.subarray(0, 700), /layer T: unexpected EOF reading tar/],
      [tar.subarray(0, bigAt + 512 * 3 + 100_000), /unexpected EOF reading tar entry \.\/big/],
    ];
    writeFileSync(path.join(f.src, 'sparse'), '');
    truncateSync(path.join(f.src, 'sparse'), 10 << 20);
    writeFileSync(path.join(f.src, 'sparse'), 'data at the start', { flag: 'r+' });
    cases.push([tarOf(f, 'sparse-gnu.tar', ['--format=gnu', '--sparse']), /layer T: \.\/sparse: sparse tar entries are not supported/]);
    cases.push([tarOf(f, 'sparse-pax.tar', ['--format=pax', '--sparse']), /sparse tar entries are not supported/]);
    rmSync(path.join(f.src, 'sparse'));
    cases.push([tarOf(f, 'vol.tar', ['--format=gnu', '-V', 'VOLUME']), /layer T: VOLUME: unsupported tar entry type 'V'/]);
    for (const [bytes, re] of cases) {
      await assert.rejects(importTarLayer(f.repo, chunked(bytes, 65536), { layerName: 'T' }), (e: unknown) => e instanceof CfsError && e.code === 'EINVAL' && re.test(e.message));
    }
    assert.deepEqual(readdirSync(path.join(f.repo.path, 'streams')), []);
  });
});

test('a damaged layer split stream is reported as ECORRUPT', async () => {
  await withFixture(async (f) => {
    const tar = tarOf(f, 'pax.tar', ['--format=pax']);
    const res = await importTarLayer(f.repo, chunked(tar, 65536));
    const obj = f.repo.objectPath(res.streamId);
    const full = readFileSync(obj);
    truncateSync(obj, full.length - 50);
    const name = `oci-layer-${res.diffId}`;
    const isCorrupt = (e: unknown): boolean => e instanceof CfsError && e.code === 'ECORRUPT' && e.message.includes(`split stream ${name}`);
    await assert.rejects(entries(f.repo, name), isCorrupt);
    await assert.rejects(catBytes(f.repo, name), isCorrupt);
  });
});
