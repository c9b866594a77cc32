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
  /** Imports a transport reference into the repository; returns the composefs image id. */
  pull: (reference: string) => Promise<string | null>;
  /** Told when a reference its source no longer has is mounted from an earlier import. */
  note?: (text: string) => void;
}

/** The composefs image of a tagged (or `@digest`) OCI image. */
async function mountableTag(repo: Repository, tag: string): Promise<ImageHandle> {
  const { openStoredImage } = await import('../oci/stored.js');
  const img = await openStoredImage(repo, tag, repo.erofsFormats.default);
  if (img.artifact) throw new CfsError('EINVAL', `image '${tag}' is an artifact (config ${img.manifest.config.mediaType}): it has no filesystem to mount`);
  const format = repo.erofsFormats.default;
  if (!img.imageId && format !== 0 && format !== 1) throw new CfsError('ENOTSUP', `image '${tag}': repository ${repo.path} keeps EROFS format ${format} images, which cfs does not read or write (formats 0 and 1)`);
  if (!img.imageId) throw new CfsError('ENOENT', `image '${tag}' has no composefs image for EROFS format ${format}; pull it again`);
  return repo.openImage(img.imageId);
}

/** The tag an earlier pull of `reference` gave its image, if the repository has one. */
async function earlierImport(repo: Repository, reference: string): Promise<string | null> {
  const { resolveTag } = await import('../oci/stored.js');
  const { absoluteReference } = await import('../oci/pull.js');
  let candidates = [absoluteReference(reference)];
  if (reference.startsWith('containers-storage:')) {
    const { defaultTagCandidates } = await import('../oci/containers-storage/image.js');
    candidates = defaultTagCandidates(reference);
  }
  for (const c of candidates) if ((await resolveTag(repo, c)) !== null) return c;
  return null;
}

/** Short ids (as `cfs oci images` shows them, 12 digits): the one image id starting with `prefix`. */
async function uniqueIdPrefix(repo: Repository, prefix: string): Promise<string | null> {
  if (!/^[0-9a-f]{6,}$/.test(prefix)) return null;
  const { uniqueMatch } = await import('../oci/stored.js');
  return uniqueMatch((await repo.listImages()).filter((i) => i.startsWith(prefix)), prefix, 'image id');
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
  if (source.startsWith('@')) return { image: await mountableTag(repo, source), label: source };
  // An image id as create-image prints it (`sha256:<hex>`) is the id.
  const id = source.startsWith(`${repo.alg}:`) ? source.slice(repo.alg.length + 1) : source;
  const isRef = source.startsWith('ref/') || source.startsWith('refs/');
  const byName = !/^[0-9a-f]{64}([0-9a-f]{64})?$/.test(id) && !isRef;
  if (byName && (await resolveTag(repo, source)) !== null) return { image: await mountableTag(repo, source), label: source };
  const name = source.startsWith('ref/') ? `refs/${source.slice(4)}` : id;
  try {
    return { image: await repo.openImage(name), label: source };
  } catch (e) {
    if (!(e instanceof CfsError && e.code === 'ENOENT')) throw e;
    // Names first (a ref may be named in hex), then a short image id, then what the oci
    // commands take: a manifest digest or its short id.
    const full = byName ? await uniqueIdPrefix(repo, id) : null;
    if (full) return { image: await repo.openImage(full), label: source };
    const manifest = isRef ? null : await manifestOf(repo, source);
    if (manifest) return { image: await mountableTag(repo, `@${manifest}`), label: source };
    throw new CfsError('ENOENT', `image '${source}' not found in repository ${repo.path} (not a tag, image id, manifest digest or ref; see 'cfs oci images')`);
  }
}

/** The manifest digest `source` names as the oci commands read it, or null. */
async function manifestOf(repo: Repository, source: string): Promise<string | null> {
  const { resolveImageName } = await import('../oci/stored.js');
  try {
    return (await resolveImageName(repo, source, repo.erofsFormats.default)).manifestDigest;
  } catch (e) {
    if (isCfsError(e) && (e.code === 'ENOENT' || (e.code === 'EINVAL' && e.context['ambiguous'] === undefined))) return null;
    throw e;
  }
}
