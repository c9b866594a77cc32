/**
 * Crash-safe object writing (brief 1.7b).
 *
 * An object is written into an anonymous O_TMPFILE inside objects/ (fallback when the
 * filesystem lacks O_TMPFILE: `objects/.tmp-object-<random>`, renamed with RENAME_NOREPLACE),
 * hashed with the userspace fs-verity hasher while it is written, sealed with fs-verity when the
 * repository is secure, and only then linked to `objects/XX/YYYY`. A reader can never see a
 * partial object under its name; an existing object with that name wins (dedupe: EEXIST from a
 * concurrent writer of the same object is success) unless its size is wrong, then it is
 * replaced atomically.
 *
 * Durability policy: objects are NOT fsync'ed one by one. The repository runs one
 * syncfs(repo dirfd) before it publishes anything that refers to objects (a `streams/` or
 * `images/` link, see Repository.linkStream / writeImage), so everything a published name
 * refers to is durable, and an import is durable when it returns.
 */
import { closeSync, constants as C, lstatSync, mkdirSync, openSync, renameSync, unlinkSync, write as fsWrite } from 'node:fs';
import { promisify } from 'node:util';
import path from 'node:path';
import { native } from '../native.js';
import { CfsError, errnoCode, isCfsError } from '../errors.js';
import { FsVerityHasher, type HashAlg } from '../fsverity/digest.js';
import { enableVerityFd, measureVerityFd } from '../fsverity/kernel.js';
import { objectRelPath } from './ids.js';
import { randomAlnum } from './symlink.js';

const writeFd = promisify(fsWrite);

/** Small writes are gathered into this many bytes before a write(2). */
const WRITE_BUFFER = 256 * 1024;
const TMP_NAME_TRIES = 16;
/** Named temporary objects (no O_TMPFILE) live directly in objects/ under this prefix. */
export const TMP_OBJECT_PREFIX = '.tmp-object-';

/** Returned by objectSizeAt for a name that is not a regular file (a damaged object). */
export const NOT_AN_OBJECT = -2;

/** Size of the object file at `p`; -1 when it does not exist, NOT_AN_OBJECT when it is not a regular file. */
export function objectSizeAt(p: string): number {
  try {
    const st = lstatSync(p);
    return st.isFile() ? st.size : NOT_AN_OBJECT;
  } catch (e) {
    if (errnoCode(e) === 'ENOENT') return -1;
    throw e;
  }
}

/** What an object writer needs to know about its repository. */
export interface ObjectStore {
  readonly path: string;
  readonly alg: HashAlg;
  readonly secure: boolean;
  /** Set once O_TMPFILE failed with EOPNOTSUPP/EISDIR: use named temp files from then on. */
  tmpfileUnsupported: boolean;
  /** Fan-out directories known to exist. */
  readonly knownDirs: Set<string>;
}

export function objectsDir(store: ObjectStore): string {
  return path.join(store.path, 'objects');
}

function openTemp(store: ObjectStore): { fd: number; tmpPath: string | null } {
  const dir = objectsDir(store);
  if (!store.tmpfileUnsupported) {
    try {
      return { fd: native().openTmpfile(dir, C.O_RDWR, 0o644), tmpPath: null };
    } catch (e) {
      const code = errnoCode(e);
      if (code !== 'EOPNOTSUPP' && code !== 'EISDIR' && code !== 'ENOTSUP') throw e;
      store.tmpfileUnsupported = true;
    }
  }
  for (let i = 0; i < TMP_NAME_TRIES; i++) {
    const tmpPath = path.join(dir, `${TMP_OBJECT_PREFIX}${randomAlnum(12)}`);
    try {
      return { fd: openSync(tmpPath, C.O_RDWR | C.O_CREAT | C.O_EXCL, 0o644), tmpPath };
    } catch (e) {
      if (errnoCode(e) !== 'EEXIST') throw e;
    }
  }
  throw new CfsError('EEXIST', `${dir}: could not create a temporary object file after ${TMP_NAME_TRIES} tries`);
}

function ensureFanoutDir(store: ObjectStore, xx: string): void {
  if (store.knownDirs.has(xx)) return;
  mkdirSync(path.join(objectsDir(store), xx), { mode: 0o755, recursive: true });
  store.knownDirs.add(xx);
}

/** Seal a read-only object fd with fs-verity and check the kernel's digest against ours. */
function sealVerity(store: ObjectStore, ro: number, id: Buffer): void {
  const label = `object ${objectRelPath(id)}`;
  try {
    enableVerityFd(ro, store.alg, label);
  } catch (e) {
    if (isCfsError(e) && e.code === 'ENOTSUP') {
      throw new CfsError('ENOTSUP', `repository ${store.path} requires fs-verity, but its filesystem does not support it (re-create the repository with --insecure, or open it with --insecure)`);
    }
    if (!(isCfsError(e) && e.code === 'EEXIST')) throw e;
  }
  const measured = measureVerityFd(ro, label);
  if (!measured.digest.equals(id)) {
    throw new CfsError('EIO', `${label}: kernel fs-verity digest ${measured.digest.toString('hex')} differs from the written data`);
  }
}

export class ObjectWriter {
  private readonly store: ObjectStore;
  private fd: number;
  private readonly tmpPath: string | null;
  private readonly hasher: FsVerityHasher;
  private readonly buf = Buffer.allocUnsafe(WRITE_BUFFER);
  private fill = 0;
  private done = false;
  /** After commit(): the object was there already (nothing new was stored). */
  alreadyPresent = false;

  constructor(store: ObjectStore) {
    this.store = store;
    const t = openTemp(store);
    this.fd = t.fd;
    this.tmpPath = t.tmpPath;
    this.hasher = new FsVerityHasher(store.alg);
  }

  /** Append data. The buffer may be reused by the caller once the promise resolves. */
  async write(data: Uint8Array): Promise<void> {
    if (this.done) throw new Error('ObjectWriter: write after commit/abort');
    if (data.length === 0) return;
    this.hasher.update(data);
    if (this.fill + data.length <= WRITE_BUFFER) {
      this.buf.set(data, this.fill);
      this.fill += data.length;
      if (this.fill === WRITE_BUFFER) await this.flush();
      return;
    }
    await this.flush();
    if (data.length < WRITE_BUFFER) {
      this.buf.set(data, 0);
      this.fill = data.length;
    } else {
      await this.writeAll(data);
    }
  }

  /** Finish the object and give it its name. Returns its ID (existing objects are kept). */
  async commit(): Promise<Buffer> {
    if (this.done) throw new Error('ObjectWriter: commit after commit/abort');
    try {
      await this.flush();
      const id = this.hasher.digest();
      if (this.store.secure) {
        // fs-verity refuses files that are open for writing: swap to a read-only fd first.
        const ro = openSync(this.tmpPath ?? `/proc/self/fd/${this.fd}`, C.O_RDONLY);
        closeSync(this.fd);
        this.fd = ro;
        sealVerity(this.store, this.fd, id);
      }
      const rel = objectRelPath(id);
      ensureFanoutDir(this.store, rel.slice(0, 2));
      const dest = path.join(objectsDir(this.store), rel);
      try {
        if (this.tmpPath) native().renameNoReplace(this.tmpPath, dest);
        else native().linkFd(this.fd, dest);
      } catch (e) {
        if (errnoCode(e) !== 'EEXIST') throw e;
        // Already present: content addressing makes the existing file equivalent, unless its
        // size shows it is damaged (e.g. an unsynced object cut short by a power loss).
        if (objectSizeAt(dest) !== this.hasher.bytes) this.replace(dest);
        else this.alreadyPresent = true;
      }
      return id;
    } finally {
      this.release();
    }
  }

  /** Put this (complete) object over a damaged one of the same name, atomically. */
  private replace(dest: string): void {
    let from = this.tmpPath;
    if (!from) {
      from = path.join(objectsDir(this.store), `${TMP_OBJECT_PREFIX}${randomAlnum(12)}`);
      native().linkFd(this.fd, from);
    }
    try {
      renameSync(from, dest);
    } catch (e) {
      if (!this.tmpPath) unlinkSync(from);
      throw e;
    }
  }

  /** Discard the object (nothing becomes visible). */
  abort(): void {
    if (!this.done) this.release();
  }

  private release(): void {
    this.done = true;
    closeSync(this.fd);
    if (this.tmpPath) {
      try {
        unlinkSync(this.tmpPath);
      } catch {
        // renamed into place, or never created
      }
    }
  }

  private async flush(): Promise<void> {
    if (this.fill === 0) return;
    const n = this.fill;
    this.fill = 0;
    await this.writeAll(this.buf.subarray(0, n));
  }

  private async writeAll(data: Uint8Array): Promise<void> {
    let off = 0;
    try {
      while (off < data.length) {
        const { bytesWritten } = await writeFd(this.fd, data, off, data.length - off, null);
        off += bytesWritten;
      }
    } catch (e) {
      // Node's text ("ENOSPC: no space left on device, write") names neither the repository nor what was written.
      const code = errnoCode(e);
      throw new CfsError(code === 'ENOSPC' || code === 'EDQUOT' ? 'ENOSPC' : 'EWRITE', `cannot write an object in ${objectsDir(this.store)}: ${(e as Error).message}`);
    }
  }
}
