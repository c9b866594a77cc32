/**
 * Options of the commands that build an image from a directory tree (create-image, compute-id,
 * create-dumpfile, compute-karg): one spelling, one help text.
 */
import { CfsError } from '../errors.js';

/** `--xattrs MODE` (cfsctl's spelling) or `--keep-user-xattrs` (compute-id's): whether user.* xattrs stay. */
export function keepUserXattrs(o: { xattrs?: string; keepUserXattrs?: boolean }): boolean {
  const mode = o.xattrs ?? 'allowlist-only';
  if (mode !== 'allowlist-only' && mode !== 'keep-user-xattrs') throw new CfsError('EINVAL', `unknown xattr mode '${mode}' (allowlist-only or keep-user-xattrs)`);
  if (o.keepUserXattrs && o.xattrs === 'allowlist-only') throw new CfsError('EINVAL', '--keep-user-xattrs and --xattrs allowlist-only contradict each other');
  return mode === 'keep-user-xattrs' || !!o.keepUserXattrs;
}

/** Help text shared by the commands that build images from a directory tree. */
export const NO_PROPAGATE_HELP = 'skip the OCI transform: keep / as scanned and every xattr';
export const XATTRS_HELP = 'xattrs the OCI transform keeps: allowlist-only (default) or keep-user-xattrs';
export const KEEP_USER_XATTRS_HELP = 'the same as --xattrs keep-user-xattrs';
