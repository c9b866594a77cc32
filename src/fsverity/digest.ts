/**
 * Userspace fs-verity digest (Linux fs-verity, 4096-byte Merkle blocks, no salt).
 *
 * Streaming: constant memory (one pending block per tree level), so it can run while an object
 * is being written. Each level keeps its block "open" until another hash must be added, because
 * only at the end do we know whether a level's single block is the root.
 */
import { createHash } from 'node:crypto';

export type HashAlg = 'sha256' | 'sha512';

export const FSVERITY_BLOCK_SIZE = 4096;
const LOG_BLOCK_SIZE = 12;
const DESCRIPTOR_SIZE = 256;
/** Kernel hash algorithm ids (FS_VERITY_HASH_ALG_*), also used in the overlay metacopy xattr. */
export const HASH_ALG_ID: Record<HashAlg, 1 | 2> = { sha256: 1, sha512: 2 };
export const HASH_SIZE: Record<HashAlg, number> = { sha256: 32, sha512: 64 };

// fsverity_descriptor field offsets
const D_VERSION = 0;
const D_HASH_ALG = 1;
const D_LOG_BLOCKSIZE = 2;
const D_DATA_SIZE = 8;
const D_ROOT_HASH = 16;

export function hashAlgFromId(id: number): HashAlg | undefined {
  return id === 1 ? 'sha256' : id === 2 ? 'sha512' : undefined;
}

export class FsVerityHasher {
  readonly alg: HashAlg;
  private readonly hashSize: number;
  private size = 0;
  /** Pending data block bytes. */
  private readonly dataBlock = Buffer.alloc(FSVERITY_BLOCK_SIZE);
  private dataFill = 0;
  private dataBlocksHashed = 0;
  /** Per tree level: pending hash block and how many blocks of that level were emitted. */
  private readonly levels: Array<{ block: Buffer; fill: number; emitted: number }> = [];

  constructor(alg: HashAlg = 'sha256') {
    this.alg = alg;
    this.hashSize = HASH_SIZE[alg];
  }

  update(chunk: Uint8Array): this {
    let off = 0;
    const len = chunk.length;
    this.size += len;
    while (off < len) {
      if (this.dataFill === FSVERITY_BLOCK_SIZE) this.flushDataBlock();
      // Fast path: whole blocks straight from the chunk.
      if (this.dataFill === 0 && len - off > FSVERITY_BLOCK_SIZE) {
        this.pushHash(0, this.hashBlock(chunk.subarray(off, off + FSVERITY_BLOCK_SIZE)));
        this.dataBlocksHashed++;
        off += FSVERITY_BLOCK_SIZE;
        continue;
      }
      const n = Math.min(FSVERITY_BLOCK_SIZE - this.dataFill, len - off);
      this.dataBlock.set(chunk.subarray(off, off + n), this.dataFill);
      this.dataFill += n;
      off += n;
    }
    return this;
  }

  /** The fs-verity digest (hash of the fsverity_descriptor). */
  digest(): Buffer {
    const root = this.rootHash();
    const desc = Buffer.alloc(DESCRIPTOR_SIZE);
    desc[D_VERSION] = 1;
    desc[D_HASH_ALG] = HASH_ALG_ID[this.alg];
    desc[D_LOG_BLOCKSIZE] = LOG_BLOCK_SIZE;
    desc.writeBigUInt64LE(BigInt(this.size), D_DATA_SIZE);
    root.copy(desc, D_ROOT_HASH);
    return createHash(this.alg).update(desc).digest();
  }

  get bytes(): number {
    return this.size;
  }

  private hashBlock(block: Uint8Array): Buffer {
    return createHash(this.alg).update(block).digest();
  }

  private flushDataBlock(): void {
    this.dataBlock.fill(0, this.dataFill);
    this.pushHash(0, this.hashBlock(this.dataBlock));
    this.dataBlocksHashed++;
    this.dataFill = 0;
  }

  private pushHash(level: number, hash: Buffer): void {
    let lv = this.levels[level];
    if (!lv) {
      lv = { block: Buffer.alloc(FSVERITY_BLOCK_SIZE), fill: 0, emitted: 0 };
      this.levels[level] = lv;
    }
    if (lv.fill + this.hashSize > FSVERITY_BLOCK_SIZE) this.flushLevel(level);
    hash.copy(lv.block, lv.fill);
    lv.fill += this.hashSize;
  }

  private flushLevel(level: number): void {
    const lv = this.levels[level];
    lv.block.fill(0, lv.fill);
    const h = this.hashBlock(lv.block);
    lv.fill = 0;
    lv.emitted++;
    this.pushHash(level + 1, h);
  }

  private rootHash(): Buffer {
    if (this.size === 0) return Buffer.alloc(this.hashSize);
    if (this.dataFill > 0) this.flushDataBlock();
    for (let level = 0; ; level++) {
      const lv = this.levels[level];
      const higher = this.levels[level + 1];
      const onlyNode = lv.emitted === 0 && lv.fill === this.hashSize && !higher;
      if (onlyNode) return Buffer.from(lv.block.subarray(0, this.hashSize));
      if (lv.fill > 0) this.flushLevel(level);
    }
  }
}

export function fsverityDigest(data: Uint8Array, alg: HashAlg = 'sha256'): Buffer {
  return new FsVerityHasher(alg).update(data).digest();
}
