/**
 * Storing an existing file as a repository object (brief 1.7c): reflink, else hardlink, else
 * copy, the first that works. Zero-copy is used only for files nobody but this process's user
 * can change (owner = euid, no group/other write bit): the object's name is computed from a
 * read of the source, and a reflinked or hardlinked object keeps whatever the source holds.
 * Hardlinking also needs the source to be an object of the same hash algorithm: its name must
 * be `XX/YYYY…` of the digest just computed.
 */
import { closeSync, constants as C, fstatSync, openSync, read as fsRead, statSync } from 'node:fs';
import { mkdir } from 'node:fs/promises';
import { promisify } from 'node:util';
import path from 'node:path';
import { native } from '../native.js';
import { CfsError, errnoCode, isCfsError } from '../errors.js';
import { FsVerityHasher } from '../fsverity/digest.js';
import { enableVerityFd, measureVerityFd } from '../fsverity/kernel.js';
import type { Repository } from '../repository/repository.js';
import { objectRelPath } from '../repository/ids.js';
import type { OpenedFile } from './open.js';

const readFd = promisify(fsRead);
const READ_SIZE = 1024 * 1024;

export type PlaceMethod = 'reflinked' | 'hardlinked' | 'copied' | 'present';

export interface PlaceStats {
  objectsReflinked: number;
  objectsHardlinked: number;
  objectsCopied: number;
  objectsAlreadyPresent: number;
}

export function emptyPlaceStats(): PlaceStats {
  return { objectsReflinked: 0, objectsHardlinked: 0, objectsCopied: 0, objectsAlreadyPresent: 0 };
}

/** Read [0, length) of fd, handing each piece to `onData`; fails when the file is shorter. */
export async function readWhole(f: OpenedFile, length: number, onData: (b: Buffer) => void | Promise<void>): Promise<void> {
  const buf = Buffer.allocUnsafe(Math.min(READ_SIZE, Math.max(length, 1)));
  for (let pos = 0; pos < length; ) {
    const { bytesRead } = await readFd(f.fd, buf, 0, Math.min(buf.length, length - pos), pos);
    if (bytesRead === 0) throw new CfsError('EIO', `${f.name}: file is shorter than the declared ${length} bytes (ends at ${pos})`);
    // The buffer is reused: onData must be done with the piece when its promise settles.
    await onData(buf.subarray(0, bytesRead));
    pos += bytesRead;
  }
}

export class ObjectPlacer {
  readonly stats = emptyPlaceStats();
  private readonly noReflink = new Set<string>();
  private readonly noHardlink = new Set<string>();
  private readonly dstDev: number;
  private readonly objectNameRe: RegExp;

  constructor(private readonly repo: Repository, private readonly zerocopy: boolean) {
    this.dstDev = statSync(path.join(repo.path, 'objects')).dev;
    const hex = repo.hashSize * 2;
    this.objectNameRe = new RegExp(`^[0-9a-f]{2}/[0-9a-f]{${hex - 2}}$`);
  }

  /**
   * Store the first `length` bytes of `f` (length = its size) as an object; every byte read is
   * also given to `onData` (the caller's diff_id hash). Returns the object id.
   */
  async place(f: OpenedFile, length: number, onData: (b: Buffer) => void): Promise<Buffer> {
    const pair = `${f.stat.dev}:${this.dstDev}`;
    const trusted = f.stat.uid === process.geteuid?.() && (f.stat.mode & 0o022) === 0;
    const canReflink = trusted && !this.noReflink.has(pair);
    const canHardlink = trusted && !this.noHardlink.has(pair) && this.objectNameRe.test(f.name);
    if (!canReflink && !canHardlink) return this.copy(f, length, onData, trusted ? 'no zero-copy method works between these filesystems' : 'the file may be changed by another user');

    const h = new FsVerityHasher(this.repo.alg);
    await readWhole(f, length, (b) => {
      onData(b);
      h.update(b);
    });
    const id = h.digest();
    if (await this.repo.hasObject(id)) {
      this.stats.objectsAlreadyPresent++;
      return id;
    }
    if (canReflink && (await this.reflink(f, id, pair))) {
      this.stats.objectsReflinked++;
      return id;
    }
    if (canHardlink && f.name === objectRelPath(id) && (await this.hardlink(f, id, pair))) {
      this.stats.objectsHardlinked++;
      return id;
    }
    return this.copy(f, length, () => undefined, 'reflink and hardlink both failed');
  }

  private async copy(f: OpenedFile, length: number, onData: (b: Buffer) => void, why: string): Promise<Buffer> {
    if (this.zerocopy) throw new CfsError('ENOTSUP', `${f.name}: ${why}; copy fallback is disabled (zerocopy mode)`);
    const w = this.repo.createObjectWriter();
    try {
      await readWhole(f, length, async (b) => {
        onData(b);
        await w.write(b);
      });
    } catch (e) {
      w.abort();
      throw e;
    }
    const id = await w.commit();
    this.stats.objectsCopied++;
    return id;
  }

  private async reflink(f: OpenedFile, id: Buffer, pair: string): Promise<boolean> {
    let tmp: number;
    try {
      tmp = native().openTmpfile(path.join(this.repo.path, 'objects'), C.O_RDWR, 0o644);
    } catch {
      this.noReflink.add(pair);
      return false;
    }
    try {
      try {
        native().ficlone(tmp, f.fd);
      } catch (e) {
        const code = errnoCode(e);
        if (code === 'EOPNOTSUPP' || code === 'ENOTSUP' || code === 'EXDEV' || code === 'EINVAL' || code === 'ENOTTY') {
          this.noReflink.add(pair);
          return false;
        }
        throw e;
      }
      if (fstatSync(tmp).size !== f.stat.size) throw new CfsError('EIO', `${f.name}: reflinked copy has the wrong size`);
      if (this.repo.secure) {
        const ro = openSync(`/proc/self/fd/${tmp}`, C.O_RDONLY);
        try {
          this.seal(ro, id);
        } finally {
          closeSync(ro);
        }
      }
      await this.link(tmp, id);
      return true;
    } finally {
      closeSync(tmp);
    }
  }

  private async hardlink(f: OpenedFile, id: Buffer, pair: string): Promise<boolean> {
    if (this.repo.secure) this.seal(f.fd, id);
    try {
      await this.link(f.fd, id);
      return true;
    } catch (e) {
      const code = errnoCode(e);
      if (code === 'EXDEV' || code === 'EPERM' || code === 'EACCES' || code === 'EMLINK') {
        this.noHardlink.add(pair);
        return false;
      }
      throw e;
    }
  }

  /** Secure repositories: fs-verity on, and the kernel's digest must be the computed id. */
  private seal(fd: number, id: Buffer): void {
    try {
      enableVerityFd(fd, this.repo.alg, `object ${objectRelPath(id)}`);
    } catch (e) {
      if (!(isCfsError(e) && e.code === 'EEXIST')) throw e;
    }
    const m = measureVerityFd(fd, `object ${objectRelPath(id)}`);
    if (!m.digest.equals(id)) throw new CfsError('EIO', `object ${objectRelPath(id)}: kernel fs-verity digest differs from the data read`);
  }

  private async link(fd: number, id: Buffer): Promise<void> {
    const rel = objectRelPath(id);
    await mkdir(path.join(this.repo.path, 'objects', rel.slice(0, 2)), { recursive: true, mode: 0o755 });
    try {
      native().linkFd(fd, path.join(this.repo.path, 'objects', rel));
    } catch (e) {
      if (errnoCode(e) !== 'EEXIST') throw e;
    }
  }
}
