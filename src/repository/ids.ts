/** Object IDs (fs-verity digests) and their path and text forms. */
import { HASH_SIZE, type HashAlg } from '../fsverity/digest.js';

/** `XX/YYYY…`: first byte as the fan-out directory, the rest as the file name. */
export function objectRelPath(id: Buffer): string {
  const hex = id.toString('hex');
  return `${hex.slice(0, 2)}/${hex.slice(2)}`;
}

/** The ID from a full hex string; null unless it is exactly one digest of `alg` in lowercase hex. */
export function parseHexId(hex: string, alg: HashAlg): Buffer | null {
  if (hex.length !== HASH_SIZE[alg] * 2 || !/^[0-9a-f]+$/.test(hex)) return null;
  return Buffer.from(hex, 'hex');
}

/** The ID named by the last `XX/YYYY` components of a path (symlink targets into objects/). */
export function idFromObjectPath(p: string, alg: HashAlg): Buffer | null {
  const parts = p.split('/');
  if (parts.length < 2) return null;
  return parseHexId(parts[parts.length - 2] + parts[parts.length - 1], alg);
}

