import assert from 'node:assert/strict';
import { execFile, spawn, type ChildProcess } from 'node:child_process';
import { createHash } from 'node:crypto';
import { once } from 'node:events';
import { mkdir, readFile, rename, rm, symlink, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { after, before, describe, test } from 'node:test';
import { promisify } from 'node:util';
import { isCfsError } from '../src/errors.js';
import { openStorageImage, type OpenStorageOptions, type StorageImage } from '../src/oci/containers-storage/image.js';
import { WAIT_NOTICE_MS } from '../src/oci/containers-storage/lock.js';
import { layerSegments, layerTarStream } from '../src/oci/containers-storage/tar-split.js';
import { findChangedFile, openStoreLayerStream } from '../src/oci/containers-storage/layer-stream.js';
import { cstorSkipReason, makeCstorStore, type CstorDriver, type CstorFixture } from './helpers/cstor-fixture.js';

const run = promisify(execFile);

/** Wait until `cond` holds, polling; fails after `ms`. */
async function until(cond: () => boolean, ms: number): Promise<void> {
  const deadline = Date.now() + ms;
  while (!cond()) {
    if (Date.now() > deadline) assert.fail(`condition not met within ${ms} ms`);
    await new Promise((r) => setTimeout(r, 50));
  }
}

const skip = await cstorSkipReason();
if (skip) console.log(`# skipping containers-storage store tests: ${skip}`);

const isErr = (code: string, re: RegExp) => (e: unknown) => isCfsError(e) && e.code === code && re.test(e.message);

async function sha256Of(stream: AsyncIterable<Buffer>): Promise<string> {
  const h = createHash('sha256');
  for await (const c of stream) h.update(c);
  return `sha256:${h.digest('hex')}`;
}

function opts(f: CstorFixture, extra: OpenStorageOptions = {}): OpenStorageOptions {
  return { context: { env: { CONTAINERS_STORAGE_CONF: f.confPath } }, ...extra };
}

for (const driver of ['overlay', 'vfs'] as CstorDriver[]) {
  describe(`containers-storage (${driver})`, { skip: skip ?? false }, () => {
    let f: CstorFixture;
    before(async () => {
      f = await makeCstorStore({ driver });
      await f.add('quay.io/acme/other:v1', { layers: [[{ path: 'hello', content: 'hello world, more than sixty-four bytes of content to be external!' }]] });
    });
    after(() => f?.cleanup());

    test('every layer stream hashes to its diff_id; manifest and config match the source', async () => {
      const src = f.images[0]!.built;
      const img = await openStorageImage('localhost/x:latest', opts(f));
      assert.equal(img.manifestDigest, src.manifestDigest);
      assert.ok(img.manifestBytes.equals(src.manifestBytes));
      assert.equal(img.configDigest, src.configDigest);
      assert.ok(img.configBytes.equals(src.configBytes));
      assert.deepEqual(img.layers.map((l) => l.diffId), src.layers.map((l) => l.diffId));
      for (const [i, l] of img.layers.entries()) {
        assert.equal(await sha256Of(layerTarStream(l.store, l.layerId)), l.diffId, `layer ${i}`);
        assert.equal(l.uncompressedSize, src.layers[i]!.tar.length);
      }
    });

    test('layerSegments reference files in the layer dir and add up to the tar', async () => {
      const img = await openStorageImage('localhost/x', opts(f));
      const l = img.layers[0]!;
      const parts: Buffer[] = [];
      const files: string[] = [];
      for await (const s of layerSegments(l.store, l.layerId)) {
        if (s.kind === 'raw') parts.push(s.data);
        else {
          assert.equal(typeof s.path, 'string');
          assert.ok((s.path as string).startsWith(l.store.layerDir(l.layerId)));
          files.push(s.name);
          parts.push(await readFile(s.path));
        }
      }
      assert.ok(Buffer.concat(parts).equals(f.images[0]!.built.layers[0]!.tar));
      // Empty files, links and directories have no content to fetch.
      assert.deepEqual(files.sort(), ['etc/hundred', 'etc/ten', 'opq/a', 'opq/sub/b', 'private', 'usr/attr', 'usr/big'].sort());
    });

    test('lookup by name, short name, digest, ID and ID prefix', async () => {
      const { built } = f.images[0]!;
      const id = built.configDigest.slice(7);
      const refs = [
        'x',
        'x:latest',
        'localhost/x',
        'containers-storage:localhost/x:latest',
        `@${built.manifestDigest}`,
        `localhost/x@${built.manifestDigest}`,
        id,
        `@${id}`,
        `sha256:${id}`,
        id.slice(0, 12),
        `[${driver}@${f.graphroot}+${f.runroot}]localhost/x`,
      ];
      for (const r of refs) {
        const img = await openStorageImage(r, r.startsWith('[') ? { context: { env: {} } } : opts(f));
        assert.equal(img.imageId, id, r);
        assert.equal(img.manifestDigest, built.manifestDigest, r);
      }
      const other = await openStorageImage('quay.io/acme/other:v1', opts(f));
      assert.equal(other.layers.length, 1);
      assert.equal(await sha256Of(layerTarStream(other.layers[0]!.store, other.layers[0]!.layerId)), other.layers[0]!.diffId);
      // `other` is not a docker.io name: only the unique-suffix rule finds it by its short name.
      assert.equal((await openStorageImage('acme/other:v1', opts(f))).imageId, other.imageId);
    });

    test('unknown names fail with ENOENT listing similar names', async () => {
      await assert.rejects(openStorageImage('xx', opts(f)), isErr('ENOENT', /docker\.io\/library\/xx:latest: no such image .*similar: localhost\/x:latest/));
      await assert.rejects(openStorageImage('quay.io/acme/othr:v1', opts(f)), isErr('ENOENT', /similar: quay\.io\/acme\/other:v1/));
      await assert.rejects(openStorageImage('x:nope', opts(f)), isErr('ENOENT', /no such image/));
      // Nothing similar: the message lists what the store has.
      await assert.rejects(openStorageImage('zzzzzzzzzzzz', opts(f)), isErr('ENOENT', /none is similar; the store has localhost\/x:latest, quay\.io\/acme\/other:v1$/));
      await assert.rejects(openStorageImage(`@sha256:${'0'.repeat(64)}`, opts(f)), isErr('ENOENT', /no such image/));
      // A store spec naming the other driver: the store's own driver is named.
      const wrong = driver === 'overlay' ? 'vfs' : 'overlay';
      await assert.rejects(
        openStorageImage(`[${wrong}@${f.graphroot}]localhost/x`, opts(f)),
        isErr('ENOENT', new RegExp(`no such image .*; ${f.graphroot.replace(/[.*+?^${}()|[\]\\]/g, '\\$&')} holds ${driver}-images, not ${wrong}-images: name the driver, e\\.g\\. \\[${driver}@`)),
      );
    });

    // containers/storage falls back to overlay, so only an overlay store can be found this way.
    if (driver === 'overlay') test('no driver configured and an empty graph root: overlay, and the images of the additional stores', async () => {
      const empty = join(f.dir, 'empty-graphroot');
      await mkdir(empty, { recursive: true });
      const conf = join(f.dir, 'no-driver.conf');
      await writeFile(conf, `[storage]\ngraphroot = "${empty}"\nrunroot = "${join(f.dir, 'empty-runroot')}"\n[storage.options]\nadditionalimagestores = ["${f.graphroot}"]\n`);
      const img = await openStorageImage('localhost/x:latest', { context: { env: { CONTAINERS_STORAGE_CONF: conf } } });
      assert.equal(img.manifestDigest, f.images[0]!.built.manifestDigest);
    });

    test('changed layer files are detected (EDIGEST naming the file)', async () => {
      const img = await openStorageImage('localhost/x', opts(f));
      const l = img.layers[0]!;
      const file = join(l.store.layerDir(l.layerId), 'usr/attr');
      const orig = await readFile(file);
      try {
        const flipped = Buffer.from(orig);
        flipped[100] = flipped[100]! ^ 1;
        await writeFile(file, flipped);
        // Same size: the tar streams (contents are not CRC-checked on the way), its digest is
        // not the diff_id, and findChangedFile names the file.
        assert.notEqual(await sha256Of(layerTarStream(l.store, l.layerId)), l.diffId);
        const changed = await findChangedFile(l.store, l.layerId);
        assert.ok(changed && changed.code === 'EDIGEST');
        assert.match(changed.message, new RegExp(`layer ${l.layerId}: usr/attr changed since import \\(crc64 mismatch\\)`));
        await writeFile(file, orig.subarray(1));
        await assert.rejects(sha256Of(layerTarStream(l.store, l.layerId)), isErr('EDIGEST', /usr\/attr changed since import \(size 299, recorded 300\)/));
        await rm(file);
        await assert.rejects(sha256Of(layerTarStream(l.store, l.layerId)), isErr('ENOENT', /usr\/attr is missing/));
      } finally {
        await writeFile(file, orig);
      }
      assert.equal(await sha256Of(layerTarStream(l.store, l.layerId)), l.diffId);
    });

    test('damaged store metadata gives clear errors', async () => {
      const layersJson = join(f.graphroot, `${driver}-layers`, 'layers.json');
      const orig = await readFile(layersJson, 'utf8');
      try {
        await writeFile(layersJson, orig.slice(0, orig.length >> 1));
        await assert.rejects(openStorageImage('localhost/x', opts(f)), isErr('ECORRUPT', new RegExp(`${layersJson.replace(/[.*+?^${}()|[\]\\]/g, '\\$&')}: invalid JSON`)));
        const recs = JSON.parse(orig) as Array<Record<string, unknown>>;
        recs[0]!['diff-digest'] = `sha256:${'1'.repeat(64)}`;
        await writeFile(layersJson, JSON.stringify(recs));
        await assert.rejects(openStorageImage('localhost/x', opts(f)), isErr('ECORRUPT', /has diff-digest sha256:1{64}, the config says/));
        // No diff-digest at all (a partial zstd:chunked pull): the config's diff_id, which the rebuilt tar has.
        for (const r of recs) delete r['diff-digest'];
        await writeFile(layersJson, JSON.stringify(recs));
        const undigested = await openStorageImage('localhost/x', opts(f));
        for (const l of undigested.layers) assert.equal(await sha256Of(layerTarStream(l.store, l.layerId)), l.diffId);
      } finally {
        await writeFile(layersJson, orig);
      }
      const img = await openStorageImage('localhost/x', opts(f));
      const ts = img.layers[1]!.store.tarSplitPath(img.layers[1]!.layerId);
      await rename(ts, `${ts}.away`);
      try {
        await assert.rejects(sha256Of(layerTarStream(img.layers[1]!.store, img.layers[1]!.layerId)), isErr('ENOENT', /tar-split metadata is missing/));
      } finally {
        await rename(`${ts}.away`, ts);
      }
    });

    test('an image deleted while it is read: its layer is said to have been removed', async () => {
      const added = await f.add('localhost/doomed:1', { layers: [[{ path: 'doomed', content: 'a layer that goes away, more than sixty-four bytes of content!' }]] });
      const img = await openStorageImage(added.name, opts(f));
      const l = img.layers[0]!;
      await run('skopeo', ['delete', `containers-storage:${added.name}`], { env: f.env });
      await assert.rejects(openStoreLayerStream(l.store, l.layerId), isErr('ENOENT', new RegExp(`layer ${l.layerId} was removed from the store while the image was being read`)));
    });
  });
}

describe('containers-storage: store discovery errors', { skip: skip ?? false }, () => {
  test('a missing graph root is named', async () => {
    const env = { CONTAINERS_STORAGE_CONF: '/nonexistent/storage.conf' };
    await assert.rejects(openStorageImage('x', { context: { env } }), isErr('ENOENT', /\/nonexistent\/storage\.conf/));
    await assert.rejects(openStorageImage('[overlay@/nonexistent/graph]x', { context: { env: {} } }), isErr('ENOENT', /graph root \/nonexistent\/graph does not exist/));
    await assert.rejects(openStorageImage('[btrfs@/tmp]x', { context: { env: {} } }), isErr('ENOTSUP', /storage driver "btrfs" is not supported/));
  });
});

import { PROJECT_ROOT } from './helpers/cli.js';
import { firstOutput } from './helpers/child.js';

/** A child process that holds `lockPath` the way a writer would, until its stdin closes. */
async function holdLock(lockPath: string, how: 'cfs-exclusive' | 'posix-write'): Promise<ChildProcess> {
  const lockModule = JSON.stringify(join(PROJECT_ROOT, 'src/oci/containers-storage/lock.ts'));
  const child =
    how === 'cfs-exclusive'
      ? spawn(
          process.execPath,
          [
            '--import',
            'tsx',
            '--input-type=module',
            '-e',
            `const { acquireLock } = await import(${lockModule});
             await acquireLock(${JSON.stringify(lockPath)}, 'exclusive');
             console.log('locked'); process.stdin.resume(); process.stdin.on('end', () => process.exit(0));`,
          ],
          { stdio: ['pipe', 'pipe', 'inherit'] },
        )
      : spawn('python3', ['-c', `import fcntl,sys\nf=open(${JSON.stringify(lockPath)},'r+')\nfcntl.lockf(f,fcntl.LOCK_EX)\nprint('locked',flush=True)\nsys.stdin.read()`], {
          stdio: ['pipe', 'pipe', 'inherit'],
        });
  assert.equal((await firstOutput(child, `the holder of ${lockPath}`)).trim(), 'locked');
  return child;
}

async function release(child: ChildProcess): Promise<void> {
  const exited = once(child, 'exit');
  child.stdin!.end();
  await exited;
}

describe('containers-storage: read locks', { skip: skip ?? false }, () => {
  let f: CstorFixture;
  let img: StorageImage;
  before(async () => {
    f = await makeCstorStore({ driver: 'vfs', images: [{ name: 'localhost/l:1', spec: { layers: [[{ path: 'a', content: 'x'.repeat(100) }]] } }] });
    img = await openStorageImage('localhost/l:1', opts(f, { timeoutMs: 300 }));
  });
  after(() => f?.cleanup());

  test('an exclusive holder of layers.lock makes us wait (up to a timeout, if given: EBUSY naming the lock)', async () => {
    const lockPath = join(f.graphroot, 'vfs-layers', 'layers.lock');
    const child = await holdLock(lockPath, 'cfs-exclusive');
    try {
      await assert.rejects(openStorageImage('localhost/l:1', opts(f, { timeoutMs: 300 })), isErr('EBUSY', /vfs-layers\/layers\.lock: locked by another process/));
      // Streaming a layer takes the same lock (img's store was opened with timeoutMs 300).
      await assert.rejects(sha256Of(layerTarStream(img.layers[0]!.store, img.layers[0]!.layerId)), isErr('EBUSY', /layers\.lock/));
      // A stopped wait ends with ECANCELED.
      const stop = new AbortController();
      const stopped = openStorageImage('localhost/l:1', opts(f, { signal: stop.signal }));
      setTimeout(() => stop.abort(), 100);
      await assert.rejects(stopped, isErr('ECANCELED', /layers\.lock: stopped waiting/));
      // By default a reader waits as long as the writer holds on (saying so after WAIT_NOTICE_MS),
      // and proceeds once it lets go.
      const waits: string[] = [];
      const waiting = openStorageImage('localhost/l:1', opts(f, { onWait: (p) => waits.push(p) }));
      await until(() => waits.length > 0, WAIT_NOTICE_MS + 10_000);
      assert.deepEqual(waits, [lockPath]);
      await release(child);
      assert.equal((await waiting).imageId, img.imageId);
      assert.equal(waits.length, 1);
      // Two callers waiting at once: one giving up leaves the other waiting, with its own notice.
      const again = await holdLock(lockPath, 'cfs-exclusive');
      const quitter = new AbortController();
      const quitterWaits: string[] = [];
      const stayerWaits: string[] = [];
      const gaveUp = openStorageImage('localhost/l:1', opts(f, { signal: quitter.signal, onWait: (p) => quitterWaits.push(p) }));
      const stays = openStorageImage('localhost/l:1', opts(f, { onWait: (p) => stayerWaits.push(p) }));
      await new Promise((r) => setTimeout(r, 200));
      quitter.abort();
      await assert.rejects(gaveUp, isErr('ECANCELED', /stopped waiting/));
      await until(() => stayerWaits.length > 0, WAIT_NOTICE_MS + 10_000);
      assert.deepEqual([quitterWaits, stayerWaits], [[], [lockPath]]);
      await release(again);
      assert.equal((await stays).imageId, img.imageId);
    } finally {
      child.kill();
    }
  });

  test('an exclusive holder of images.lock blocks image lookup', async () => {
    const child = await holdLock(join(f.graphroot, 'vfs-images', 'images.lock'), 'cfs-exclusive');
    try {
      await assert.rejects(openStorageImage('localhost/l:1', opts(f, { timeoutMs: 0 })), isErr('EBUSY', /vfs-images\/images\.lock/));
    } finally {
      await release(child);
    }
  });

  test('a containers/storage-style POSIX write lock excludes us', async () => {
    const child = await holdLock(join(f.graphroot, 'vfs-layers', 'layers.lock'), 'posix-write');
    try {
      await assert.rejects(openStorageImage('localhost/l:1', opts(f, { timeoutMs: 200 })), isErr('EBUSY', /layers\.lock/));
    } finally {
      await release(child);
    }
  });

  test('concurrent readers in one process share the lock', async () => {
    const l = img.layers[0]!;
    const [a, b] = await Promise.all([sha256Of(layerTarStream(l.store, l.layerId)), sha256Of(layerTarStream(l.store, l.layerId))]);
    assert.equal(a, l.diffId);
    assert.equal(b, l.diffId);
  });

  test('two names of one lock file share its lock (releasing one keeps the other); a timeout beyond what timers hold is none', async () => {
    const { acquireLock } = await import('../src/oci/containers-storage/lock.js');
    const lockPath = join(f.graphroot, 'vfs-layers', 'layers.lock');
    const alias = join(f.dir, 'layers-alias.lock');
    await rm(alias, { force: true });
    await symlink(lockPath, alias);
    /** Whether another process could take the lock exclusively right now. */
    const writerBlocked = async (): Promise<boolean> => {
      const { stdout } = await run('python3', ['-c', `import fcntl\nf=open(${JSON.stringify(lockPath)},'r+')\ntry:\n  fcntl.lockf(f,fcntl.LOCK_EX|fcntl.LOCK_NB); print('free')\nexcept OSError: print('busy')`]);
      return stdout.trim() === 'busy';
    };
    const a = await acquireLock(lockPath, 'shared');
    const b = await acquireLock(alias, 'shared');
    b.release();
    assert.equal(await writerBlocked(), true, 'the first holder still holds it');
    a.release();
    assert.equal(await writerBlocked(), false);
    // A timeout too long for a timer (2^31 ms) waits like none; it used to fire at once.
    const child = await holdLock(lockPath, 'cfs-exclusive');
    try {
      const stop = new AbortController();
      const long = acquireLock(lockPath, 'shared', { timeoutMs: 3e9, signal: stop.signal });
      const settled = await Promise.race([long.then(() => 'settled', () => 'settled'), new Promise((r) => setTimeout(() => r('waiting'), 300))]);
      assert.equal(settled, 'waiting');
      stop.abort();
      await assert.rejects(long, isErr('ECANCELED', /stopped waiting/));
    } finally {
      await release(child);
    }
  });
});
