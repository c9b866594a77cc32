/**
 * Writes small objects without blocking the caller: the fs-verity digest is computed here (the
 * caller needs the id at once for its split stream), the file is written, sealed and linked on
 * libuv's threadpool (native storeObject: O_TMPFILE + write + linkat), so a tar import keeps
 * parsing while earlier files are still being written. Bounded: at most MAX_PENDING_BYTES in
 * flight. Callers must `drain()` before publishing anything that refers to the objects.
 * Secure repositories keep the synchronous writer, which also compares the kernel's measured
 * digest with ours before the object gets its name.
 */
import path from 'node:path';
import { fsverityDigest, HASH_ALG_ID } from '../fsverity/digest.js';
import { native } from '../native.js';
import { CfsError } from '../errors.js';
import { objectRelPath } from './ids.js';
import type { Repository } from './repository.js';

/** Files up to this size are buffered and written asynchronously. */
export const ASYNC_OBJECT_MAX = 1024 * 1024;
const MAX_PENDING_BYTES = 64 * 1024 * 1024;

export class ObjectSink {
  private readonly repo: Repository;
  private readonly objects: string;
  private readonly pending = new Set<Promise<void>>();
  private pendingBytes = 0;
  private failure: unknown = null;

  constructor(repo: Repository) {
    this.repo = repo;
    this.objects = path.join(repo.path, 'objects');
  }

  /** Whether `store` may be used (insecure repositories; see the module comment). */
  get usable(): boolean {
    return !this.repo.secure;
  }

  /** Hash `data`, start writing it, and return its object id. `data` must not be reused. */
  async store(data: Buffer): Promise<Buffer> {
    if (this.failure) throw this.failure;
    while (this.pendingBytes + data.length > MAX_PENDING_BYTES && this.pending.size > 0) await Promise.race(this.pending);
    if (this.failure) throw this.failure;
    const id = fsverityDigest(data, this.repo.alg);
    const dest = path.join(this.objects, objectRelPath(id));
    this.pendingBytes += data.length;
    const p: Promise<void> = native()
      .storeObject(this.objects, dest, data, this.repo.secure ? HASH_ALG_ID[this.repo.alg] : 0)
      .then(
        () => undefined,
        (e: unknown) => {
          this.failure ??= new CfsError('EIO', `cannot write object ${objectRelPath(id)}: ${(e as Error).message}`);
        },
      )
      .finally(() => {
        this.pendingBytes -= data.length;
        this.pending.delete(p);
      });
    this.pending.add(p);
    return id;
  }

  /** Wait for every write; throws the first failure. */
  async drain(): Promise<void> {
    while (this.pending.size > 0) await Promise.all([...this.pending]);
    if (this.failure) throw this.failure;
  }
}
