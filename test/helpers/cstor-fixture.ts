/**
 * Test fixture: a real containers-storage store filled by Debian's skopeo from an OCI layout
 * built with oci-fixture.ts. The store lives under a tmp dir with its own storage.conf; skopeo
 * gets CONTAINERS_STORAGE_CONF through its environment only (this process's env is untouched).
 * The overlay driver is tried first; if skopeo cannot use it, vfs is used and the reason printed.
 */
import { execFile } from 'node:child_process';
import { mkdtemp, readFile, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { promisify } from 'node:util';
import { buildOciLayout, type BuiltImage, type ImageSpec, type LayerSpec } from './oci-fixture.js';

const run = promisify(execFile);

export type CstorDriver = 'overlay' | 'vfs';

export interface CstorImage {
  /** Name given to skopeo, e.g. `localhost/x:latest`. */
  name: string;
  built: BuiltImage;
}

export interface CstorFixture {
  dir: string;
  graphroot: string;
  runroot: string;
  confPath: string;
  driver: CstorDriver;
  /** Environment for code under test: only CONTAINERS_STORAGE_CONF points at this store. */
  env: NodeJS.ProcessEnv;
  images: CstorImage[];
  /** Copies one more OCI image into the store under `name`. */
  add(name: string, spec: ImageSpec): Promise<CstorImage>;
  cleanup(): Promise<void>;
}

const MiB = 1024 * 1024;

/** Deterministic non-trivial bytes (so CRCs and digests depend on every byte). */
export function patternBytes(n: number, seed = 1): Buffer {
  const b = Buffer.alloc(n);
  let x = seed >>> 0 || 1;
  for (let i = 0; i < n; i++) {
    x ^= x << 13;
    x >>>= 0;
    x ^= x >>> 17;
    x ^= x << 5;
    x >>>= 0;
    b[i] = x & 0xff;
  }
  return b;
}

/**
 * Two layers covering what the reconstruction must reproduce: files of 0, 10, 100 bytes and
 * 1 MiB, a symlink, a hardlink, xattrs, a directory made opaque in layer 2 and a `.wh.` deletion.
 */
export function standardLayers(): LayerSpec[] {
  return [
    [
      { path: 'etc/' },
      { path: 'etc/empty', content: '' },
      { path: 'etc/ten', content: '0123456789' },
      { path: 'etc/hundred', content: patternBytes(100, 7) },
      { path: 'usr/' },
      { path: 'usr/big', content: patternBytes(MiB, 3), mode: 0o755 },
      { path: 'usr/link', type: 'symlink', linkname: 'big' },
      { path: 'usr/hard', type: 'hardlink', linkname: 'usr/big' },
      { path: 'usr/attr', content: patternBytes(300, 9), xattrs: { 'user.cfs': 'value', 'user.bin': Buffer.from([0, 1, 2, 255]) } },
      { path: 'opq/' },
      { path: 'opq/a', content: 'a'.repeat(70) },
      { path: 'opq/sub/' },
      { path: 'opq/sub/b', content: 'b' },
      { path: 'private', content: patternBytes(5000, 11), mode: 0o600 },
    ],
    [
      { path: 'etc/' },
      { path: 'etc/.wh.ten', content: '' },
      { path: 'etc/hundred', content: patternBytes(100, 8) },
      { path: 'opq/' },
      { path: 'opq/.wh..wh..opq', content: '' },
      { path: 'opq/c', content: patternBytes(4096, 5) },
      { path: 'new/' },
      { path: 'new/deep/' },
      { path: 'new/deep/file', content: patternBytes(513, 13) },
    ],
  ];
}

function storageConf(driver: CstorDriver, graphroot: string, runroot: string): string {
  return [
    '# written by test/helpers/cstor-fixture.ts',
    '[storage]',
    `driver = "${driver}"`,
    `graphroot = "${graphroot}"`,
    `runroot = "${runroot}"`,
    // Without this the overlay driver bind-mounts graphroot/overlay onto itself and leaves it mounted.
    '[storage.options.overlay]',
    'skip_mount_home = "true"',
    '',
  ].join('\n');
}

async function skopeoCopy(layoutDir: string, tag: string, name: string, env: NodeJS.ProcessEnv): Promise<void> {
  await run('skopeo', ['--insecure-policy', 'copy', '--quiet', `oci:${layoutDir}:${tag}`, `containers-storage:${name}`], { env, maxBuffer: 16 * MiB });
}

/**
 * Creates a store (overlay unless `driver` says otherwise; overlay falls back to vfs) holding
 * the given images, by default one image `localhost/x:latest` with `standardLayers()`.
 */
export async function makeCstorStore(
  opts: { driver?: CstorDriver; images?: Array<{ name: string; spec: ImageSpec }> } = {},
): Promise<CstorFixture> {
  const dir = await mkdtemp(join(tmpdir(), 'cfs-cstor-'));
  const graphroot = join(dir, 'graph');
  const runroot = join(dir, 'run');
  const confPath = join(dir, 'storage.conf');
  const env: NodeJS.ProcessEnv = { ...process.env, CONTAINERS_STORAGE_CONF: confPath };
  delete env['STORAGE_DRIVER'];
  delete env['STORAGE_OPTS'];
  let driver: CstorDriver = opts.driver ?? 'overlay';
  let layouts = 0;

  const add = async (name: string, spec: ImageSpec): Promise<CstorImage> => {
    const layoutDir = join(dir, `layout${layouts++}`);
    const tag = 'img';
    const built = await buildOciLayout(layoutDir, { images: [{ ...spec, tag }] });
    await skopeoCopy(layoutDir, tag, name, env);
    return { name, built: built.images[0]! };
  };

  const fixture: CstorFixture = {
    dir,
    graphroot,
    runroot,
    confPath,
    driver,
    env,
    images: [],
    add,
    cleanup: async () => {
      // Older skopeo versions may still leave the overlay home mounted; never rm through a mount.
      const mounts = (await readFile('/proc/self/mounts', 'utf8')).split('\n').map((l) => l.split(' ')[1] ?? '');
      for (const m of mounts.filter((m) => m.startsWith(`${dir}/`)).sort().reverse()) await run('umount', [m]);
      await rm(dir, { recursive: true, force: true });
    },
  };
  const wanted = opts.images ?? [{ name: 'localhost/x:latest', spec: { layers: standardLayers() } }];
  try {
    await writeFile(confPath, storageConf(driver, graphroot, runroot));
    for (const w of wanted) {
      try {
        fixture.images.push(await add(w.name, w.spec));
      } catch (e) {
        if (driver !== 'overlay' || fixture.images.length > 0) throw e;
        console.log(`# cstor-fixture: overlay store failed, using vfs: ${String((e as { stderr?: string }).stderr ?? e).trim()}`);
        driver = fixture.driver = 'vfs';
        await rm(graphroot, { recursive: true, force: true });
        await rm(runroot, { recursive: true, force: true });
        await writeFile(confPath, storageConf(driver, graphroot, runroot));
        fixture.images.push(await add(w.name, w.spec));
      }
    }
  } catch (e) {
    await fixture.cleanup();
    throw e;
  }
  return fixture;
}

/** Why this machine cannot run store tests, or null when it can. */
export async function cstorSkipReason(): Promise<string | null> {
  if (process.getuid?.() !== 0) return 'containers-storage fixtures need root (overlay store, chown of layer files)';
  try {
    await run('skopeo', ['--version']);
  } catch {
    return 'skopeo is not installed';
  }
  return null;
}
