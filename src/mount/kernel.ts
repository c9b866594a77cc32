/**
 * Kernel composefs mount: the EROFS image is mounted detached (never visible in the mount
 * table), then an overlayfs stacks it as metadata layer over the objects directory as a
 * data-only layer, and only the overlay is attached at the mount point.
 *
 * Strategy (tried in order, all through the new mount API):
 * - EROFS: fsopen("erofs"), source=/proc/self/fd/<image fd> (file-backed EROFS, kernel ≥ 6.12),
 *   flag ro, create, fsmount. If the kernel answers ENOTBLK ("not a block device": no
 *   file-backed EROFS), the image is attached read-only to a loop device with losetup and the
 *   loop device is detached right after fsmount; the kernel then clears it (autoclear) when the
 *   EROFS mount goes away.
 * - overlay: source, metacopy=on, redirect_dir=on, [verity=require], layers as fds with
 *   `lowerdir+` (EROFS mount fd) and `datadir+` (objects dir, O_PATH) (kernel ≥ 6.13); if the
 *   kernel rejects `lowerdir+`, one string `lowerdir=/proc/self/fd/E::/proc/self/fd/O`, where
 *   `::` marks the data-only layer (fsconfig strings are capped at 256 bytes, hence the fd
 *   paths). Then fsmount (read-only unless readWrite) and move_mount.
 * Kernels before 6.15 cannot stack a detached mount (composefs-rs first attaches the EROFS to a
 * temporary directory there); they are not supported here.
 *
 * verity=require: overlayfs accepts the option even without fs-verity in the kernel, mounts, and
 * then fails every open of an external file with EIO ("lower file … has no fs-verity digest" in
 * the kernel log). mountComposefs therefore checks for fs-verity first and refuses with ENOTSUP.
 *
 * expectedDigest is checked on the same open fd that gets mounted: the kernel's measurement when
 * the image has fs-verity, else the digest computed in userspace.
 */
import { closeSync, fstatSync, openSync, readSync, realpathSync, statSync } from 'node:fs';
import { execFileSync } from 'node:child_process';
import path from 'node:path';
import { native } from '../native.js';
import { CfsError, errnoCode, systemErrorText, type CfsErrorCode } from '../errors.js';
import { hashAlgOfSize, type HashAlg } from '../fsverity/digest.js';
import { fsverityDigestFdSync } from '../fsverity/file.js';
import { measureVerityFd } from '../fsverity/kernel.js';
import { readMountinfo } from './mountinfo.js';

export interface ComposefsMountOptions {
  image: string; // EROFS image file
  objectsDir: string; // content-addressed objects (XX/YYYY…), the overlay data-only layer
  moreObjectsDirs?: string[]; // further data-only layers, searched after objectsDir (mount.composefs basedir=A:B)
  mountpoint: string;
  source?: string; // shown as the mount's source; default composefs:<image file name>
  verity?: 'require' | 'off'; // default off
  expectedDigest?: Buffer; // fs-verity digest the image must have (32 bytes sha256, 64 sha512)
  upperdir?: string;
  workdir?: string;
  readWrite?: boolean; // needs upperdir and workdir; otherwise the mount is read-only
  strategy?: MountStrategy; // default: auto for both
  attributes?: MountAttributes; // the mount's own flags (mount(8)'s nosuid, nodev, …)
}

/** Per-mount flags, as mount(8) options name them. */
export interface MountAttributes {
  nosuid?: boolean;
  nodev?: boolean;
  noexec?: boolean;
  nodiratime?: boolean;
  /** Default relatime, as for every mount. */
  atime?: 'relatime' | 'noatime' | 'strictatime';
}

function attributeFlags(a: MountAttributes = {}): number {
  const c = native().constants;
  let flags = 0;
  if (a.nosuid) flags |= c.MOUNT_ATTR_NOSUID;
  if (a.nodev) flags |= c.MOUNT_ATTR_NODEV;
  if (a.noexec) flags |= c.MOUNT_ATTR_NOEXEC;
  if (a.nodiratime) flags |= c.MOUNT_ATTR_NODIRATIME;
  if (a.atime === 'noatime') flags |= c.MOUNT_ATTR_NOATIME;
  if (a.atime === 'strictatime') flags |= c.MOUNT_ATTR_STRICTATIME;
  return flags;
}

export type ErofsBacking = 'auto' | 'file' | 'loop';
export type LayerPassing = 'auto' | 'fd' | 'string';

/** How to reach the kernel; 'auto' picks per the module comment. Forcing one serves old kernels and tests. */
export interface MountStrategy {
  erofs?: ErofsBacking;
  layers?: LayerPassing;
}

const KLOG_MAX = 1024;

function errnoToCfs(code: string | undefined): CfsErrorCode {
  switch (code) {
    case 'EPERM':
    case 'EACCES':
      return 'EPERM';
    case 'ENOENT':
    case 'ENOTDIR':
      return 'ENOENT';
    case 'ENODEV':
    case 'ENOSYS':
    case 'EOPNOTSUPP':
      return 'ENOTSUP';
    case 'EINVAL':
      return 'EINVAL';
    case 'EBUSY':
      return 'EBUSY';
    default:
      return 'EIO';
  }
}

const PRIVILEGE_HINT = 'mounting composefs needs CAP_SYS_ADMIN in the initial user namespace';

function wrap(e: unknown, what: string): CfsError {
  if (e instanceof CfsError) return e;
  const code = errnoCode(e) ?? 'EIO';
  const hint = code === 'EPERM' ? ` (${PRIVILEGE_HINT})` : '';
  return new CfsError(errnoToCfs(code), `${what}: ${systemErrorText(e)}${hint}`, { errno: code });
}

/** One filesystem context (fsopen fd); failures carry the kernel's log lines for it. */
class FsContext {
  private readonly fd: number;

  constructor(private readonly fsType: string) {
    try {
      this.fd = native().fsopen(fsType, 0);
    } catch (e) {
      throw wrap(e, `${fsType}: cannot open a filesystem context`);
    }
  }

  setString(key: string, value: string): void {
    this.run(`${key}=${value}`, () => native().fsconfigSetString(this.fd, key, value));
  }

  setFlag(key: string): void {
    this.run(key, () => native().fsconfigSetFlag(this.fd, key));
  }

  setFd(key: string, fd: number): void {
    this.run(`${key} (fd)`, () => native().fsconfigSetFd(this.fd, key, fd));
  }

  create(): void {
    this.run('create', () => native().fsconfigCreate(this.fd));
  }

  /** A detached mount fd. */
  mount(attrFlags: number): number {
    let fd = -1;
    this.run('fsmount', () => {
      fd = native().fsmount(this.fd, 0, attrFlags);
    });
    return fd;
  }

  close(): void {
    closeSync(this.fd);
  }

  private run(step: string, f: () => void): void {
    try {
      f();
    } catch (e) {
      // Some filesystems report only to the kernel log, not to the context.
      const klog = this.kernelLog();
      const why = klog ? ` [kernel: ${klog}]` : step === 'create' ? ' [reason in the kernel log: dmesg]' : '';
      throw wrap(e, `${this.fsType} ${step}${why}`);
    }
  }

  /** Pending kernel messages ("e overlayfs: …") of this context; reading ends with ENODATA. */
  private kernelLog(): string {
    const lines: string[] = [];
    const buf = Buffer.alloc(KLOG_MAX);
    for (;;) {
      try {
        const n = readSync(this.fd, buf, 0, KLOG_MAX, null);
        if (n <= 0) break;
        lines.push(buf.toString('utf8', 0, n).replace(/^[ewi] /, '').trim());
      } catch {
        break;
      }
    }
    return lines.join('; ');
  }
}

function closeQuietly(fd: number): void {
  try {
    closeSync(fd);
  } catch {
    // already closed: nothing to release
  }
}

function erofsFromSource(source: string, label: string): number {
  const ctx = new FsContext('erofs');
  try {
    ctx.setString('source', source);
    ctx.setFlag('ro');
    try {
      ctx.create();
    } catch (e) {
      if (e instanceof CfsError && e.context.errno === 'EINVAL') {
        throw new CfsError('EINVAL', `${label}: not a valid EROFS image (${e.message})`, { path: label, errno: 'EINVAL' });
      }
      throw e;
    }
    return ctx.mount(native().constants.MOUNT_ATTR_RDONLY);
  } finally {
    ctx.close();
  }
}

function erofsViaLoop(imageFd: number, label: string): number {
  // losetup runs in a child: reach our fd through our pid, so the device maps the same file.
  const procPath = `/proc/${process.pid}/fd/${imageFd}`;
  let dev: string;
  try {
    dev = execFileSync('losetup', ['--find', '--show', '--read-only', procPath], { encoding: 'utf8' }).trim();
  } catch (e) {
    throw new CfsError('EIO', `${label}: losetup cannot attach the image to a loop device: ${(e as Error).message.trim()}`);
  }
  try {
    return erofsFromSource(dev, label);
  } finally {
    // While the EROFS mount holds the device this only marks it autoclear.
    execFileSync('losetup', ['--detach', dev]);
  }
}

/**
 * Mount an EROFS image (open fd) detached and read-only; returns the mount fd.
 * 'auto' = file-backed, then loop device when the kernel says ENOTBLK.
 */
export function mountErofsDetached(imageFd: number, backing: ErofsBacking = 'auto', label = `fd ${imageFd}`): number {
  if (backing === 'loop') return erofsViaLoop(imageFd, label);
  try {
    return erofsFromSource(`/proc/self/fd/${imageFd}`, label);
  } catch (e) {
    if (backing === 'auto' && e instanceof CfsError && e.context.errno === 'ENOTBLK') return erofsViaLoop(imageFd, label);
    throw e;
  }
}

/** fs-verity digest of the open image: measured by the kernel when it can, else computed. */
function imageDigest(fd: number, file: string, alg: HashAlg): Buffer {
  try {
    const m = measureVerityFd(fd, file);
    if (m.alg === alg) return m.digest;
  } catch (e) {
    // ENOTSUP: no fs-verity here; ENOENT: not enabled on this file. Both: compute it ourselves.
    if (!(e instanceof CfsError && (e.code === 'ENOTSUP' || e.code === 'ENOENT'))) throw e;
  }
  return fsverityDigestFdSync(fd, alg);
}

function checkImageDigest(fd: number, file: string, expected: Buffer): void {
  const alg = hashAlgOfSize(expected.length);
  if (!alg) throw new CfsError('EINVAL', `${file}: expected digest must be 32 or 64 bytes, got ${expected.length}`);
  const actual = imageDigest(fd, file, alg);
  if (!actual.equals(expected)) {
    throw new CfsError(
      'EDIGEST',
      `${file}: image fs-verity digest is ${actual.toString('hex')}, expected ${expected.toString('hex')}`,
      { path: file },
    );
  }
}

/**
 * Refuse verity=require where it cannot work (see the module comment): probe the objects directory with
 * FS_IOC_MEASURE_VERITY, which answers ENODATA when fs-verity is available (a directory has
 * none) and EOPNOTSUPP/ENOTTY when the kernel or filesystem lacks it.
 */
function requireVerityAvailable(objectsDir: string): void {
  const fd = openSync(objectsDir, 'r');
  try {
    measureVerityFd(fd, objectsDir);
  } catch (e) {
    if (e instanceof CfsError && e.code === 'ENOTSUP') {
      throw new CfsError(
        'ENOTSUP',
        `verity=require: fs-verity is not available for ${objectsDir} (kernel or filesystem lacks it); every file would fail with EIO`,
        { path: objectsDir },
      );
    }
  } finally {
    closeSync(fd);
  }
}

function openDirPath(dir: string, what: string): number {
  const c = native().constants;
  try {
    return openSync(dir, c.O_PATH | c.O_DIRECTORY);
  } catch (e) {
    throw wrap(e, `${what} ${dir}`);
  }
}

function validateLayers(opts: DetachedComposefsOptions): void {
  if ((opts.upperdir === undefined) !== (opts.workdir === undefined)) {
    throw new CfsError('EINVAL', 'upperdir and workdir must be given together');
  }
  if (opts.readWrite && opts.upperdir === undefined) {
    throw new CfsError('EINVAL', 'a read-write mount needs upperdir and workdir');
  }
}

function validate(opts: ComposefsMountOptions): void {
  validateLayers(opts);
  let st;
  try {
    st = statSync(opts.mountpoint);
  } catch (e) {
    throw wrap(e, `mount point ${opts.mountpoint}`);
  }
  if (!st.isDirectory()) throw new CfsError('EINVAL', `mount point ${opts.mountpoint} is not a directory`);
}

/** Configure the overlay layers: fds with lowerdir+/datadir+, else one lowerdir string. */
function setLayers(ctx: FsContext, mode: LayerPassing, erofsFd: number, objectsFds: number[], upper: number[] | null): void {
  let fdMode = mode !== 'string';
  if (fdMode) {
    try {
      ctx.setFd('lowerdir+', erofsFd);
    } catch (e) {
      // EINVAL: unknown key or no fd support for it (kernel < 6.13).
      if (mode === 'fd' || !(e instanceof CfsError && e.code === 'EINVAL')) throw e;
      fdMode = false;
    }
  }
  if (fdMode) {
    for (const fd of objectsFds) ctx.setFd('datadir+', fd);
    if (upper) {
      ctx.setFd('upperdir', upper[0]);
      ctx.setFd('workdir', upper[1]);
    }
    return;
  }
  ctx.setString('lowerdir', [erofsFd, ...objectsFds].map((fd) => `/proc/self/fd/${fd}`).join('::'));
  if (upper) {
    ctx.setString('upperdir', `/proc/self/fd/${upper[0]}`);
    ctx.setString('workdir', `/proc/self/fd/${upper[1]}`);
  }
}

/** fsconfig takes string values of at most 255 bytes: a longer one (a long image name) is cut, on a character boundary. */
export function fitParam(s: string): string {
  if (Buffer.byteLength(s) <= FSCONFIG_VALUE_MAX) return s;
  let out = '';
  for (const ch of s) {
    if (Buffer.byteLength(out + ch) > FSCONFIG_VALUE_MAX - 3) break;
    out += ch;
  }
  return `${out}…`;
}
const FSCONFIG_VALUE_MAX = 255;

/** Everything of ComposefsMountOptions but the mount point. */
export type DetachedComposefsOptions = Omit<ComposefsMountOptions, 'mountpoint'>;

/**
 * The composefs overlay as a detached mount fd (see the module comment): attach it with
 * move_mount, or hand it to another process. The caller closes it. Throws CfsError.
 */
export function openComposefsMount(opts: DetachedComposefsOptions): number {
  validateLayers(opts);
  const c = native().constants;
  const fds: number[] = [];
  try {
    let imageFd: number;
    try {
      imageFd = openSync(opts.image, 'r');
    } catch (e) {
      throw wrap(e, `image ${opts.image}`);
    }
    fds.push(imageFd);
    if (!fstatSync(imageFd).isFile()) throw new CfsError('EINVAL', `image ${opts.image} is not a regular file`);
    if (opts.expectedDigest) checkImageDigest(imageFd, opts.image, opts.expectedDigest);
    const objectsDirs = [opts.objectsDir, ...(opts.moreObjectsDirs ?? [])];
    if (opts.verity === 'require') objectsDirs.forEach(requireVerityAvailable);
    const objectsFds = objectsDirs.map((d) => {
      const fd = openDirPath(d, 'objects directory');
      fds.push(fd);
      return fd;
    });
    let upper: number[] | null = null;
    if (opts.upperdir !== undefined && opts.workdir !== undefined) {
      // Each fd is in `fds` (closed on any failure) before the next open can throw.
      const upperFd = openDirPath(opts.upperdir, 'upperdir');
      fds.push(upperFd);
      const workFd = openDirPath(opts.workdir, 'workdir');
      fds.push(workFd);
      upper = [upperFd, workFd];
    }
    const erofsFd = mountErofsDetached(imageFd, opts.strategy?.erofs, opts.image);
    fds.push(erofsFd);

    const ctx = new FsContext('overlay');
    try {
      ctx.setString('source', fitParam(opts.source ?? `composefs:${path.basename(opts.image)}`));
      ctx.setString('metacopy', 'on');
      ctx.setString('redirect_dir', 'on');
      if (opts.verity === 'require') ctx.setString('verity', 'require');
      setLayers(ctx, opts.strategy?.layers ?? 'auto', erofsFd, objectsFds, upper);
      try {
        ctx.create();
      } catch (e) {
        // The kernel's usual reasons, which it only logs.
        if (upper && e instanceof CfsError && e.code === 'EINVAL') {
          throw new CfsError('EINVAL', `${e.message} (upperdir ${opts.upperdir} and workdir ${opts.workdir} must be two different directories on one filesystem, neither inside the other, the workdir empty)`);
        }
        throw e;
      }
      return ctx.mount((opts.readWrite ? 0 : c.MOUNT_ATTR_RDONLY) | attributeFlags(opts.attributes));
    } finally {
      ctx.close();
    }
  } finally {
    // The overlay holds its own references to the layers; the detached EROFS vanishes with them.
    for (const fd of fds.reverse()) closeQuietly(fd);
  }
}

/** Mount a composefs image at opts.mountpoint (see the module comment). Throws CfsError. */
export function mountComposefs(opts: ComposefsMountOptions): void {
  validate(opts);
  const c = native().constants;
  const target = realpathSync(opts.mountpoint);
  const mnt = openComposefsMount(opts);
  try {
    native().moveMount(mnt, '', c.AT_FDCWD, target, c.MOVE_MOUNT_F_EMPTY_PATH);
  } catch (e) {
    throw wrap(e, `attach composefs at ${target}`);
  } finally {
    closeQuietly(mnt);
  }
}

/** Unmount a composefs (or any) mount; lazy detaches it even while busy. */
export function unmount(mountpoint: string, opts: { lazy?: boolean } = {}): void {
  const c = native().constants;
  try {
    native().umount2(mountpoint, (opts.lazy ? c.MNT_DETACH : 0) | c.UMOUNT_NOFOLLOW);
  } catch (e) {
    const code = errnoCode(e);
    if (code === 'EBUSY') {
      const beneath = readMountinfo().filter((m) => m.mountpoint.startsWith(`${mountpoint}/`)).map((m) => m.mountpoint);
      const why = beneath.length > 0 ? `mounts beneath it: ${beneath.slice(0, 3).join(', ')}${beneath.length > 3 ? ', …' : ''}; unmount those first (umount -R)` : 'open files or processes inside it';
      throw new CfsError('EBUSY', `${mountpoint}: mount is busy (${why}); retry with --lazy to detach it now`, {
        path: mountpoint,
      });
    }
    if (code === 'EINVAL') throw new CfsError('EINVAL', `${mountpoint}: not a mount point`, { path: mountpoint });
    if (code === 'EPERM') throw new CfsError('EPERM', `unmount ${mountpoint}: ${(e as Error).message} (unmounting needs CAP_SYS_ADMIN: run as root)`, { errno: code });
    throw wrap(e, `unmount ${mountpoint}`);
  }
}
