/**
 * link(2) and FICLONE refuse to cross mounts even within one filesystem, and podman's overlay
 * driver bind-mounts its overlay/ directory onto itself. When a store's file and objects/ are on
 * different mounts of one filesystem, both are reached through a private, non-recursive clone of
 * that filesystem's root mount (open_tree OPEN_TREE_CLONE, which needs CAP_SYS_ADMIN and fails on
 * the locked mounts a user namespace inherits; without it there is no bridge and the zero-copy
 * methods fail with EXDEV, explained by why there is none). A store's files are then opened
 * beneath their directory as seen through the clone, which holds no other mounts: a mount inside
 * a layer directory is not crossed, the store's own files under it are read.
 */
import { closeSync, fstatSync, readlinkSync, realpathSync } from 'node:fs';
import path from 'node:path';
import { native } from '../native.js';
import { readMountinfo, type MountInfo } from '../mount/mountinfo.js';
import { inInitialUserNamespace } from '../userns.js';
import { errnoCode } from '../errors.js';

/** The mount a canonical path is on: the longest mount point prefix, topmost when stacked. */
function mountOf(p: string, mounts: MountInfo[]): MountInfo | undefined {
  let best: MountInfo | undefined;
  for (const m of mounts) {
    const inside = m.mountpoint === '/' || p === m.mountpoint || p.startsWith(`${m.mountpoint}/`);
    if (inside && (!best || m.mountpoint.length >= best.mountpoint.length)) best = m;
  }
  return best;
}

/** A canonical path as a path relative to the root of its filesystem. */
function fsRelative(p: string, m: MountInfo): string {
  return path.posix.join(m.root, path.posix.relative(m.mountpoint, p)).replace(/^\/+/, '') || '.';
}

export class MountBridge {
  /** objects/ as seen through the clone. */
  readonly objectsDir: string;
  /** Directory fd -> the same directory opened through the clone (O_PATH), or null when no bridge applies. */
  private readonly dirs = new Map<number, number | null>();

  private constructor(private readonly tree: number, private readonly objectsFd: number, private readonly mounts: MountInfo[], private readonly objectsMount: MountInfo) {
    this.objectsDir = `/proc/self/fd/${objectsFd}`;
  }

  /** The bridge, or why there is none: objects/'s filesystem has no mount of its root, or the clone is not permitted. */
  static open(objectsDir: string): MountBridge | string {
    const mounts = readMountinfo();
    const real = realpathSync.native(objectsDir);
    const objects = mountOf(real, mounts);
    const root = objects && mounts.filter((m) => m.device === objects.device && m.root === '/').pop();
    if (!objects || !root) return `no mount of the root of ${real}'s filesystem is visible here`;
    const n = native();
    let tree: number;
    try {
      tree = n.openTree(n.constants.AT_FDCWD, root.mountpoint, n.constants.OPEN_TREE_CLONE);
    } catch (e) {
      const code = errnoCode(e) ?? (e as Error).message;
      const why = code === 'EPERM' ? 'it needs CAP_SYS_ADMIN' : code === 'EINVAL' && !inInitialUserNamespace() ? 'mounts a user namespace inherits are locked (as inside podman unshare)' : null;
      return `cloning mount ${root.mountpoint} failed: ${code}${why ? ` (${why})` : ''}`;
    }
    try {
      const fd = n.openat2(tree, fsRelative(real, objects), n.constants.O_PATH | n.constants.O_DIRECTORY, 0, n.constants.RESOLVE_NO_MAGICLINKS);
      return new MountBridge(tree, fd, mounts, objects);
    } catch (e) {
      closeSync(tree);
      return `${real} is not reachable through a clone of mount ${root.mountpoint}: ${errnoCode(e) ?? (e as Error).message}`;
    }
  }

  /**
   * The directory `dirfd` opened through the clone (O_PATH, the same inode), for opening its
   * files on the clone's mount; null when dirfd is on objects/'s own mount (no bridge needed) or
   * is not reachable through the clone. Cached per dirfd.
   */
  dir(dirfd: number): number | null {
    let dir = this.dirs.get(dirfd);
    if (dir === undefined) {
      dir = this.bridgedDir(dirfd);
      this.dirs.set(dirfd, dir);
    }
    return dir;
  }

  /** dirfd's directory through the clone, checked to be the same inode; null when not needed or not reachable. */
  private bridgedDir(dirfd: number): number | null {
    const dir = readlinkSync(`/proc/self/fd/${dirfd}`);
    const m = mountOf(dir, this.mounts);
    if (!m || m.mountId === this.objectsMount.mountId || m.device !== this.objectsMount.device) return null;
    const n = native();
    let fd: number;
    try {
      fd = n.openat2(this.tree, fsRelative(dir, m), n.constants.O_PATH | n.constants.O_DIRECTORY, 0, n.constants.RESOLVE_NO_MAGICLINKS);
    } catch {
      return null;
    }
    let same = false;
    try {
      const a = fstatSync(dirfd);
      const b = fstatSync(fd);
      same = a.ino === b.ino && a.dev === b.dev;
      return same ? fd : null;
    } finally {
      if (!same) closeSync(fd);
    }
  }

  close(): void {
    for (const fd of this.dirs.values()) if (fd !== null) closeSync(fd);
    this.dirs.clear();
    closeSync(this.objectsFd);
    closeSync(this.tree);
  }
}
