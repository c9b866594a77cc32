/**
 * Kernel fs-verity (FS_IOC_ENABLE_VERITY / FS_IOC_MEASURE_VERITY) through the native addon.
 * Errors are mapped to CfsError: ENOTSUP when the kernel or filesystem lacks fs-verity
 * (EOPNOTSUPP/ENOTTY), ENODATA-style 'not enabled' when the file has no verity.
 */
import { open } from 'node:fs/promises';
import { constants } from 'node:fs';
import { native } from '../native.js';
import { CfsError, errnoCode } from '../errors.js';
import { HASH_ALG_ID, hashAlgFromId, FSVERITY_BLOCK_SIZE, type HashAlg } from './digest.js';

export interface MeasuredVerity {
  alg: HashAlg;
  digest: Buffer;
}

function mapError(e: unknown, what: string, file: string): CfsError {
  const code = errnoCode(e);
  if (code === 'EOPNOTSUPP' || code === 'ENOTTY' || code === 'ENOTSUP') {
    return new CfsError('ENOTSUP', `${file}: fs-verity is not supported by this kernel or filesystem (${what}: ${code})`, { path: file });
  }
  if (code === 'ENODATA') return new CfsError('ENOENT', `${file}: fs-verity is not enabled on this file`, { path: file });
  if (code === 'ETXTBSY') return new CfsError('EBUSY', `${file}: file is open for writing, cannot enable fs-verity`, { path: file });
  if (code === 'EEXIST') return new CfsError('EEXIST', `${file}: fs-verity is already enabled`, { path: file });
  return new CfsError('EIO', `${file}: ${what} failed: ${(e as Error).message}`, { path: file });
}

/** Measure the fs-verity digest of an open fd (throws CfsError ENOTSUP / ENOENT). */
export function measureVerityFd(fd: number, file = `fd ${fd}`): MeasuredVerity {
  try {
    const r = native().fsverityMeasure(fd);
    const alg = hashAlgFromId(r.hashAlg);
    if (!alg) throw new CfsError('EINVAL', `${file}: unknown fs-verity hash algorithm ${r.hashAlg}`);
    return { alg, digest: r.digest };
  } catch (e) {
    if (e instanceof CfsError) throw e;
    throw mapError(e, 'FS_IOC_MEASURE_VERITY', file);
  }
}

export async function measureVerity(file: string): Promise<MeasuredVerity> {
  const fh = await open(file, constants.O_RDONLY);
  try {
    return measureVerityFd(fh.fd, file);
  } finally {
    await fh.close();
  }
}

/** Enable fs-verity on an fd opened read-only (no writers may exist). */
export function enableVerityFd(fd: number, alg: HashAlg, file = `fd ${fd}`): void {
  try {
    native().fsverityEnable(fd, HASH_ALG_ID[alg], FSVERITY_BLOCK_SIZE);
  } catch (e) {
    throw mapError(e, 'FS_IOC_ENABLE_VERITY', file);
  }
}

export async function enableVerity(file: string, alg: HashAlg = 'sha256'): Promise<void> {
  const fh = await open(file, constants.O_RDONLY);
  try {
    enableVerityFd(fh.fd, alg, file);
  } finally {
    await fh.close();
  }
}
