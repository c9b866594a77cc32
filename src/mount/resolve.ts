/**
 * What `cfs mount SOURCE` mounts: a transport reference (imported first when needed), an OCI
 * image name known to the repository, an image id (hex) or `ref/NAME` (brief 1.8).
 */
import { CfsError, isCfsError } from '../errors.js';
import type { Repository } from '../repository/repository.js';
import type { ImageHandle } from '../repository/repository.js';

export interface ResolvedMountSource {
  image: ImageHandle;
  /** Shown as the mount source (`composefs:<label>` / `cfs:<label>`). */
  label: string;
}

export interface ResolveMountOptions {
  platform?: string;
  quiet?: boolean;
  /** Imports a transport reference into the repository; returns the composefs image id. */
  pull: (reference: string) => Promise<string | null>;
  /** Told when a reference its source no longer has is mounted from an earlier import. */
  note?: (text: string) => void;
}

/** The composefs image of a tagged (or `@digest`) OCI image. */
async function mountableTag(repo: Repository, tag: string): Promise<ImageHandle> {
  const { openStoredImage } = await import('../oci/stored.js');
  const img = await openStoredImage(repo, tag, repo.erofsFormats.default);
  if (!img.imageId) throw new CfsError('ENOENT', `image '${tag}' has no composefs image for EROFS format ${repo.erofsFormats.default}; pull it again`);
  return repo.openImage(img.imageId);
}

/** The tag an earlier pull of `reference` gave its image, if the repository has one. */
async function earlierImport(repo: Repository, reference: string): Promise<string | null> {
  const { resolveTag } = await import('../oci/stored.js');
  let candidates = [reference];
  if (reference.startsWith('containers-storage:')) {
    const { defaultTagCandidates } = await import('../oci/containers-storage/image.js');
    candidates = defaultTagCandidates(reference);
  }
  for (const c of candidates) if ((await resolveTag(repo, c)) !== null) return c;
  return null;
}

export async function resolveMountSource(repo: Repository, source: string, opts: ResolveMountOptions): Promise<ResolvedMountSource> {
  const { isTransportReference } = await import('../oci/sources.js');
  const { resolveTag } = await import('./../oci/stored.js');
  if (isTransportReference(source)) {
    try {
      const imageId = await opts.pull(source);
      if (!imageId) throw new CfsError('EINVAL', `${source}: an artifact has no filesystem to mount`);
      return { image: await repo.openImage(imageId), label: source };
    } catch (e) {
      // Gone from its source (podman rmi'd it) but imported before under the tag a pull gave it:
      // that one (not when a platform was asked for: tags do not say which they are).
      if (!(isCfsError(e) && e.context['missingImage'] !== undefined) || opts.platform !== undefined) throw e;
      const earlier = await earlierImport(repo, source);
      if (earlier === null) throw e;
      opts.note?.(`${source} is no longer in its source; mounting the image imported as '${earlier}' before`);
      return { image: await mountableTag(repo, earlier), label: source };
    }
  }
  if (!/^[0-9a-f]{64}([0-9a-f]{64})?$/.test(source) && !source.startsWith('ref/') && !source.startsWith('refs/')) {
    if ((await resolveTag(repo, source)) !== null || source.startsWith('@')) return { image: await mountableTag(repo, source), label: source };
  }
  const name = source.startsWith('ref/') ? `refs/${source.slice(4)}` : source;
  try {
    return { image: await repo.openImage(name), label: source };
  } catch (e) {
    if (e instanceof CfsError && e.code === 'ENOENT') {
      throw new CfsError('ENOENT', `image '${source}' not found in repository ${repo.path} (not a tag, image id or ref; see 'cfs oci images')`);
    }
    throw e;
  }
}
