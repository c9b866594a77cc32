/**
 * Checking a backing object against the fs-verity digest its image records, for the FUSE
 * servers' verify mode: the kernel's measurement where the file has fs-verity, else a digest
 * computed here (synchronously: it runs in the FUSE request that opens the file).
 */
import type { HashAlg } from '../fsverity/digest.js';
import { fsverityDigestFdSync } from '../fsverity/file.js';
import { measureVerityFd } from '../fsverity/kernel.js';

/** Why object `payload` (open as `fd`, path `file`) may not be served; null when its digest is `want`. */
export function objectProblem(fd: number, file: string, payload: string, want: Buffer | null, alg: HashAlg): string | null {
  if (!want) return `no fs-verity digest recorded for object ${payload}`;
  let digest: Buffer | null = null;
  try {
    const m = measureVerityFd(fd, file);
    if (m.alg === alg) digest = m.digest;
  } catch {
    // No kernel fs-verity on this file, filesystem or kernel: hash it ourselves below.
  }
  try {
    digest ??= fsverityDigestFdSync(fd, alg);
  } catch (e) {
    return `cannot read object ${payload}: ${(e as Error).message}`;
  }
  if (digest.equals(want)) return null;
  return `object ${payload} has fs-verity digest ${digest.toString('hex')}, expected ${want.toString('hex')}`;
}
