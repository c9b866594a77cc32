/**
 * The composefs kernel argument naming the image to boot, in the forms composefs-rs uses
 * (composefs-boot `cmdline.rs`, composefs-setup-root):
 *
 *   composefs.digest=v1-<hash>-12:<hex>    EROFS V0/V1 images
 *   composefs=<hex>                        EROFS V2 images (legacy shorthand)
 *
 * A `?` right after `=` (`composefs.digest=?v1-sha256-12:<hex>`, `composefs=?<hex>`) marks
 * the image as insecure: fs-verity is not enforced when it is mounted.
 *
 * The kernel splits its command line at ASCII whitespace outside double quotes; there is no
 * escaping, and the quotes stay in the token. Several composefs arguments may appear; like
 * composefs-setup-root, every one is returned in command-line order and the first whose image
 * exists wins (`composefs.digest=v2-…` is accepted as the explicit V2 form).
 */
import { CfsError } from '../errors.js';
import { HASH_SIZE, hashAlgOfSize, type HashAlg } from '../fsverity/digest.js';

export const KARG_DIGEST = 'composefs.digest';
export const KARG_V2 = 'composefs';

export interface ComposefsKarg {
  /** Image id, lowercase hex. */
  hex: string;
  alg: HashAlg;
  /** EROFS family the argument names: 1 (V0/V1) or 2. */
  erofsVersion: 1 | 2;
  insecure: boolean;
}

export interface FormatKargOptions {
  insecure?: boolean;
  /** Repository EROFS format of the image (default 1): 0 and 1 → `composefs.digest=v1-…`, 2 → `composefs=`. */
  erofsVersion?: number;
}

export function formatKarg(imageId: Buffer | string, alg: HashAlg, opts: FormatKargOptions = {}): string {
  const hex = typeof imageId === 'string' ? imageId : imageId.toString('hex');
  if (hex.length !== HASH_SIZE[alg] * 2 || !/^[0-9a-f]+$/.test(hex)) {
    throw new CfsError('EINVAL', `image id '${hex}' is not a ${alg} digest in lowercase hex`);
  }
  const q = opts.insecure ? '?' : '';
  const version = opts.erofsVersion ?? 1;
  if (version === 2) return `${KARG_V2}=${q}${hex}`;
  if (version !== 0 && version !== 1) throw new CfsError('EINVAL', `unknown EROFS format version ${version}`);
  return `${KARG_DIGEST}=${q}v1-${alg}-12:${hex}`;
}

/** Kernel command-line tokens: split at ASCII whitespace outside double quotes (quotes kept). */
export function splitCmdline(cmdline: string): string[] {
  const out: string[] = [];
  let cur = '';
  let quoted = false;
  for (const c of cmdline) {
    if (c === '"') quoted = !quoted;
    if (!quoted && (c === ' ' || c === '\t' || c === '\n' || c === '\r' || c === '\f')) {
      if (cur) out.push(cur);
      cur = '';
    } else {
      cur += c;
    }
  }
  if (cur) out.push(cur);
  return out;
}

function hexOf(hex: string, alg: HashAlg, token: string): string {
  if (hex.length !== HASH_SIZE[alg] * 2 || !/^[0-9a-fA-F]+$/.test(hex)) {
    throw new CfsError('EINVAL', `kernel argument '${token}': expected ${HASH_SIZE[alg] * 2} hex digits for ${alg}, got '${hex}'`);
  }
  return hex.toLowerCase();
}

function parseDigestValue(value: string, token: string): ComposefsKarg {
  const insecure = value.startsWith('?');
  const v = insecure ? value.slice(1) : value;
  const m = /^([^-:]*)-(.*)-([^-:]*):(.*)$/.exec(v);
  if (!m) throw new CfsError('EINVAL', `kernel argument '${token}': expected '<version>-<hash>-<blocksize>:<hex>'`);
  const [, ver, hash, lg, hex] = m;
  if (ver !== 'v1' && ver !== 'v2') throw new CfsError('EINVAL', `kernel argument '${token}': unsupported format version '${ver}'`);
  if (hash !== 'sha256' && hash !== 'sha512') throw new CfsError('EINVAL', `kernel argument '${token}': unknown hash '${hash}'`);
  if (lg !== '12') throw new CfsError('EINVAL', `kernel argument '${token}': unsupported block size 2^${lg} (only 12)`);
  return { hex: hexOf(hex, hash, token), alg: hash, erofsVersion: ver === 'v1' ? 1 : 2, insecure };
}

function parseV2Value(value: string, token: string): ComposefsKarg {
  const insecure = value.startsWith('?');
  const hex = insecure ? value.slice(1) : value;
  const alg = hashAlgOfSize(hex.length / 2);
  if (!alg) throw new CfsError('EINVAL', `kernel argument '${token}': invalid digest length ${hex.length}`);
  return { hex: hexOf(hex, alg, token), alg, erofsVersion: 2, insecure };
}

/** Every composefs argument of `cmdline`, in order. A malformed one is an error, not skipped. */
export function parseKargs(cmdline: string): ComposefsKarg[] {
  const out: ComposefsKarg[] = [];
  for (const raw of splitCmdline(cmdline)) {
    // The kernel takes `composefs="HEX"` (and `"composefs=HEX"`) without the quotes; our values never hold any.
    const token = raw.replace(/"/g, '');
    if (token.startsWith(`${KARG_DIGEST}=`)) out.push(parseDigestValue(token.slice(KARG_DIGEST.length + 1), token));
    else if (token.startsWith(`${KARG_V2}=`)) out.push(parseV2Value(token.slice(KARG_V2.length + 1), token));
  }
  return out;
}

/** The argument `formatKarg` would print for a parsed one (normalises case). */
export function kargToString(k: ComposefsKarg): string {
  return formatKarg(k.hex, k.alg, { insecure: k.insecure, erofsVersion: k.erofsVersion });
}
