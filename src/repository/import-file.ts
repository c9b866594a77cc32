/**
 * Storing an existing file (a containers-storage layer file) as an object (brief 1.7c), without
 * copying its data when the file and objects/ share a filesystem. Methods, first that works:
 *
 *   reflink   FICLONE into an O_TMPFILE in objects/, then read the clone (our private, immutable
 *             copy) for the digests, seal it when the repository is secure, link it in.
 *   hardlink  read the file for the digests, then link the store's inode itself into objects/.
 *             The object then shares the inode with the store's file: its mode, owner and mtime
 *             are the store's (composefs ignores them: the image carries the metadata), and
 *             nothing in cfs chmods or rewrites objects. In a secure repository fs-verity is
 *             enabled on that shared inode, which makes podman's file immutable too; composefs-rs
 *             does the same, and podman never rewrites an image layer's files.
 *   copy      stream the file into a new object (ObjectWriter).
 *
 * A method that fails for a reason that will not change (EOPNOTSUPP, EXDEV, EPERM, …) is not
 * tried again by the same importer. 'zerocopy' makes the copy an error. Every byte of the content
 * is read once on the normal paths and handed to the caller's observer (tar digest, CRC), so the
 * object id and the layer's diff_id come from the same read.
 *
 * link(2) and FICLONE refuse to cross mounts even within one filesystem, and podman's overlay
 * driver bind-mounts its overlay/ directory onto itself. When the file and objects/ are on
 * different mounts of one filesystem, both are reached through a private, non-recursive clone of
 * that filesystem's root mount (open_tree OPEN_TREE_CLONE, which needs CAP_SYS_ADMIN; without it
 * the zero-copy methods fail with EXDEV and the copy is used).
 */
import { closeSync, constants as C, fstatSync, lstatSync, mkdirSync, openSync, readSync, realpathSync, statSync, type Stats } from 'node:fs';
import path from 'node:path';
import { native } from '../native.js';
import { CfsError, errnoCode, isCfsError } from '../errors.js';
import { FsVerityHasher } from '../fsverity/digest.js';
import { enableVerityFd, measureVerityFd } from '../fsverity/kernel.js';
import { readMountinfo, type MountInfo } from '../mount/mountinfo.js';
import { objectRelPath } from './ids.js';
import type { Repository } from './repository.js';

export type FileImportMode = 'auto' | 'zerocopy' | 'copy';
export type FileImportMethod = 'reflinked' | 'hardlinked' | 'copied';

/** Sees a file's content as it is read. */
export interface ContentObserver {
  /** Every byte, in order, once. The buffer is reused after the call returns. */
  data(chunk: Buffer): void;
  /** After the last byte, before the object gets its name; throw to abandon the file. */
  end(): void;
}

interface Imported {
  id: Buffer;
  method: FileImportMethod;
}

const READ_CHUNK = 1024 * 1024;
/** errnos after which a method is given up for the rest of the import. */
const PERMANENT = new Set(['EOPNOTSUPP', 'ENOTSUP', 'ENOTTY', 'EXDEV', 'EINVAL', 'EPERM', 'EACCES', 'EMLINK', 'ENOSYS', 'EISDIR']);

/** The mount a canonical path is on: the longest mount point prefix, topmost when stacked. */
function mountOf(p: string, mounts: MountInfo[]): MountInfo | undefined {
  let best: MountInfo | undefined;
  for (const m of mounts) {
    const inside = m.mountpoint === '/' || p === m.mountpoint || p.startsWith(`${m.mountpoint}/`);
    if (inside && (!best || m.mountpoint.length >= best.mountpoint.length)) best = m;
  }
  return best;
}

/** Both a store's files and objects/ on one private mount (see the module comment). */
class MountBridge {
  private readonly tree: number;
  private readonly objectsFd: number;
  /** objects/ as seen through the clone. */
  readonly objectsDir: string;

  private constructor(tree: number, objectsFd: number) {
    this.tree = tree;
    this.objectsFd = objectsFd;
    this.objectsDir = `/proc/self/fd/${objectsFd}`;
  }

  /** Null when the filesystem has no mount of its root or the clone is not permitted. */
  static open(objects: MountInfo, objectsDir: string, mounts: MountInfo[]): MountBridge | null {
    const root = mounts.filter((m) => m.device === objects.device && m.root === '/').pop();
    if (!root) return null;
    const n = native();
    let tree: number;
    try {
      tree = n.openTree(n.constants.AT_FDCWD, root.mountpoint, n.constants.OPEN_TREE_CLONE);
    } catch {
      return null;
    }
    try {
      const fd = n.openat2(tree, fsRelative(objectsDir, objects), n.constants.O_PATH | n.constants.O_DIRECTORY, 0, n.constants.RESOLVE_NO_MAGICLINKS);
      return new MountBridge(tree, fd);
    } catch {
      closeSync(tree);
      return null;
    }
  }

  /** `file` (canonical, on mount `m`) opened through the clone; null unless it is the same inode as `st`. */
  openFile(file: string, m: MountInfo, st: Stats): number | null {
    const n = native();
    let fd: number;
    try {
      fd = n.openat2(this.tree, fsRelative(file, m), C.O_RDONLY | C.O_NOFOLLOW, 0, n.constants.RESOLVE_NO_MAGICLINKS);
    } catch {
      return null;
    }
    const b = fstatSync(fd);
    if (b.ino === st.ino && b.dev === st.dev) return fd;
    closeSync(fd);
    return null;
  }

  close(): void {
    closeSync(this.objectsFd);
    closeSync(this.tree);
  }
}

/** A canonical path as a path relative to the root of its filesystem. */
function fsRelative(p: string, m: MountInfo): string {
  return path.posix.join(m.root, path.posix.relative(m.mountpoint, p)).replace(/^\/+/, '') || '.';
}

export class FileImporter {
  private readonly repo: Repository;
  private readonly mode: FileImportMode;
  private readonly objectsDir: string;
  private readonly objectsDev: number;
  private readonly buf = Buffer.allocUnsafe(READ_CHUNK);
  /** Why a zero-copy method is off for this importer (null: still worth trying). */
  private noReflink: string | null;
  private noHardlink: string | null = null;
  private mounts: { list: MountInfo[]; objects: MountInfo | undefined } | null = null;
  /** Canonical directory -> its mount, when that differs from objects/'s mount. */
  private readonly dirMounts = new Map<string, { dir: string; mount: MountInfo | null }>();
  private bridge: MountBridge | null | undefined;

  constructor(repo: Repository, mode: FileImportMode) {
    this.repo = repo;
    this.mode = mode;
    this.objectsDir = path.join(repo.path, 'objects');
    this.objectsDev = statSync(this.objectsDir).dev;
    this.noReflink = repo.tmpfileUnsupported ? 'no O_TMPFILE in the repository' : null;
  }

  /** Release the mount bridge, if one was made. */
  close(): void {
    this.bridge?.close();
    this.bridge = null;
  }

  /**
   * Store the regular file `file` (recorded as `size` bytes) as an object. `label` names it in
   * messages. Open errors (EACCES…) are thrown as they come, for the caller to explain.
   */
  async importFile(file: string | Buffer, size: number, label: string, obs: ContentObserver): Promise<Imported> {
    const fd = openSync(file, C.O_RDONLY | C.O_NOFOLLOW);
    let bridged: number | null = null;
    try {
      const st = fstatSync(fd);
      if (!st.isFile()) throw new CfsError('EDIGEST', `${label}: no longer a regular file (changed since import)`);
      if (st.size !== size) throw new CfsError('EDIGEST', `${label}: ${st.size} bytes, recorded ${size} (changed since import)`);
      if (this.mode !== 'copy') {
        if (st.dev !== this.objectsDev) {
          if (this.mode === 'zerocopy') {
            throw new CfsError('ENOTSUP', `zero-copy import impossible: ${label} is on a different filesystem than repository ${this.repo.path} (use --local-fetch auto to copy)`);
          }
        } else {
          bridged = this.openBridged(file, st);
          const dir = bridged === null ? this.objectsDir : this.bridge!.objectsDir;
          const src = bridged ?? fd;
          const r = (await this.tryReflink(src, dir, size, label, obs)) ?? (await this.tryHardlink(src, dir, size, label, obs));
          if (r) return r;
        }
        if (this.mode === 'zerocopy') {
          throw new CfsError('ENOTSUP', `${label}: reflink (${this.noReflink}) and hardlink (${this.noHardlink}) both failed; copying is disabled (zero-copy mode)`);
        }
      }
      return { id: await this.copy(fd, size, label, obs), method: 'copied' };
    } finally {
      if (bridged !== null) closeSync(bridged);
      closeSync(fd);
    }
  }

  /** The file opened through the mount bridge when it is on another mount than objects/. */
  private openBridged(file: string | Buffer, st: Stats): number | null {
    if (typeof file !== 'string' || (this.noReflink !== null && this.noHardlink !== null)) return null;
    const dir = path.dirname(file);
    let where = this.dirMounts.get(dir);
    if (!where) {
      this.mounts ??= (() => {
        const list = readMountinfo();
        return { list, objects: mountOf(realpathSync.native(this.objectsDir), list) };
      })();
      const real = realpathSync.native(dir);
      const m = mountOf(real, this.mounts.list);
      const other = m && this.mounts.objects && m.mountId !== this.mounts.objects.mountId && m.device === this.mounts.objects.device;
      where = { dir: real, mount: other ? m : null };
      this.dirMounts.set(dir, where);
    }
    if (!where.mount) return null;
    if (this.bridge === undefined) this.bridge = MountBridge.open(this.mounts!.objects!, realpathSync.native(this.objectsDir), this.mounts!.list);
    return this.bridge ? this.bridge.openFile(path.join(where.dir, path.basename(file)), where.mount, st) : null;
  }

  private async tryReflink(src: number, dir: string, size: number, label: string, obs: ContentObserver): Promise<Imported | null> {
    if (this.noReflink !== null) return null;
    const tmp = native().openTmpfile(dir, C.O_RDWR, 0o644);
    let fd = tmp;
    try {
      try {
        native().ficlone(tmp, src);
      } catch (e) {
        const code = errnoCode(e);
        if (!code || !PERMANENT.has(code)) throw e;
        this.noReflink = code;
        return null;
      }
      const id = this.digest(tmp, size, label, obs);
      if (this.repo.secure) {
        // fs-verity refuses files open for writing: continue on a read-only fd.
        fd = openSync(`/proc/self/fd/${tmp}`, C.O_RDONLY);
        closeSync(tmp);
        this.seal(fd, id);
      }
      this.link(fd, dir, id);
      return { id, method: 'reflinked' };
    } finally {
      closeSync(fd);
    }
  }

  private async tryHardlink(src: number, dir: string, size: number, label: string, obs: ContentObserver): Promise<Imported | null> {
    if (this.noHardlink !== null) return null;
    const id = this.digest(src, size, label, obs);
    try {
      if (this.repo.secure) {
        // Do not seal the store's file for an object that is already there.
        if (this.exists(id)) return { id, method: 'hardlinked' };
        this.seal(src, id);
      }
      this.link(src, dir, id);
      return { id, method: 'hardlinked' };
    } catch (e) {
      const code = isCfsError(e) && e.code === 'ENOTSUP' ? 'ENOTSUP' : errnoCode(e);
      if (!code || (isCfsError(e) && e.code !== 'ENOTSUP')) throw e;
      if (PERMANENT.has(code)) this.noHardlink = code;
      if (this.mode === 'zerocopy') {
        this.noHardlink ??= code;
        return null;
      }
      // The observer has seen the content already: copy without it, and require the same bytes.
      const again = await this.copy(src, size, label, null);
      if (!again.equals(id)) throw new CfsError('EDIGEST', `${label}: changed while it was being imported`);
      return { id, method: 'copied' };
    }
  }

  private async copy(src: number, size: number, label: string, obs: ContentObserver | null): Promise<Buffer> {
    const w = this.repo.createObjectWriter();
    try {
      for (let off = 0; off < size;) {
        const n = readSync(src, this.buf, 0, Math.min(READ_CHUNK, size - off), off);
        if (n === 0) throw new CfsError('EDIGEST', `${label}: shorter than the recorded ${size} bytes (changed since import)`);
        const chunk = this.buf.subarray(0, n);
        obs?.data(chunk);
        await w.write(chunk);
        off += n;
      }
      obs?.end();
    } catch (e) {
      w.abort();
      throw e;
    }
    return w.commit();
  }

  /** Read all of `fd` (from offset 0) through the observer; returns the fs-verity digest. */
  private digest(fd: number, size: number, label: string, obs: ContentObserver): Buffer {
    const h = new FsVerityHasher(this.repo.alg);
    for (let off = 0; off < size;) {
      const n = readSync(fd, this.buf, 0, Math.min(READ_CHUNK, size - off), off);
      if (n === 0) throw new CfsError('EDIGEST', `${label}: shorter than the recorded ${size} bytes (changed since import)`);
      const chunk = this.buf.subarray(0, n);
      h.update(chunk);
      obs.data(chunk);
      off += n;
    }
    obs.end();
    return h.digest();
  }

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

  private exists(id: Buffer): boolean {
    return lstatSync(path.join(this.objectsDir, objectRelPath(id)), { throwIfNoEntry: false }) !== undefined;
  }

  /** Name the object (in `dir`, objects/ or its bridged view); an existing one is equivalent. */
  private link(fd: number, dir: string, id: Buffer): void {
    const rel = objectRelPath(id);
    const xx = rel.slice(0, 2);
    if (!this.repo.knownDirs.has(xx)) {
      mkdirSync(path.join(this.objectsDir, xx), { mode: 0o755, recursive: true });
      this.repo.knownDirs.add(xx);
    }
    try {
      native().linkFd(fd, `${dir}/${rel}`);
    } catch (e) {
      if (errnoCode(e) !== 'EEXIST') throw e;
    }
  }
}
