/** Dumpfile parser and printer: C semantics for escapes, errors, hardlinks and strict mode. */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { CfsError } from '../src/errors.js';
import { parseDumpfile } from '../src/dumpfile/parse.js';
import { printDumpfile } from '../src/dumpfile/print.js';
import { escape, unescape } from '../src/dumpfile/escape.js';
import type { Inode } from '../src/tree/inode.js';

const ROOT = '/ 0 40755 2 0 0 0 0.0 - - -\n';
const parse = (text: string, strict = true): Inode => parseDumpfile(Buffer.from(text, 'latin1'), { strict });
const child = (dir: Inode, ...names: string[]): Inode => names.reduce((n, name) => n.children!.get(name)!, dir);

function rejects(text: string, re: RegExp, strict = true, code = 'EINVAL'): void {
  assert.throws(
    () => parse(text, strict),
    (e: unknown) => e instanceof CfsError && e.code === code && re.test(e.message) && !e.message.includes('\n'),
    `expected ${re} for ${JSON.stringify(text.slice(0, 80))}`,
  );
}

test('escapes: \\\\ \\n \\r \\t \\xHH, lone dash and empty optional fields', () => {
  const root = parse(ROOT + '/a\\x20b\\t 3 100644 1 0 0 0 5.7 - \\x2d\\n\\\\ - user.k\\x3d=v\\x00=\n' + '/e 0 100644 1 0 0 0 0.0 - - -\n');
  const f = child(root, 'a b\t');
  assert.deepEqual(f.content, Buffer.from('-\n\\'));
  assert.equal(f.mtimeSec, 5);
  assert.equal(f.mtimeNsec, 7);
  assert.deepEqual(f.xattrs.get('user.k='), Buffer.from('v\0='));
  assert.equal(child(root, 'e').content, null);
  assert.equal(unescape('\\x41\\x6a'), 'Aj');
  assert.equal(escape('a b=\\\x7f\xff', { equal: true }), 'a\\x20b\\x3d\\\\\\x7f\\xff');
  assert.equal(escape('-', { loneDash: true }), '\\x2d');
});

test('line errors carry the line number and C message', () => {
  rejects('', /No files in dump file/);
  rejects(ROOT + '\n', /^line 2: Invalid empty path/);
  rejects(ROOT + '/a 0 100644 1 0 0 0 0.0 - - -', /^line 2: Missing trailing newline/);
  rejects(ROOT + '/a\0 0 100644 1 0 0 0 0.0 - - -\n', /line 2: Invalid embedded NUL character at position 2/);
  rejects(ROOT + '/a\\q 0 100644 1 0 0 0 0.0 - - -\n', /Unsupported escape type q/);
  rejects(ROOT + '/a\\ 0 100644 1 0 0 0 0.0 - - -\n', /No character after escape/);
  rejects(ROOT + '/a\\x4 0 100644 1 0 0 0 0.0 - - -\n', /No hex characters after hex escape/);
  rejects(ROOT + '/a\\xzz 0 100644 1 0 0 0 0.0 - - -\n', /Invalid hex characters/);
  rejects(ROOT + '/a x 100644 1 0 0 0 0.0 - - -\n', /Invalid integer x/);
  rejects(ROOT + '/a 0 100644 1 0 0 0 0 - - -\n', /Invalid integer $/);
  rejects(ROOT + '/a 0 170644 1 0 0 0 0.0 - - -\n', /Invalid mode 170644/);
  rejects('/a 0 100644 1 0 0 0 0.0 - - -\n', /Root node not present/);
  rejects('/ 0 100644 1 0 0 0 0.0 - - -\n', /Root must be a directory/);
  rejects(ROOT + ROOT, /Can't have multiple roots/);
  rejects(ROOT + '/a/b 0 100644 1 0 0 0 0.0 - - -\n', /Parent directory missing for \/a\/b/);
  rejects(ROOT + '/a 0 100644 1 0 0 0 0.0 - - -\n/a/b 0 100644 1 0 0 0 0.0 - - -\n', /Parent must be a directory/);
  rejects(ROOT + '/a 0 100644 1 0 0 0 0.0 - - -\n/a 0 100644 1 0 0 0 0.0 - - -\n', /^line 3: Path \/a already exist/);
  rejects(ROOT + `/${'n'.repeat(256)} 0 100644 1 0 0 0 0.0 - - -\n`, /Can't add child/);
  rejects(ROOT + '/a 3 100644 1 0 0 0 0.0 - ab -\n', /Invalid content size 2, must match size 3/);
  rejects(ROOT + '/a 0 100644 1 0 0 0 0.0 - - - user.x\n', /Missing = in xattr/);
  rejects(ROOT + '/a 0 100644 1 0 0 0 0.0 - - - a=1  b=2\n', /Missing = in xattr/);
  rejects(ROOT + `/a 0 100644 1 0 0 0 0.0 - - - user.${'k'.repeat(251)}=1\n`, /Can't set xattr/);
  rejects(ROOT + '/a 0 100644 1 0 0 0 0.0 - - zz\n', /Invalid digest/);
  rejects(ROOT + `/a 0 120777 1 0 0 0 0.0 ${'t'.repeat(4096)} - -\n`, /Invalid symlink/);
  rejects(ROOT + `/a 0 100644 1 0 0 0 0.0 ${'p'.repeat(4096)} - -\n`, /Invalid payload/);
});

test('strict mode: rdev on non-devices, symlink size and content, trailing newline', () => {
  rejects(ROOT + '/a 0 100644 1 0 0 5 0.0 - - -\n', /Non-zero devnum on non-device/);
  rejects(ROOT + '/l 5 120777 1 0 0 0 0.0 target - -\n', /Invalid symlink size 6, must match size 5/);
  rejects(ROOT + '/l 6 120777 1 0 0 0 0.0 target abcdef -\n', /Symlink cannot have content/);
  const root = parse(ROOT + '/a 0 100644 1 0 0 5 0.0 - - -\n/l 5 120777 1 0 0 0 0.0 target - -\n/x 0 100644 1 0 0 0 0.0 - - -', false);
  assert.equal(child(root, 'l').size, 6);
  assert.equal(child(root, 'a').rdev, 0);
  assert.ok(root.children!.has('x'));
});

test('hardlinks: forward references, chains, shared inode, own nlink kept', () => {
  const root = parse(
    ROOT +
      '/h1 0 @100644 0 0 0 0 0.0 /h2 - -\n' +
      '/h2 0 @120777 0 0 0 0 0.0 /real - -\n' +
      '/real 3 100644 1 7 0 0 0.0 - abc -\n',
  );
  const real = child(root, 'real');
  assert.equal(child(root, 'h1'), real);
  assert.equal(child(root, 'h2'), real);
  assert.equal(real.nlink, 1);
  assert.equal(real.uid, 7);
  // The printer writes the first occurrence in full, the others as `@` lines pointing at it.
  const text = printDumpfile(root).toString('latin1');
  assert.match(text, /^\/h1 3 100644 1 7 0 0 0\.0 - abc -$/m);
  assert.match(text, /^\/h2 3 @100644 1 7 0 0 0\.0 \/h1 abc -$/m);
});

test('hardlink errors', () => {
  rejects(ROOT + '/h 0 @100644 0 0 0 0 0.0 - - -\n', /line 2: No target path for the hardlink/);
  rejects(ROOT + '/h 0 @100644 0 0 0 0 0.0 /nope - -\n', /No target at \/nope for hardlink/);
  rejects(ROOT + '/h 0 @100644 0 0 0 0 0.0 /h - -\n', /Self-referential hardlink \/h/);
  rejects(ROOT + '/d 0 @40755 0 0 0 0.0 /x - -\n', /Directories can't be hardlinked/);
  rejects(ROOT + '/d 0 40755 2 0 0 0 0.0 - - -\n/h 0 @100644 0 0 0 0 0.0 /d - -\n', /hardlink to directory/);
  rejects(ROOT + '/a 0 @100644 0 0 0 0 0.0 /b - -\n/b 0 @100644 0 0 0 0 0.0 /a - -\n', /hardlink cycle/, true, 'ELOOP');
});

test('xattr budget: 32767 bytes per inode, replacing a key frees its share', () => {
  const big = 'v'.repeat(32700);
  parse(ROOT + `/a 0 100644 1 0 0 0 0.0 - - - user.a=${big}\n`);
  rejects(ROOT + `/a 0 100644 1 0 0 0 0.0 - - - user.a=${big} user.b=${'w'.repeat(100)}\n`, /Can't set xattr/);
  const root = parse(ROOT + `/a 0 100644 1 0 0 0 0.0 - - - user.a=x user.a=${big}\n`);
  assert.equal(child(root, 'a').xattrs.get('user.a')!.length, big.length);
});

test('print -> parse -> print is stable for odd bytes', () => {
  const text =
    ROOT +
    '/\\x01\\xff\\x20 2 100644 1 0 0 0 -3.4294967295 \\x2d \\n\\x00 - trusted.a\\x3db=\\x3d user.e=\n' +
    '/d 0 40755 2 70000 70000 0 1.2 - - -\n' +
    '/d/c 0 20644 1 0 0 259 1.2 - - -\n';
  const once = printDumpfile(parse(text)).toString('latin1');
  assert.equal(printDumpfile(parse(once)).toString('latin1'), once);
  assert.match(once, /^\/\\x01\\xff\\x20 2 100644 1 0 0 0 -3\.4294967295 \\x2d \\n\\x00 - trusted\.a\\x3db=\\x3d user\.e=$/m);
});
