/**
 * What an initramfs runs to assemble the root filesystem from a composefs repository
 * (composefs-setup-root), all or nothing:
 *
 * 1. Parse the composefs kernel arguments (karg.ts). Each is tried in command-line order; one
 *    whose image is not in `<sysroot>/composefs/images/` (or whose hash is not the repository's)
 *    is skipped, and the first present one is used. None present → error.
 * 2. Check the deployment state `<sysroot>/state/deploy/<hex>/{etc,var}` exists; create
 *    `etc/upper` (0755) and `etc/work` (0700) in it when missing, as composefs-setup-root does.
 * 3. Take a detached clone of the sysroot mount (before anything is mounted over it).
 * 4. Mount the image read-only at the target (default: the sysroot itself, stacked over it):
 *    kernel composefs (mount/kernel.ts) with `verity=require` unless the argument is marked
 *    insecure (`?`); the image's digest is always checked against the argument on the fd that
 *    gets mounted (measured by the kernel, or computed when fs-verity is absent). A secure
 *    argument also needs a repository with fs-verity.
 * 5. Attach the sysroot clone at `<target>/sysroot` (skipped when the image has no /sysroot).
 * 6. `/etc`: an overlay with the image's /etc as lower and the deployment's etc/upper and
 *    etc/work. `/var`: a bind mount of the deployment's var.
 * Any failure unmounts what this call mounted, in reverse order, and reports one error.
 *
 * Not done (composefs-setup-root has them): the setup-root-conf.toml knobs (transient root,
 * other /etc and /var mount types) and the /run/systemd/volatile-root GPT workaround.
 */
import { closeSync, existsSync, mkdirSync, openSync, readFileSync, realpathSync, statSync } from 'node:fs';
import path from 'node:path';
import { CfsError, errnoCode } from '../errors.js';
import { native } from '../native.js';
import { mountComposefs } from '../mount/kernel.js';
import { hasMountPrivilege } from '../mount/caps.js';
import { findMount, isComposefsMount } from '../mount/mountinfo.js';
import { STATE_DEPLOY_DIR } from '../repository/location.js';
import { pinMountedImage } from '../repository/pins.js';
import { Repository } from '../repository/repository.js';
import { parseKargs, type ComposefsKarg } from './karg.js';

export const DEFAULT_SYSROOT = '/sysroot';
export const REPO_DIR = 'composefs';

export interface SetupRootOptions {
  /** Kernel command line text (read /proc/cmdline yourself for the default). */
  cmdline: string;
  sysroot?: string;
  /** Where the new root goes (default: the sysroot). */
  target?: string;
  /** Progress notes (skipped arguments), e.g. to stderr. */
  log?: (line: string) => void;
}

export interface SetupRootResult {
  karg: ComposefsKarg;
  target: string;
  /** Mount points created, in mount order. */
  mounts: string[];
}

/** The deployment state directory of an image, next to the repository. */
export function deploymentStateDir(sysroot: string, imageHex: string): string {
  return path.join(sysroot, STATE_DEPLOY_DIR, imageHex);
}

/** `--cmdline` value: a readable file's contents, else the string itself. */
export function readCmdlineArg(arg: string | undefined): string {
  if (arg === undefined) return readFileSync('/proc/cmdline', 'utf8');
  try {
    if (statSync(arg).isFile()) return readFileSync(arg, 'utf8');
  } catch {
    // not a file: the argument is the command line
  }
  // A path (no '=', no blank) that is not a readable file was meant as one, not as a command line.
  if (arg.startsWith('/') && !/[=\s]/.test(arg)) throw new CfsError('ENOENT', `--cmdline ${arg}: no such file (give a file, or the command line itself)`, { path: arg });
  return arg;
}

function isDirectory(p: string): boolean {
  try {
    return statSync(p).isDirectory();
  } catch {
    return false;
  }
}

const PREPARE_HINT = "an OCI image gets it from 'cfs oci prepare-boot'; for a directory image (create-image --bootable) make its etc and var directories";

function requireDir(p: string, what: string, hint = PREPARE_HINT): void {
  if (!isDirectory(p)) throw new CfsError('ENOENT', `${what} ${p} is missing; refusing to set up the root (${hint})`);
}

/** The image lacks a directory setup-root mounts over: only a rebuilt image helps. */
function imageHint(dir: string): string {
  return `the image has no /${dir}, where setup-root mounts the deployment's ${dir}: add /${dir} to the image`;
}

function ensureDir(p: string, mode: number): void {
  try {
    mkdirSync(p, { mode });
  } catch (e) {
    if (errnoCode(e) !== 'EEXIST') throw e;
  }
}

function openPath(p: string): number {
  const c = native().constants;
  return openSync(p, c.O_PATH | c.O_DIRECTORY);
}

function sysErr(e: unknown, what: string): CfsError {
  if (e instanceof CfsError) return e;
  return new CfsError('EIO', `${what}: ${(e as Error).message}`, { errno: errnoCode(e) ?? 'EIO' });
}

/** The image object an `images/<hex>` entry leads to, or null when there is no such image. */
function findImage(repoPath: string, hex: string): string | null {
  const link = path.join(repoPath, 'images', hex);
  if (!existsSync(link)) return null;
  const obj = realpathSync(link);
  const objects = realpathSync(path.join(repoPath, 'objects'));
  if (path.dirname(path.dirname(obj)) !== objects) throw new CfsError('ECORRUPT', `${link} does not lead to an object of the repository`);
  return obj;
}

function overlayEtc(lowerFd: number, upperFd: number, workFd: number, mountpoint: string): void {
  const n = native();
  const c = n.constants;
  const ctx = n.fsopen('overlay', 0);
  let mnt = -1;
  try {
    n.fsconfigSetString(ctx, 'source', 'overlay');
    n.fsconfigSetString(ctx, 'lowerdir', `/proc/self/fd/${lowerFd}`);
    n.fsconfigSetString(ctx, 'upperdir', `/proc/self/fd/${upperFd}`);
    n.fsconfigSetString(ctx, 'workdir', `/proc/self/fd/${workFd}`);
    n.fsconfigCreate(ctx);
    mnt = n.fsmount(ctx, 0, 0);
    n.moveMount(mnt, '', c.AT_FDCWD, mountpoint, c.MOVE_MOUNT_F_EMPTY_PATH);
  } finally {
    if (mnt >= 0) closeSync(mnt);
    closeSync(ctx);
  }
}

function attachClone(fd: number, mountpoint: string): void {
  const c = native().constants;
  native().moveMount(fd, '', c.AT_FDCWD, mountpoint, c.MOVE_MOUNT_F_EMPTY_PATH);
}

function bindClone(dirFd: number): number {
  const c = native().constants;
  return native().openTree(dirFd, '', c.OPEN_TREE_CLONE | c.AT_EMPTY_PATH);
}

/** Lazily unmount the mount points (reverse order); errors are ignored (best effort undo). */
function undo(mounts: string[]): void {
  const c = native().constants;
  for (const m of [...mounts].reverse()) {
    try {
      native().umount2(m, c.MNT_DETACH | c.UMOUNT_NOFOLLOW);
    } catch {
      // already gone with its parent
    }
  }
}

/** Unmount a root set up by setupRoot (the target and everything below it). */
export function teardownRoot(target: string): void {
  const c = native().constants;
  native().umount2(target, c.MNT_DETACH | c.UMOUNT_NOFOLLOW);
}

export async function setupRoot(opts: SetupRootOptions): Promise<SetupRootResult> {
  const log = opts.log ?? (() => undefined);
  const sysroot = path.resolve(opts.sysroot ?? DEFAULT_SYSROOT);
  const target = path.resolve(opts.target ?? sysroot);
  const kargs = parseKargs(opts.cmdline);
  if (kargs.length === 0) throw new CfsError('ENOENT', 'no composefs karg found in kernel cmdline (composefs.digest=… or composefs=…)');
  if (!hasMountPrivilege()) throw new CfsError('EPERM', 'setup-root mounts the root filesystem: it needs CAP_SYS_ADMIN in the initial user namespace (run it as root, in the initramfs)');
  requireDir(sysroot, 'sysroot');
  // A second run would stack a second root (and /etc, /var, /sysroot) on the first.
  const top = findMount(target);
  if (top && isComposefsMount(top)) throw new CfsError('EBUSY', `${target} already has a composefs root (${top.source}); refusing to set up another over it`, { path: target });
  const repoPath = path.join(sysroot, REPO_DIR);
  const repo = await Repository.open(repoPath, { create: false });
  try {
    let karg: ComposefsKarg | null = null;
    let image: string | null = null;
    for (const k of kargs) {
      if (k.alg !== repo.alg) {
        log(`composefs: skipping ${k.alg} image ${k.hex}: repository ${repoPath} uses ${repo.alg}`);
        continue;
      }
      image = findImage(repoPath, k.hex);
      if (image) {
        karg = k;
        break;
      }
      log(`composefs: image ${k.hex} not found, trying next karg`);
    }
    if (!karg || !image) {
      throw new CfsError('ENOENT', `no composefs image found in ${repoPath} (tried: ${kargs.map((k) => k.hex).join(', ')})`);
    }
    if (!karg.insecure && !repo.secure) {
      throw new CfsError('EPERM', `repository ${repoPath} has no fs-verity, but the kernel argument requires it (mark it insecure with '?' to boot anyway)`);
    }

    const state = deploymentStateDir(sysroot, karg.hex);
    requireDir(state, 'deployment state directory');
    requireDir(path.join(state, 'etc'), 'deployment state directory');
    requireDir(path.join(state, 'var'), 'deployment state directory');
    ensureDir(path.join(state, 'etc', 'upper'), 0o755);
    ensureDir(path.join(state, 'etc', 'work'), 0o700);
    requireDir(target, 'target directory', 'create it, or pass --target');

    const fds: number[] = [];
    const mounts: string[] = [];
    try {
      const upperFd = openPath(path.join(state, 'etc', 'upper'));
      fds.push(upperFd);
      const workFd = openPath(path.join(state, 'etc', 'work'));
      fds.push(workFd);
      const varFd = openPath(path.join(state, 'var'));
      fds.push(varFd);
      // Cloned now: once the image is mounted over the sysroot, the path shows the new root.
      let sysClone: number;
      try {
        sysClone = native().openTree(native().constants.AT_FDCWD, sysroot, native().constants.OPEN_TREE_CLONE);
      } catch (e) {
        throw sysErr(e, `clone sysroot mount ${sysroot}`);
      }
      fds.push(sysClone);

      mountComposefs({
        image,
        objectsDir: path.join(repoPath, 'objects'),
        mountpoint: target,
        source: `composefs:${karg.hex}`,
        verity: karg.insecure ? 'off' : 'require',
        expectedDigest: Buffer.from(karg.hex, 'hex'),
      });
      mounts.push(target);
      // gc keeps it while mounted here (and, as the booted root, through its deployment).
      const notPinned = pinMountedImage(repoPath, karg.hex, realpathSync(target));
      if (notPinned !== null) log(`composefs: the root is mounted but not pinned against gc: ${notPinned}`);

      const sysrootMp = path.join(target, 'sysroot');
      if (isDirectory(sysrootMp)) {
        try {
          attachClone(sysClone, sysrootMp);
        } catch (e) {
          throw sysErr(e, `attach the sysroot at ${sysrootMp}`);
        }
        mounts.push(sysrootMp);
      }

      const etc = path.join(target, 'etc');
      requireDir(etc, 'image directory', imageHint('etc'));
      const lowerFd = openPath(etc);
      fds.push(lowerFd);
      try {
        overlayEtc(lowerFd, upperFd, workFd, etc);
      } catch (e) {
        throw sysErr(e, `overlay ${etc} with ${state}/etc/upper`);
      }
      mounts.push(etc);

      const varMp = path.join(target, 'var');
      requireDir(varMp, 'image directory', imageHint('var'));
      try {
        const bind = bindClone(varFd);
        fds.push(bind);
        attachClone(bind, varMp);
      } catch (e) {
        throw sysErr(e, `bind ${state}/var at ${varMp}`);
      }
      mounts.push(varMp);
      return { karg, target, mounts };
    } catch (e) {
      undo(mounts);
      throw e;
    } finally {
      for (const fd of fds) closeSync(fd);
    }
  } finally {
    repo.close();
  }
}
