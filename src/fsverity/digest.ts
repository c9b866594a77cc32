/**
 * Userspace fs-verity digest (Linux fs-verity, 4096-byte Merkle blocks, no salt).
 *
 * Streaming with constant memory, so it can run while an object is being written. The Merkle
 * tree is built in the native addon (OpenSSL, one pending block per tree level); whole files are
 * faster still with verityDigestOfFd (file-hash.ts), which reads and hashes on the threadpool.
 */
import { CfsError } from '../errors.js';
import { native, type NativeAddon, type VerityHasherHandle } from '../native.js';

export type HashAlg = 'sha256' | 'sha512';

export const FSVERITY_BLOCK_SIZE = 4096;
/** Kernel hash algorithm ids (FS_VERITY_HASH_ALG_*), also used in the overlay metacopy xattr. */
export const HASH_ALG_ID: Record<HashAlg, 1 | 2> = { sha256: 1, sha512: 2 };
export const HASH_SIZE: Record<HashAlg, number> = { sha256: 32, sha512: 64 };

export function hashAlgFromId(id: number): HashAlg | undefined {
  return id === 1 ? 'sha256' : id === 2 ? 'sha512' : undefined;
}

/** The algorithm of a digest by its size in bytes (32: sha256, 64: sha512). */
export function hashAlgOfSize(bytes: number): HashAlg | undefined {
  return bytes === HASH_SIZE.sha256 ? 'sha256' : bytes === HASH_SIZE.sha512 ? 'sha512' : undefined;
}

export class FsVerityHasher {
  readonly alg: HashAlg;
  private readonly addon: NativeAddon;
  private readonly state: VerityHasherHandle;
  private size = 0;
  private result: Buffer | null = null;

  constructor(alg: HashAlg = 'sha256') {
    this.alg = alg;
    this.addon = native();
    this.state = this.addon.verityNew(HASH_ALG_ID[alg]);
  }

  update(chunk: Uint8Array): this {
    if (this.result) throw new CfsError('EINVAL', 'FsVerityHasher: update after digest');
    this.addon.verityUpdate(this.state, chunk);
    this.size += chunk.length;
    return this;
  }

  /** The fs-verity digest (hash of the fsverity_descriptor). Repeated calls return the same digest. */
  digest(): Buffer {
    this.result ??= this.addon.verityDigest(this.state);
    return Buffer.from(this.result);
  }

  get bytes(): number {
    return this.size;
  }
}

/** fs-verity digest of one buffer (cheaper than a hasher for the many small files). */
export function fsverityDigest(data: Uint8Array, alg: HashAlg = 'sha256'): Buffer {
  return native().verityDigestBuffer(data, HASH_ALG_ID[alg]);
}
