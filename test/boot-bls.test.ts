import { test } from 'node:test';
import assert from 'node:assert/strict';
import { mkdtempSync, readdirSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { Repository } from '../src/repository/repository.js';
import { newInode, S_IFDIR, S_IFREG, type Inode } from '../src/tree/inode.js';
import { objectRelPath } from '../src/repository/ids.js';
import { blsEntryText, checkEntryOptions, findBootEntries, osReleaseValue, writeBootEntries } from '../src/boot/bls.js';
import { formatKarg } from '../src/boot/karg.js';
import { repoTreeFiles } from '../src/boot/tree-files.js';
import { CfsError, isCfsError } from '../src/errors.js';

const dir = (children: Record<string, Inode> = {}): Inode => newInode(S_IFDIR | 0o755, { children: new Map(Object.entries(children)) });

async function external(repo: Repository, data: Buffer): Promise<Inode> {
  const digest = await repo.writeObject(data);
  return newInode(S_IFREG | 0o644, { size: data.length, digest, payload: objectRelPath(digest) });
}

test('BLS entry text: the composefs argument, then the extra ones in order, each once; arguments that would break the entry are refused', () => {
  const text = blsEntryText({ id: 'x', title: 'Fedora Linux 42', version: '6.9.0', karg: 'composefs.digest=v1-sha256-12:ab', cmdline: ['rw', 'console=ttyS0', 'console=tty0', 'rw', 'foo="a b c"'] });
  assert.equal(text, [
    '# File created by composefs',
    'title Fedora Linux 42',
    'version 6.9.0',
    'linux /x/vmlinuz',
    'initrd /x/initramfs.img',
    'options composefs.digest=v1-sha256-12:ab rw console=ttyS0 console=tty0 foo="a b c"',
    '',
  ].join('\n'));
  // What would break the entry is refused: an empty argument, a newline, the composefs argument, two words.
  for (const [arg, why] of [['', /empty/], ['quiet\nlinux /evil', /control character/], ['composefs.digest=v1-sha256-12:cd', /composefs argument/], ['composefs', /composefs argument/], ['a b', /more than one argument/]] as const) {
    assert.throws(() => checkEntryOptions(undefined, ['rw', arg]), (e: unknown) => isCfsError(e) && e.code === 'EINVAL' && why.test(e.message), JSON.stringify(arg));
  }
  assert.throws(() => checkEntryOptions('a\nb', []), /invalid boot entry id/);
  assert.equal(osReleaseValue('NAME=Foo\nPRETTY_NAME="Foo \\"Bar\\" 1"\n', 'PRETTY_NAME'), 'Foo "Bar" 1');
});

test('BLS: one entry per kernel, kernel and initramfs copied out of the repository', async () => {
  const tmp = mkdtempSync(path.join(tmpdir(), 'cfs-bls-'));
  try {
    const repo = await Repository.init(path.join(tmp, 'repo'), { insecure: true });
    const kernels: Record<string, Buffer> = {};
    const modules: Record<string, Inode> = {};
    for (const kver of ['6.9.0-1.fc42.x86_64', '6.10.2-1.fc42.x86_64']) {
      kernels[kver] = Buffer.alloc(100_000, kver);
      modules[kver] = dir({ vmlinuz: await external(repo, kernels[kver]), 'initramfs.img': await external(repo, Buffer.from(`initrd ${kver}`.repeat(20))) });
    }
    modules['not-a-kernel'] = dir({ 'modules.dep': newInode(S_IFREG | 0o644, { content: Buffer.from('x'), size: 1 }) });
    const osRelease = newInode(S_IFREG | 0o644, { content: Buffer.from('NAME="Test OS"\n'), size: 15 });
    const root = dir({ usr: dir({ lib: dir({ modules: dir(modules), 'os-release': osRelease }) }) });
    const src = findBootEntries(root);
    assert.deepEqual(src.kernels.map((k) => k.kver), ['6.10.2-1.fc42.x86_64', '6.9.0-1.fc42.x86_64']);
    const karg = formatKarg('aa'.repeat(32), 'sha256', { insecure: true });
    const bootdir = path.join(tmp, 'boot');
    const written = await writeBootEntries(src, { bootdir, karg, cmdline: ['rw'], files: repoTreeFiles(repo) });
    assert.deepEqual(readdirSync(path.join(bootdir, 'loader', 'entries')).sort(), ['6.10.2-1.fc42.x86_64.conf', '6.9.0-1.fc42.x86_64.conf']);
    assert.equal(written.entries.length, 2);
    assert.deepEqual(written.replaced, []);
    for (const kver of Object.keys(kernels)) {
      assert.deepEqual(readFileSync(path.join(bootdir, kver, 'vmlinuz')), kernels[kver]);
      assert.equal(readFileSync(path.join(bootdir, kver, 'initramfs.img'), 'utf8'), `initrd ${kver}`.repeat(20));
      const conf = readFileSync(path.join(bootdir, 'loader', 'entries', `${kver}.conf`), 'utf8');
      assert.match(conf, new RegExp(`^title Test OS$`, 'm'));
      assert.match(conf, new RegExp(`^linux /${kver}/vmlinuz$`, 'm'));
      assert.match(conf, new RegExp(`^options ${karg.replace('?', '\\?')} rw$`, 'm'));
    }
    // The same entries for another image: said (that deployment loses its entries); for the same image: not.
    assert.deepEqual((await writeBootEntries(src, { bootdir, karg, cmdline: ['rw'], files: repoTreeFiles(repo) })).replaced, []);
    const other = formatKarg('bb'.repeat(32), 'sha256', { insecure: true });
    const again = await writeBootEntries(src, { bootdir, karg: other, files: repoTreeFiles(repo) });
    assert.deepEqual(again.replaced.map((r) => r.previousKarg), [karg, karg]);
    // --entry-id with several kernels: <id>-<kver>
    const b2 = path.join(tmp, 'boot2');
    await writeBootEntries(src, { bootdir: b2, karg, entryId: 'deploy', files: repoTreeFiles(repo) });
    assert.deepEqual(readdirSync(path.join(b2, 'loader', 'entries')).sort(), ['deploy-6.10.2-1.fc42.x86_64.conf', 'deploy-6.9.0-1.fc42.x86_64.conf']);
    // a kernel without initramfs is refused before anything is written
    src.kernels[0].initramfs = null;
    await assert.rejects(writeBootEntries(src, { bootdir: path.join(tmp, 'boot3'), karg, files: repoTreeFiles(repo) }), (e: unknown) => e instanceof CfsError && /has no initramfs.img/.test(e.message));
    repo.close();
  } finally {
    rmSync(tmp, { recursive: true, force: true });
  }
});
