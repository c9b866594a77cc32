import { test } from 'node:test';
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import {
  closeSync,
  mkdirSync,
  readdirSync,
  existsSync,
  mkdtempSync,
  openSync,
  readFileSync,
  rmSync,
  symlinkSync,
  writeFileSync,
  writeSync,
  fstatSync,
  readSync,
} from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { native } from '../src/native.js';
import { CfsError } from '../src/errors.js';
import { enableVerity, measureVerity } from '../src/fsverity/kernel.js';

function withTmp(f: (dir: string) => void | Promise<void>): () => Promise<void> {
  return async () => {
    const dir = mkdtempSync(path.join(tmpdir(), 'cfs-native-'));
    try {
      await f(dir);
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  };
}

function errCode(f: () => unknown): string | undefined {
  try {
    f();
  } catch (e) {
    return (e as NodeJS.ErrnoException).code;
  }
  return undefined;
}

test('native errors carry code, negative errno and syscall', () => {
  try {
    native().lgetxattr('/nonexistent/cfs', 'user.x');
    assert.fail('expected ENOENT');
  } catch (e) {
    const err = e as NodeJS.ErrnoException;
    assert.equal(err.code, 'ENOENT');
    assert.equal(err.errno, -2);
    assert.equal(err.syscall, 'lgetxattr');
    assert.match(err.message, /^lgetxattr \/nonexistent\/cfs: No such file or directory$/);
  }
});

test('constants come from the C headers', () => {
  const c = native().constants;
  assert.equal(c.AT_FDCWD, -100);
  assert.equal(c.O_TMPFILE & c.O_DIRECTORY, c.O_DIRECTORY);
  assert.equal(c.MNT_DETACH, 2);
  assert.equal(c.LOCK_EX, 2);
});

test(
  'xattr round trip (user.*), ENODATA is null, llistxattr does not follow symlinks',
  withTmp((dir) => {
    const n = native();
    const f = path.join(dir, 'f');
    writeFileSync(f, 'x');
    const value = Buffer.from([0, 1, 2, 255, 0x2d]);
    n.lsetxattr(f, 'user.cfs.a', value);
    n.lsetxattr(f, 'user.cfs.empty', Buffer.alloc(0));
    assert.deepEqual(n.lgetxattr(f, 'user.cfs.a'), value);
    assert.deepEqual(n.lgetxattr(f, 'user.cfs.empty'), Buffer.alloc(0));
    assert.equal(n.lgetxattr(f, 'user.cfs.missing'), null);
    assert.deepEqual(n.llistxattr(f).filter((x) => x.startsWith('user.')).sort(), ['user.cfs.a', 'user.cfs.empty']);
    assert.equal(errCode(() => n.lsetxattr(f, 'user.cfs.a', value, n.constants.XATTR_CREATE)), 'EEXIST');

    const fd = openSync(f, 'r');
    try {
      assert.deepEqual(n.fgetxattr(fd, 'user.cfs.a'), value);
      assert.equal(n.fgetxattr(fd, 'user.cfs.missing'), null);
      assert.ok(n.flistxattr(fd).includes('user.cfs.a'));
    } finally {
      closeSync(fd);
    }

    const link = path.join(dir, 'link');
    symlinkSync('f', link);
    assert.deepEqual(n.llistxattr(link).filter((x) => x.startsWith('user.')), []);
    assert.equal(n.lgetxattr(link, 'user.cfs.a'), null);
  }),
);

test(
  'fs-verity on this kernel: enable and measure fail with a clear ENOTSUP',
  withTmp(async (dir) => {
    const f = path.join(dir, 'f');
    writeFileSync(f, 'verity me');
    // Raw addon error first: the errno name comes straight from the kernel.
    const fd = openSync(f, 'r');
    let probe: string | undefined;
    try {
      probe = errCode(() => native().fsverityMeasure(fd));
    } finally {
      closeSync(fd);
    }
    assert.match(String(probe), /^(EOPNOTSUPP|ENOTTY|ENODATA)$/);
    if (probe === 'ENODATA') return; // a kernel with fs-verity: the no-support path does not apply

    await assert.rejects(enableVerity(f), (e: unknown) => {
      assert.ok(e instanceof CfsError);
      assert.equal(e.code, 'ENOTSUP');
      assert.match(e.message, /fs-verity is not supported by this kernel or filesystem \(FS_IOC_ENABLE_VERITY: (EOPNOTSUPP|ENOTTY)\)/);
      assert.ok(e.message.startsWith(f));
      return true;
    });
    await assert.rejects(measureVerity(f), (e: unknown) => {
      assert.ok(e instanceof CfsError);
      assert.equal(e.code, 'ENOTSUP');
      assert.match(e.message, /FS_IOC_MEASURE_VERITY/);
      return true;
    });
  }),
);

test(
  'openTmpfile + linkFd creates a complete file in one step',
  withTmp((dir) => {
    const n = native();
    const fd = n.openTmpfile(dir, n.constants.O_RDWR, 0o640);
    try {
      writeSync(fd, 'atomic content');
      assert.equal(fstatSync(fd).nlink, 0);
      const target = path.join(dir, 'linked');
      assert.equal(existsSync(target), false);
      n.linkFd(fd, target);
      assert.equal(readFileSync(target, 'utf8'), 'atomic content');
      assert.equal(fstatSync(fd).nlink, 1);
      assert.equal(fstatSync(fd).mode & 0o777, 0o640);
      // Linking again onto an existing name fails rather than replacing it.
      assert.equal(errCode(() => n.linkFd(fd, target)), 'EEXIST');
    } finally {
      closeSync(fd);
    }
    assert.equal(errCode(() => n.openTmpfile(path.join(dir, 'nope'), n.constants.O_RDWR, 0o600)), 'ENOENT');
  }),
);

test(
  'ficlone behaves like cp --reflink=always on this filesystem',
  withTmp((dir) => {
    const n = native();
    const src = path.join(dir, 'src');
    writeFileSync(src, Buffer.alloc(65536, 7));
    const cp = spawnSync('cp', ['--reflink=always', src, path.join(dir, 'cp-copy')]);
    const sfd = openSync(src, 'r');
    const dfd = openSync(path.join(dir, 'clone'), 'w');
    try {
      const code = errCode(() => n.ficlone(dfd, sfd));
      if (cp.status === 0) {
        assert.equal(code, undefined);
        assert.deepEqual(readFileSync(path.join(dir, 'clone')), readFileSync(src));
      } else {
        assert.match(String(code), /^(EOPNOTSUPP|EXDEV|EINVAL|ENOTTY)$/);
      }
    } finally {
      closeSync(sfd);
      closeSync(dfd);
    }
  }),
);

test(
  'renameNoReplace moves, and refuses to overwrite (EEXIST)',
  withTmp((dir) => {
    const n = native();
    const a = path.join(dir, 'a');
    const b = path.join(dir, 'b');
    const c = path.join(dir, 'c');
    writeFileSync(a, 'A');
    writeFileSync(b, 'B');
    assert.equal(errCode(() => n.renameNoReplace(a, b)), 'EEXIST');
    assert.equal(readFileSync(b, 'utf8'), 'B');
    n.renameNoReplace(a, c);
    assert.equal(readFileSync(c, 'utf8'), 'A');
    assert.equal(existsSync(a), false);
  }),
);

test(
  'flock: exclusive locks on two open file descriptions conflict',
  withTmp((dir) => {
    const n = native();
    const { LOCK_EX, LOCK_SH, LOCK_NB, LOCK_UN } = n.constants;
    const f = path.join(dir, 'lock');
    writeFileSync(f, '');
    const fd1 = openSync(f, 'r');
    const fd2 = openSync(f, 'r');
    try {
      n.flock(fd1, LOCK_EX | LOCK_NB);
      assert.match(String(errCode(() => n.flock(fd2, LOCK_EX | LOCK_NB))), /^(EWOULDBLOCK|EAGAIN)$/);
      assert.match(String(errCode(() => n.flock(fd2, LOCK_SH | LOCK_NB))), /^(EWOULDBLOCK|EAGAIN)$/);
      n.flock(fd1, LOCK_UN);
      n.flock(fd2, LOCK_SH | LOCK_NB);
      n.flock(fd1, LOCK_SH | LOCK_NB); // shared locks coexist
      n.syncfs(fd1);
    } finally {
      closeSync(fd1);
      closeSync(fd2);
    }
  }),
);

test(
  'sendFds/recvFds pass open files over a socketpair',
  withTmp((dir) => {
    const n = native();
    const [a, b] = n.socketpair();
    const f = path.join(dir, 'payload');
    writeFileSync(f, 'passed by SCM_RIGHTS');
    const fd = openSync(f, 'r');
    try {
      assert.equal(n.recvFds(b, 64, 4), null); // nothing queued: EAGAIN → null
      assert.equal(n.sendFds(a, Buffer.from('hdr'), [fd, fd]), 3);
      const got = n.recvFds(b, 64, 4);
      assert.ok(got);
      assert.equal(got.data.toString(), 'hdr');
      assert.equal(got.fds.length, 2);
      assert.equal(got.truncated, false);
      for (const rfd of got.fds) {
        assert.notEqual(rfd, fd);
        const buf = Buffer.alloc(64);
        const len = readSync(rfd, buf, 0, 64, 0);
        assert.equal(buf.toString('utf8', 0, len), 'passed by SCM_RIGHTS');
        closeSync(rfd);
      }
      // Empty data still carries the fds (one 0 byte is sent).
      n.sendFds(a, Buffer.alloc(0), [fd]);
      const again = n.recvFds(b, 64, 4);
      assert.ok(again);
      assert.deepEqual(again.data, Buffer.from([0]));
      assert.equal(again.fds.length, 1);
      closeSync(again.fds[0]);
      // Peer closed: end of stream is an empty message, not null.
      closeSync(a);
      const eof = n.recvFds(b, 64, 4);
      assert.ok(eof);
      assert.equal(eof.data.length, 0);
    } finally {
      closeSync(fd);
      closeSync(b);
    }
  }),
);

test(
  'openat2 with RESOLVE_BENEATH refuses to escape the directory',
  withTmp((dir) => {
    const n = native();
    const c = n.constants;
    writeFileSync(path.join(dir, 'inside'), 'in');
    symlinkSync('/etc/passwd', path.join(dir, 'escape'));
    const dfd = openSync(dir, c.O_RDONLY | c.O_DIRECTORY);
    try {
      const fd = n.openat2(dfd, 'inside', c.O_RDONLY, 0, c.RESOLVE_BENEATH);
      closeSync(fd);
      assert.equal(errCode(() => n.openat2(dfd, 'escape', c.O_RDONLY, 0, c.RESOLVE_BENEATH)), 'EXDEV');
      assert.equal(errCode(() => n.openat2(dfd, '../x', c.O_RDONLY, 0, c.RESOLVE_BENEATH)), 'EXDEV');
      // A name that is not UTF-8 is given as bytes; a NUL is refused, not cut at.
      const latin1 = Buffer.from([0x6e, 0xe9]);
      writeFileSync(Buffer.concat([Buffer.from(`${dir}/`), latin1]), 'bytes');
      const bfd = n.openat2(dfd, latin1, c.O_RDONLY, 0, c.RESOLVE_BENEATH);
      assert.equal(readFileSync(bfd, 'utf8'), 'bytes');
      closeSync(bfd);
      assert.throws(() => n.openat2(dfd, Buffer.from('inside\0x'), c.O_RDONLY, 0, c.RESOLVE_BENEATH), /without NUL/);
      assert.throws(() => n.openat2(dfd, 'inside\0x', c.O_RDONLY, 0, c.RESOLVE_BENEATH), /without NUL/);
    } finally {
      closeSync(dfd);
    }
  }),
);

test('bad argument types throw TypeError, not a crash', () => {
  const n = native() as unknown as Record<string, (...args: unknown[]) => unknown>;
  assert.throws(() => n.lgetxattr(1, 'user.x'), TypeError);
  assert.throws(() => n.flock('x', 2), TypeError);
  assert.throws(() => n.sendFds(0, 'not a buffer', []), TypeError);
});

test(
  'storeObjects writes a batch of objects, creates fan-out directories, keeps existing ones, names a failed object',
  withTmp(async (dir) => {
    const n = native();
    const objects = path.join(dir, 'objects');
    mkdirSync(path.join(objects, 'aa'), { recursive: true });
    writeFileSync(path.join(objects, 'aa', '0001'), 'old');
    // The answer: how many were there already.
    assert.equal(await n.storeObjects(objects, 'aa/0001\nbb/0002\nbb/0003', [Buffer.from('new'), Buffer.from('1'), Buffer.alloc(70000, 2)]), 1);
    assert.equal(readFileSync(path.join(objects, 'aa', '0001'), 'utf8'), 'old');
    assert.equal(readFileSync(path.join(objects, 'bb', '0002'), 'utf8'), '1');
    assert.deepEqual(readFileSync(path.join(objects, 'bb', '0003')), Buffer.alloc(70000, 2));
    assert.deepEqual(readdirSync(objects).sort(), ['aa', 'bb']);
    // A fan-out name taken by a file: the error names the object, the earlier ones are written.
    writeFileSync(path.join(objects, 'cc'), 'not a directory');
    await assert.rejects(n.storeObjects(objects, 'dd/0004\ncc/0005', [Buffer.from('a'), Buffer.from('b')]), (e: NodeJS.ErrnoException) =>
      e.code === 'ENOTDIR' && e.message.includes(`${objects}/cc/0005`));
    assert.equal(readFileSync(path.join(objects, 'dd', '0004'), 'utf8'), 'a');
    await assert.rejects(n.storeObjects(path.join(dir, 'missing'), 'aa/0006', [Buffer.from('a')]), (e: NodeJS.ErrnoException) => e.code === 'ENOENT');
    // Bad batches are refused before anything is written: only "xx/yyyy…" hex names, one per Buffer.
    for (const names of ['ee/01\nee/02', '/etc/x', 'ee/../../x', '.', 'ee/', 'EE/01', 'ee/0g', 'e/01', 'ee/01\n', '']) {
      assert.equal(errCode(() => n.storeObjects(objects, names, [Buffer.from('a')])), 'EINVAL', JSON.stringify(names));
    }
    // A NUL in any string argument is refused before the call looks at it (it would cut the string short).
    assert.throws(() => n.storeObjects(objects, 'ee/01\0ff', [Buffer.from('a')]), (e: Error) => e instanceof TypeError && /without NUL/.test(e.message));
    assert.equal(errCode(() => n.storeObjects(objects, 'ee/01', ['text' as unknown as Buffer])), 'EINVAL');
    assert.equal(errCode(() => n.storeObjects(objects, 'ee/01', [])), 'EINVAL');
    assert.throws(() => (n.storeObjects as unknown as (...a: unknown[]) => unknown)(objects, 'ee/01', 'x'), TypeError);
    assert.equal(existsSync(path.join(objects, 'ee')), false);
  }),
);

test('a process that exits with a paused or a stopped poll exits cleanly (no crash in teardown)', () => {
  const addon = ['../../native/build/Release/cfs_native.node', '../native/build/Release/cfs_native.node']
    .map((p) => path.resolve(path.dirname(new URL(import.meta.url).pathname), p))
    .find((p) => existsSync(p))!;
  for (const how of ['pause', 'stop', 'leave']) {
    const script = `
      const n = require(${JSON.stringify(addon)});
      const [a] = n.socketpair();
      const h = n.pollStart(a, n.constants.POLL_READABLE, () => {});
      if (${JSON.stringify(how)} === 'pause') n.pollUpdate(h, 0);
      if (${JSON.stringify(how)} === 'stop') n.pollStop(h);
      globalThis.keep = h;
      // 'leave': an active poll keeps the loop alive; exit explicitly.
      if (${JSON.stringify(how)} === 'leave') setTimeout(() => process.exit(0), 10);`;
    const r = spawnSync(process.execPath, ['-e', script], { encoding: 'utf8' });
    assert.deepEqual([r.status, r.signal], [0, null], `${how}: ${r.stderr}`);
  }
});
