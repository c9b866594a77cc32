/**
 * Pins: the images of a repository that are mounted, so `cfs gc` keeps them (as podman keeps
 * the images its containers use). A pin is a per-boot record in the mounting user's runtime
 * directory (runtime-dir.ts) naming the repository, the image and the mount (mount point, mount
 * id, mount namespace): nothing is written into the repository, so read-only repositories can
 * be mounted and pinned too, and a reboot forgets every pin with its mounts.
 *
 * A pin holds while its mount exists. One of our own made in another mount namespace is checked
 * there when some process we may read is in it; otherwise it holds until the boot ends (keeping an
 * image too long is the safe mistake). Another user's counts only when its mount is one we can see.
 *
 * A detached mount (varlink Mount) has no mount point yet: its pin names the mount by id alone,
 * which stays the mount's when the client attaches it anywhere (move_mount). Seen attached in a
 * namespace we can read, the pin becomes an ordinary one (mount point and namespace). Not seen,
 * it holds while a process we can read has a file open on the mount (fdinfo's mnt_id), and for
 * DETACHED_GRACE_MS in any case (a mount used through its fd only is in no table). A lazily
 * unmounted mount's pin becomes a `lazy` one: such a mount is never attached again, so only open
 * files and the grace period hold it, and a mount seen with its id is another one (ids are reused).
 */
import { createHash } from 'node:crypto';
import { readdirSync, readFileSync, readlinkSync, realpathSync, renameSync, rmSync, statSync, writeFileSync } from 'node:fs';
import path from 'node:path';
import { findMount, fuseMountUid, isComposefsMount, parseMountinfo, readMountinfo, type MountInfo } from '../mount/mountinfo.js';
import { listOrEmpty, ownRuntimeDir, readableRuntimeDirs, readRecordFile, runtimeDir } from '../runtime-dir.js';

export interface MountPin {
  /** The repository's real path. */
  repo: string;
  /** Hex composefs image id. */
  imageId: string;
  /** Canonical mount point; '' for a detached mount, known by its id alone. */
  mountpoint: string;
  mountId: number;
  /** `mnt:[inode]` of the namespace the mount was made in. */
  mntns: string;
  /** The mount's source (`composefs:NAME`, `cfs:NAME`): mount ids are reused, so a pin matches only a mount with its source. */
  source?: string;
  /** A detached mount's pin: when it was written (ms since the epoch). */
  detachedAt?: number;
  /** A detached pin of a mount unmounted lazily (never attached again). */
  lazy?: boolean;
}

const PIN_PREFIX = 'pin-';
/** How long a detached mount's pin holds while its mount is seen nowhere (not yet attached). */
export const DETACHED_GRACE_MS = 10 * 60 * 1000;

function mountNamespace(): string {
  try {
    return readlinkSync('/proc/self/ns/mnt');
  } catch {
    return '';
  }
}

function pinFile(dir: string, mountpoint: string, mountId: number): string {
  const key = createHash('sha256').update(`${mountpoint}\0${mountId}`).digest('hex').slice(0, 32);
  return path.join(dir, `${PIN_PREFIX}${key}.json`);
}

function realRepo(repoPath: string): string {
  try {
    return realpathSync(repoPath);
  } catch {
    return path.resolve(repoPath);
  }
}

/**
 * Pin `imageId` of the repository for the cfs mount now at `mountpoint` (canonical). A pin
 * that cannot be written only loses gc's protection: the mount stands, and the reason is returned.
 */
export function pinMountedImage(repoPath: string, imageId: string, mountpoint: string): string | null {
  const m = findMount(mountpoint);
  if (!m || !isComposefsMount(m)) return `${mountpoint}: no cfs mount to pin`;
  return writePin({ repo: realRepo(repoPath), imageId, mountpoint: m.mountpoint, mountId: m.mountId, mntns: mountNamespace(), source: m.source });
}

/** Pin `imageId` for the detached mount open as `mountFd` (fsmount, with that source); the reason when it cannot be. */
export function pinDetachedMount(repoPath: string, imageId: string, mountFd: number, source: string): string | null {
  let mountId: number;
  try {
    // fdinfo's mnt_id is the mount the fd is on: for an fsmount fd, the detached mount itself.
    const id = /^mnt_id:\s*(\d+)$/m.exec(readFileSync(`/proc/self/fdinfo/${mountFd}`, 'latin1'))?.[1];
    if (id === undefined) return `fd ${mountFd}: no mount id in its fdinfo`;
    mountId = Number(id);
  } catch (e) {
    return (e as Error).message;
  }
  return writePin({ repo: realRepo(repoPath), imageId, mountpoint: '', mountId, mntns: mountNamespace(), source, detachedAt: Date.now() });
}

function writePin(pin: MountPin): string | null {
  let tmp: string | null = null;
  try {
    const file = pinFile(ownRuntimeDir(), pin.mountpoint, pin.mountId);
    // Written whole, then renamed into place: a gc reading pins meanwhile never sees half a pin
    // (and would take it for a malformed one, and remove it).
    tmp = path.join(path.dirname(file), `.${path.basename(file)}.tmp-${process.pid}`);
    writeFileSync(tmp, `${JSON.stringify(pin)}\n`, { mode: 0o600 });
    renameSync(tmp, file);
    return null;
  } catch (e) {
    if (tmp !== null) removeQuietly(tmp);
    return (e as Error).message;
  }
}

function readPin(file: string, owner: number): MountPin | null {
  const text = readRecordFile(file, owner);
  if (text === null) return null;
  try {
    const p = JSON.parse(text) as Partial<MountPin>;
    if (typeof p.repo !== 'string' || typeof p.imageId !== 'string' || typeof p.mountpoint !== 'string' || typeof p.mountId !== 'number' || typeof p.mntns !== 'string') return null;
    if (p.detachedAt !== undefined && typeof p.detachedAt !== 'number') return null;
    if (p.lazy !== undefined && typeof p.lazy !== 'boolean') return null;
    if (p.source !== undefined && typeof p.source !== 'string') return null;
    return p as MountPin;
  } catch {
    return null;
  }
}

/**
 * The mount tables of every mount namespace some process we may read is in, by namespace
 * (`mnt:[inode]`); ours is `ns`, read already. Read once per check, and only when a pin needs it.
 */
class MountTables {
  private all: Map<string, MountInfo[]> | null = null;
  private fdMounts: Set<number> | null = null;

  constructor(private readonly ns: string, private readonly own: MountInfo[]) {}

  /** The mounts of namespace `ns`; undefined when no process we may read is in it. */
  of(ns: string): MountInfo[] | undefined {
    if (ns === this.ns) return this.own;
    return this.tables().get(ns);
  }

  /** The mount of that id in any namespace we can read (mount ids are global), with that namespace. */
  byId(mountId: number): { mount: MountInfo; ns: string } | undefined {
    for (const [ns, mounts] of this.tables()) {
      const mount = mounts.find((x) => x.mountId === mountId);
      if (mount) return { mount, ns };
    }
    return undefined;
  }

  /**
   * Whether a process we can read has a file open on mount `mountId` (fdinfo's mnt_id): how a
   * detached mount that is in no table (never attached, or unmounted lazily) is still in use.
   */
  inUse(mountId: number): boolean {
    if (!this.fdMounts) {
      this.fdMounts = new Set();
      for (const pid of listPids()) {
        for (const fd of listOrEmpty(`/proc/${pid}/fdinfo`)) {
          try {
            const id = /^mnt_id:\s*(\d+)$/m.exec(readFileSync(`/proc/${pid}/fdinfo/${fd}`, 'latin1'))?.[1];
            if (id !== undefined) this.fdMounts.add(Number(id));
          } catch {
            // closed meanwhile
          }
        }
      }
    }
    return this.fdMounts.has(mountId);
  }

  private tables(): Map<string, MountInfo[]> {
    if (this.all) return this.all;
    this.all = new Map([[this.ns, this.own]]);
    for (const pid of listPids()) {
      try {
        const ns = readlinkSync(`/proc/${pid}/ns/mnt`);
        if (!this.all.has(ns)) this.all.set(ns, parseMountinfo(readFileSync(`/proc/${pid}/mountinfo`, 'latin1')));
      } catch {
        // gone meanwhile, or not ours to read
      }
    }
    return this.all;
  }
}

function listPids(): string[] {
  try {
    return readdirSync('/proc').filter((n) => /^\d+$/.test(n));
  } catch {
    return [];
  }
}

/** Whether mount `m` is the pin's: its id, and its source where the pin knows it. */
function isPinned(pin: MountPin, m: MountInfo): boolean {
  return m.mountId === pin.mountId && (pin.source === undefined || m.source === pin.source) && isComposefsMount(m);
}

/**
 * Whether the pin's mount is still there, made by the pin's owner; null when that cannot be told
 * (a namespace we cannot read, another uid shown, a detached mount in its grace period). A
 * detached pin whose mount is seen attached comes with the ordinary pin it becomes.
 */
function holds(pin: MountPin, tables: MountTables, owner: number): { held: boolean | null; attached?: MountPin } {
  let m: MountInfo | undefined;
  let attached: MountPin | undefined;
  if (pin.detachedAt !== undefined) {
    const seen = pin.lazy ? undefined : tables.byId(pin.mountId);
    if (seen && isPinned(pin, seen.mount)) {
      m = seen.mount;
      attached = { repo: pin.repo, imageId: pin.imageId, mountpoint: m.mountpoint, mountId: m.mountId, mntns: seen.ns, source: m.source };
    } else if (!seen && tables.inUse(pin.mountId)) {
      return { held: owner === (process.getuid?.() ?? 0) ? true : null };
    } else {
      return { held: Date.now() - pin.detachedAt < DETACHED_GRACE_MS ? null : false };
    }
  } else {
    const mounts = tables.of(pin.mntns);
    if (!mounts) return { held: null };
    m = mounts.find((x) => x.mountpoint === pin.mountpoint && isPinned(pin, x));
    if (!m) return { held: false };
  }
  // A FUSE mount made inside a user namespace shows that namespace's uid: then we cannot tell.
  return mountOwner(m) === owner ? { held: true, attached } : { held: null };
}

/**
 * The pins that hold, in every runtime directory this process may read (its own; everyone's for
 * root). Pins of mounts gone from this namespace are removed on the way (where we may).
 */
export function livePins(): OwnedPin[] {
  // Pins first, then the mount table: a pin is written after its mount is made, so a mount made
  // while we read is in the table we read next (read the other way round, a fresh pin would look
  // stale, and be removed).
  const found = readableRuntimeDirs().flatMap(({ dir, owner, own }) => pinsIn(dir, owner).map((p) => ({ ...p, owner, own })));
  const tables = new MountTables(mountNamespace(), readMountinfo());
  const out: OwnedPin[] = [];
  for (const { file, pin, owner, own } of found) {
    const { held, attached } = pin === null ? { held: false } : holds(pin, tables, owner);
    // A detached mount attached since: from now on pinned by its mount point, like any other.
    if (attached && own && writePin(attached) === null) {
      removeQuietly(file);
      out.push({ ...attached, owner });
      continue;
    }
    // Another user's pin is a claim anyone could write: it counts only for a mount of theirs we
    // can see, of a repository of theirs (or any user could keep root's images from gc).
    if (pin && (own ? held !== false : held === true && ownsRepository(pin.repo, owner))) out.push({ ...pin, owner });
    else if (own || held === false) removeQuietly(file);
  }
  return out;
}

function ownsRepository(repo: string, owner: number): boolean {
  return statSync(repo, { throwIfNoEntry: false })?.uid === owner;
}

/** A pin and the user whose runtime directory holds it. */
export type OwnedPin = MountPin & { owner: number };

/** Who made a mount: the FUSE mount's `user_id=`; root for a kernel mount. */
function mountOwner(m: MountInfo): number {
  return fuseMountUid(m) ?? 0;
}

/** The pin files of a runtime directory, parsed (null: unreadable or malformed). */
function pinsIn(dir: string, owner: number): Array<{ file: string; pin: MountPin | null }> {
  return listOrEmpty(dir).filter((n) => n.startsWith(PIN_PREFIX) && n.endsWith('.json')).map((n) => ({ file: path.join(dir, n), pin: readPin(path.join(dir, n), owner) }));
}

/** The image ids of the repository that are pinned by a mount. */
export function mountedImageIds(repoPath: string): Set<string> {
  const repo = realRepo(repoPath);
  return new Set(livePins().filter((p) => p.repo === repo).map((p) => p.imageId));
}

/**
 * Drop the pins of mounts at `mountpoint` (canonical) that are gone (after an unmount), and the
 * pin of the detached mount that was attached there (`mountId`, the mount just unmounted).
 */
export function unpinUnmounted(mountpoint: string, mountId?: number): void {
  const me = process.getuid?.() ?? 0;
  const pins = pinsIn(runtimeDir(), me);
  const mounts = readMountinfo();
  const tables = new MountTables(mountNamespace(), mounts);
  for (const { file, pin } of pins) {
    if (!pin) continue;
    // A detached pin (not lazy: a lazy one of the same id is of a mount gone before) of the mount just unmounted.
    const detached = pin.detachedAt !== undefined && !pin.lazy && pin.mountId === mountId && !mounts.some((m) => m.mountId === mountId);
    if (detached || (pin.detachedAt === undefined && pin.mountpoint === mountpoint && holds(pin, tables, me).held === false)) {
      removeQuietly(file);
    }
  }
}

/**
 * After a lazy unmount of the mount at `mountpoint` (`mountId`): its pin becomes a detached
 * mount's, which holds while files are open on the mount (or for DETACHED_GRACE_MS).
 */
export function detachPin(mountpoint: string, mountId: number): void {
  for (const { file, pin } of pinsIn(runtimeDir(), process.getuid?.() ?? 0)) {
    if (!pin || pin.mountpoint !== mountpoint || pin.mountId !== mountId) continue;
    if (writePin({ ...pin, mountpoint: '', detachedAt: Date.now(), lazy: true }) === null) removeQuietly(file);
  }
}

/** The pin of a mount (by id, owner and mount point: livePins made the pins of detached mounts seen attached ordinary ones). */
export function pinOf(m: MountInfo, pins: OwnedPin[]): OwnedPin | undefined {
  return pins.find((p) => p.detachedAt === undefined && p.mountpoint === m.mountpoint && isPinned(p, m) && p.owner === mountOwner(m));
}

/** Stale pins are removed where we may; elsewhere (another user's, as non-root) they stay harmlessly. */
function removeQuietly(file: string): void {
  try {
    rmSync(file, { force: true });
  } catch {
    // not ours to remove
  }
}
