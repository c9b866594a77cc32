/**
 * Resolving a `containers-storage:` reference to what an OCI layout would give: the manifest
 * and config bytes (verified against their digests) and the layer chain in config diff_id
 * order, each layer with the store that holds its files.
 *
 * Lookup, in each store (image store, graph root, additional stores):
 *   - `@ID`/ID/`sha256:ID`: the image with that ID; an ID prefix (≥ 3 hex) must be unique;
 *   - `NAME@DIGEST`: an image of that repository whose manifest digests include DIGEST;
 *     `@DIGEST` alone: the first image with that manifest digest;
 *   - NAME: the exact string as given, then the normalised name (`docker.io/library/x:latest`),
 *     then for short names `localhost/x:latest` (podman's local builds), then a unique stored
 *     name ending in `/x:tag`.
 * The manifest is the `manifest-<digest>` item for a digest reference, else `manifest` (the
 * per-platform one containers/image stores); the config is the item named by the config digest.
 */
import { createHash } from 'node:crypto';
import { readFile } from 'node:fs/promises';
import { CfsError, errnoCode } from '../../errors.js';
import { isIndexMediaType } from '../media-types.js';
import { parsePlatform, platformMatches, type Platform } from '../platform.js';
import { parseConfig, parseManifest, parseJson } from '../source.js';
import { applyStoreSpec, loadStorageConfig, type ConfigContext, type StorageConfig } from './config.js';
import type { LockOptions } from './lock.js';
import { formatStorageReference, parseStorageReference, type StorageReference } from './reference.js';
import { openStores, type ContainersStore, type ImageRecord, type LayerRecord } from './store.js';

export interface StorageLayer {
  layerId: string;
  diffId: string;
  /** From layers.json `diff-size`, when recorded. */
  uncompressedSize: number | null;
  /** The store holding the layer's files and tar-split (pass to layerTarStream/layerSegments). */
  store: ContainersStore;
}

export interface StorageImage {
  /** The reference in canonical containers/image syntax. */
  reference: string;
  imageId: string;
  names: string[];
  store: ContainersStore;
  manifestBytes: Buffer;
  manifestDigest: string;
  configBytes: Buffer;
  configDigest: string;
  /** Bottom layer first, matching config rootfs.diff_ids. */
  layers: StorageLayer[];
}

export interface OpenStorageOptions extends LockOptions {
  /**
   * `os/arch[/variant]`: of several images recorded under one manifest-list digest (podman keeps
   * one per platform pulled), the one of this platform; the first one when none matches.
   */
  platform?: string;
  /** Environment, uid and home for storage.conf discovery (default: this process). */
  context?: Partial<ConfigContext>;
  /** Use this configuration instead of reading storage.conf. */
  config?: StorageConfig;
}

const MAX_JSON = 4 * 1024 * 1024;

function sha256(b: Buffer): string {
  return `sha256:${createHash('sha256').update(b).digest('hex')}`;
}

/** Manifest digests an image can be found by (containers/storage recomputeDigests). */
function imageDigests(img: ImageRecord): string[] {
  const out = new Set<string>();
  if (img.digest) out.add(img.digest);
  for (const [k, d] of Object.entries(img.bigDataDigests)) if (k.startsWith('manifest')) out.add(d);
  return [...out];
}

function repoOf(name: string): string {
  const at = name.indexOf('@');
  const base = at >= 0 ? name.slice(0, at) : name;
  const colon = base.lastIndexOf(':');
  return colon > base.lastIndexOf('/') ? base.slice(0, colon) : base;
}

interface Found {
  store: ContainersStore;
  image: ImageRecord;
  /** Further images of the same manifest-list digest (one per platform), in store order. */
  others?: ImageRecord[];
}

function nameCandidates(ref: StorageReference): string[] {
  const out: string[] = [];
  if (ref.given && ref.digest === null) out.push(ref.given);
  if (ref.name && ref.digest === null) out.push(ref.name);
  if (ref.shortName && ref.repository && ref.tag && ref.given) {
    const path = ref.given.includes(':') ? ref.given.slice(0, ref.given.lastIndexOf(':')) : ref.given;
    out.push(`localhost/${path}:${ref.tag}`);
  }
  return [...new Set(out)];
}

/** A reference that names the image by name alone (not by digest or ID). */
function byNameOnly(ref: StorageReference): boolean {
  return ref.name !== null && !ref.digest && !ref.id && !ref.idPrefix;
}

/**
 * The default tag of a pull of `reference`, whose image `described` (StorageImage.reference)
 * names as the store does: that, for a reference by name (`x`, `localhost/x` and
 * `localhost/x:latest` are one tag); a reference by digest or ID is kept as given.
 */
export function defaultStorageTag(reference: string, described: string): string {
  return byNameOnly(parseStorageReference(reference)) ? described : reference;
}

/**
 * The tags a pull of `reference` may have given the image by default (defaultStorageTag): the
 * reference itself, and its name spelled each way the store may have recorded it.
 */
export function defaultTagCandidates(reference: string): string[] {
  const ref = parseStorageReference(reference);
  const out = [reference.startsWith('containers-storage:') ? reference : `containers-storage:${reference}`];
  if (byNameOnly(ref)) for (const n of nameCandidates(ref)) out.push(formatStorageReference({ ...ref, name: n }));
  return [...new Set(out)];
}

function findInStore(store: ContainersStore, images: ImageRecord[], ref: StorageReference, text: string): Found | null {
  const hit = (image: ImageRecord): Found => ({ store, image });
  if (ref.id) {
    const img = images.find((i) => i.id === ref.id);
    if (!img) return null;
    if (ref.repository && !img.names.some((n) => repoOf(n) === ref.repository)) return null;
    return hit(img);
  }
  if (ref.digest) {
    // A short name as given, without its tag (`x:1@sha256:…` is localhost/x's).
    const givenRepo = ref.given?.replace(/:[^/]*$/, '') ?? null;
    const matches = images.filter(
      (i) => imageDigests(i).includes(ref.digest!) && (ref.repository === null || i.names.some((n) => repoOf(n) === ref.repository || repoOf(n) === `localhost/${givenRepo}`)),
    );
    return matches[0] ? { store, image: matches[0], others: matches.slice(1) } : null;
  }
  // NAME@ID-PREFIX: the named image, and only if its ID starts so (a bare hex string is a name or a prefix).
  const prefixOfName = ref.idPrefixOfName && ref.given !== null ? ref.idPrefix : null;
  for (const c of nameCandidates(ref)) {
    const img = images.find((i) => i.names.includes(c));
    if (img) return prefixOfName === null || img.id.startsWith(prefixOfName) ? hit(img) : null;
  }
  if (ref.idPrefix && prefixOfName === null) {
    const byPrefix = images.filter((i) => i.id.startsWith(ref.idPrefix!));
    if (byPrefix.length > 1) throw new CfsError('EINVAL', `${text}: ID prefix "${ref.idPrefix}" matches ${byPrefix.length} images in ${store.description}`);
    if (byPrefix[0]) return hit(byPrefix[0]);
  }
  if (ref.shortName && ref.given && ref.tag) {
    const path = ref.given.includes(':') ? ref.given.slice(0, ref.given.lastIndexOf(':')) : ref.given;
    const suffix = `/${path}:${ref.tag}`;
    const bySuffix = images.filter((i) => i.names.some((n) => n.endsWith(suffix)));
    if (bySuffix.length > 1) {
      const names = bySuffix.flatMap((i) => i.names.filter((n) => n.endsWith(suffix)));
      throw new CfsError('EINVAL', `${text}: short name matches several images: ${names.join(', ')}`);
    }
    if (bySuffix[0]) return prefixOfName === null || bySuffix[0].id.startsWith(prefixOfName) ? hit(bySuffix[0]) : null;
  }
  return null;
}

/** Names a not-found message lists when none is similar to what was asked for. */
const MAX_LISTED_NAMES = 10;

/** Stored names closest to what was asked for, for the not-found message. */
function similarNames(all: string[], ref: StorageReference): string[] {
  const want = (ref.given ?? ref.id ?? ref.idPrefix ?? ref.digest ?? '').toLowerCase();
  // The last path component without tag or digest (a registry's :port comes before it).
  const base = (want.split('/').pop() ?? want).replace(/[:@].*$/, '');
  const score = (n: string): number => {
    const repo = repoOf(n).toLowerCase();
    const last = repo.split('/').pop() ?? repo;
    if (last === base) return 0;
    if (last.includes(base) || base.includes(last)) return 1;
    return 2 + editDistance(last, base);
  };
  return [...new Set(all)]
    .map((n) => ({ n, s: score(n) }))
    .filter((x) => x.s <= 1 || x.s - 2 <= Math.max(2, base.length >> 1))
    .sort((a, b) => a.s - b.s || (a.n < b.n ? -1 : 1))
    .slice(0, 5)
    .map((x) => x.n);
}

function editDistance(a: string, b: string): number {
  let prev = Array.from({ length: b.length + 1 }, (_, j) => j);
  for (let i = 1; i <= a.length; i++) {
    const cur = [i];
    for (let j = 1; j <= b.length; j++) cur[j] = Math.min(prev[j]! + 1, cur[j - 1]! + 1, prev[j - 1]! + (a[i - 1] === b[j - 1] ? 0 : 1));
    prev = cur;
  }
  return prev[b.length]!;
}

async function readBigData(store: ContainersStore, image: ImageRecord, key: string): Promise<Buffer | null> {
  const file = store.bigDataPath(image.id, key);
  try {
    const b = await readFile(file);
    if (b.length > MAX_JSON) throw new CfsError('EFBIG', `${file}: larger than ${MAX_JSON} bytes`);
    return b;
  } catch (e) {
    if (errnoCode(e) === 'ENOENT') return null;
    if (e instanceof CfsError) throw e;
    throw new CfsError('EIO', `${file}: cannot read: ${(e as Error).message}`);
  }
}

/** Checks a big-data item against the digest images.json recorded for it. */
function checkRecorded(store: ContainersStore, image: ImageRecord, key: string, bytes: Buffer): string {
  const digest = sha256(bytes);
  const recorded = image.bigDataDigests[key];
  if (recorded && recorded.startsWith('sha256:') && recorded !== digest) {
    throw new CfsError('EDIGEST', `${store.description}: image ${image.id}: "${key}" has digest ${digest}, images.json records ${recorded}`);
  }
  return digest;
}

async function readManifest(store: ContainersStore, image: ImageRecord, ref: StorageReference): Promise<{ bytes: Buffer; digest: string }> {
  const where = `${store.description}: image ${image.id}`;
  if (ref.digest) {
    const key = `manifest-${ref.digest}`;
    const bytes = await readBigData(store, image, key);
    if (bytes) {
      const digest = checkRecorded(store, image, key, bytes);
      const o = parseJson(bytes, `${where}: ${key}`) as { mediaType?: unknown; manifests?: unknown };
      // A manifest list digest selects the image; its per-platform manifest is `manifest`.
      const isList = (typeof o.mediaType === 'string' && isIndexMediaType(o.mediaType)) || (o.mediaType === undefined && Array.isArray(o.manifests));
      if (!isList) return { bytes, digest };
    }
  }
  const bytes = await readBigData(store, image, 'manifest');
  if (!bytes) throw new CfsError('ECORRUPT', `${where}: no manifest (${store.bigDataPath(image.id, 'manifest')} is missing)`);
  return { bytes, digest: checkRecorded(store, image, 'manifest', bytes) };
}

/** The image's layers from the top layer down through `parent`, returned bottom first. */
function layerChain(image: ImageRecord, stores: Array<{ store: ContainersStore; layers: Map<string, LayerRecord> }>, where: string): Array<{ rec: LayerRecord; store: ContainersStore }> {
  const chain: Array<{ rec: LayerRecord; store: ContainersStore }> = [];
  const seen = new Set<string>();
  for (let id = image.topLayer; id; ) {
    if (seen.has(id)) throw new CfsError('ECORRUPT', `${where}: layer ${id} is its own ancestor`);
    seen.add(id);
    const found = stores.find((s) => s.layers.has(id!));
    if (!found) throw new CfsError('ECORRUPT', `${where}: layer ${id} is missing from every layers.json`);
    const rec = found.layers.get(id)!;
    chain.push({ rec, store: found.store });
    id = rec.parent;
  }
  return chain.reverse();
}

/** An image's manifest and config (checked against its digest), read under the images lock. */
async function loadImageData(
  store: ContainersStore, image: ImageRecord, ref: StorageReference, where: string,
): Promise<{ manifest: { bytes: Buffer; digest: string }; configBytes: Buffer; configDigest: string }> {
  // Big data is read under images.lock so a concurrent removal cannot tear it.
  const imgLock = await store.lockImages();
  let manifest: { bytes: Buffer; digest: string };
  let configBytes: Buffer;
  let configDigest: string;
  try {
    manifest = await readManifest(store, image, ref);
    const m = parseManifest(manifest.bytes, `${where}: manifest`);
    configDigest = m.config.digest;
    const cb = await readBigData(store, image, configDigest);
    if (!cb) throw new CfsError('ECORRUPT', `${where}: config ${configDigest} is missing (${store.bigDataPath(image.id, configDigest)})`);
    configBytes = cb;
  } finally {
    imgLock.release();
  }
  if (sha256(configBytes) !== configDigest) throw new CfsError('EDIGEST', `${where}: config does not match its digest ${configDigest}`);
  return { manifest, configBytes, configDigest };
}

/** The platform a config records, if it records one. */
export function configPlatform(configBytes: Buffer): Platform | null {
  let c: { os?: unknown; architecture?: unknown; variant?: unknown };
  try {
    c = JSON.parse(configBytes.toString('utf8')) as typeof c;
  } catch {
    return null;
  }
  if (typeof c.os !== 'string' || typeof c.architecture !== 'string') return null;
  return { os: c.os, architecture: c.architecture, ...(typeof c.variant === 'string' ? { variant: c.variant } : {}) };
}

/** The image's own name a name reference matched by (null when it is the reference's, or there is no name). */
function storedName(image: ImageRecord, ref: StorageReference): string | null {
  if (ref.name === null || ref.digest !== null || image.names.includes(ref.name)) return null;
  const byCandidate = nameCandidates(ref).find((c) => image.names.includes(c));
  if (byCandidate) return byCandidate;
  if (!ref.given || !ref.tag) return null;
  const given = ref.given.includes(':') ? ref.given.slice(0, ref.given.lastIndexOf(':')) : ref.given;
  return image.names.find((n) => n.endsWith(`/${given}:${ref.tag}`)) ?? null;
}

/** Resolves a containers-storage reference (with or without the transport prefix). */
export async function openStorageImage(refIn: string | StorageReference, opts: OpenStorageOptions = {}): Promise<StorageImage> {
  const ref = typeof refIn === 'string' ? parseStorageReference(refIn) : refIn;
  const text = formatStorageReference(ref);
  const cfg = applyStoreSpec(opts.config ?? (await loadStorageConfig(opts.context)), ref.store);
  const lockOptions: LockOptions = { timeoutMs: opts.timeoutMs, onWait: opts.onWait, signal: opts.signal };
  const stores = await openStores(cfg, lockOptions);

  let found: Found | null = null;
  const allNames: string[] = [];
  for (const store of stores) {
    const images = await store.readImages();
    for (const i of images) allNames.push(...i.names);
    found = findInStore(store, images, ref, text);
    if (found) break;
  }
  if (!found) {
    const similar = similarNames(allNames, ref);
    const names = [...new Set(allNames)].sort();
    const shown = names.slice(0, MAX_LISTED_NAMES).join(', ') + (names.length > MAX_LISTED_NAMES ? `, … (${names.length} names)` : '');
    const other = stores.map((s) => ({ s, drivers: s.otherDrivers() })).find((x) => x.drivers.length > 0);
    const wrongDriver = other ? `; ${other.s.root} holds ${other.drivers.map((d) => `${d}-images`).join(', ')}, not ${other.s.driver}-images: name the driver, e.g. [${other.drivers[0]}@${other.s.root}]` : '';
    const hint = similar.length ? `; similar: ${similar.join(', ')}` : names.length ? `; none is similar; the store has ${shown}` : wrongDriver || ' (the store has no named images)';
    throw new CfsError('ENOENT', `${text}: no such image in ${stores.map((s) => s.description).join(', ')}${hint}`, { missingImage: text });
  }
  const { store } = found;
  // Messages name the image as the store does (`x` is found as localhost/x:latest, not docker.io/library/x).
  const stored = storedName(found.image, ref);
  const shownRef = stored ? formatStorageReference({ ...ref, name: stored }) : text;
  let image = found.image;
  let loaded = await loadImageData(store, image, ref, `${shownRef}: image ${image.id}`);
  // One manifest-list digest, several platforms' images: the one --platform names.
  if (opts.platform !== undefined && found.others?.length) {
    const want = parsePlatform(opts.platform);
    for (const candidate of [image, ...found.others]) {
      const data = candidate === image ? loaded : await loadImageData(store, candidate, ref, `${shownRef}: image ${candidate.id}`);
      const have = configPlatform(data.configBytes);
      if (have && platformMatches(want, have)) {
        image = candidate;
        loaded = data;
        break;
      }
    }
  }
  const where = `${shownRef}: image ${image.id}`;
  const { manifest, configBytes, configDigest } = loaded;
  const diffIds = parseConfig(configBytes, `${where}: config`, true).rootfs?.diff_ids ?? [];

  const layerMaps = [];
  for (const s of [store, ...stores.filter((x) => x !== store)]) layerMaps.push({ store: s, layers: await s.readLayers() });
  const chain = layerChain(image, layerMaps, where);
  if (chain.length !== diffIds.length) {
    throw new CfsError('ECORRUPT', `${where}: layer count mismatch: the store has ${chain.length} layers, the config lists ${diffIds.length} diff_ids`);
  }
  const layers = chain.map(({ rec, store: s }, i): StorageLayer => {
    if (rec.incomplete) throw new CfsError('ECORRUPT', `${where}: layer ${rec.id} is incomplete (being created or deleted)`);
    // A layer podman stored without its uncompressed digest (a partial zstd:chunked pull knows
    // only its TOC digest) is taken for the config's diff_id, which the import checks the rebuilt
    // tar against; a recorded digest must be that one.
    if (rec.diffDigest && rec.diffDigest !== diffIds[i]) {
      throw new CfsError('ECORRUPT', `${where}: layer ${i} (${rec.id}) has diff-digest ${rec.diffDigest}, the config says ${diffIds[i]}`);
    }
    return { layerId: rec.id, diffId: diffIds[i]!, uncompressedSize: rec.diffSize, store: s };
  });
  return {
    reference: shownRef,
    imageId: image.id,
    names: image.names,
    store,
    manifestBytes: manifest.bytes,
    manifestDigest: manifest.digest,
    configBytes,
    configDigest,
    layers,
  };
}
