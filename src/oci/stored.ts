/**
 * OCI images as stored in a repository (brief 2.8, 3.14, 3.15): manifest and config split
 * streams with named refs, tags under `streams/refs/oci/<encoded name>`, and the composefs
 * image recorded in the config stream's named refs.
 */
import { CfsError, isCfsError } from '../errors.js';
import type { Repository } from '../repository/repository.js';
import { readExternalSplitStream } from '../splitstream/reader.js';
import { isImageConfigMediaType } from './media-types.js';
import { parseConfig, parseManifest, type ImageConfig, type ImageManifest } from './source.js';

export const TAG_REF_DIR = 'oci';
export const IMAGE_REF_V1 = 'composefs.image.v1';
export const IMAGE_REF_V2 = 'composefs.image';
const BOOT_REF_PREFIX = 'composefs.image.boot';

export function manifestContentId(digest: string): string {
  return `oci-manifest-${digest}`;
}
export function configContentId(digest: string): string {
  return `oci-config-${digest}`;
}

/** The longest file name (the encoded tag is one). */
const NAME_MAX = 255;

/**
 * Tag names are stored as one path component: '%' → %25 first, then '/' → %2F. A name that
 * cannot be one, or that would break line-based listings (control characters), is refused.
 */
export function encodeTag(name: string): string {
  if (name.length === 0) throw new CfsError('EINVAL', 'empty image name');
  if (name.startsWith('@')) throw new CfsError('EINVAL', `invalid image name '${name}': a leading '@' is reserved for digests`);
  if (/[\x00-\x1f\x7f]/.test(name)) throw new CfsError('EINVAL', `invalid image name ${JSON.stringify(name)}: control characters are not allowed`);
  if (name === '.' || name === '..') throw new CfsError('EINVAL', `invalid image name '${name}'`);
  const encoded = name.replace(/%/g, '%25').replace(/\//g, '%2F');
  if (Buffer.byteLength(encoded) > NAME_MAX) throw new CfsError('EINVAL', `invalid image name '${name.slice(0, 40)}…': longer than ${NAME_MAX} bytes once '/' and '%' are escaped`);
  return encoded;
}

export function decodeTag(enc: string): string {
  return enc.replace(/%2F|%25/g, (m) => (m === '%2F' ? '/' : '%'));
}

export interface StoredImage {
  name: string | null;
  manifestDigest: string;
  manifestBytes: Buffer;
  manifest: ImageManifest;
  configDigest: string;
  configBytes: Buffer;
  config: ImageConfig;
  /** Layer stream object ids by diff_id. */
  layerStreams: Map<string, Buffer>;
  /** Layer ids in application order (config diff_ids, or blob digests for artifacts). */
  diffIds: string[];
  /** Hex id of the composefs image for the repository's format, when recorded. */
  imageId: string | null;
  /** Boot images recorded for it (prepare-boot, varlink Pull bootable): config named ref → hex id. */
  bootImages: Record<string, string>;
  artifact: boolean;
}

function isDigest(s: string): boolean {
  return /^sha(256|384|512):[0-9a-f]+$/.test(s);
}

/** Manifest digest of a tag, or null. */
export async function resolveTag(repo: Repository, name: string): Promise<string | null> {
  const target = await repo.readRef('streams', `${TAG_REF_DIR}/${encodeTag(name)}`);
  if (target === null) return null;
  if (!target.startsWith('oci-manifest-')) throw new CfsError('ECORRUPT', `tag '${name}' points at '${target}', not a manifest stream`);
  return target.slice('oci-manifest-'.length);
}

/**
 * Tag as `name` the image `image` names: a manifest digest, a tag it has or a short id (as
 * `cfs oci tag IMAGE NAME`, whose arguments come in the other order).
 */
export async function tagImage(repo: Repository, name: string, image: string): Promise<void> {
  const { manifestDigest } = await resolveImageName(repo, image, repo.erofsFormats.default);
  if (!(await repo.hasStream(manifestContentId(manifestDigest)))) {
    throw new CfsError('ENOENT', `manifest ${manifestDigest} is not in repository ${repo.path}`);
  }
  try {
    await repo.setRef('streams', `${TAG_REF_DIR}/${encodeTag(name)}`, manifestContentId(manifestDigest));
  } catch (e) {
    if (isCfsError(e)) throw e;
    // Node's text names the symlink's target and temporary path, not the tag.
    throw new CfsError('EIO', `cannot tag ${manifestDigest} as '${name}' in repository ${repo.path}: ${(e as NodeJS.ErrnoException).code ?? (e as Error).message}`);
  }
}

export async function untagImage(repo: Repository, name: string): Promise<void> {
  const ref = `${TAG_REF_DIR}/${encodeTag(name)}`;
  if ((await repo.readRef('streams', ref)) === null) throw new CfsError('ENOENT', `image '${name}' not found in repository ${repo.path}`);
  await repo.removeRef('streams', ref);
}

export async function listTags(repo: Repository): Promise<Array<{ name: string; manifestDigest: string }>> {
  const prefix = `${TAG_REF_DIR}/`;
  const out: Array<{ name: string; manifestDigest: string }> = [];
  for (const { name, contentId } of await repo.listStreamRefs()) {
    if (!name.startsWith(prefix) || !contentId.startsWith('oci-manifest-')) continue;
    out.push({ name: decodeTag(name.slice(prefix.length)), manifestDigest: contentId.slice('oci-manifest-'.length) });
  }
  return out.sort((a, b) => (a.name < b.name ? -1 : a.name > b.name ? 1 : 0));
}

/**
 * The manifest of a short id, as `cfs oci images` shows them (at least 6 hex digits, `sha256:`
 * optional): the one manifest digest starting with it, else the one image whose composefs image
 * id does. Null when none does; an ambiguous prefix is an error listing the candidates.
 */
async function shortIdManifest(repo: Repository, id: string, erofsVersion: number): Promise<string | null> {
  const m = /^(?:(sha256|sha384|sha512):)?([0-9a-f]{6,})$/.exec(id);
  if (!m) return null;
  const [, alg, hex] = m;
  const manifests = (await repo.listStreams()).filter((s) => s.startsWith('oci-manifest-')).map((s) => s.slice('oci-manifest-'.length));
  // Without an algorithm, the hex after any (`oci images` shows it so for every algorithm).
  const byDigest = manifests.filter((d) => (alg === undefined ? d.slice(d.indexOf(':') + 1) : d).startsWith(alg === undefined ? hex! : `${alg}:${hex}`));
  if (byDigest.length > 0 || alg !== undefined) return uniqueMatch(byDigest, id, 'manifest digest');
  const byImageId: string[] = [];
  for (const d of manifests) {
    // A manifest the repository cannot read has no image id to match; `cfs fsck` reports it.
    const img = await openStoredImage(repo, `@${d}`, erofsVersion).catch(() => null);
    if (img?.imageId?.startsWith(hex)) byImageId.push(d);
  }
  return uniqueMatch(byImageId, id, 'image id');
}

/** The one match of a short id; null for none; more is an error (context `ambiguous`: how many). */
export function uniqueMatch(hits: string[], id: string, what: string): string | null {
  if (hits.length > 1) throw new CfsError('EINVAL', `${what} prefix '${id}' is ambiguous: it starts ${hits.map((h) => h.slice(0, 19)).join(', ')}… (give more digits)`, { ambiguous: hits.length });
  return hits[0] ?? null;
}

/** Image ref name for the repository's EROFS format. */
export function imageRefName(erofsVersion: number): string {
  return erofsVersion === 2 ? IMAGE_REF_V2 : IMAGE_REF_V1;
}

/**
 * The manifest digest an image name means: `@sha256:…` or `sha256:…` (a manifest digest), a tag,
 * or a short id as `cfs oci images` shows it (manifest digest or composefs image id prefix).
 * `tagged` says whether it was a tag.
 */
export async function resolveImageName(repo: Repository, nameOrDigest: string, erofsVersion = 1): Promise<{ manifestDigest: string; tagged: boolean }> {
  const bare = nameOrDigest.startsWith('@') ? nameOrDigest.slice(1) : nameOrDigest;
  if (isDigest(bare) && (nameOrDigest.startsWith('@') || (await repo.hasStream(manifestContentId(bare))))) return { manifestDigest: bare, tagged: false };
  // Tags first (a tag may look like hex), then a short id.
  const tag = await resolveTag(repo, nameOrDigest);
  if (tag !== null) return { manifestDigest: tag, tagged: true };
  const short = await shortIdManifest(repo, nameOrDigest, erofsVersion);
  if (short !== null) return { manifestDigest: short, tagged: false };
  throw new CfsError('ENOENT', `image '${nameOrDigest}' not found in repository ${repo.path} (not a tag, manifest digest or image id; see 'cfs oci images')`);
}

/** Open an image by tag, `sha256:` manifest digest, `@sha256:` manifest digest, or short id. */
export async function openStoredImage(repo: Repository, nameOrDigest: string, erofsVersion = 1): Promise<StoredImage> {
  const { manifestDigest, tagged } = await resolveImageName(repo, nameOrDigest, erofsVersion);
  const name = tagged ? nameOrDigest : null;
  const manifestStream = await repo.hasStream(manifestContentId(manifestDigest));
  if (!manifestStream) throw new CfsError('ENOENT', `manifest ${manifestDigest} not found in repository ${repo.path}`);
  const m = await readExternalSplitStream(repo, manifestStream, { name: manifestContentId(manifestDigest) });
  const manifest = parseManifest(m.data, `manifest ${manifestDigest}`);
  const configDigest = manifest.config.digest;
  const configStream = m.namedRefs.get(`config:${configDigest}`) ?? (await repo.hasStream(configContentId(configDigest)));
  if (!configStream) throw new CfsError('ECORRUPT', `manifest ${manifestDigest}: config stream ${configDigest} is missing`);
  const c = await readExternalSplitStream(repo, configStream, { name: configContentId(configDigest) });
  const artifact = !isImageConfigMediaType(manifest.config.mediaType);
  const config = parseConfig(c.data, `config ${configDigest}`, !artifact);
  const diffIds = artifact ? manifest.layers.map((l) => l.digest) : (config.rootfs?.diff_ids ?? []);
  const layerStreams = new Map<string, Buffer>();
  const bootImages: Record<string, string> = {};
  for (const [k, v] of c.namedRefs) {
    if (k.startsWith(BOOT_REF_PREFIX)) bootImages[k] = v.toString('hex');
    if (k === IMAGE_REF_V1 || k === IMAGE_REF_V2 || k.startsWith(BOOT_REF_PREFIX)) continue;
    layerStreams.set(k, v);
  }
  if (artifact) for (const [k, v] of m.namedRefs) if (!k.startsWith('config:')) layerStreams.set(k, v);
  const imageObj = c.namedRefs.get(imageRefName(erofsVersion)) ?? null;
  return {
    name,
    manifestDigest,
    manifestBytes: m.data,
    manifest,
    configDigest,
    configBytes: c.data,
    config,
    layerStreams,
    diffIds,
    imageId: imageObj ? imageObj.toString('hex') : null,
    bootImages,
    artifact,
  };
}
