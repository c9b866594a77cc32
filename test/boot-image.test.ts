import { test } from 'node:test';
import { execFileSync } from 'node:child_process';
import assert from 'node:assert/strict';
import { existsSync, mkdirSync, mkdtempSync, readlinkSync, rmSync, utimesSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { Repository } from '../src/repository/repository.js';
import { fsverityDigest } from '../src/fsverity/digest.js';
import { computeDirImage, computeDirKarg, createDirImage, treeFromDirectory } from '../src/boot/image.js';
import { XATTR_SELINUX } from '../src/boot/selinux.js';
import type { Inode } from '../src/tree/inode.js';
import { cfsOk, runCfs } from './helpers/cli.js';

function makeRootfs(base: string): string {
  const root = path.join(base, 'rootfs');
  const files: Record<string, string | Buffer> = {
    'usr/bin/tool': Buffer.alloc(5000, 'tool'),
    'usr/lib/os-release': 'NAME=test\n',
    'etc/hostname': 'h\n',
    'etc/selinux/config': 'SELINUXTYPE=targeted\n',
    'etc/selinux/targeted/contexts/files/file_contexts': '/.*\tsystem_u:object_r:default_t:s0\n/usr(/.*)?\tsystem_u:object_r:usr_t:s0\n/etc(/.*)?\tsystem_u:object_r:etc_t:s0\n',
    'boot/vmlinuz-6.9': Buffer.alloc(3000, 'kernel'),
    'sysroot/ostree/x': 'x',
  };
  for (const [rel, data] of Object.entries(files)) {
    mkdirSync(path.dirname(path.join(root, rel)), { recursive: true });
    writeFileSync(path.join(root, rel), data);
  }
  for (const d of ['usr', 'boot', 'sysroot']) utimesSync(path.join(root, d), 1_700_000_000, d === 'usr' ? 1_700_000_000 : 1_600_000_000);
  return root;
}

const at = (root: Inode, p: string): Inode => p.split('/').filter(Boolean).reduce((n, c) => n.children!.get(c)!, root);

test('directory images: bootable transform, labels from the on-disk policy, ids and karg', async () => {
  const tmp = mkdtempSync(path.join(tmpdir(), 'cfs-boot-image-'));
  try {
    const rootfs = makeRootfs(tmp);
    const tree = await treeFromDirectory(rootfs, { alg: 'sha256', bootable: true });
    assert.equal(at(tree, 'boot').children!.size, 0);
    assert.equal(at(tree, 'sysroot').children!.size, 0);
    assert.equal(at(tree, 'boot').mtimeSec, 1_700_000_000);
    assert.equal(at(tree, 'usr/bin/tool').xattrs.get(XATTR_SELINUX)?.toString(), 'system_u:object_r:usr_t:s0');
    assert.equal(tree.xattrs.get(XATTR_SELINUX)?.toString(), 'system_u:object_r:default_t:s0');

    const plain = await computeDirImage(rootfs, { alg: 'sha256' });
    const boot = await computeDirImage(rootfs, { alg: 'sha256', bootable: true });
    assert.notDeepEqual(plain.id, boot.id);
    assert.deepEqual(boot.id, fsverityDigest(boot.erofs, 'sha256'));
    const karg = await computeDirKarg(rootfs, { alg: 'sha256', insecure: true });
    assert.equal(karg, `composefs.digest=?v1-sha256-12:${boot.id.toString('hex')}`);

    const repo = await Repository.init(path.join(tmp, 'repo'), { insecure: true });
    try {
      const hex = await createDirImage(repo, rootfs, { bootable: true, name: 'os' });
      assert.equal(hex, boot.id.toString('hex'));
      assert.ok(await repo.hasObject(at(tree, 'usr/bin/tool').digest!));
      assert.equal(path.basename(readlinkSync(path.join(repo.path, 'images/refs/os'))), hex);
    } finally {
      repo.close();
    }

    // CLI: create-image prints sha256:<hex>, compute-karg the argument
    const out = cfsOk(['--repo', path.join(tmp, 'repo'), 'create-image', '--bootable', rootfs, 'os2']).stdout;
    assert.equal(out, `sha256:${boot.id.toString('hex')}\n`);
    const k = cfsOk(['--repo', path.join(tmp, 'repo'), 'compute-karg', rootfs]).stdout;
    assert.equal(k, `composefs.digest=v1-sha256-12:${boot.id.toString('hex')}\n`);
    // The xattr mode too: compute-karg gives the argument of what create-image stores with it.
    const kept = cfsOk(['--repo', path.join(tmp, 'repo'), 'create-image', '--bootable', '--keep-user-xattrs', rootfs]).stdout.trim().replace(/^sha256:/, '');
    assert.equal(cfsOk(['--repo', path.join(tmp, 'repo'), 'compute-karg', '--xattrs', 'keep-user-xattrs', rootfs]).stdout, `composefs.digest=v1-sha256-12:${kept}\n`);
    // Without a repository: sha256, the algorithm `cfs init` gives the repository it will live in.
    const k256 = cfsOk(['--repo', path.join(tmp, 'none'), 'compute-karg', '--insecure', rootfs]).stdout;
    assert.equal(k256, `composefs.digest=?v1-sha256-12:${boot.id.toString('hex')}\n`);
    const k512 = cfsOk(['--repo', path.join(tmp, 'none'), 'compute-karg', '--hash', 'sha512', '--insecure', rootfs]).stdout;
    assert.match(k512, /^composefs\.digest=\?v1-sha512-12:[0-9a-f]{128}\n$/);
    assert.ok(!existsSync(path.join(tmp, 'none')), 'compute-karg creates no repository');
  } finally {
    rmSync(tmp, { recursive: true, force: true });
  }
});

test('a directory with file names that are not UTF-8 (and xattrs on them) is scanned: create-dumpfile names them as bytes', () => {
  const dir = mkdtempSync(path.join(tmpdir(), 'cfs-scan-bytes-'));
  try {
    mkdirSync(path.join(dir, 'usr'));
    const name = Buffer.concat([Buffer.from(`${dir}/usr/bad-`), Buffer.from([0xe9]), Buffer.from('-name')]);
    writeFileSync(name, 'x'.repeat(100));
    // argv strings are UTF-8 in Node: the shell spells the byte.
    execFileSync('sh', ['-c', 'setfattr -n user.k -v v "$(printf "%s/usr/bad-\\351-name" "$1")"', 'sh', dir]);
    const dump = cfsOk(['create-dumpfile', '--no-propagate-usr-to-root', dir]).stdout;
    assert.match(dump, /^\/usr\/bad-\\xe9-name 100 100644 /m);
    assert.match(cfsOk(['--repo', path.join(dir, 'repo'), 'compute-id', dir]).stdout, /^[0-9a-f]{64}$/m);
    // Both spellings of the xattr mode, on every tree command; create-image stores what compute-id computes.
    const repo = `${dir}-repo`; // beside the tree, not in it
    const kept = cfsOk(['create-dumpfile', '--xattrs', 'keep-user-xattrs', dir]).stdout;
    assert.equal(cfsOk(['create-dumpfile', '--keep-user-xattrs', dir]).stdout, kept);
    assert.match(kept, /user\.k=v/);
    const ids = [['--xattrs', 'keep-user-xattrs'], ['--keep-user-xattrs']].flatMap((o) => [
      cfsOk(['--repo', repo, 'compute-id', ...o, dir]).stdout.trim(),
      cfsOk(['--repo', repo, 'create-image', ...o, dir]).stdout.trim().replace(/^sha256:/, ''),
    ]);
    assert.equal(new Set(ids).size, 1, ids.join(' '));
    assert.match(runCfs(['create-dumpfile', '--xattrs', 'allowlist-only', '--keep-user-xattrs', dir]).stderr, /contradict each other/);
  } finally {
    rmSync(`${dir}-repo`, { recursive: true, force: true });
    rmSync(dir, { recursive: true, force: true });
  }
});
