import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import {
  closeSync,
  lstatSync,
  mkdirSync,
  mkdtempSync,
  openSync,
  readFileSync,
  readdirSync,
  readlinkSync,
  rmSync,
  writeFileSync,
} from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { native } from '../src/native.js';
import { CfsError } from '../src/errors.js';
import { fsverityDigest } from '../src/fsverity/index.js';
import { hasMountPrivilege } from '../src/mount/caps.js';
import { inInitialUserNamespace } from '../src/userns.js';
import { mountComposefs, unmount } from '../src/mount/kernel.js';
import { findMount, listComposefsMounts, parseMountinfo, readMountinfo, type MountInfo } from '../src/mount/mountinfo.js';
import { parseDumpfile } from '../src/dumpfile/parse.js';
import { writeErofs } from '../src/erofs/writer.js';

const privileged = hasMountPrivilege();
const skip = privileged ? false : 'needs CAP_SYS_ADMIN in the initial user namespace (run as root)';

interface Fixture {
  dir: string;
  objects: string;
  image: string;
  imageDigest: Buffer;
  mnt: string;
  files: Record<string, Buffer>; // path in the image -> expected content
  dataObject: string; // object file backing /data
}

let fx: Fixture;

/** Store `data` as an object named by its fs-verity digest; returns the dumpfile payload and digest. */
function addObject(objects: string, data: Buffer): { payload: string; digest: string } {
  const digest = fsverityDigest(data).toString('hex');
  const payload = `${digest.slice(0, 2)}/${digest.slice(2)}`;
  mkdirSync(path.join(objects, digest.slice(0, 2)), { recursive: true });
  writeFileSync(path.join(objects, payload), data);
  return { payload, digest };
}

function buildFixture(): Fixture {
  const dir = mkdtempSync(path.join(tmpdir(), 'cfs-kmount-'));
  try {
    return fillFixture(dir);
  } catch (e) {
    rmSync(dir, { recursive: true, force: true });
    throw e;
  }
}

function fillFixture(dir: string): Fixture {
  const objects = path.join(dir, 'objects');
  mkdirSync(objects);
  const tool = Buffer.from(`#!/bin/sh\n# a script larger than the inline limit\necho "hello from composefs"\n`);
  const data = randomBytes(200_000);
  const notes = Buffer.from('x'.repeat(5000));
  const t = addObject(objects, tool);
  const d = addObject(objects, data);
  const n = addObject(objects, notes);
  const T = '1700000000.0';
  const dump = [
    `/ 4096 40755 4 0 0 0 ${T} - - -`,
    `/bin 4096 40755 2 0 0 0 ${T} - - -`,
    `/bin/tool ${tool.length} 100755 1 0 0 0 ${T} ${t.payload} - ${t.digest}`,
    `/data ${data.length} 100640 1 1000 1001 0 1600000000.5 ${d.payload} - ${d.digest} user.note=important user.empty=`,
    `/etc 4096 40755 2 0 0 0 ${T} - - -`,
    `/etc/hostname 9 100644 1 0 0 0 ${T} - composefs - `,
    `/etc/notes ${notes.length} 100444 1 0 0 0 ${T} ${n.payload} - ${n.digest}`,
    `/link 8 120777 1 0 0 0 ${T} bin/tool - -`,
    `/with\\x20space 4 100644 1 0 0 0 ${T} - a\\x20b\\x0a - `,
    '',
  ].join('\n');
  const root = parseDumpfile(Buffer.from(dump), { strict: true });
  const img = writeErofs(root, {});
  const image = path.join(dir, 'image.cfs');
  writeFileSync(image, img);
  const mnt = path.join(dir, 'mount point');
  mkdirSync(mnt);
  return {
    dir,
    objects,
    image,
    imageDigest: fsverityDigest(img),
    mnt,
    dataObject: path.join(objects, d.payload),
    files: {
      'bin/tool': tool,
      data,
      'etc/hostname': Buffer.from('composefs'),
      'etc/notes': notes,
      'with space': Buffer.from('a b\n'),
    },
  };
}

/**
 * Mounts present now but not in `before` (by mount id) that we could have made: EROFS or overlay
 * anywhere (a leaked helper mount), anything under the fixture; not the host's own comings and
 * goings (systemd's credential tmpfs, a runner's mounts).
 */
function newMounts(beforeList: MountInfo[]): MountInfo[] {
  const ids = new Set(beforeList.map((m) => m.mountId));
  const ours = (m: MountInfo): boolean => m.fsType === 'erofs' || m.fsType === 'overlay' || m.mountpoint.startsWith(`${fx.dir}/`);
  return readMountinfo().filter((m) => !ids.has(m.mountId) && ours(m));
}

function cleanupMount(mp: string): void {
  while (findMount(mp)) native().umount2(mp, native().constants.MNT_DETACH);
}

before(() => {
  if (privileged) fx = buildFixture();
});

after(() => {
  if (!fx) return;
  cleanupMount(fx.mnt);
  rmSync(fx.dir, { recursive: true, force: true });
});

test('mountinfo parser: octal escapes, optional fields, super options', () => {
  const text =
    '36 35 98:0 /mnt1 /mnt/a\\040b rw,noatime master:1 shared:2 - ext3 /dev/root rw,errors=continue\n' +
    '45 26 0:40 / /tmp/x ro,relatime - overlay composefs:abc ro,lowerdir+=/,datadir+=/o\\134p,metacopy=on\n' +
    '50 26 0:41 / /tmp/f rw - fuse.cfs cfs:img rw,user_id=0\n' +
    '51 26 0:42 / /tmp/g rw - fuse cfs:other rw\n' +
    '52 26 0:43 / /tmp/h rw - overlay overlay rw\n';
  const ms = parseMountinfo(text);
  assert.equal(ms.length, 5);
  assert.deepEqual(ms[0], {
    mountId: 36,
    parentId: 35,
    device: '98:0',
    root: '/mnt1',
    mountpoint: '/mnt/a b',
    options: 'rw,noatime',
    optional: ['master:1', 'shared:2'],
    fsType: 'ext3',
    source: '/dev/root',
    superOptions: 'rw,errors=continue',
  });
  assert.equal(ms[1].superOptions, 'ro,lowerdir+=/,datadir+=/o\\p,metacopy=on');
  assert.deepEqual(
    listComposefsMounts(ms).map((m) => m.mountpoint),
    ['/tmp/x', '/tmp/f', '/tmp/g'],
  );
  assert.equal(findMount('/tmp/x', ms)?.source, 'composefs:abc');
});

test('hasMountPrivilege agrees with uid 0 in the initial user namespace', () => {
  if (process.getuid?.() === 0 && inInitialUserNamespace()) assert.equal(hasMountPrivilege(), true);
  if (!inInitialUserNamespace()) assert.equal(hasMountPrivilege(), false);
});

test('mountComposefs: contents, modes, xattrs, symlinks; one visible mount; unmount leaves nothing', { skip }, () => {
  const beforeList = readMountinfo();
  mountComposefs({ image: fx.image, objectsDir: fx.objects, mountpoint: fx.mnt, source: 'composefs:test-image' });
  try {
    const added = newMounts(beforeList);
    assert.equal(added.length, 1, `exactly one new mount, got ${JSON.stringify(added)}`);
    assert.equal(added[0].fsType, 'overlay');
    assert.equal(added[0].source, 'composefs:test-image');
    assert.equal(added[0].mountpoint, fx.mnt); // "mount point" came back through the \040 escape
    assert.match(added[0].options, /^ro\b/);
    assert.match(added[0].superOptions, /metacopy=on/);
    assert.match(added[0].superOptions, /redirect_dir=on/);
    assert.equal(findMount(fx.mnt)?.mountId, added[0].mountId);
    assert.ok(listComposefsMounts().some((m) => m.mountId === added[0].mountId));

    assert.deepEqual(readdirSync(fx.mnt).sort(), ['bin', 'data', 'etc', 'link', 'with space']);
    for (const [rel, want] of Object.entries(fx.files)) {
      assert.deepEqual(readFileSync(path.join(fx.mnt, rel)), want, rel);
    }
    const data = lstatSync(path.join(fx.mnt, 'data'));
    assert.equal(data.mode, 0o100640);
    assert.equal(data.uid, 1000);
    assert.equal(data.gid, 1001);
    assert.equal(data.size, fx.files.data.length);
    assert.equal(data.mtimeMs, 1600000000000);
    assert.equal(lstatSync(path.join(fx.mnt, 'bin/tool')).mode, 0o100755);
    assert.equal(lstatSync(path.join(fx.mnt, 'etc/notes')).mode, 0o100444);
    assert.equal(execFileSync(path.join(fx.mnt, 'bin/tool'), { encoding: 'utf8' }), 'hello from composefs\n');

    assert.ok(lstatSync(path.join(fx.mnt, 'link')).isSymbolicLink());
    assert.equal(readlinkSync(path.join(fx.mnt, 'link')), 'bin/tool');

    const n = native();
    const dataPath = path.join(fx.mnt, 'data');
    assert.deepEqual(n.lgetxattr(dataPath, 'user.note'), Buffer.from('important'));
    assert.deepEqual(n.lgetxattr(dataPath, 'user.empty'), Buffer.alloc(0));
    // overlayfs hides its own trusted.overlay.* metadata (metacopy, redirect).
    assert.deepEqual(n.llistxattr(dataPath).filter((x) => x.startsWith('trusted.overlay.')), []);

    assert.throws(() => writeFileSync(path.join(fx.mnt, 'new'), 'x'), { code: 'EROFS' });
  } finally {
    unmount(fx.mnt);
  }
  assert.equal(findMount(fx.mnt), undefined);
  assert.deepEqual(newMounts(beforeList), []);
});

test('expectedDigest: matching digest mounts, mismatch is refused with nothing mounted', { skip }, () => {
  mountComposefs({ image: fx.image, objectsDir: fx.objects, mountpoint: fx.mnt, expectedDigest: fx.imageDigest });
  assert.equal(findMount(fx.mnt)?.source, 'composefs:image.cfs');
  unmount(fx.mnt);

  const wrong = Buffer.from(fx.imageDigest);
  wrong[0] ^= 1;
  const beforeList = readMountinfo();
  assert.throws(
    () => mountComposefs({ image: fx.image, objectsDir: fx.objects, mountpoint: fx.mnt, expectedDigest: wrong }),
    (e: unknown) =>
      e instanceof CfsError &&
      e.code === 'EDIGEST' &&
      e.message.includes(fx.imageDigest.toString('hex')) &&
      e.message.includes(wrong.toString('hex')),
  );
  assert.deepEqual(newMounts(beforeList), []);
});

test('verity=require without kernel fs-verity fails before mounting, naming the reason', { skip }, () => {
  const beforeList = readMountinfo();
  const probeFd = openSync(fx.objects, 'r');
  let kernelHasVerity = false;
  try {
    native().fsverityMeasure(probeFd);
  } catch (e) {
    kernelHasVerity = (e as NodeJS.ErrnoException).code === 'ENODATA';
  } finally {
    closeSync(probeFd);
  }
  if (kernelHasVerity) return; // the objects here have no verity enabled; nothing to learn on such a kernel
  assert.throws(
    () => mountComposefs({ image: fx.image, objectsDir: fx.objects, mountpoint: fx.mnt, verity: 'require' }),
    (e: unknown) =>
      e instanceof CfsError &&
      e.code === 'ENOTSUP' &&
      /verity=require: fs-verity is not available for .*objects/.test(e.message),
  );
  assert.deepEqual(newMounts(beforeList), []);
});

test('upperdir: read-only unless readWrite; writes land in the upper layer', { skip }, () => {
  const upper = path.join(fx.dir, 'upper');
  const work = path.join(fx.dir, 'work');
  mkdirSync(upper);
  mkdirSync(work);
  try {
    mountComposefs({ image: fx.image, objectsDir: fx.objects, mountpoint: fx.mnt, upperdir: upper, workdir: work });
    try {
      assert.throws(() => writeFileSync(path.join(fx.mnt, 'new'), 'x'), { code: 'EROFS' });
    } finally {
      unmount(fx.mnt);
    }
    assert.deepEqual(readdirSync(upper), []);

    mountComposefs({ image: fx.image, objectsDir: fx.objects, mountpoint: fx.mnt, upperdir: upper, workdir: work, readWrite: true });
    try {
      assert.match(findMount(fx.mnt)?.options ?? '', /^rw\b/);
      writeFileSync(path.join(fx.mnt, 'new'), 'written');
      writeFileSync(path.join(fx.mnt, 'etc/hostname'), 'changed');
      writeFileSync(path.join(fx.mnt, 'data'), 'replaced');
      assert.equal(readFileSync(path.join(fx.mnt, 'etc/hostname'), 'utf8'), 'changed');
    } finally {
      unmount(fx.mnt);
    }
    assert.equal(readFileSync(path.join(upper, 'new'), 'utf8'), 'written');
    assert.equal(readFileSync(path.join(upper, 'etc/hostname'), 'utf8'), 'changed');
    assert.equal(readFileSync(path.join(upper, 'data'), 'utf8'), 'replaced');
    // Copy-up went to the upper layer; the lower layers are untouched.
    assert.deepEqual(readFileSync(fx.dataObject), fx.files.data);
  } finally {
    rmSync(upper, { recursive: true, force: true });
    rmSync(work, { recursive: true, force: true });
  }
  assert.throws(
    () => mountComposefs({ image: fx.image, objectsDir: fx.objects, mountpoint: fx.mnt, upperdir: upper }),
    (e: unknown) => e instanceof CfsError && e.code === 'EINVAL' && /together/.test(e.message),
  );
  assert.throws(
    () => mountComposefs({ image: fx.image, objectsDir: fx.objects, mountpoint: fx.mnt, readWrite: true }),
    (e: unknown) => e instanceof CfsError && e.code === 'EINVAL',
  );
});

test('unmount: busy mount suggests --lazy; lazy detaches; not-a-mount is EINVAL', { skip }, () => {
  mountComposefs({ image: fx.image, objectsDir: fx.objects, mountpoint: fx.mnt });
  const fd = openSync(path.join(fx.mnt, 'data'), 'r');
  try {
    assert.throws(
      () => unmount(fx.mnt),
      (e: unknown) => e instanceof CfsError && e.code === 'EBUSY' && /--lazy/.test(e.message),
    );
    unmount(fx.mnt, { lazy: true });
    assert.equal(findMount(fx.mnt), undefined);
  } finally {
    closeSync(fd);
  }
  assert.throws(
    () => unmount(fx.mnt),
    (e: unknown) => e instanceof CfsError && e.code === 'EINVAL' && /not a mount point/.test(e.message),
  );
});

test('bad inputs: missing image, missing mount point, non-EROFS image', { skip }, () => {
  assert.throws(
    () => mountComposefs({ image: path.join(fx.dir, 'nope'), objectsDir: fx.objects, mountpoint: fx.mnt }),
    (e: unknown) => e instanceof CfsError && e.code === 'ENOENT' && e.message.includes('nope'),
  );
  assert.throws(
    () => mountComposefs({ image: fx.image, objectsDir: fx.objects, mountpoint: path.join(fx.dir, 'no-mp') }),
    (e: unknown) => e instanceof CfsError && e.code === 'ENOENT',
  );
  const junk = path.join(fx.dir, 'junk.img');
  writeFileSync(junk, randomBytes(8192));
  const beforeList = readMountinfo();
  assert.throws(
    () => mountComposefs({ image: junk, objectsDir: fx.objects, mountpoint: fx.mnt }),
    (e: unknown) => e instanceof CfsError && e.code === 'EINVAL' && e.message.startsWith(`${junk}: not a valid EROFS image`),
  );
  assert.deepEqual(newMounts(beforeList), []);
});

function loopDevicesOf(file: string): string[] {
  const out = execFileSync('losetup', ['--associated', file, '--noheadings', '--output', 'NAME', '--list'], { encoding: 'utf8' });
  return out.split('\n').filter(Boolean);
}

test('forced strategies: EROFS on a loop device, layers as one lowerdir string', { skip }, () => {
  for (const strategy of [
    { erofs: 'loop', layers: 'string' },
    { erofs: 'file', layers: 'fd' },
  ] as const) {
    const upper = path.join(fx.dir, 'upper-s');
    const work = path.join(fx.dir, 'work-s');
    mkdirSync(upper);
    mkdirSync(work);
    const beforeList = readMountinfo();
    mountComposefs({ image: fx.image, objectsDir: fx.objects, mountpoint: fx.mnt, strategy, upperdir: upper, workdir: work, readWrite: true });
    try {
      const added = newMounts(beforeList);
      assert.equal(added.length, 1, JSON.stringify(strategy));
      if (strategy.layers === 'string') assert.match(added[0].superOptions, /lowerdir=\/proc\/self\/fd\/\d+::\/proc\/self\/fd\/\d+/);
      else assert.match(added[0].superOptions, /lowerdir\+=\/,datadir\+=/);
      assert.equal(loopDevicesOf(fx.image).length, strategy.erofs === 'loop' ? 1 : 0);
      assert.deepEqual(readFileSync(path.join(fx.mnt, 'data')), fx.files.data);
      writeFileSync(path.join(fx.mnt, 'added'), 'up');
    } finally {
      unmount(fx.mnt);
      assert.equal(readFileSync(path.join(upper, 'added'), 'utf8'), 'up');
      rmSync(upper, { recursive: true, force: true });
      rmSync(work, { recursive: true, force: true });
    }
    // Autoclear released the loop device together with the last reference to the EROFS mount
    // (or with udev's probe, if udev still has it open: that takes a moment).
    for (let i = 0; i < 100 && loopDevicesOf(fx.image).length > 0; i++) Atomics.wait(new Int32Array(new SharedArrayBuffer(4)), 0, 0, 50);
    assert.deepEqual(loopDevicesOf(fx.image), []);
    assert.deepEqual(newMounts(beforeList), []);
  }
});
