/** EROFS reader: composefs view of images, and robustness against damaged images. */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { CfsError } from '../src/errors.js';
import { parseDumpfile } from '../src/dumpfile/parse.js';
import { printDumpfile } from '../src/dumpfile/print.js';
import { writeErofs } from '../src/erofs/writer.js';
import { readErofs, readErofsInfo } from '../src/erofs/reader.js';
import { S_IFCHR, type Inode } from '../src/tree/inode.js';

const DUMP =
  '/ 0 40755 2 0 0 0 10.0 - - - security.selinux=ctx\n' +
  '/dir 0 40700 2 1000 1000 0 10.0 - - - user.shared=1\n' +
  '/dir/ext 5000000 100644 2 0 0 0 11.5 ab/cdef - ' + 'ab'.repeat(32) + ' user.shared=1 trusted.overlay.redirect=/x\n' +
  '/dir/link 0 @100644 0 0 0 0 0.0 /dir/ext - -\n' +
  '/dir/wh 0 20000 1 0 0 0 10.0 - - -\n' +
  '/in 70 100600 1 0 0 0 10.0 - ' + 'x'.repeat(70) + ' - user.shared=1\n' +
  '/long 3000 120777 1 0 0 0 10.0 ' + 't'.repeat(3000) + ' - -\n' +
  '/dev 0 60600 1 0 0 2049 10.0 - - -\n';

function image(): Buffer {
  return writeErofs(parseDumpfile(Buffer.from(DUMP), { strict: true }));
}

test('reader reverses the writer: payload, digest, whiteouts, escaped xattrs, hardlinks, stubs dropped', () => {
  const { root, composefsVersion } = readErofsInfo(image());
  assert.equal(composefsVersion, 1);
  const dir = root.children!.get('dir')!;
  const ext = dir.children!.get('ext')!;
  assert.equal(dir.children!.get('link'), ext);
  assert.equal(ext.payload, 'ab/cdef');
  assert.equal(ext.digest!.toString('hex'), 'ab'.repeat(32));
  assert.equal(ext.size, 5000000);
  assert.equal(ext.mtimeNsec, 5);
  assert.deepEqual([...ext.xattrs.keys()].sort(), ['trusted.overlay.redirect', 'user.shared']);
  const wh = dir.children!.get('wh')!;
  assert.equal(wh.mode, S_IFCHR);
  assert.equal(wh.rdev, 0);
  assert.equal(dir.xattrs.get('trusted.overlay.opaque')?.toString(), 'x');
  assert.equal(root.children!.get('in')!.content!.toString(), 'x'.repeat(70));
  assert.equal(root.children!.get('long')!.payload, 't'.repeat(3000));
  assert.equal(root.children!.get('dev')!.rdev, 2049);
  assert.equal([...root.children!.keys()].filter((n) => /^[0-9a-f]{2}$/.test(n)).length, 0);
  assert.ok(!root.xattrs.has('trusted.overlay.opaque'));
  // And back: the dump of the read tree re-creates the same image.
  const again = writeErofs(parseDumpfile(printDumpfile(root), { strict: true }), { minVersion: 1, maxVersion: 1 });
  assert.ok(again.equals(image()));
});

test('reader rejects bad headers with ECORRUPT or ENOTSUP', () => {
  const img = image();
  const bad = (mutate: (b: Buffer) => Buffer, code: string): void => {
    assert.throws(() => readErofs(mutate(Buffer.from(img))), (e: unknown) => e instanceof CfsError && e.code === code);
  };
  bad((b) => b.subarray(0, 100), 'ECORRUPT');
  bad((b) => (b.writeUInt32LE(0, 0), b), 'ECORRUPT');
  bad((b) => (b.writeUInt32LE(2, 4), b), 'ENOTSUP');
  bad((b) => (b.writeUInt32LE(0, 1024), b), 'ECORRUPT');
  bad((b) => (b.writeUInt16LE(0xfff0, 1024 + 14), b), 'ECORRUPT');
});

test('reader rejects a directory cycle', () => {
  const img = Buffer.from(image());
  // Point the first real entry of the root block at the root itself: "dir" becomes the root.
  const rootNid = img.readUInt16LE(1024 + 14);
  const root = readErofs(img);
  assert.ok(root.children!.has('dir'));
  const blocks = img.length / 4096;
  let patched = false;
  for (let b = 0; b < blocks && !patched; b++) {
    const at = b * 4096;
    const first = img.readUInt16LE(at + 8);
    if (first === 0 || first % 12 !== 0 || first > 4096) continue;
    for (let i = 0; i < first / 12; i++) {
      const off = img.readUInt16LE(at + i * 12 + 8);
      if (img.toString('latin1', at + off, at + off + 3) === 'dir' && img[at + i * 12 + 10] === 2) {
        img.writeUInt32LE(rootNid, at + i * 12);
        patched = true;
        break;
      }
    }
  }
  assert.ok(patched, 'root directory block found');
  assert.throws(() => readErofs(img), (e: unknown) => e instanceof CfsError && e.code === 'ECORRUPT' && /twice/.test(e.message));
});

test('damaged images: flipped bytes and truncation never crash or hang the reader', () => {
  const img = image();
  let seed = 12345;
  const rnd = (n: number): number => {
    seed = (Math.imul(seed, 1103515245) + 12345) >>> 0;
    return seed % n;
  };
  let ok = 0;
  let rejected = 0;
  for (let i = 0; i < 3000; i++) {
    const b = Buffer.from(img);
    const flips = 1 + rnd(8);
    // Most of the interesting bytes are in the first 16 KiB (superblock, inodes, xattrs).
    for (let f = 0; f < flips; f++) b[rnd(i % 3 === 0 ? b.length : 16384)] = rnd(256);
    const input = i % 10 === 0 ? b.subarray(0, rnd(b.length)) : b;
    let tree: Inode;
    try {
      tree = readErofs(input);
    } catch (e) {
      assert.ok(e instanceof CfsError, `iteration ${i}: ${String(e)}`);
      rejected++;
      continue;
    }
    printDumpfile(tree);
    ok++;
  }
  assert.ok(ok > 0 && rejected > 0, `ok ${ok} rejected ${rejected}`);
});

test('a hardlinked inode without a recorded real entry sits at its first entry in depth-first name order (as composefs-rs places it)', () => {
  // /x/b is met first by a directory-at-a-time walk, /x/a/f first depth-first.
  const dump =
    '/ 0 40755 3 0 0 0 10.0 - - -\n' +
    '/x 0 40755 3 0 0 0 10.0 - - -\n' +
    '/x/a 0 40755 2 0 0 0 10.0 - - -\n' +
    '/x/a/f 5000 100644 2 0 0 0 10.0 ab/cdef - ' + 'ab'.repeat(32) + '\n' +
    '/x/b 0 @100644 0 0 0 0 0.0 /x/a/f - -\n' +
    '/x/c 10 100644 1 0 0 0 10.0 - 0123456789 -\n';
  const fromDump = writeErofs(parseDumpfile(Buffer.from(dump), { strict: true }));
  // The tree read back from the image records no real entry (as a tree from OCI layers).
  const read = readErofs(fromDump);
  assert.ok(writeErofs(read).equals(fromDump));
  assert.match(printDumpfile(read).toString(), /^\/x\/a\/f 5000 100644 2 .*\n\/x\/b \d+ @100644 .* \/x\/a\/f /m);
});
