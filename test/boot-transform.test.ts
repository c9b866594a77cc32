import { test } from 'node:test';
import assert from 'node:assert/strict';
import { CfsError } from '../src/errors.js';
import { newInode, S_IFCHR, S_IFDIR, S_IFLNK, S_IFREG, type Inode } from '../src/tree/inode.js';
import { bootTransform } from '../src/boot/boot-transform.js';
import { buildPolicy, loadSelinuxPolicy, lookupLabel, parseSelinuxConfig, XATTR_SELINUX } from '../src/boot/selinux.js';
import { translateRegex } from '../src/boot/selinux-regex.js';

const dir = (children: Record<string, Inode> = {}, init: Partial<Inode> = {}): Inode =>
  newInode(S_IFDIR | 0o755, { ...init, children: new Map(Object.entries(children)) });
const file = (text: string, init: Partial<Inode> = {}): Inode =>
  newInode(S_IFREG | 0o644, { ...init, content: Buffer.from(text, 'latin1'), size: text.length });
const label = (n: Inode): string | undefined => n.xattrs.get(XATTR_SELINUX)?.toString('latin1');
const sel = (v: string): Map<string, Buffer> => new Map([[XATTR_SELINUX, Buffer.from(v)]]);
const read = async (n: Inode): Promise<Buffer> => n.content ?? Buffer.alloc(0);

const FILE_CONTEXTS = [
  '# comment',
  '/.*\t\tsystem_u:object_r:default_t:s0',
  '/usr(/.*)?\t\tsystem_u:object_r:usr_t:s0',
  '/usr/bin(/.*)?\t--\tsystem_u:object_r:bin_t:s0',
  '/usr/bin/[^/]+\\.sh\t--\tsystem_u:object_r:script_t:s0',
  '/etc(/.*)?\t\tsystem_u:object_r:etc_t:s0',
  '/etc/shadow.*\t--\tsystem_u:object_r:shadow_t:s0',
  '/dev/null\t-c\tsystem_u:object_r:null_device_t:s0',
  '/tmp(/.*)?\t<<none>>',
  '/srv/(?!backup).*\tsystem_u:object_r:srv_public_t:s0',
  '/usr/lib/link\t-l\tsystem_u:object_r:link_t:s0',
  '',
].join('\n');

function imageTree(): Inode {
  const shared = file('shared contents', { nlink: 2 });
  return dir({
    usr: dir({
      bin: dir({ ls: file('ELF'), 'run.sh': file('#!/bin/sh'), sub: dir() }),
      lib: dir({ link: newInode(S_IFLNK | 0o777, { payload: '../bin/ls' }), shared }),
    }, { mtimeSec: 1700000000, mtimeNsec: 5 }),
    etc: dir({
      shadow: file('x', { xattrs: sel('unconfined_u:object_r:container_file_t:s0') }),
      hosts: file('h'),
      shared,
      selinux: dir({
        config: file('# SELINUXTYPE=wrong\nSELINUX=enforcing\n selinuxtype = targeted \n'),
        targeted: dir({ contexts: dir({ files: dir({
          file_contexts: file(FILE_CONTEXTS),
          'file_contexts.local': file('/etc/hosts\tsystem_u:object_r:net_conf_t:s0\n'),
          'file_contexts.subs_dist': file('/var/run /run\n/opt/alias /usr\n'),
        }) }) }),
      }),
    }),
    dev: dir({ null: newInode(S_IFCHR | 0o666, { rdev: 0x103 }) }),
    tmp: dir({ scratch: file('t', { xattrs: sel('stale') }) }),
    srv: dir({ website: file('w'), backup_1: file('b') }),
    opt: dir({ alias: dir({ x: file('x') }) }),
    boot: dir({ vmlinuz: file('kernel'), 'also-shared': shared }, { mtimeSec: 5, mtimeNsec: 77 }),
    sysroot: dir({ ostree: dir() }, { mtimeSec: 6, mtimeNsec: 88 }),
  });
}

test('boot transform: /boot and /sysroot emptied, mtime seconds from /usr, links recounted', async () => {
  const root = imageTree();
  const policy = await loadSelinuxPolicy(root, read);
  assert.ok(policy);
  bootTransform(root, policy);
  const boot = root.children!.get('boot')!;
  const sysroot = root.children!.get('sysroot')!;
  assert.equal(boot.children!.size, 0);
  assert.equal(sysroot.children!.size, 0);
  assert.deepEqual([boot.mtimeSec, boot.mtimeNsec], [1700000000, 77]);
  assert.deepEqual([sysroot.mtimeSec, sysroot.mtimeNsec], [1700000000, 88]);
  // Two names left for the hardlink (was three with /boot/also-shared). Its paths want different
  // labels (etc_t, usr_t): it stays one inode, labelled for the last path met (composefs-rs).
  const shared = root.children!.get('etc')!.children!.get('shared')!;
  assert.equal(shared.nlink, 2);
  assert.equal(shared, root.children!.get('usr')!.children!.get('lib')!.children!.get('shared'));
  assert.equal(shared.xattrs.get('security.selinux')?.toString(), 'system_u:object_r:usr_t:s0');
});

test('boot transform: missing /boot, /sysroot or /usr is an error', () => {
  for (const missing of ['boot', 'sysroot', 'usr']) {
    const root = imageTree();
    root.children!.delete(missing);
    assert.throws(() => bootTransform(root, null), (e: unknown) => e instanceof CfsError && e.message.includes(`/${missing}`));
  }
  const root = imageTree();
  root.children!.set('boot', file('not a dir'));
  assert.throws(() => bootTransform(root, null), /\/boot to be a directory/);
});

test('SELinux: labels from the image policy (last match wins, types, <<none>>, subs, lookahead)', async () => {
  const root = imageTree();
  bootTransform(root, await loadSelinuxPolicy(root, read));
  const at = (p: string): Inode => p.split('/').filter(Boolean).reduce((n, c) => n.children!.get(c)!, root);
  const expect: Record<string, string | undefined> = {
    '/': 'system_u:object_r:default_t:s0',
    '/usr': 'system_u:object_r:usr_t:s0',
    '/usr/bin': 'system_u:object_r:usr_t:s0', // `--` rule does not apply to directories
    '/usr/bin/sub': 'system_u:object_r:usr_t:s0',
    '/usr/bin/ls': 'system_u:object_r:bin_t:s0',
    '/usr/bin/run.sh': 'system_u:object_r:script_t:s0',
    '/usr/lib/link': 'system_u:object_r:link_t:s0',
    '/usr/lib/shared': 'system_u:object_r:usr_t:s0',
    '/etc/shared': 'system_u:object_r:usr_t:s0', // a hardlink of /usr/lib/shared, labelled for its last path
    '/etc/shadow': 'system_u:object_r:shadow_t:s0',
    '/etc/hosts': 'system_u:object_r:net_conf_t:s0', // file_contexts.local comes last
    '/dev/null': 'system_u:object_r:null_device_t:s0',
    '/tmp': undefined,
    '/tmp/scratch': undefined, // stale label removed
    '/srv/website': 'system_u:object_r:srv_public_t:s0',
    '/srv/backup_1': 'system_u:object_r:default_t:s0',
    '/opt/alias': 'system_u:object_r:usr_t:s0', // looked up as /usr via file_contexts.subs_dist
    '/opt/alias/x': 'system_u:object_r:usr_t:s0',
    '/boot': 'system_u:object_r:default_t:s0',
  };
  for (const [p, l] of Object.entries(expect)) assert.equal(label(at(p)), l, p);
});

test('SELinux: without /etc/selinux (or without SELINUXTYPE) every label is stripped', async () => {
  for (const variant of ['no-dir', 'no-type']) {
    const root = imageTree();
    const selinux = root.children!.get('etc')!.children!.get('selinux')!;
    if (variant === 'no-dir') root.children!.get('etc')!.children!.delete('selinux');
    else selinux.children!.set('config', file('SELINUX=disabled\n'));
    root.xattrs = sel('system_u:object_r:root_t:s0');
    const policy = await loadSelinuxPolicy(root, read);
    assert.equal(policy, null);
    bootTransform(root, policy);
    assert.equal(label(root), undefined);
    assert.equal(label(root.children!.get('etc')!.children!.get('shadow')!), undefined);
  }
});

test('SELinux: config parsing and missing file_contexts', async () => {
  assert.equal(parseSelinuxConfig('#SELINUXTYPE=a\nSELINUXTYPE=mls\n'), 'mls');
  assert.equal(parseSelinuxConfig('SELINUX=enforcing\n'), null);
  const root = imageTree();
  const files = root.children!.get('etc')!.children!.get('selinux')!.children!.get('targeted')!.children!.get('contexts')!.children!.get('files')!;
  files.children!.delete('file_contexts');
  await assert.rejects(loadSelinuxPolicy(root, read), /mandatory file \/etc\/selinux\/targeted\/contexts\/files\/file_contexts/);
});

test('SELinux: unsupported regex constructs are errors naming the file and line', () => {
  for (const re of ['/a\\1', '/(?i)foo', '/a\\bc', '/x*+', '/[[:graph:]]', '/a{,3}', '/\\p{L}', '/(?<n>x)']) {
    assert.throws(
      () => buildPolicy(new Map([['file_contexts', `/ -d system_u:object_r:root_t:s0\n${re}\tsystem_u:object_r:x_t:s0\n`]])),
      (e: unknown) => e instanceof CfsError && e.code === 'ENOTSUP' && e.message.includes('file_contexts line 2'),
      re,
    );
  }
  assert.throws(() => buildPolicy(new Map([['file_contexts', '/x -q a_t\n']])), /line 1: invalid file type '-q'/);
  assert.throws(() => buildPolicy(new Map([['file_contexts', '/x\n']])), /line 1: missing context/);
  assert.throws(() => buildPolicy(new Map([['file_contexts', '/x a b c\n']])), /line 1: trailing data/);
});

test('SELinux regex translation: supported subset matches like PCRE', () => {
  const p = buildPolicy(new Map([['file_contexts', [
    '/a/b\\.c\t\tx1',
    '/d/[a-c\\d]{2,3}x?\t\tx2',
    '/e/.*\\.so(\\.[0-9]+)*\t--\tx3',
    '/f/(foo|bar)+/z\t\tx4',
    '/g/[^/]*\t-d\tx5',
    '/h/\\w+\\s?\t\tx6',
    '/i/[]x-]\t\tx7',
    '/j/a{2}b{1,}\t\tx8',
    '/k/[[:digit:][:upper:]]+\t\tx9',
    '/l/c{x}\t\tx10',
  ].join('\n')]]));
  const cases: Array<[string, string, string | null]> = [
    ['/a/b.c', '-', 'x1'], ['/a/bxc', '-', null], ['/a/b.cd', '-', null],
    ['/d/ab1', '-', 'x2'], ['/d/ab1x', '-', 'x2'], ['/d/a', '-', null], ['/d/abcd', '-', null],
    ['/e/lib/libc.so.6', '-', 'x3'], ['/e/libc.so', '-', 'x3'], ['/e/libc.so', 'd', null],
    ['/f/foobarfoo/z', 'l', 'x4'], ['/f//z', '-', null],
    ['/g/abc', 'd', 'x5'], ['/g/a/b', 'd', null],
    ['/h/ab_9 ', '-', 'x6'], ['/h/a b', '-', null],
    ['/i/]', '-', 'x7'], ['/i/-', '-', 'x7'], ['/i/y', '-', null],
    ['/j/aab', '-', 'x8'], ['/j/aabbb', '-', 'x8'], ['/j/ab', '-', null],
    ['/k/A1', '-', 'x9'], ['/k/a', '-', null],
    ['/l/c{x}', '-', 'x10'],
  ];
  for (const [path, type, want] of cases) assert.equal(lookupLabel(p, path, type), want, `${path} ${type}`);
  assert.equal(translateRegex('/usr/lib/x?').literalPrefix, '/usr/lib/');
  assert.equal(translateRegex('/a|/b').literalPrefix, '');
});
