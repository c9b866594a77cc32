import { test } from 'node:test';
import assert from 'node:assert/strict';
import { mkdtempSync, rmSync } from 'node:fs';
import { createHash, randomBytes } from 'node:crypto';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { pack as tarPack, type Header as TarStreamHeader } from 'tar-stream';
import { Repository } from '../src/repository/index.js';
import { importTarLayer, readLayerEntries, catStream, makedev, type TarEntry } from '../src/tar/index.js';
import { SplitStreamWriter, CONTENT_TYPES } from '../src/splitstream/index.js';
import { CfsError } from '../src/errors.js';

async function withRepo(fn: (repo: Repository) => Promise<void>): Promise<void> {
  const d = mkdtempSync(path.join(tmpdir(), 'cfs-tarh-'));
  const repo = await Repository.init(path.join(d, 'r'), { insecure: true });
  try {
    await fn(repo);
  } finally {
    repo.close();
    rmSync(d, { recursive: true, force: true });
  }
}

async function* once(b: Buffer): AsyncGenerator<Buffer> {
  yield b;
}

async function importAndRead(repo: Repository, tar: Buffer): Promise<TarEntry[]> {
  const hex = createHash('sha256').update(tar).digest('hex');
  const res = await importTarLayer(repo, once(tar), { expectedDiffId: `sha256:${hex}` });
  const parts: Buffer[] = [];
  for await (const b of catStream(repo, `oci-layer-${res.diffId}`)) parts.push(Buffer.from(b));
  assert.deepEqual(Buffer.concat(parts), tar, 'cat reproduces the tar');
  const out: TarEntry[] = [];
  for await (const e of readLayerEntries(repo, res.streamId)) out.push(e);
  return out;
}

type Header = Partial<TarStreamHeader> & { name: string; pax?: Record<string, string> };

function packWith(entries: Array<[Header, Buffer?]>): Promise<Buffer> {
  const pack = tarPack();
  const parts: Buffer[] = [];
  pack.on('data', (b: unknown) => parts.push(b as Buffer));
  const done = new Promise<Buffer>((resolve, reject) => {
    pack.on('end', () => resolve(Buffer.concat(parts)));
    pack.on('error', reject);
  });
  for (const [h, data] of entries) {
    if (data) pack.entry(h, data);
    else pack.entry(h);
  }
  pack.finalize();
  return done;
}

/** A raw header block with a correct checksum (for entry kinds tar-stream cannot write). */
function rawHeader(name: string, type: string, size: number, opts: { uidBase256?: bigint } = {}): Buffer {
  const b = Buffer.alloc(512);
  b.write(name, 0, 100, 'latin1');
  b.write('0000644\0', 100);
  b.write('0000000\0', 108);
  b.write('0000000\0', 116);
  b.write(`${size.toString(8).padStart(11, '0')}\0`, 124);
  b.write('00000000000\0', 136);
  b.write(type, 156, 1, 'latin1');
  b.write('ustar\0', 257);
  b.write('00', 263);
  if (opts.uidBase256 !== undefined) {
    let v = opts.uidBase256;
    for (let i = 7; i >= 1; i--, v >>= 8n) b[108 + i] = Number(v & 0xffn);
    b[108] = 0x80;
  }
  b.fill(0x20, 148, 156);
  let sum = 0;
  for (const c of b) sum += c;
  b.write(`${sum.toString(8).padStart(6, '0')}\0 `, 148);
  return b;
}

function padded(data: Buffer): Buffer {
  return Buffer.concat([data, Buffer.alloc((512 - (data.length % 512)) % 512)]);
}

function paxData(records: Array<[string, Buffer | string]>): Buffer {
  return Buffer.concat(records.map(([k, v]) => {
    const body = Buffer.concat([Buffer.from(` ${k}=`), Buffer.from(v), Buffer.from('\n')]);
    let len = body.length + 1;
    while (String(len).length + body.length !== len) len++;
    return Buffer.concat([Buffer.from(String(len)), body]);
  }));
}

test('tar-stream archives: PAX records, xattrs, fractional mtime, devices, long names', async () => {
  await withRepo(async (repo) => {
    const big = randomBytes(200_000);
    const longName = `${'n'.repeat(150)}/${'m'.repeat(150)}`;
    const longLink = `/${'l'.repeat(300)}`;
    const tar = await packWith([
      [{ name: 'dir/', type: 'directory', mode: 0o755, mtime: new Date(1_000_000_000_000), uid: 1, gid: 2 }],
      [{ name: 'dir/small', size: 5, mode: 0o600, mtime: new Date(1_500_000_000_000) }, Buffer.from('small')],
      [{ name: 'dir/exact64', size: 64, mtime: new Date(0) }, Buffer.alloc(64, 1)],
      [{ name: 'dir/big', size: big.length, mtime: new Date(0),
        pax: { mtime: '1700000000.123456789123', 'SCHILY.xattr.user.a': 'x=y', 'LIBARCHIVE.xattr.user.b': 'ignored' } }, big],
      [{ name: 'half', size: 0, mtime: new Date(0), pax: { mtime: '1700000000.5' } }, Buffer.alloc(0)],
      [{ name: longName, size: 3, mtime: new Date(0) }, Buffer.from('abc')],
      [{ name: 'link-to-long', type: 'symlink', linkname: longLink, mtime: new Date(0) }],
      [{ name: 'hard', type: 'link', linkname: 'dir/big', mtime: new Date(0) }],
      [{ name: 'null', type: 'character-device', devmajor: 1, devminor: 3, mtime: new Date(0) }],
      [{ name: 'huge-dev', type: 'block-device', devmajor: 300, devminor: 70000, mtime: new Date(0) }],
      [{ name: 'pipe', type: 'fifo', mtime: new Date(0) }],
    ]);
    const e = await importAndRead(repo, tar);
    const by = new Map(e.map((x) => [x.path, x]));
    assert.deepEqual(e.map((x) => x.path), ['dir/', 'dir/small', 'dir/exact64', 'dir/big', 'half', longName, 'link-to-long', 'hard', 'null', 'huge-dev', 'pipe']);
    assert.deepEqual({ ...by.get('dir/'), xattrs: undefined }, {
      path: 'dir/', type: 'directory', mode: 0o755, uid: 1, gid: 2, mtimeSec: 1_000_000_000, mtimeNsec: 0, linkTarget: null, rdev: 0, size: 0,
      xattrs: undefined, content: null,
    });
    assert.deepEqual(by.get('dir/small')?.content, { kind: 'inline', data: Buffer.from('small') });
    assert.equal(by.get('dir/small')?.mode, 0o600);
    assert.deepEqual(by.get('dir/exact64')?.content, { kind: 'inline', data: Buffer.alloc(64, 1) });
    const b = by.get('dir/big')!;
    assert.equal(b.mtimeSec, 1_700_000_000);
    assert.equal(b.mtimeNsec, 123_456_789); // truncated to 9 digits
    assert.deepEqual([...b.xattrs], [['user.a', Buffer.from('x=y')]]);
    assert.equal(b.content?.kind, 'external');
    if (b.content?.kind === 'external') assert.deepEqual(await repo.readObject(b.content.id), big);
    assert.equal(by.get('half')?.mtimeNsec, 500_000_000);
    assert.deepEqual(by.get(longName)?.content, { kind: 'inline', data: Buffer.from('abc') });
    assert.equal(by.get('link-to-long')?.linkTarget, longLink);
    assert.equal(by.get('hard')?.type, 'hardlink');
    assert.equal(by.get('hard')?.linkTarget, 'dir/big');
    assert.equal(by.get('null')?.rdev, makedev(1, 3));
    assert.equal(makedev(1, 3), 259);
    assert.equal(by.get('huge-dev')?.rdev, makedev(300, 70000));
    assert.equal(makedev(300, 70000), (70000 & 0xff) | (300 << 8) | ((70000 & ~0xff) * 4096));
    assert.equal(by.get('pipe')?.type, 'fifo');
  });
});

test('hand-made headers: global PAX, stray zero block, base-256 uid, trailing data, missing end marker', async () => {
  await withRepo(async (repo) => {
    const g = paxData([['comment', 'global header, not applied'], ['path', 'not-applied']]);
    const local = paxData([['path', 'from-pax'], ['uid', '12345'], ['SCHILY.xattr.security.capability', Buffer.from([1, 0, 0, 2])]]);
    const tar = Buffer.concat([
      rawHeader('pax_global_header', 'g', g.length), padded(g),
      rawHeader('first', '0', 2), padded(Buffer.from('hi')),
      Buffer.alloc(512), // single stray zero block, followed by a header
      rawHeader('./PaxHeaders/x', 'x', local.length), padded(local),
      rawHeader('ignored-name', '0', 0),
      rawHeader('big-uid', '5', 0, { uidBase256: 0x123456789an }),
      Buffer.alloc(1024), // end of archive
      Buffer.from('trailing bytes after the end marker are kept'),
    ]);
    const e = await importAndRead(repo, tar);
    assert.deepEqual(e.map((x) => x.path), ['first', 'from-pax', 'big-uid']);
    assert.equal(e[1].uid, 12345);
    assert.deepEqual([...e[1].xattrs], [['security.capability', Buffer.from([1, 0, 0, 2])]]);
    assert.equal(e[2].uid, 0x123456789a % 2 ** 32); // truncated to u32
    // EOF at a header boundary without the end marker is accepted.
    const noEnd = Buffer.concat([rawHeader('only', '0', 1), padded(Buffer.from('x'))]);
    assert.deepEqual((await importAndRead(repo, noEnd)).map((x) => x.path), ['only']);
    // Empty input is an empty layer.
    assert.deepEqual(await importAndRead(repo, Buffer.alloc(0)), []);
  });
});

test('PAX: empty values leave the header field in effect; negative fractional times count back from the epoch', async () => {
  await withRepo(async (repo) => {
    const empty = paxData([['uid', ''], ['path', ''], ['mtime', ''], ['gid', '7']]);
    const neg = paxData([['mtime', '-1.5']]);
    const negWhole = paxData([['mtime', '-3']]);
    const tar = Buffer.concat([
      rawHeader('./PaxHeaders/a', 'x', empty.length), padded(empty),
      rawHeader('header-name', '0', 0),
      rawHeader('./PaxHeaders/b', 'x', neg.length), padded(neg),
      rawHeader('before-epoch', '0', 0),
      rawHeader('./PaxHeaders/c', 'x', negWhole.length), padded(negWhole),
      rawHeader('whole-seconds', '0', 0),
      Buffer.alloc(1024),
    ]);
    const e = await importAndRead(repo, tar);
    assert.deepEqual(e.map((x) => [x.path, x.uid, x.gid, x.mtimeSec, x.mtimeNsec]), [
      ['header-name', 0, 7, 0, 0],
      ['before-epoch', 0, 0, -2, 500_000_000],
      ['whole-seconds', 0, 0, -3, 0],
    ]);
  });
});

test('malformed headers are rejected naming the layer', async () => {
  await withRepo(async (repo) => {
    const bad = (b: Buffer): Buffer => {
      b[0] ^= 1;
      return b;
    };
    const sparsePax = paxData([['GNU.sparse.major', '1'], ['GNU.sparse.minor', '0']]);
    const badPax = paxData([['size', '12x']]);
    const longPax = Buffer.alloc(2 * 1024 * 1024);
    const cases: Array<[Buffer, RegExp]> = [
      [Buffer.concat([bad(rawHeader('f', '0', 0)), Buffer.alloc(1024)]), /layer L: tar header checksum mismatch/],
      [Buffer.concat([rawHeader('f', 'S', 0), Buffer.alloc(1024)]), /layer L: f: sparse tar entries are not supported/],
      [Buffer.concat([rawHeader('p', 'x', sparsePax.length), padded(sparsePax), rawHeader('f', '0', 0)]), /f: sparse tar entries are not supported/],
      [Buffer.concat([rawHeader('p', 'x', badPax.length), padded(badPax), rawHeader('f', '0', 0)]), /f: PAX header: invalid size '12x'/],
      [Buffer.concat([rawHeader('p', 'x', longPax.length), longPax]), /exceeds the limit/],
      [Buffer.concat([rawHeader('weird', 'Z', 0), Buffer.alloc(1024)]), /layer L: weird: unsupported tar entry type 'Z'/],
      [Buffer.concat([rawHeader('L', 'L', 4), padded(Buffer.from('abc\0')), Buffer.alloc(1024)]), /orphaned metadata/],
      [Buffer.concat([rawHeader('L', 'L', 4), padded(Buffer.from('abc\0')), rawHeader('L', 'L', 4), padded(Buffer.from('abd\0'))]), /duplicate 'L'/],
      [Buffer.concat(Array.from({ length: 17 }, () => [rawHeader('g', 'g', 0)]).flat()), /more than 16 consecutive metadata entries/],
      [Buffer.concat([rawHeader('', '0', 0), Buffer.alloc(1024)]), /empty path/],
    ];
    for (const [tar, re] of cases) {
      await assert.rejects(importTarLayer(repo, once(tar), { layerName: 'L' }), (e: unknown) => e instanceof CfsError && e.code === 'EINVAL' && re.test(e.message),
        `expected ${re}`);
    }
  });
});

test('layer reader validates small/large file placement (brief 2.9)', async () => {
  await withRepo(async (repo) => {
    const data = Buffer.from('ten bytes!');
    const w = new SplitStreamWriter(repo, { contentType: CONTENT_TYPES.layer });
    w.writeInline(rawHeader('small-but-external', '0', data.length));
    await w.writeExternal(data);
    w.writeInline(Buffer.alloc(512 - data.length));
    const id = await w.finish();
    const read = async (sid: Buffer): Promise<void> => {
      for await (const _ of readLayerEntries(repo, sid)) void _;
    };
    await assert.rejects(read(id), (e: unknown) => e instanceof CfsError && e.code === 'ECORRUPT' && /small-but-external: small \(10 byte\) file stored external/.test(e.message));
    const w2 = new SplitStreamWriter(repo, { contentType: CONTENT_TYPES.layer });
    w2.writeInline(rawHeader('large-inline', '0', 100));
    w2.writeInline(Buffer.alloc(512));
    await assert.rejects(read(await w2.finish()), (e: unknown) => e instanceof CfsError && e.code === 'ECORRUPT' && /large \(100 byte\) file stored inline/.test(e.message));
    const w3 = new SplitStreamWriter(repo, { contentType: CONTENT_TYPES.layer });
    await w3.writeExternal(Buffer.alloc(512));
    await assert.rejects(read(await w3.finish()), (e: unknown) => e instanceof CfsError && e.code === 'ECORRUPT' && /unexpected external reference in tar header/.test(e.message));
  });
});
