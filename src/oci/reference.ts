/**
 * Image references: `TRANSPORT:NAME`. The transport is the text before the first `:`.
 * For `oci:` and `oci-archive:` the name is `PATH[:TAG]`, split at the last `:` unless the
 * text after it contains `/` (then the whole name is the path): `/p:a:b` → (`/p:a`, `b`).
 */
import { CfsError } from '../errors.js';

export type Transport = 'oci' | 'oci-archive' | 'containers-storage';

export interface ImageReference {
  transport: Transport;
  path: string;
  /** Tag for oci/oci-archive; `''` when the reference ends in `:`; null when absent. */
  tag: string | null;
}

/** Transports other tools know but this one cannot serve (no network, no docker daemon). */
const UNSUPPORTED = new Set(['docker', 'registry', 'docker-archive', 'docker-daemon', 'dir']);

export function parseImageReference(s: string): ImageReference {
  const colon = s.indexOf(':');
  if (colon < 0) {
    throw new CfsError('EINVAL', `image reference "${s}": missing transport (use oci:, oci-archive: or containers-storage:)`);
  }
  const transport = s.slice(0, colon);
  const rest = s.slice(colon + 1);
  if (transport === 'containers-storage') {
    if (rest === '') throw new CfsError('EINVAL', `image reference "${s}": empty image name`);
    return { transport, path: rest, tag: null };
  }
  if (transport === 'oci' || transport === 'oci-archive') {
    const { path, tag } = splitPathTag(rest);
    if (path === '') throw new CfsError('EINVAL', `image reference "${s}": empty path`);
    return { transport, path, tag };
  }
  if (UNSUPPORTED.has(transport)) {
    throw new CfsError('ENOTSUP', `image reference "${s}": transport "${transport}" is not supported (use oci:, oci-archive: or containers-storage:)`);
  }
  throw new CfsError('EINVAL', `image reference "${s}": unknown transport "${transport}"`);
}

/**
 * As containers/image splits `oci:`/`oci-archive:` references: at the first colon, so a tag may
 * hold colons (`docker.io/library/foo:1.0`, as skopeo writes them) and a path may not.
 */
function splitPathTag(name: string): { path: string; tag: string | null } {
  const colon = name.indexOf(':');
  if (colon < 0) return { path: name, tag: null };
  return { path: name.slice(0, colon), tag: name.slice(colon + 1) };
}
