/**
 * Mounting and unmounting images, as `cfs mount` / `cfs umount` / `cfs mounts` do it (and the
 * library's mountImage / unmountImage / listMounts): the kernel composefs mount when privileged,
 * else (or on request) the FUSE server; a transport reference is imported first.
 * Heavy modules (the import engine, the FUSE server) load only when needed: a plain mount of an
 * imported image should start fast.
 */
import { closeSync, constants as fsc, lstatSync, openSync, statSync } from 'node:fs';
import path from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { CfsError, errnoCode } from '../errors.js';
import { native } from '../native.js';
import type { ImageHandle, Repository } from '../repository/repository.js';
import type { PullOptions, PullResult } from '../oci/pull.js';
import { hashAlgOfSize } from '../fsverity/digest.js';
import { hasMountPrivilege } from './caps.js';
import { canonical, findMount, fuseMountUid, isComposefsMount, listComposefsMounts } from './mountinfo.js';
import { detachPin, livePins, pinMountedImage, pinOf, unpinUnmounted } from '../repository/pins.js';

/** auto: the kernel mount when privileged, else FUSE; yes: FUSE; no: the kernel mount or an error. */
export type FuseMode = 'auto' | 'yes' | 'no';

export interface MountImageOptions {
  fuse?: FuseMode;
  /**
   * FUSE: serve in this process until unmounted, instead of a background server, as
   * `cfs mount --foreground`: SIGTERM/SIGINT handlers are installed (they unmount) and the
   * server's diagnostics go to stderr.
   */
  foreground?: boolean;
  /** Kernel mount: a writable upper layer and its overlay work directory (both or neither). */
  upperdir?: string;
  workdir?: string;
  /** Kernel mount: read-write (needs upperdir and workdir); otherwise read-only. */
  readWrite?: boolean;
  /** How to import a transport reference (its tag is the one a pull gives by default). */
  pull?: Omit<PullOptions, 'name'>;
  /** Told once a transport reference is imported. */
  onPulled?: (r: PullResult) => void;
  /** Told what the caller should know (a reference its source lost, mounted from an earlier import). */
  onNotice?: (text: string) => void;
  /**
   * Told once the mount is up. With `foreground`, mountImage returns only after the unmount:
   * this is where a caller lets go of the repository (`repo.close()`), whose shared lock would
   * otherwise hold off `cfs gc` while the mount lasts. The server needs no handle.
   */
  onMounted?: (m: MountedImage) => void;
}

export interface MountedImage {
  /** Absolute mount point. */
  mountpoint: string;
  kind: 'kernel' | 'fuse';
  /** The composefs image id (hex). */
  imageId: string;
  /** The mount's source is `composefs:<label>` (kernel) or `cfs:<label>` (FUSE). */
  label: string;
}

export interface MountEntry {
  mountpoint: string;
  source: string;
  /** What was mounted, as it was named (the source without its `composefs:`/`cfs:` prefix). */
  image: string;
  kind: 'kernel' | 'fuse';
  fsType: string;
  options: string;
  /**
   * active; dead: a FUSE mount whose server is gone (its files fail with ENOTCONN; `cfs umount`
   * removes it); unknown: a FUSE mount whose server's record is not found (another user's,
   * another runtime directory).
   */
  state: 'active' | 'dead' | 'unknown';
  /** The FUSE server's pid (active FUSE mounts); null otherwise. */
  serverPid: number | null;
  /** The composefs image id and the repository it is from, for mounts cfs made (pins.ts); null otherwise. */
  imageId: string | null;
  repository: string | null;
}

/** An existing directory, as an absolute path. */
export function checkMountpoint(mp: string): string {
  let st;
  try {
    st = statSync(mp);
  } catch (e) {
    if (errnoCode(e) === 'ENOTCONN') throw new CfsError('EIO', `mount point ${mp} is a FUSE mount whose server is gone (transport endpoint is not connected): cfs umount it first`, { path: mp });
    throw new CfsError('ENOENT', `mount point ${mp} does not exist`, { path: mp });
  }
  if (!st.isDirectory()) throw new CfsError('EINVAL', `mount point ${mp} is not a directory`, { path: mp });
  return path.resolve(mp);
}

/** A second cfs mount on the same directory would hide the first and make umount ambiguous. */
function refuseStacking(mp: string): void {
  const top = findMount(mp);
  if (top && isComposefsMount(top)) {
    throw new CfsError('EBUSY', `${mp} already has a cfs mount (${top.source}); cfs umount it first`, { path: mp });
  }
}

function chooseKernel(mode: FuseMode): boolean {
  if (!['auto', 'yes', 'no'].includes(mode)) throw new CfsError('EINVAL', `--fuse must be auto, yes or no (got '${String(mode)}')`);
  if (mode === 'yes') return false;
  const privileged = hasMountPrivilege();
  if (mode === 'no' && !privileged) {
    throw new CfsError('EPERM', 'kernel mount (--fuse no) needs CAP_SYS_ADMIN in the initial user namespace; run as root or use --fuse auto|yes');
  }
  return privileged;
}

/** The image object's content still has the digest it is named by (userspace fs-verity). */
async function checkImageIntact(file: string, imageId: Buffer): Promise<void> {
  const { fsverityDigestFile } = await import('../fsverity/file.js');
  const alg = hashAlgOfSize(imageId.length) ?? 'sha256';
  const actual = await fsverityDigestFile(file, alg);
  if (!actual.equals(imageId)) {
    throw new CfsError('ECORRUPT', `image ${imageId.toString('hex')} is damaged: its content has digest ${actual.toString('hex')} (run 'cfs fsck')`, { path: file });
  }
}

/**
 * What can be checked of a mount before any repository is touched: the mount point, the kind of
 * mount and the options it allows. mountImage checks it again.
 */
export function checkMountRequest(mountpoint: string, opts: MountImageOptions = {}): { mountpoint: string; kernel: boolean } {
  const mp = checkMountpoint(mountpoint);
  refuseStacking(mp);
  const kernel = chooseKernel(opts.fuse ?? 'auto');
  if ((opts.upperdir || opts.workdir || opts.readWrite) && !kernel) throw new CfsError('EINVAL', '--upperdir/--workdir/--read-write need the kernel mount');
  if (!!opts.upperdir !== !!opts.workdir) throw new CfsError('EINVAL', '--upperdir and --workdir go together');
  if (opts.readWrite && !opts.upperdir) throw new CfsError('EINVAL', '--read-write needs --upperdir and --workdir');
  if (opts.foreground && kernel) throw new CfsError('EINVAL', '--foreground keeps a FUSE server attached; a kernel mount has none (add --fuse yes)');
  return { mountpoint: mp, kernel };
}

/**
 * Mount `source` at `mountpoint`: a transport reference (`oci:`, `oci-archive:`,
 * `containers-storage:`; imported first when needed), an image name known to the repository,
 * an image id or `ref/NAME`. Returns once the mount is ready (with `foreground`, once unmounted).
 */
export async function mountImage(repo: Repository, source: string, mountpoint: string, opts: MountImageOptions = {}): Promise<MountedImage> {
  const { mountpoint: mp, kernel } = checkMountRequest(mountpoint, opts);
  const { resolveMountSource } = await import('./resolve.js');
  const { image, label } = await resolveMountSource(repo, source, {
    platform: opts.pull?.platform,
    pull: async (ref) => {
      const { pullImage } = await import('../oci/pull.js');
      const r = await pullImage(repo, ref, opts.pull);
      opts.onPulled?.(r);
      return r.imageId;
    },
    note: opts.onNotice,
  });
  const objectsDir = path.join(repo.path, 'objects');
  const inside = path.relative(repo.path, mp);
  if (!inside.startsWith('..') && !path.isAbsolute(inside)) {
    throw new CfsError('EINVAL', `mount point ${mp} is inside repository ${repo.path}: the mount would hide what it serves`, { path: mp });
  }
  const mounted: MountedImage = { mountpoint: mp, kind: kernel ? 'kernel' : 'fuse', imageId: image.imageId.toString('hex'), label };
  // Two cfs mounts racing for one directory: one mounts, the other is refused (not stacked).
  // (A foreground server holds nothing: it returns only once unmounted.)
  const release = opts.foreground ? null : await lockMountpoint(mp);
  try {
    refuseStacking(mp);
    return await mountResolved(repo, mounted, image, kernel, objectsDir, opts);
  } finally {
    release?.();
  }
}

/**
 * An exclusive lock on the mount point directory (flock on its fd: whoever opens the path after
 * a mount gets the mounted root, and then finds the mount). Null when it cannot be opened.
 */
async function lockMountpoint(mp: string): Promise<(() => void) | null> {
  let fd: number;
  try {
    fd = openSync(mp, fsc.O_RDONLY | fsc.O_DIRECTORY);
  } catch {
    return null;
  }
  const c = native().constants;
  for (;;) {
    try {
      native().flock(fd, c.LOCK_EX | c.LOCK_NB);
      return () => closeSync(fd);
    } catch (e) {
      const code = errnoCode(e);
      if (code !== 'EWOULDBLOCK' && code !== 'EAGAIN') {
        closeSync(fd);
        return null;
      }
      await sleep(50);
    }
  }
}

async function mountResolved(repo: Repository, mounted: MountedImage, image: ImageHandle, kernel: boolean, objectsDir: string, opts: MountImageOptions): Promise<MountedImage> {
  const mp = mounted.mountpoint;
  const label = mounted.label;
  if (kernel) {
    const { mountComposefs } = await import('./kernel.js');
    try {
      mountComposefs({
        image: image.path,
        objectsDir,
        mountpoint: mp,
        source: `composefs:${label}`,
        verity: image.verityRequired ? 'require' : 'off',
        // The image object is named by its fs-verity digest: a damaged image is refused here
        // instead of failing file by file later (checked on the fd that gets mounted).
        expectedDigest: image.imageId,
        upperdir: opts.upperdir,
        workdir: opts.workdir,
        readWrite: opts.readWrite,
      });
    } catch (e) {
      if (e instanceof CfsError && e.code === 'EDIGEST') {
        throw new CfsError('ECORRUPT', `image ${mounted.imageId} is damaged: ${e.message} (run 'cfs fsck')`, { path: image.path });
      }
      throw e;
    }
    announce(repo, mounted, opts);
    return mounted;
  }
  await checkImageIntact(image.path, image.imageId);
  const { mountFuseDaemon } = await import('./fuse-daemon.js');
  await mountFuseDaemon(
    {
      imagePath: image.path,
      objectsDir,
      mountpoint: mp,
      name: label,
      verify: image.verityRequired ? { alg: repo.alg } : undefined,
      foreground: opts.foreground,
    },
    // A foreground server returns only once unmounted: this runs when it has mounted.
    () => announce(repo, mounted, opts),
  );
  return mounted;
}

/**
 * The mount is up: pin its image for gc (pins.ts; a pin that cannot be written only costs that
 * protection, and is said), then tell the caller.
 */
function announce(repo: Repository, mounted: MountedImage, opts: MountImageOptions): void {
  const why = pinMountedImage(repo.path, mounted.imageId, mounted.mountpoint);
  if (why !== null) opts.onNotice?.(`cfs gc will not know that image ${mounted.imageId.slice(0, 12)} is mounted: ${why}`);
  opts.onMounted?.(mounted);
}

/**
 * Unmount a cfs mount, kernel or FUSE (waiting for its server); other mounts are refused. A busy
 * mount fails with EBUSY and stays; `lazy` detaches it now and releases it when no longer used.
 */
export async function unmountImage(mountpoint: string, opts: { lazy?: boolean } = {}): Promise<void> {
  // Through a symlink as mount did; never stat'ed (a hung FUSE server must not hang us).
  const mp = canonical(mountpoint);
  const m = findMount(mp);
  if (m && !isComposefsMount(m)) {
    throw new CfsError('EINVAL', `${mp} is a ${m.fsType} mount of ${m.source}, not a cfs mount; use umount(8) for it`, { path: mp });
  }
  if (m && !m.fsType.startsWith('fuse')) {
    const { unmount } = await import('./kernel.js');
    unmount(mp, opts);
    if (opts.lazy) detachPin(mp, m.mountId);
    else unpinUnmounted(mp, m.mountId);
    return;
  }
  // fusermount3 would say only that the mount is not in its table.
  const owner = m ? fuseMountUid(m) : null;
  const me = process.getuid?.() ?? 0;
  if (owner !== null && owner !== me && me !== 0) {
    throw new CfsError('EPERM', `${mp} is a FUSE mount of uid ${owner}: only that user or root can unmount it`, { path: mp });
  }
  const { readFuseRecord, unmountFuse } = await import('./fuse-daemon.js');
  // No mount but a server's record: its mount was lost (the server is cleaned up).
  if (!m && !readFuseRecord(mp)) {
    // Nothing is mounted there, so looking at the path cannot hang on a dead server.
    if (!lstatSync(mp, { throwIfNoEntry: false })) throw new CfsError('ENOENT', `${mp} does not exist`, { path: mp });
    throw new CfsError('EINVAL', `${mp} is not a mount point`, { path: mp });
  }
  await unmountFuse(mp, opts);
  if (opts.lazy && m) detachPin(mp, m.mountId);
  else unpinUnmounted(mp);
}

/** The cfs mounts of this mount namespace. */
export async function listMounts(): Promise<MountEntry[]> {
  const { fuseServerState } = await import('./fuse-daemon.js');
  const pins = livePins();
  return listComposefsMounts().map((m) => {
    const pinned = pinOf(m, pins);
    const fuse = m.fsType.startsWith('fuse');
    const server = fuse ? fuseServerState(m) : { state: 'active' as const, pid: null };
    return {
      mountpoint: m.mountpoint,
      source: m.source,
      image: m.source.replace(/^(composefs|cfs):/, ''),
      kind: fuse ? 'fuse' : 'kernel',
      fsType: m.fsType,
      options: m.superOptions,
      state: server.state,
      serverPid: server.pid,
      imageId: pinned?.imageId ?? null,
      repository: pinned?.repo ?? null,
    };
  });
}
