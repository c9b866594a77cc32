/**
 * Resolving an image in an OCI source: index.json → (tag) → manifest or nested index / Docker
 * manifest list → the manifest for the wanted platform → config. Every JSON blob read here is
 * checked against its descriptor (size and digest).
 */
import { createHash } from 'node:crypto';
import { CfsError } from '../errors.js';
import { OciArchive } from './archive.js';
import { OciLayout } from './layout.js';
import {
  REF_NAME_ANNOTATION,
  isImageConfigMediaType,
  isIndexMediaType,
  isManifestMediaType,
} from './media-types.js';
import { formatPlatform, hostPlatform, parsePlatform, platformMatches, type Platform } from './platform.js';
import {
  MAX_JSON_BLOB,
  parseConfig,
  parseDigest,
  parseIndex,
  parseJson,
  parseManifest,
  type Descriptor,
  type ImageConfig,
  type ImageIndex,
  type ImageManifest,
  type OciRead,
} from './source.js';

export interface ResolvedImage {
  manifestDigest: string;
  manifestBytes: Buffer;
  manifest: ImageManifest;
  configDigest: string;
  configBytes: Buffer;
  config: ImageConfig;
  layers: Descriptor[];
  /** rootfs.diff_ids for images; the layer blob digests for artifacts. */
  diffIds: string[];
  /** The config is not an OCI/Docker image config: layers are opaque blobs, not tars. */
  artifact: boolean;
  /** The only image, of another platform than the one wanted (taken all the same): that platform. */
  otherPlatform: string | null;
}

export interface ResolveOptions {
  /** `os/arch[/variant]`; default: the running machine. */
  platform?: string;
}

export async function openOciSource(ref: { transport: 'oci' | 'oci-archive'; path: string }): Promise<OciRead> {
  return ref.transport === 'oci' ? OciLayout.open(ref.path) : OciArchive.open(ref.path);
}

/** Tags (ref.name annotations) of index.json, in index order. */
export function listTags(index: ImageIndex): string[] {
  const tags: string[] = [];
  for (const d of index.manifests) {
    const t = d.annotations?.[REF_NAME_ANNOTATION];
    if (t !== undefined && !tags.includes(t)) tags.push(t);
  }
  return tags;
}

/** Reads a small blob and checks it against its descriptor's size and digest. */
export async function readVerifiedBlob(src: OciRead, desc: Descriptor, what: string): Promise<Buffer> {
  const where = `${src.description}: ${what} ${desc.digest}`;
  const { algorithm, hex } = parseDigest(desc.digest, where);
  if (desc.size > MAX_JSON_BLOB) throw new CfsError('EFBIG', `${where}: descriptor size ${desc.size} exceeds ${MAX_JSON_BLOB}`);
  const size = await src.blobSize(desc.digest);
  if (size !== desc.size) throw new CfsError('EDIGEST', `${where}: blob has ${size} bytes, descriptor says ${desc.size}`);
  const bytes = await src.readBlob(desc.digest);
  const actual = createHash(algorithm).update(bytes).digest('hex');
  if (actual !== hex) throw new CfsError('EDIGEST', `${where}: content digest is ${algorithm}:${actual}`);
  return bytes;
}

interface Candidate {
  desc: Descriptor;
  /** Platform from the descriptor, else from the config; null when neither says. */
  platform: Platform | null;
}

/** One resolve call's verified-blob cache: sniffing and platform checks read blobs early. */
class BlobCache {
  private readonly blobs = new Map<string, Buffer>();
  constructor(readonly src: OciRead) {}
  async get(desc: Descriptor, what: string): Promise<Buffer> {
    let b = this.blobs.get(desc.digest);
    if (!b) {
      b = await readVerifiedBlob(this.src, desc, what);
      this.blobs.set(desc.digest, b);
    }
    return b;
  }
  /** Media type from the descriptor, else from the document itself (old layouts omit it). */
  async mediaType(desc: Descriptor): Promise<string> {
    if (desc.mediaType !== '') return desc.mediaType;
    const doc = parseJson(await this.get(desc, 'manifest'), `${this.src.description}: blob ${desc.digest}`);
    if (typeof doc !== 'object' || doc === null) return '';
    const o = doc as Record<string, unknown>;
    if (typeof o['mediaType'] === 'string') return o['mediaType'];
    if (Array.isArray(o['manifests'])) return 'application/vnd.oci.image.index.v1+json';
    if (o['config'] !== undefined) return 'application/vnd.oci.image.manifest.v1+json';
    return '';
  }
}

async function manifestCandidates(cache: BlobCache, top: Descriptor[]): Promise<Descriptor[]> {
  const d = cache.src.description;
  const out: Descriptor[] = [];
  for (const desc of top) {
    const mt = await cache.mediaType(desc);
    if (isManifestMediaType(mt)) {
      out.push(desc);
    } else if (isIndexMediaType(mt)) {
      const idx = parseIndex(await cache.get(desc, 'image index'), `${d}: image index ${desc.digest}`);
      for (const m of idx.manifests) {
        const inner = await cache.mediaType(m);
        if (isIndexMediaType(inner)) throw new CfsError('EINVAL', `${d}: image index ${desc.digest}: nested image indexes are not supported`);
        if (!isManifestMediaType(inner)) throw new CfsError('EINVAL', `${d}: image index ${desc.digest}: unexpected media type "${inner}" for ${m.digest}`);
        out.push(m);
      }
    } else {
      throw new CfsError('EINVAL', `${d}: index.json: unexpected media type "${mt}" for ${desc.digest}`);
    }
  }
  return out;
}

async function candidatePlatform(cache: BlobCache, desc: Descriptor): Promise<Platform | null> {
  if (desc.platform) return desc.platform;
  const where = `${cache.src.description}: manifest ${desc.digest}`;
  const manifest = parseManifest(await cache.get(desc, 'manifest'), where);
  if (!isImageConfigMediaType(manifest.config.mediaType)) return null;
  const config = parseConfig(await cache.get(manifest.config, 'config'), `${cache.src.description}: config ${manifest.config.digest}`, true);
  if (!config.os || !config.architecture) return null;
  const p: Platform = { os: config.os, architecture: config.architecture };
  if (config.variant) p.variant = config.variant;
  return p;
}

async function topDescriptors(src: OciRead, index: ImageIndex, tag: string | null): Promise<Descriptor[]> {
  const tags = listTags(index);
  const tagList = tags.length ? tags.map((t) => JSON.stringify(t)).join(', ') : '(none)';
  if (tag !== null) {
    const top = index.manifests.filter((m) => m.annotations?.[REF_NAME_ANNOTATION] === tag);
    if (top.length === 0) throw new CfsError('ENOENT', `${src.description}: tag "${tag}" not found; available tags: ${tagList}`, { missingImage: tag });
    return top;
  }
  if (index.manifests.length === 0) throw new CfsError('ENOENT', `${src.description}: index.json lists no manifests`);
  // Untagged: the only entry, or a set of untagged per-platform manifests; several tagged
  // images need the user to choose.
  if (index.manifests.length > 1 && tags.length > 0) {
    throw new CfsError('EINVAL', `${src.description}: holds ${index.manifests.length} images; name one with :TAG; available tags: ${tagList}`);
  }
  return index.manifests;
}

export async function resolveImage(src: OciRead, tag: string | null, opts: ResolveOptions = {}): Promise<ResolvedImage> {
  const want = opts.platform !== undefined ? parsePlatform(opts.platform) : hostPlatform();
  const cache = new BlobCache(src);
  const top = await topDescriptors(src, await src.readIndex(), tag);
  // Per top-level entry (an image, or an image index), its manifests with their platforms.
  const perEntry: Candidate[][] = [];
  for (const entry of top) {
    const list: Candidate[] = [];
    for (const desc of await manifestCandidates(cache, [entry])) list.push({ desc, platform: await candidatePlatform(cache, desc) });
    perEntry.push(list);
  }
  const candidates = perEntry.flat();
  let chosen: Candidate | undefined;
  // A single image is taken whatever its platform (as skopeo does: one may import, say, an
  // arm64 image on amd64), unless a platform was asked for.
  if (candidates.length === 1 && (opts.platform === undefined || candidates[0]!.platform === null)) chosen = candidates[0];
  else {
    // The first match of each entry: within an image index, order decides (as for any
    // registry client); between separate untagged images, nothing does.
    const matches = perEntry.map((list) => list.find((c) => c.platform !== null && platformMatches(want, c.platform))).filter((c): c is Candidate => c !== undefined);
    if (matches.length > 1) {
      throw new CfsError('EINVAL', `${src.description}: holds ${matches.length} untagged images for platform ${formatPlatform(want)} (${matches.map((c) => c.desc.digest.slice(0, 19)).join(', ')}); cannot tell which to import (tag one in index.json)`);
    }
    chosen = matches[0];
  }
  if (!chosen) {
    const avail = candidates.map((c) => (c.platform ? formatPlatform(c.platform) : '(no platform info)'));
    throw new CfsError('EPLATFORM', `${src.description}: no manifest for platform ${formatPlatform(want)}; available: ${[...new Set(avail)].join(', ')}`);
  }
  const other = chosen.platform !== null && !platformMatches(want, chosen.platform) ? formatPlatform(chosen.platform) : null;
  return { ...(await loadManifest(cache, chosen.desc)), otherPlatform: other };
}

async function loadManifest(cache: BlobCache, desc: Descriptor): Promise<Omit<ResolvedImage, 'otherPlatform'>> {
  const d = cache.src.description;
  const manifestBytes = await cache.get(desc, 'manifest');
  const manifest = parseManifest(manifestBytes, `${d}: manifest ${desc.digest}`);
  const configBytes = await cache.get(manifest.config, 'config');
  const artifact = !isImageConfigMediaType(manifest.config.mediaType);
  // An artifact's config can be any blob; only image configs are parsed.
  const config = artifact ? {} : parseConfig(configBytes, `${d}: config ${manifest.config.digest}`, true);
  const diffIds = artifact ? manifest.layers.map((l) => l.digest) : config.rootfs!.diff_ids;
  if (diffIds.length !== manifest.layers.length) {
    throw new CfsError('ECORRUPT', `${d}: config ${manifest.config.digest} lists ${diffIds.length} diff_ids but manifest ${desc.digest} has ${manifest.layers.length} layers`);
  }
  return {
    manifestDigest: desc.digest,
    manifestBytes,
    manifest,
    configDigest: manifest.config.digest,
    configBytes,
    config,
    layers: manifest.layers,
    diffIds,
    artifact,
  };
}
