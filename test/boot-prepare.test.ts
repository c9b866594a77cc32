import { test } from 'node:test';
import assert from 'node:assert/strict';
import { existsSync, mkdirSync, mkdtempSync, readFileSync, rmSync, statSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { hasMountPrivilege } from '../src/mount/caps.js';
import { readMountinfo } from '../src/mount/mountinfo.js';
import { Repository } from '../src/repository/repository.js';
import { configContentId, openStoredImage } from '../src/oci/stored.js';
import { readExternalSplitStream } from '../src/splitstream/reader.js';
import { BOOT_REF_V1 } from '../src/boot/oci-boot.js';
import { parseKargs } from '../src/boot/karg.js';
import { setupRoot, teardownRoot } from '../src/boot/setup-root.js';
import { buildOciLayout, type EntrySpec } from './helpers/oci-fixture.js';
import { cfsOk, runCfs } from './helpers/cli.js';

const KVER = '6.9.0-100.fc42.x86_64';
const KERNEL = Buffer.alloc(200_000, 'vmlinuz');

function osLayer(): EntrySpec[] {
  return [
    { path: 'usr/' }, { path: 'usr/lib/' }, { path: 'usr/lib/modules/' }, { path: `usr/lib/modules/${KVER}/` },
    { path: `usr/lib/modules/${KVER}/vmlinuz`, content: KERNEL },
    { path: `usr/lib/modules/${KVER}/initramfs.img`, content: Buffer.alloc(70_000, 'initrd') },
    { path: 'usr/lib/os-release', content: 'PRETTY_NAME="Test OS 1"\n' },
    { path: 'etc/' }, { path: 'etc/hostname', content: 'booted\n' },
    { path: 'etc/selinux/' }, { path: 'etc/selinux/config', content: 'SELINUXTYPE=targeted\n' },
    { path: 'etc/selinux/targeted/' }, { path: 'etc/selinux/targeted/contexts/' }, { path: 'etc/selinux/targeted/contexts/files/' },
    { path: 'etc/selinux/targeted/contexts/files/file_contexts', content: '/.*\tsystem_u:object_r:default_t:s0\n/etc(/.*)?\tsystem_u:object_r:etc_t:s0\n' },
    { path: 'var/' }, { path: 'sysroot/' }, { path: 'boot/' }, { path: 'boot/old-kernel', content: 'x' },
  ];
}

test('oci prepare-boot: boot image recorded, BLS entry, deployment state; setup-root boots it', async () => {
  const tmp = mkdtempSync(path.join(tmpdir(), 'cfs-prepare-boot-'));
  const target = path.join(tmp, 'newroot');
  try {
    const layout = path.join(tmp, 'layout');
    await buildOciLayout(layout, { images: [{ tag: 'os', layers: [osLayer()] }] });
    const sysroot = path.join(tmp, 'sysroot');
    const repoPath = path.join(sysroot, 'composefs');
    cfsOk(['init', '--insecure', repoPath]);
    cfsOk(['--repo', repoPath, 'oci', 'pull', `oci:${layout}:os`, 'os']);
    const bootdir = path.join(tmp, 'boot');
    const out = cfsOk(['--repo', repoPath, 'oci', 'prepare-boot', 'os', '--bootdir', bootdir, '--cmdline', 'rw', '--cmdline', 'console=ttyS0']).stdout;
    const hex = /^sha256:([0-9a-f]{64})$/m.exec(out)![1];

    const conf = readFileSync(path.join(bootdir, 'loader/entries', `${KVER}.conf`), 'utf8');
    assert.equal(conf, [
      '# File created by composefs', 'title Test OS 1', `version ${KVER}`,
      `linux /${KVER}/vmlinuz`, `initrd /${KVER}/initramfs.img`,
      `options composefs.digest=?v1-sha256-12:${hex} rw console=ttyS0`, '',
    ].join('\n'));
    assert.deepEqual(readFileSync(path.join(bootdir, KVER, 'vmlinuz')), KERNEL);
    for (const d of ['var', 'etc/upper', 'etc/work']) assert.ok(statSync(path.join(sysroot, 'state/deploy', hex, d)).isDirectory());
    // inspect names the boot image recorded for the image.
    const inspected = JSON.parse(cfsOk(['--repo', repoPath, 'oci', 'inspect', 'os']).stdout) as { bootImages: Record<string, string> };
    assert.deepEqual(Object.values(inspected.bootImages), [hex]);

    const repo = await Repository.open(repoPath);
    try {
      const img = await openStoredImage(repo, 'os');
      assert.notEqual(img.imageId, hex, 'the plain image keeps its own ref');
      const cfg = await readExternalSplitStream(repo, (await repo.hasStream(configContentId(img.configDigest)))!);
      assert.equal(cfg.namedRefs.get(BOOT_REF_V1)?.toString('hex'), hex);
      assert.ok(img.layerStreams.size === 1, 'layer refs intact after the rewrite');
    } finally {
      repo.close();
    }
    // Rerun: same image id (deterministic), entry id override.
    const again = cfsOk(['--repo', repoPath, 'oci', 'prepare-boot', 'os', '--bootdir', bootdir, '--entry-id', 'deploy1']).stdout;
    assert.match(again, new RegExp(`^sha256:${hex}$`, 'm'));
    assert.ok(existsSync(path.join(bootdir, 'loader/entries/deploy1.conf')));
    const r = runCfs(['--repo', repoPath, 'oci', 'prepare-boot', 'missing-tag', '--bootdir', bootdir]);
    assert.equal(r.status, 1);
    assert.match(r.stderr, /not found/);
    // Another image under the same entry id (the kernel version): said, as that deployment loses its entry.
    const layout2 = path.join(tmp, 'layout2');
    await buildOciLayout(layout2, { images: [{ tag: 'os2', layers: [[...osLayer(), { path: 'etc/v2', content: 'two\n' }]] }] });
    cfsOk(['--repo', repoPath, 'oci', 'pull', '-q', `oci:${layout2}:os2`, 'os2']);
    const bootdir2 = path.join(tmp, 'boot2');
    cfsOk(['--repo', repoPath, 'oci', 'prepare-boot', 'os', '--bootdir', bootdir2]);
    const moved = cfsOk(['--repo', repoPath, 'oci', 'prepare-boot', 'os2', '--bootdir', bootdir2]);
    assert.match(moved.stderr, new RegExp(`^cfs: note: \\S+/${KVER}\\.conf booted another image \\(composefs\\.digest=\\?v1-sha256-12:${hex}\\); it boots this one now \\(give --entry-id to keep both\\)$`, 'm'));
    // An image setup-root could not boot (no /var to mount the deployment's over) is refused up front.
    const layout3 = path.join(tmp, 'layout3');
    await buildOciLayout(layout3, { images: [{ tag: 'novar', layers: [osLayer().filter((e) => !e.path.startsWith('var'))] }] });
    cfsOk(['--repo', repoPath, 'oci', 'pull', '-q', `oci:${layout3}:novar`, 'novar']);
    const novar = runCfs(['--repo', repoPath, 'oci', 'prepare-boot', 'novar', '--bootdir', path.join(tmp, 'boot3')]);
    assert.equal(novar.stderr, "cfs: image 'novar' has no /var directory: setup-root mounts the deployment's var there, so it could not boot\n");
    assert.ok(!existsSync(path.join(tmp, 'boot3')), 'no entry written');

    if (!hasMountPrivilege()) return;
    mkdirSync(target);
    const karg = conf.split('\n').find((l) => l.startsWith('options '))!.slice(8);
    assert.equal(parseKargs(karg)[0].hex, hex);
    const res = runCfs(['setup-root', '--cmdline', karg, '--sysroot', sysroot, '--target', target]);
    assert.equal(res.status, 0, res.stderr);
    try {
      assert.equal(readFileSync(path.join(target, 'etc/hostname'), 'utf8'), 'booted\n');
      assert.deepEqual(readFileSync(path.join(target, 'usr/lib/modules', KVER, 'vmlinuz')), KERNEL);
      assert.ok(!existsSync(path.join(target, 'boot/old-kernel')), '/boot is empty in the boot image');
      writeFileSync(path.join(target, 'etc/machine-id'), 'x\n');
      assert.ok(existsSync(path.join(sysroot, 'state/deploy', hex, 'etc/upper/machine-id')));
    } finally {
      teardownRoot(target);
    }
    assert.equal(readMountinfo().filter((m) => m.mountpoint.startsWith(tmp)).length, 0);
    // setupRoot from the library, via a command-line file
    const cmdFile = path.join(tmp, 'cmdline');
    writeFileSync(cmdFile, `quiet ${karg}\n`);
    const res2 = runCfs(['setup-root', '--cmdline', cmdFile, '--sysroot', sysroot, '--target', target]);
    assert.equal(res2.status, 0, res2.stderr);
    // A second setup-root on the same target would stack a second root: refused, nothing added.
    const mountsBefore = readMountinfo().filter((m) => m.mountpoint.startsWith(tmp)).length;
    const twice = runCfs(['setup-root', '--cmdline', `composefs.digest="${karg.split(' ')[0]!.split('=')[1]}"`, '--sysroot', sysroot, '--target', target]);
    assert.match(twice.stderr, new RegExp(`^cfs: ${target.replace(/[/.]/g, '\\$&')} already has a composefs root \\(composefs:${hex}\\); refusing to set up another over it\n$`));
    assert.equal(readMountinfo().filter((m) => m.mountpoint.startsWith(tmp)).length, mountsBefore);
    teardownRoot(target);
    assert.match(runCfs(['setup-root', '--cmdline', path.join(tmp, 'no-such-cmdline'), '--sysroot', sysroot, '--target', target]).stderr, /^cfs: --cmdline \S+no-such-cmdline: no such file \(give a file, or the command line itself\)\n$/);
    await assert.rejects(setupRoot({ cmdline: karg.replace(hex, 'ee'.repeat(32)), sysroot, target }), /no composefs image found/);
  } finally {
    for (const m of readMountinfo().filter((x) => x.mountpoint.startsWith(tmp)).reverse()) teardownRoot(m.mountpoint);
    rmSync(tmp, { recursive: true, force: true });
  }
});
