/**
 * Whole-file fs-verity digests and plain stream digests on the native addon.
 *
 * verityDigestOfFd and VerityBatcher read files on libuv's threadpool and build their Merkle
 * trees there. StreamFeed digests a stream whose pieces are bytes and file ranges (a tar layer
 * rebuilt from its file contents) on the threadpool too, in order, so on two cores the layer's
 * digest and its files' fs-verity digests are computed at the same time.
 */
import { CfsError, errnoCode } from '../errors.js';
import { native, type StreamHashHandle, type StreamHashName } from '../native.js';
import { HASH_ALG_ID, HASH_SIZE, type HashAlg } from './digest.js';

export type { StreamHashName };

/** Maps the native stream-hash state errors to CfsError; other errors pass through. */
function streamHashError(e: unknown, alg: StreamHashName): unknown {
  const code = errnoCode(e);
  if (code === 'EBUSY') return new CfsError('EBUSY', `StreamHash(${alg}): in use by a StreamFeed job until it settles`);
  if (code === 'EINVAL') return new CfsError('EINVAL', `StreamHash(${alg}): already digested`);
  return e;
}

/** A streaming sha256/sha384/sha512 digest (like createHash, but also fed by StreamFeed on the threadpool). */
export class StreamHash {
  readonly alg: StreamHashName;
  /** The native state; for StreamFeed. */
  readonly handle: StreamHashHandle;

  constructor(alg: StreamHashName = 'sha256') {
    this.alg = alg;
    this.handle = native().hashNew(alg);
  }

  update(data: Uint8Array): this {
    try {
      native().hashUpdate(this.handle, data);
    } catch (e) {
      throw streamHashError(e, this.alg);
    }
    return this;
  }

  /** Finishes the hash; it cannot be used afterwards. */
  digest(): Buffer {
    try {
      return native().hashDigest(this.handle);
    } catch (e) {
      throw streamHashError(e, this.alg);
    }
  }

  digestHex(): string {
    return this.digest().toString('hex');
  }
}

function shortError(e: unknown, what: (index: number) => { label: string; length: number }): unknown {
  if (errnoCode(e) !== 'ESHORT') return e;
  const { index = 0, offset = -1 } = e as { index?: number; offset?: number };
  const { label, length } = what(index);
  return new CfsError('EDIGEST', `${label}: shorter than ${length} bytes (ends at offset ${offset})`, { offset, length });
}

/**
 * fs-verity digest of bytes [0, length) of `fd` (which must stay open until this settles), read
 * in 1 MiB chunks on the threadpool. A file shorter than `length` throws CfsError EDIGEST; read
 * errors keep their errno code.
 */
export async function verityDigestOfFd(fd: number, length: number, alg: HashAlg, label = `fd ${fd}`): Promise<Buffer> {
  try {
    return await native().verityHashFds(Float64Array.of(fd, length), HASH_ALG_ID[alg]);
  } catch (e) {
    throw shortError(e, () => ({ label, length }));
  }
}

interface Waiter<T> {
  resolve(v: T): void;
  reject(e: unknown): void;
}

/** Files up to this size are hashed in batches (one threadpool job for many files). */
const BATCH_FILE_MAX = 256 * 1024;
/**
 * Files up to this size are best read once for both their fs-verity digest and a stream digest
 * (StreamFeed.fileWithVerity): thousands of them cost more in reads and per-file work than
 * the parallelism of two jobs saves.
 */
export const ONE_READ_MAX = 256 * 1024;
const BATCH_FILES = 64;
const BATCH_BYTES = 4 * 1024 * 1024;

/**
 * The error for a failed job over several files, naming the one (`index`) that caused it: a
 * short file is EDIGEST, a read error keeps its errno in the message.
 */
function jobError(e: unknown, files: (index: number) => { label: string; length: number } | undefined): unknown {
  const index = (e as { index?: number }).index;
  const f = index === undefined ? undefined : files(index);
  if (!f) return e;
  if (errnoCode(e) === 'ESHORT') return shortError(e, () => f);
  const code = errnoCode(e);
  return new CfsError(code === 'EACCES' || code === 'EPERM' ? 'EPERM' : 'EIO', `${f.label}: ${(e as Error).message}`);
}

/**
 * fs-verity digests of many files on the threadpool: large files get a job each, small ones
 * share one, so thousands of small files do not cost a threadpool round trip each. A partial
 * batch starts when the caller yields to the event loop, or at flush().
 */
export class VerityBatcher {
  private pairs: number[] = [];
  private waiters: Array<Waiter<Buffer> & { label: string; length: number }> = [];
  private bytes = 0;
  private scheduled = false;
  private readonly size: number;

  constructor(private readonly alg: HashAlg) {
    this.size = HASH_SIZE[alg];
  }

  /** The digest of [0, length) of `fd`, which must stay open until it settles. */
  digest(fd: number, length: number, label: string): Promise<Buffer> {
    if (length > BATCH_FILE_MAX) return verityDigestOfFd(fd, length, this.alg, label);
    return new Promise<Buffer>((resolve, reject) => {
      this.pairs.push(fd, length);
      this.waiters.push({ resolve, reject, label, length });
      this.bytes += length;
      if (this.waiters.length >= BATCH_FILES || this.bytes >= BATCH_BYTES) this.flush();
      else if (!this.scheduled) {
        this.scheduled = true;
        setImmediate(() => this.flush());
      }
    });
  }

  /** Start the partial batch. */
  flush(): void {
    this.scheduled = false;
    if (this.waiters.length === 0) return;
    const waiters = this.waiters;
    const pairs = Float64Array.from(this.pairs);
    this.pairs = [];
    this.waiters = [];
    this.bytes = 0;
    const failed = (e: unknown): void => {
      // The whole batch fails, with an error naming the file that caused it.
      const err = jobError(e, (i) => waiters[i]);
      for (const w of waiters) w.reject(err);
    };
    let job: Promise<Buffer>;
    try {
      job = native().verityHashFds(pairs, HASH_ALG_ID[this.alg]);
    } catch (e) {
      failed(e);
      return;
    }
    job.then((d) => waiters.forEach((w, i) => w.resolve(d.subarray(i * this.size, (i + 1) * this.size))), failed);
  }
}

/** Unhashed bytes after which StreamFeed starts a job even while the caller is still adding. */
const FEED_KICK = 256 * 1024;

/**
 * A stream digest (e.g. a layer's diff_id) fed in order with bytes and file ranges, hashed on
 * the threadpool while the caller goes on: one job at a time, each taking everything queued so
 * far (a partial queue starts when the caller yields to the event loop). Bytes with nothing
 * queued ahead of them are hashed at once, on the calling thread; other bytes are copied;
 * fds must stay open until their file() promise settles. The first failure (a file shorter than
 * declared, a read error) is kept and thrown by digest().
 */
export class StreamFeed {
  private readonly hash: StreamHash;
  /** Queued bytes are copied here; the running job reads the other buffer (spare once it is done). */
  private stage: Buffer = Buffer.allocUnsafe(FEED_KICK);
  private spare: Buffer | null = null;
  private staged = 0;
  private plan: number[] = [];
  private labels: Array<{ index: number; label: string; length: number }> = [];
  private waiters: Array<() => void> = [];
  private queued = 0;
  private running = false;
  private scheduled = false;
  private idle: Array<() => void> = [];
  private failure: unknown = null;
  /** Plan segments (indexes) whose fs-verity digest is computed too, and who waits for it. */
  private verityIdx: number[] = [];
  private verityWaiters: Array<Waiter<Buffer>> = [];
  /** The fs-verity algorithm of fileWithVerity (one per feed: one per job). */
  private verityAlg: HashAlg | null = null;

  constructor(alg: StreamHashName) {
    this.hash = new StreamHash(alg);
  }

  /** Bytes queued and not hashed yet. */
  get backlog(): number {
    return this.queued;
  }

  bytes(b: Uint8Array): void {
    if (b.length === 0) return;
    if (!this.running && this.plan.length === 0 && this.failure === null) {
      // Nothing ahead of these bytes: hash them here, which costs less than staging them (a
      // copied file's bytes come this way while the threadpool writes its object).
      this.hash.update(b);
      return;
    }
    if (this.staged + b.length > this.stage.length) {
      const bigger = Buffer.allocUnsafe(Math.max(2 * this.stage.length, this.staged + b.length));
      this.stage.copy(bigger, 0, 0, this.staged);
      this.stage = bigger;
    }
    const n = this.plan.length;
    if (n > 0 && this.plan[n - 3] === -1 && this.plan[n - 2] + this.plan[n - 1] === this.staged) this.plan[n - 1] += b.length;
    else this.plan.push(-1, this.staged, b.length);
    this.stage.set(b, this.staged);
    this.staged += b.length;
    this.add(b.length);
  }

  /** Append [0, length) of `fd`; resolves (never rejects) once the feed is done with the fd. */
  file(fd: number, length: number, label: string): Promise<void> {
    return new Promise<void>((resolve) => {
      this.labels.push({ index: this.plan.length / 3, label, length });
      this.plan.push(fd, 0, length);
      this.waiters.push(resolve);
      this.add(length);
    });
  }

  /**
   * Append [0, length) of `fd` and compute its fs-verity digest from the same reads (a small
   * file is read once for both); resolves with the digest once the feed is done with the fd,
   * rejects with the feed's failure.
   */
  fileWithVerity(fd: number, length: number, label: string, alg: HashAlg): Promise<Buffer> {
    if ((this.verityAlg ??= alg) !== alg) throw new Error(`StreamFeed: fs-verity digests in ${this.verityAlg}, not ${alg}`);
    return new Promise<Buffer>((resolve, reject) => {
      this.verityIdx.push(this.plan.length / 3);
      this.verityWaiters.push({ resolve, reject });
      this.labels.push({ index: this.plan.length / 3, label, length });
      this.plan.push(fd, 0, length);
      this.add(length);
    });
  }

  /** Start hashing what is queued (without waiting for more). */
  flush(): void {
    this.scheduled = false;
    if (this.running || this.plan.length === 0) return;
    this.running = true;
    const data = this.staged === 0 ? null : this.stage;
    const plan = Float64Array.from(this.plan);
    const labels = this.labels;
    const waiters = this.waiters;
    const verityIdx = this.verityIdx;
    const verityWaiters = this.verityWaiters;
    const bytes = this.queued;
    if (data) {
      this.stage = this.spare ?? Buffer.allocUnsafe(FEED_KICK);
      this.spare = null;
    }
    this.staged = 0;
    this.plan = [];
    this.labels = [];
    this.waiters = [];
    this.verityIdx = [];
    this.verityWaiters = [];
    const done = (digests: Buffer | void): void => {
      this.queued -= bytes;
      this.running = false;
      if (data) this.spare = data;
      for (const w of waiters) w();
      if (verityWaiters.length > 0) {
        const size = HASH_SIZE[this.verityAlg!];
        // After a failure nothing was digested: every waiter gets the failure.
        verityWaiters.forEach((w, i) => (digests ? w.resolve(digests.subarray(i * size, (i + 1) * size)) : w.reject(this.failure)));
      }
      if (this.plan.length > 0) this.flush();
      else for (const w of this.idle.splice(0)) w();
    };
    const failed = (e: unknown): void => {
      this.failure ??= jobError(e, (i) => labels.find((l) => l.index === i));
      done();
    };
    if (this.failure !== null) {
      // Nothing more is hashed after a failure; the fds are released at once.
      queueMicrotask(done);
      return;
    }
    try {
      const job = verityIdx.length > 0
        ? native().hashFeed(this.hash.handle, data, plan, HASH_ALG_ID[this.verityAlg!], Uint32Array.from(verityIdx))
        : native().hashFeed(this.hash.handle, data, plan);
      job.then(done, failed);
    } catch (e) {
      queueMicrotask(() => failed(e));
    }
  }

  /** Resolves when everything queued so far is hashed (or abandoned after a failure). */
  async settled(): Promise<void> {
    this.flush();
    if (this.running) await new Promise<void>((resolve) => this.idle.push(resolve));
  }

  /** The digest of everything fed; throws the first failure. */
  async digest(): Promise<Buffer> {
    await this.settled();
    if (this.failure !== null) throw this.failure;
    return this.hash.digest();
  }

  private add(n: number): void {
    this.queued += n;
    if (this.running) return;
    if (this.queued >= FEED_KICK) this.flush();
    else if (!this.scheduled) {
      this.scheduled = true;
      setImmediate(() => this.flush());
    }
  }
}
