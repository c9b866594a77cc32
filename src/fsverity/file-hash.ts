/**
 * Whole-file fs-verity digests and plain stream digests on the native addon.
 *
 * verityDigestOfFd reads [0, length) of an fd on libuv's threadpool and builds the Merkle tree
 * there; given a StreamHash it feeds the same bytes to it, so the digest of a stream whose file
 * contents come from files (e.g. a tar layer's diff_id) costs no extra read. While that runs the
 * StreamHash is busy: using it throws CfsError EBUSY.
 */
import { CfsError, errnoCode } from '../errors.js';
import { native, type StreamHashHandle, type StreamHashName } from '../native.js';
import { HASH_ALG_ID, type HashAlg } from './digest.js';

export type { StreamHashName };

/** Maps the native stream-hash state errors to CfsError; other errors pass through. */
function streamHashError(e: unknown, alg: StreamHashName): unknown {
  const code = errnoCode(e);
  if (code === 'EBUSY') return new CfsError('EBUSY', `StreamHash(${alg}): in use by verityDigestOfFd until it settles`);
  if (code === 'EINVAL') return new CfsError('EINVAL', `StreamHash(${alg}): already digested`);
  return e;
}

/** A streaming sha256/sha384/sha512 digest (like createHash, but usable by verityDigestOfFd). */
export class StreamHash {
  readonly alg: StreamHashName;
  /** The native state; for verityDigestOfFd. */
  readonly handle: StreamHashHandle;
  private finished = false;

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
      const d = native().hashDigest(this.handle);
      this.finished = true;
      return d;
    } catch (e) {
      throw streamHashError(e, this.alg);
    }
  }

  get digested(): boolean {
    return this.finished;
  }

  digestHex(): string {
    return this.digest().toString('hex');
  }
}

/**
 * fs-verity digest of bytes [0, length) of `fd` (which must stay open until this settles), read
 * in 1 MiB chunks on the threadpool; the same bytes are appended to `stream` when given. A file
 * shorter than `length` throws CfsError EDIGEST (`stream` has then seen the bytes up to its end);
 * read errors keep their errno code.
 */
export async function verityDigestOfFd(
  fd: number,
  length: number,
  alg: HashAlg,
  stream?: StreamHash,
  label = `fd ${fd}`,
): Promise<Buffer> {
  if (stream?.digested) throw new CfsError('EINVAL', `StreamHash(${stream.alg}): already digested`);
  try {
    return await native().verityHashFd(fd, length, HASH_ALG_ID[alg], stream ? stream.handle : null);
  } catch (e) {
    if (errnoCode(e) === 'ESHORT') {
      const offset = (e as { offset?: number }).offset ?? -1;
      throw new CfsError('EDIGEST', `${label}: shorter than ${length} bytes (ends at offset ${offset})`, { offset, length });
    }
    if (stream && errnoCode(e) === 'EBUSY') throw streamHashError(e, stream.alg);
    throw e;
  }
}
