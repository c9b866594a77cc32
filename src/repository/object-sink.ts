/**
 * Writes small objects without blocking the caller: the fs-verity digest is computed here (the
 * caller needs the id at once for its split stream), the files are written and linked on libuv's
 * threadpool (native storeObjects: O_TMPFILE + write + linkat), in batches, so a tar import keeps
 * parsing while earlier files are still being written, and thousands of small files do not cost
 * a threadpool round trip each (queueing one is 10-40 µs of the JS thread here). A partial batch
 * starts when the caller yields to the event loop. Bounded: at most MAX_PENDING_BYTES in flight.
 * Callers must `drain()` before publishing anything that refers to the objects. Secure
 * repositories keep the synchronous writer, which also compares the kernel's measured digest
 * with ours before the object gets its name.
 */
import path from 'node:path';
import { fsverityDigest } from '../fsverity/digest.js';
import { native } from '../native.js';
import { CfsError } from '../errors.js';
import { objectRelPath } from './ids.js';
import type { Repository } from './repository.js';

/** Files up to this size are buffered and written asynchronously. */
export const ASYNC_OBJECT_MAX = 1024 * 1024;
const MAX_PENDING_BYTES = 64 * 1024 * 1024;
/** One native job writes up to this many objects or bytes. */
const BATCH_OBJECTS = 64;
const BATCH_BYTES = 4 * 1024 * 1024;

export class ObjectSink {
  private readonly repo: Repository;
  private readonly objects: string;
  private readonly pending = new Set<Promise<void>>();
  private pendingBytes = 0;
  private failure: unknown = null;
  private names: string[] = [];
  private datas: Buffer[] = [];
  private batchBytes = 0;
  private scheduled = false;
  /** Objects stored that turned out to be there already, since the last takePresent(). */
  private present = 0;

  constructor(repo: Repository) {
    this.repo = repo;
    this.objects = path.join(repo.path, 'objects');
  }

  /** How many stored objects were there already (since the last call); call after drain(). */
  takePresent(): number {
    const n = this.present;
    this.present = 0;
    return n;
  }

  /** Whether `store` may be used (insecure repositories; see the module comment). */
  get usable(): boolean {
    return !this.repo.secure;
  }

  /** Hash `data`, queue it for writing, and return its object id. `data` must not be reused. */
  async store(data: Buffer): Promise<Buffer> {
    if (this.failure) throw this.failure;
    if (this.pendingBytes + data.length > MAX_PENDING_BYTES) {
      this.flush();
      while (this.pendingBytes + data.length > MAX_PENDING_BYTES && this.pending.size > 0) await Promise.race(this.pending);
    }
    if (this.failure) throw this.failure;
    const id = fsverityDigest(data, this.repo.alg);
    this.names.push(objectRelPath(id));
    this.datas.push(data);
    this.batchBytes += data.length;
    this.pendingBytes += data.length;
    if (this.names.length >= BATCH_OBJECTS || this.batchBytes >= BATCH_BYTES) this.flush();
    else if (!this.scheduled) {
      this.scheduled = true;
      setImmediate(() => this.flush());
    }
    return id;
  }

  /** Start writing the partial batch. */
  private flush(): void {
    this.scheduled = false;
    if (this.names.length === 0) return;
    const names = this.names;
    const bytes = this.batchBytes;
    let job: Promise<number>;
    try {
      job = native().storeObjects(this.objects, names.join('\n'), this.datas);
    } catch (e) {
      job = Promise.reject(e);
    }
    this.names = [];
    this.datas = [];
    this.batchBytes = 0;
    const p: Promise<void> = job
      .then((present) => {
        this.present += present;
      })
      .catch((e: unknown) => {
        this.failure ??= new CfsError('EIO', `cannot write an object: ${(e as Error).message}`);
      })
      .finally(() => {
        this.pendingBytes -= bytes;
        this.pending.delete(p);
      });
    this.pending.add(p);
  }

  /** Wait for every write; throws the first failure. */
  async drain(): Promise<void> {
    this.flush();
    while (this.pending.size > 0) await Promise.all([...this.pending]);
    if (this.failure) throw this.failure;
  }
}
