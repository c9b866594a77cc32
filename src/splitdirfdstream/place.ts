/**
 * Storing an existing file as a repository object (brief 1.7c): reflink, else hardlink, else
 * copy, the first that works. The object's name is computed from a read of the source, and a
 * reflinked or hardlinked object keeps whatever the source holds afterwards, so zero-copy is
 * used only for files that cannot change behind our back:
 *
 *   client files (PutLayer, copy): owner = euid and no group/other write bit; hardlinking also
 *     needs the source to be an object of the same hash algorithm (named `XX/YYYY…` of the
 *     digest just computed), since the inode is then shared.
 *   local store files (containers-storage, read by cfs itself): whatever the owner and name. Hardlinks
 *     share the store's inode: its mode, owner and mtime are the store's (composefs ignores
 *     them: the image carries the metadata), and nothing in cfs rewrites objects. In a secure
 *     repository fs-verity is enabled on that shared inode, which makes podman's file immutable
 *     too; composefs-rs does the same, and podman never rewrites an image layer's files. When
 *     the store's directory is another mount of objects/'s filesystem (podman bind-mounts
 *     overlay/ onto itself), files are reached through a MountBridge. Since the inode is shared,
 *     files owned by another user than us or root, setuid/setgid files and files writable by
 *     group or others are hardlinked only in zerocopy mode, only into a repository other users
 *     cannot enter, and those others may write only into a secure one (shareRefusal);
 *     otherwise they are reflinked or copied.
 *
 * A method that fails for a reason that will not change (EOPNOTSUPP, EXDEV, EPERM, …) is not
 * tried again for the same pair of filesystems.
 *
 * Zero-copy placements run in the background, up to PLACEMENTS_IN_FLIGHT at once: the file's
 * fs-verity digest (VerityBatcher) and the caller's stream digest (StreamTap.file) are computed
 * on the threadpool, in parallel, from two reads of one fd. For a clone (private) both reads see
 * the same bytes. A file to be hardlinked (or copied after a failed link) must have the same
 * size and mtime after both reads as when it was opened, so both digests are of one content
 * (not ctime: linking the same inode for an earlier entry changes it); a secure repository then
 * seals it, a later change being refused by the kernel. Small files (ONE_READ_MAX) are read
 * once, on the stream digest's job, for both digests: of one content by construction, no
 * second stat.
 * Copies read the file once, for the object and the stream, and finish before place() returns.
 */
import { closeSync, constants as C, fstatSync, lstatSync, mkdirSync, openSync, read as fsRead, readFileSync, readlinkSync, readSync, statSync } from 'node:fs';
import { promisify } from 'node:util';
import path from 'node:path';
import { native } from '../native.js';
import { CfsError, errnoCode, isCfsError } from '../errors.js';
import { ONE_READ_MAX, VerityBatcher } from '../fsverity/file-hash.js';
import type { HashAlg } from '../fsverity/digest.js';
import { enableVerityFd, measureVerityFd } from '../fsverity/kernel.js';
import type { Repository } from '../repository/repository.js';
import { objectRelPath } from '../repository/ids.js';
import { MountBridge } from '../repository/mount-bridge.js';
import { ACCESS, inInitialUserNamespace, mayAccessWithoutCaps, namespaceOwnerControls } from '../userns.js';
import { ASYNC_OBJECT_MAX, ObjectSink } from '../repository/object-sink.js';
import { countWritten, noObjects, recountPresent, type ObjectCounts } from '../repository/object-counts.js';
import { fstatFile, type OpenedFile } from './open.js';

const readFd = promisify(fsRead);
const READ_SIZE = 1024 * 1024;
/** errnos after which a zero-copy method is given up for a pair of filesystems. */
const PERMANENT = new Set(['EOPNOTSUPP', 'ENOTSUP', 'ENOTTY', 'EXDEV', 'EINVAL', 'EPERM', 'EACCES', 'EMLINK', 'ENOSYS', 'EISDIR']);

export type PlaceMethod = 'reflinked' | 'hardlinked' | 'copied' | 'present';

/** The reconstructed stream a placed file's bytes belong to (the caller's diff_id digest). */
export interface StreamTap {
  /** Append bytes to the stream (copied). */
  count(b: Buffer): void;
  /** Append [0, length) of `fd` to the stream; resolves once the fd is no longer needed. */
  file(fd: number, length: number, label: string): Promise<void>;
  /** The same, and the fs-verity digest of those bytes from the same reads (resolves with it, or rejects). */
  fileWithVerity(fd: number, length: number, label: string, alg: HashAlg): Promise<Buffer>;
  /** Start hashing what is queued (before waiting on anything that depends on it). */
  flush(): void;
  /** Wait while too much is queued. */
  relieve(): Promise<void>;
}

/** An object being placed: its id once hashed and linked (the stream has its bytes already). */
export interface Placement {
  readonly pending: Promise<Buffer>;
}

export interface PlacerOptions {
  /** Fail instead of copying when neither reflink nor hardlink works. */
  zerocopy: boolean;
  /** Files of a local image store cfs opened itself (see the module comment). */
  localStore?: boolean;
}

/**
 * Read [0, length) of the file, handing each piece to `onData` (the buffer is reused after the
 * call returns, and after its promise settles); fails when the file is shorter. Files of at most
 * one read are read synchronously: thousands of small files, page-cached, cost more in promise
 * round trips than in syscalls.
 */
async function readWhole(f: OpenedFile, length: number, onData: (b: Buffer) => void | Promise<void>, buf?: Buffer): Promise<void> {
  const b = buf ?? Buffer.allocUnsafe(Math.min(READ_SIZE, Math.max(length, 1)));
  const short = (pos: number): CfsError => new CfsError('EDIGEST', `${f.name}: file is shorter than the declared ${length} bytes (ends at ${pos})`);
  if (length <= b.length) {
    let pos = 0;
    for (let n = 1; pos < length && n > 0; pos += n) n = readSync(f.fd, b, pos, length - pos, pos);
    if (pos < length) throw short(pos);
    await onData(b.subarray(0, length));
    return;
  }
  for (let pos = 0; pos < length; ) {
    const { bytesRead } = await readFd(f.fd, b, 0, Math.min(b.length, length - pos), pos);
    if (bytesRead === 0) throw short(pos);
    await onData(b.subarray(0, bytesRead));
    pos += bytesRead;
  }
}

/** Where a source file is, for messages: its directory (as the kernel names the fd) and name. */
function sourcePath(f: OpenedFile): string {
  try {
    return path.join(readlinkSync(`/proc/self/fd/${f.dirfd}`), f.name);
  } catch {
    return f.name;
  }
}

/** close(2) errors (EIO on some filesystems) must not keep a placement in flight. */
function closeQuietly(fd: number): void {
  try {
    closeSync(fd);
  } catch {
    // The fd is released whatever close reported; the object was hashed from what was read.
  }
}

/** Fds kept for everything but placements (the repository, layers in parallel, a varlink service's clients). */
const FDS_RESERVED = 48;

/** This process's open-file limit (the soft one, which Node raises to the hard one at start). */
function openFileLimit(): number {
  try {
    const m = /^Max open files\s+(\d+|unlimited)/m.exec(readFileSync('/proc/self/limits', 'utf8'));
    return m && m[1] !== 'unlimited' ? Number(m[1]) : Infinity;
  } catch {
    return Infinity;
  }
}

/**
 * Placements whose fds are still open beyond which place() callers should wait (waitBelow):
 * 128, fewer under a low fd limit (a container's, systemd's LimitNOFILE=), since each holds one
 * or two fds until its digest is done.
 */
export const PLACEMENTS_IN_FLIGHT = Math.min(128, Math.max(4, Math.floor((openFileLimit() - FDS_RESERVED) / 2)));

/** Every placer's placements whose fds are open, in this process. */
const allInFlight = new Set<Promise<void>>();

export class ObjectPlacer {
  readonly stats: ObjectCounts = noObjects();
  private readonly objectsDir: string;
  /** Why zero-copy methods are off, per `srcDev:dstDev` pair. */
  private readonly noReflink = new Map<string, string>();
  private readonly noHardlink = new Map<string, string>();
  private readonly dstDev: number;
  private readonly objectNameRe: RegExp;
  private bridge: MountBridge | null | undefined;
  /** Why there is no bridge, when one was needed and could not be made. */
  private noBridge: string | undefined;
  /** Directories handed out by sourceDir that are on the bridge's mount. */
  private readonly bridgedDirs = new Set<number>();
  private readonly sink: ObjectSink;
  private readonly verity: VerityBatcher;
  /** Zero-copy placements still holding fds (settle when the fds are closed; never reject). */
  private readonly inFlight = new Set<Promise<void>>();
  /** Whether we run in the initial user namespace (asked once). */
  private initialUserns: boolean | undefined;
  private readonly euid = process.geteuid?.();
  /** The repository directory's mode, read when first needed (shareRefusal). */
  private repoMode: number | undefined;

  get zerocopy(): boolean {
    return this.opts.zerocopy;
  }

  constructor(private readonly repo: Repository, private readonly opts: PlacerOptions) {
    this.objectsDir = path.join(repo.path, 'objects');
    this.sink = new ObjectSink(repo);
    this.verity = new VerityBatcher(repo.alg);
    this.dstDev = statSync(this.objectsDir).dev;
    const hex = repo.hashSize * 2;
    this.objectNameRe = new RegExp(`^[0-9a-f]{2}/[0-9a-f]{${hex - 2}}$`);
    if (repo.tmpfileUnsupported) this.noReflink.set(`*`, 'no O_TMPFILE in the repository');
  }

  /**
   * The directory to open a local store's files beneath: `dirfd` itself, or the same directory
   * through the mount bridge when it is another mount of objects/'s filesystem (files opened
   * there can be linked into objects/).
   */
  sourceDir(dirfd: number): number {
    if (!this.opts.localStore) return dirfd;
    let dir: number | null = null;
    try {
      if (fstatSync(dirfd).dev !== this.dstDev) return dirfd;
      if (this.bridge === undefined) {
        const b = MountBridge.open(this.objectsDir);
        this.bridge = typeof b === 'string' ? null : b;
        if (typeof b === 'string') this.noBridge = b;
      }
      dir = this.bridge?.dir(dirfd) ?? null;
    } catch (e) {
      // No bridge: linking then fails with EXDEV, which place() reports or falls back from.
      this.bridge ??= null;
      this.noBridge ??= (e as Error).message;
    }
    if (dir === null) return dirfd;
    this.bridgedDirs.add(dir);
    return dir;
  }

  /** Release the mount bridge, if one was made. Call drain() first. */
  close(): void {
    this.bridge?.close();
    this.bridge = null;
  }

  /**
   * Store the first `length` bytes of `f` (length = its size) as an object; its bytes are
   * appended to `tap` before this returns, in order. The placer owns `f.fd` from here on and
   * closes it. Zero-copy placements go on in the background (their digests on the threadpool,
   * many at a time); copies are done when this returns.
   */
  async place(f: OpenedFile, length: number, tap: StreamTap): Promise<Placement> {
    let background = false;
    try {
      const local = !!this.opts.localStore;
      // Reflink is tried whatever st_dev says (btrfs subvolumes differ in it and still reflink; a
      // pair that cannot, EXDEV, is remembered). Hardlinks never cross st_dev: not tried then, so a
      // secure repository never seals a file it cannot link.
      const pair = `${f.stat.dev}:${this.dstDev}`;
      if (f.stat.dev !== this.dstDev && !this.noHardlink.has(pair)) this.noHardlink.set(pair, 'EXDEV');
      const trusted = local || (f.stat.uid === this.euid && (f.stat.mode & 0o022) === 0);
      if (!trusted) return this.copied(await this.copy(f, length, tap, `${f.name} may be changed by another user`));
      const canReflink = !this.noReflink.has(pair) && !this.noReflink.has('*');
      const refusal = local ? this.shareRefusal(f) : null;
      const canHardlink = !this.noHardlink.has(pair) && (local ? refusal === null : this.objectNameRe.test(f.name));
      if (!canReflink && !canHardlink) return this.copied(await this.copy(f, length, tap, this.bothFailed(f, pair, refusal ?? this.why(this.noHardlink, pair))));
      const fds = [f.fd];
      let clone: number | null;
      try {
        // A file opened through the mount bridge (sourceDir) is linked into objects/ as seen through it.
        const dir = this.bridgedDirs.has(f.dirfd) ? this.bridge!.objectsDir : this.objectsDir;
        // Reflink first: the clone is a private, immutable copy, and it is what gets hashed.
        clone = canReflink ? this.clone(f, dir, pair) : null;
        if (clone !== null) fds.push(clone);
        // The stream and the object digest read the same fd: the clone, or the file itself.
        // A small file is read once for both; a large one twice, the digests in parallel.
        const hashed = clone ?? f.fd;
        const both = length <= ONE_READ_MAX ? tap.fileWithVerity(hashed, length, f.name, this.repo.alg) : null;
        const streamDone = both ? both.then(() => undefined, () => undefined) : tap.file(hashed, length, f.name);
        const id = this.zeroCopy(f, length, streamDone, { hashed, clone, dir, pair, canHardlink, local, refusal, both });
        const settled = Promise.allSettled([streamDone, id]).then(() => {
          this.inFlight.delete(settled);
          allInFlight.delete(settled);
          for (const fd of fds) closeQuietly(fd);
        });
        this.inFlight.add(settled);
        allInFlight.add(settled);
        background = true;
        return { pending: id };
      } finally {
        if (!background) for (const fd of fds.slice(1)) closeSync(fd);
      }
    } finally {
      if (!background) closeSync(f.fd);
    }
  }

  /**
   * Why a local store file may not become an object by hardlink; null when it may. A hardlinked
   * object is the store's inode: outside zerocopy mode it must be ours (owned by us or root, or,
   * as root of a user namespace such as `podman unshare`, by the owner's own or subordinate ids:
   * see userns.ts) and be neither setuid/setgid nor writable by group or others.
   * Zerocopy mode (nothing may be copied) links such files too, but only where that is safe:
   *   - a file someone else may write (another owner, group/other write bits) only into a secure
   *     repository: fs-verity then seals the shared inode, so its owner cannot change what the
   *     repository's images show; an insecure one has nothing to stop that;
   *   - and only into a repository other users cannot enter: a setuid binary the store keeps
   *     behind its 0700 directories must not become reachable through objects/.
   */
  private shareRefusal(f: OpenedFile): string | null {
    const owned = f.stat.uid === this.euid || f.stat.uid === 0 || (this.euid === 0 && namespaceOwnerControls(f.stat.uid, 0));
    const othersWrite = !owned || (f.stat.mode & 0o022) !== 0;
    // Inside `podman unshare` we read every file of the namespace, but outside it only what our
    // own uid may (a subordinate id's 0600 file, our own 0044 one, are not): as an object it
    // would leave the repository unusable there (fsck, FUSE mounts, copies). auto copies it; the
    // copy is ours and readable.
    if (!this.opts.zerocopy && !othersWrite && !mayAccessWithoutCaps(f.stat, ACCESS.read) && !(this.initialUserns ??= inInitialUserNamespace())) {
      return `not for ${f.name}: outside this user namespace its owner's uid could not read it (uid ${f.stat.uid}, mode ${(f.stat.mode & 0o7777).toString(8).padStart(4, '0')})`;
    }
    if (!othersWrite && (f.stat.mode & 0o6000) === 0) return null;
    const what = !owned ? `owned by uid ${f.stat.uid}` : othersWrite ? 'writable by group or others' : 'setuid or setgid';
    if (!this.opts.zerocopy) return `not for ${f.name}: it is ${what}`;
    if (othersWrite && !this.repo.secure) {
      return `not for ${f.name}: it is ${what}, who could then change the object behind repository ${this.repo.path}'s back (an insecure repository has no fs-verity to prevent it; import without --zerocopy to copy it)`;
    }
    this.repoMode ??= statSync(this.repo.path).mode;
    if ((this.repoMode & 0o011) === 0) return null;
    return `not for ${f.name}: it is ${what}, and other users can enter repository ${this.repo.path} (mode ${(this.repoMode & 0o7777).toString(8)}) to reach it (chmod go-x the repository to allow it)`;
  }

  /**
   * Wait until fewer than `n` placements of this process hold fds (bounds open fds and queued
   * work: layers import in parallel, a service serves many clients). A placer with none in
   * flight never waits: others' placements finish only when their placer flushes, which it may
   * not do while it waits for its input, and one each keeps every placer going.
   */
  async waitBelow(n: number, tap: StreamTap): Promise<void> {
    if (allInFlight.size < n || this.inFlight.size === 0) return;
    this.verity.flush();
    tap.flush();
    while (allInFlight.size >= n && this.inFlight.size > 0) await Promise.race(allInFlight);
  }

  /** The background part of a zero-copy placement: digest, then name it. */
  private async zeroCopy(
    f: OpenedFile, length: number, streamDone: Promise<void>,
    z: { hashed: number; clone: number | null; dir: string; pair: string; canHardlink: boolean; local: boolean; refusal: string | null; both: Promise<Buffer> | null },
  ): Promise<Buffer> {
    const id = await (z.both ?? this.verity.digest(z.hashed, length, f.name));
    if (z.clone !== null) {
      if (this.repo.secure && this.exists(id)) this.stats.present++;
      else if (this.linkClone(z.clone, z.dir, id)) this.stats.reflinked++;
      else this.stats.present++;
      return id;
    }
    if (z.both === null) {
      // Both digests must be of one content (see the module comment); one read makes them so.
      await streamDone;
      const now = fstatFile(f.fd);
      if (now.size !== f.stat.size || now.mtimeSec !== f.stat.mtimeSec || now.mtimeNsec !== f.stat.mtimeNsec) {
        throw new CfsError('EDIGEST', `${f.name}: changed while it was being imported`);
      }
    }
    const mayLink = z.canHardlink && (z.local || f.name === objectRelPath(id));
    // Insecure repositories learn that an object exists from linkat's EEXIST (one syscall
    // less per file); secure ones must not seal the source for an object already there.
    if ((this.repo.secure || !mayLink) && this.exists(id)) {
      this.stats.present++;
      return id;
    }
    // Another placement may have learnt meanwhile that hardlinks do not work here.
    const linked = mayLink && !this.noHardlink.has(z.pair) ? this.hardlink(f.fd, z.dir, id, z.pair) : false;
    if (linked) {
      if (linked === 'linked') this.stats.hardlinked++;
      else this.stats.present++;
      return id;
    }
    // The stream has the content already: copy without it, and require the same bytes.
    const misnamed = z.canHardlink && !z.local && f.name !== objectRelPath(id);
    const noLink = misnamed ? `impossible: the file is not named by its digest ${objectRelPath(id)}, a damaged object?` : z.refusal ?? this.why(this.noHardlink, z.pair);
    const again = await this.copy(f, length, null, this.bothFailed(f, z.pair, noLink));
    if (!again.equals(id)) throw new CfsError('EDIGEST', `${f.name}: changed while it was being imported`);
    return id;
  }

  private copied(id: Buffer): Placement {
    return { pending: Promise.resolve(id) };
  }

  /** Why a file is copied: both zero-copy methods failed (on different filesystems: that). */
  private bothFailed(f: OpenedFile, pair: string, noLink: string): string {
    const noReflink = this.why(this.noReflink, pair);
    if (noReflink === 'EXDEV' && f.stat.dev !== this.dstDev) return `zero-copy import impossible: ${sourcePath(f)} is on a different filesystem than repository ${this.repo.path}`;
    // One filesystem, two mounts (podman bind-mounts overlay/ onto itself) and no bridge between them.
    const otherMount = noLink === 'EXDEV' && f.stat.dev === this.dstDev;
    const link = !otherMount
      ? noLink
      : this.noBridge
        ? `EXDEV: ${path.dirname(sourcePath(f))} is on another mount of the repository's filesystem, and no bridge to it: ${this.noBridge}`
        : `EXDEV: ${path.dirname(sourcePath(f))} is reached through another mount of the repository's filesystem (a bind mount?), and hardlinks cannot cross mounts: name both through one mount`;
    return `reflink (${noReflink}) and hardlink (${link}) both failed`;
  }

  private why(m: Map<string, string>, pair: string): string {
    return m.get(pair) ?? m.get('*') ?? 'not applicable';
  }

  /** Copy the file into a new object, its bytes read once (for the object and for `tap`). */
  private async copy(f: OpenedFile, length: number, tap: StreamTap | null, why: string): Promise<Buffer> {
    if (this.opts.zerocopy) {
      throw new CfsError('ENOTSUP', why.startsWith('zero-copy') ? why : `${f.name}: ${why}; copy fallback is disabled (zerocopy mode)`);
    }
    const onData = (b: Buffer): void => tap?.count(b);
    if (this.sink.usable && length <= ASYNC_OBJECT_MAX) {
      // Small files: one read into a buffer of their own, written on the threadpool.
      // readWhole hands over the whole content in one piece, in this buffer of its own.
      const data = Buffer.allocUnsafe(length);
      await readWhole(f, length, onData, data);
      this.stats.copied++;
      return this.sink.store(data);
    }
    const w = this.repo.createObjectWriter();
    try {
      await readWhole(f, length, async (b) => {
        onData(b);
        await tap?.relieve();
        await w.write(b);
      });
    } catch (e) {
      w.abort();
      throw e;
    }
    const id = await w.commit();
    countWritten(this.stats, w.alreadyPresent);
    return id;
  }

  /**
   * Wait for every placement and object still being written (before anything that names them is
   * published); `tap` is flushed first, as placements wait for it.
   */
  async drain(tap: StreamTap | null): Promise<void> {
    this.verity.flush();
    tap?.flush();
    while (this.inFlight.size > 0) await Promise.all(this.inFlight);
    await this.sink.drain();
    recountPresent(this.stats, this.sink.takePresent());
  }

  private exists(id: Buffer): boolean {
    return lstatSync(path.join(this.objectsDir, objectRelPath(id)), { throwIfNoEntry: false }) !== undefined;
  }

  /** FICLONE of `f` into an O_TMPFILE in `dir` (its fd); null when reflink is unavailable. */
  private clone(f: OpenedFile, dir: string, pair: string): number | null {
    let tmp: number;
    try {
      tmp = native().openTmpfile(dir, C.O_RDWR, 0o644);
    } catch (e) {
      const code = errnoCode(e);
      if (code === 'EMFILE' || code === 'ENFILE') throw e;
      this.noReflink.set(pair, code ?? 'no O_TMPFILE');
      return null;
    }
    try {
      native().ficlone(tmp, f.fd);
    } catch (e) {
      closeSync(tmp);
      const code = errnoCode(e);
      if (!code || !PERMANENT.has(code)) throw e;
      this.noReflink.set(pair, code);
      return null;
    }
    let keep = false;
    try {
      if (fstatSync(tmp).size !== f.stat.size) throw new CfsError('EDIGEST', `${f.name}: changed while it was being imported (size)`);
      // fs-verity refuses files open for writing anywhere: secure repositories keep only a read-only fd.
      keep = !this.repo.secure;
      return keep ? tmp : openSync(`/proc/self/fd/${tmp}`, C.O_RDONLY);
    } finally {
      if (!keep) closeSync(tmp);
    }
  }

  /** Name a clone (sealed first when secure); false when the object existed. The caller closes `clone`. */
  private linkClone(clone: number, dir: string, id: Buffer): boolean {
    if (this.repo.secure) this.seal(clone, id);
    return this.link(clone, dir, id);
  }

  /** 'linked', 'present' (the object was there already), or false when hardlinks do not work. */
  private hardlink(src: number, dir: string, id: Buffer, pair: string): 'linked' | 'present' | false {
    try {
      if (this.repo.secure) this.seal(src, id);
      return this.link(src, dir, id) ? 'linked' : 'present';
    } catch (e) {
      const code = isCfsError(e) && e.code === 'ENOTSUP' ? 'ENOTSUP' : errnoCode(e);
      if (!code || (isCfsError(e) && e.code !== 'ENOTSUP') || !PERMANENT.has(code)) throw e;
      this.noHardlink.set(pair, code);
      return false;
    }
  }

  /** Secure repositories: fs-verity on, and the kernel's digest must be the computed id. */
  private seal(fd: number, id: Buffer): void {
    const label = `object ${objectRelPath(id)}`;
    try {
      enableVerityFd(fd, this.repo.alg, label);
    } catch (e) {
      if (!(isCfsError(e) && e.code === 'EEXIST')) throw e;
    }
    const m = measureVerityFd(fd, label);
    if (!m.digest.equals(id)) throw new CfsError('EIO', `${label}: kernel fs-verity digest ${m.digest.toString('hex')} differs from the data read`);
  }

  /** Name the object (in `dir`: objects/ or its bridged view); false when it already exists (an equivalent object). */
  private link(fd: number, dir: string, id: Buffer): boolean {
    const rel = objectRelPath(id);
    const xx = rel.slice(0, 2);
    if (!this.repo.knownDirs.has(xx)) {
      mkdirSync(path.join(this.objectsDir, xx), { mode: 0o755, recursive: true });
      this.repo.knownDirs.add(xx);
    }
    try {
      native().linkFd(fd, `${dir}/${rel}`);
      return true;
    } catch (e) {
      if (errnoCode(e) !== 'EEXIST') throw e;
      return false;
    }
  }
}
