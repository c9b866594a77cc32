/**
 * Pull: a transport reference imported into a repository and tagged, as `cfs oci pull` and
 * `cfs mount` do it (and the library's `pullImage`). The default tag is the reference (an
 * `oci:` path made absolute); a containers-storage one as the store names the image (`x` and
 * `x:latest` are one tag, `localhost/x:latest`).
 */
import path from 'node:path';
import { CfsError } from '../errors.js';
import type { Repository } from '../repository/repository.js';
import { NO_PROGRESS, type ProgressSink } from '../progress/events.js';
import type { ImageToImport, ImportResult, LocalFetch } from './import.js';
import { parseImageReference } from './reference.js';
import { encodeTag, resolveTag } from './stored.js';

export const LOCAL_FETCH_MODES: readonly LocalFetch[] = ['disabled', 'auto', 'zerocopy'];

export interface PullOptions {
  /** Tag to give the image (default: see the module comment). */
  name?: string;
  /** `os/arch[/variant]` to select from a multi-platform index (default: this machine). */
  platform?: string;
  /** containers-storage: reflink/hardlink file contents (default 'auto'; 'zerocopy' requires it). */
  localFetch?: LocalFetch;
  /** containers-storage: give up waiting for a lock podman holds after this long (default: wait). */
  lockTimeoutMs?: number;
  /** Per-layer progress and messages (default: none). */
  progress?: ProgressSink;
  /** Stops the pull (ECANCELED). */
  signal?: AbortSignal;
}

export interface PullResult extends ImportResult {
  /** The tag the image got. */
  tag: string;
  /** The manifest the tag named before, when the pull moved it to another one; else null. */
  replacedManifest: string | null;
}

/**
 * An `oci:`/`oci-archive:` reference with its path made absolute (others as they are): the same
 * words in another directory name another image, so tags record where the image came from.
 */
export function absoluteReference(reference: string): string {
  const ref = parseImageReference(reference);
  if (ref.transport === 'containers-storage' || path.isAbsolute(ref.path)) return reference;
  return `${ref.transport}:${path.resolve(ref.path)}${ref.tag === null ? '' : `:${ref.tag}`}`;
}

/** The tag a pull gives by default. */
async function defaultTag(reference: string, described: string): Promise<string> {
  if (reference.startsWith('containers-storage:')) return (await import('./containers-storage/image.js')).defaultStorageTag(reference, described);
  return absoluteReference(reference);
}

/**
 * Open the reference's image and close it again: whether a pull could start (the source and
 * image exist, the platform is there). For callers that would otherwise create a repository
 * only to fail at the source.
 */
export async function probeSource(reference: string, opts: Omit<PullOptions, 'name'> = {}): Promise<void> {
  await (await openSource(reference, opts)).close();
}

/** The reference's image, waiting for a store's locks as asked (notices above any progress bars). */
async function openSource(reference: string, opts: PullOptions): Promise<ImageToImport> {
  const { openImageSource } = await import('./sources.js');
  const progress = opts.progress ?? NO_PROGRESS;
  return openImageSource(reference, { platform: opts.platform, onNote: (text) => progress.message(text), onWait: (text) => progress.message(text), timeoutMs: opts.lockTimeoutMs, signal: opts.signal });
}

export async function pullImage(repo: Repository, reference: string, opts: PullOptions = {}): Promise<PullResult> {
  const { importImage } = await import('./import.js');
  if (opts.localFetch !== undefined && !LOCAL_FETCH_MODES.includes(opts.localFetch)) {
    throw new CfsError('EINVAL', `local fetch mode '${String(opts.localFetch)}' is not one of ${LOCAL_FETCH_MODES.join(', ')}`);
  }
  if (opts.name !== undefined && opts.name.trim() === '') throw new CfsError('EINVAL', 'the name to tag the image with is empty');
  const progress = opts.progress ?? NO_PROGRESS;
  // A name that cannot be a tag is refused now, not after the whole import.
  if (opts.name !== undefined) encodeTag(opts.name);
  const img = await openSource(reference, opts);
  try {
    const tag = opts.name ?? (await defaultTag(reference, img.description));
    if (opts.name === undefined) {
      try {
        encodeTag(tag);
      } catch (e) {
        throw new CfsError('EINVAL', `${(e as Error).message}: the tag a pull of ${reference} would give; pull it under a name of your own (cfs oci pull SOURCE NAME; then cfs mount NAME MNT)`);
      }
    }
    const before = await resolveTag(repo, tag);
    const r = await importImage(repo, img, { name: tag, progress, localFetch: opts.localFetch ?? 'auto', signal: opts.signal });
    return { ...r, tag, replacedManifest: before !== null && before !== r.manifestDigest ? before : null };
  } finally {
    await img.close();
  }
}
