/**
 * Importing an image into a repository (brief 3.3, 3.7, 3.14): layers in parallel (largest
 * first, bounded by cores), each verified while streaming; then, in diff_id order, the merged
 * tree, the composefs EROFS image, the config and manifest streams, and finally the tag.
 * Nothing is tagged until every piece is durable, so a failed pull leaves only unreferenced
 * objects (garbage for gc), never a half-visible image.
 */
import os from 'node:os';
import path from 'node:path';
import { access } from 'node:fs/promises';
import { runLayerTasks } from './layer-tasks.js';
import { CfsError, isCfsError } from '../errors.js';
import { fsverityDigest } from '../fsverity/digest.js';
import type { Repository } from '../repository/repository.js';
import { SplitStreamWriter } from '../splitstream/writer.js';
import { CONTENT_TYPES } from '../splitstream/format.js';
import { existingLayer, importTarLayer, layerContentId } from '../tar/split.js';
import { addObjects, noObjects, type ObjectCounts } from '../repository/object-counts.js';
import { consumeLayerStream } from '../splitdirfdstream/consumer.js';
import type { TarEntry } from '../tar/entry.js';
import { NO_PROGRESS, type ProgressSink } from '../progress/events.js';
import { buildImageFromLayers } from './image-build.js';
import { configContentId, imageRefName, manifestContentId, openStoredImage, tagImage } from './stored.js';

/** One layer of an image to import, whatever the source. */
export interface LayerToImport {
  /** diff_id for tar layers; the blob digest for artifact blobs. */
  id: string;
  /** Bytes the source will read (compressed size), for scheduling and progress. */
  size: number | null;
  kind: 'tar' | 'blob';
  /** Uncompressed tar bytes (tar) or raw blob bytes (blob); the importer checks them against `id`. */
  open(progress: (bytesRead: number) => void): AsyncIterable<Uint8Array>;
  /** A failed import of open()'s bytes, said in the source's terms (which file changed, …). */
  explain?(e: unknown): Promise<unknown>;
  /**
   * Tar layers whose member contents are files on this machine (containers-storage): the same
   * tar as a splitdirfdstream naming those files, so contents can be reflinked or hardlinked
   * into objects/. Used instead of open() unless local fetch is disabled.
   */
  openLocal?(): Promise<LocalLayer>;
}

/** A layer as a splitdirfdstream plus the directory fds its file-backed chunks name. */
export interface LocalLayer {
  dirfds: number[];
  chunks: AsyncIterable<Buffer>;
  close(): Promise<void>;
  /** A failure of the import, said in the source's terms (which file changed, …). */
  explain(e: unknown): Promise<unknown>;
}

/**
 * Local fetch (brief 3.12): 'disabled' reads every layer as tar bytes; 'auto' imports layers
 * that offer segments by reflink, else hardlink, else copy; 'zerocopy' requires reflink or
 * hardlink for every stored file.
 */
export type LocalFetch = 'disabled' | 'auto' | 'zerocopy';

/** An image from any source (oci:, oci-archive:, containers-storage:). */
export interface ImageToImport {
  description: string;
  manifestDigest: string;
  manifestBytes: Buffer;
  configDigest: string;
  configBytes: Buffer;
  /** In application order (config diff_ids). */
  layers: LayerToImport[];
  artifact: boolean;
  close(): Promise<void>;
}

export interface ImportOptions {
  /** Tag to set once the image is complete. */
  name?: string | null;
  progress?: ProgressSink;
  /** Layers imported at once (default: number of cores). */
  parallel?: number;
  /**
   * Default 'auto': zero-copy where the source and the repository share a filesystem, copies
   * otherwise (the varlink Pull passes 'disabled' when its client names no mode, as the
   * protocol says).
   */
  localFetch?: LocalFetch;
  /**
   * The image's composefs EROFS in this repository's format, already built elsewhere (a copy
   * between repositories of one hash algorithm); null: build it. Its digest must be `imageId`.
   */
  prebuiltImage?: () => Promise<{ erofs: Buffer; imageId: string } | null>;
  /** Stops the import (ECANCELED) at the next piece of layer data once aborted. */
  signal?: AbortSignal;
}

export interface ImportResult {
  manifestDigest: string;
  configDigest: string;
  /** Hex id of the composefs image; null for artifacts. */
  imageId: string | null;
  layersImported: number;
  layersSkipped: number;
  /** How the contents of the layers' files got into objects/. */
  objects: ObjectCounts;
}

/**
 * The image is linked and, in an insecure repository (where nothing stops its object from
 * being changed), still has its digest: it is small, and a re-pull then repairs it.
 */
async function imageIntact(repo: Repository, hex: string): Promise<boolean> {
  try {
    await access(path.join(repo.path, 'images', hex));
    return repo.secure || fsverityDigest(await repo.readObject(Buffer.from(hex, 'hex')), repo.alg).toString('hex') === hex;
  } catch {
    return false;
  }
}

/** A damaged repository (a layer stream or its objects lost) must not short-cut a re-pull that could repair it. */
async function allLayerStreamsIntact(repo: Repository, ids: string[]): Promise<boolean> {
  for (const id of ids) if (!(await existingLayer(repo, id))) return false;
  return true;
}

/** Per layer: its stream, and the entries its import parsed when it was imported now (for the image build). */
interface ImportedLayers {
  streams: Map<string, Buffer>;
  entries: Map<string, TarEntry[] | null>;
  imported: number;
  skipped: number;
  objects: ObjectCounts;
}

async function importLayers(repo: Repository, img: ImageToImport, opts: ImportOptions, progress: ProgressSink): Promise<ImportedLayers> {
  const streams = new Map<string, Buffer>();
  const entries = new Map<string, TarEntry[] | null>();
  // Artifacts and prebuilt images need no tree: no entries kept for them.
  const collectEntries = !img.artifact && !opts.prebuiltImage;
  const todo: LayerToImport[] = [];
  let skipped = 0;
  const seen = new Set<string>();
  for (const layer of img.layers) {
    if (seen.has(layer.id)) continue;
    seen.add(layer.id);
    const existing = (await existingLayer(repo, layer.id))?.streamId;
    if (existing) {
      streams.set(layer.id, existing);
      progress.skipped(layer.id);
      skipped++;
    } else {
      todo.push(layer);
    }
  }
  const localFetch = opts.localFetch ?? 'auto';
  const lacking = todo.find((l) => l.kind === 'tar' && !l.openLocal);
  if (localFetch === 'zerocopy' && lacking) {
    throw new CfsError('ENOTSUP', `zero-copy import impossible: layer ${lacking.id} of ${img.description} is not available as local files (only containers-storage: sources are)`);
  }
  const objects = noObjects();
  todo.sort((a, b) => (b.size ?? 0) - (a.size ?? 0));
  const signal = opts.signal;
  /** The layer's data, cut off once `signal` aborts. */
  async function* untilAborted<T>(src: AsyncIterable<T>): AsyncGenerator<T> {
    for await (const b of src) {
      if (signal?.aborted) throw new CfsError('ECANCELED', `${img.description}: import stopped`);
      yield b;
    }
  }
  await runLayerTasks(todo, opts.parallel ?? os.availableParallelism(), async (layer) => {
    if (signal?.aborted) throw new CfsError('ECANCELED', `${img.description}: import stopped`);
    progress.started(layer.id, layer.size);
    let read = 0;
    const onRead = (n: number): void => {
      read = n;
      progress.progress(layer.id, n);
    };
    let streamId: Buffer;
    const tarOpts = { expectedDiffId: layer.id, layerName: layer.id, counts: objects, collectEntries };
    if (layer.kind === 'tar' && layer.openLocal && localFetch !== 'disabled') {
      const r = await importLocal(repo, layer, layer.openLocal, localFetch === 'zerocopy', onRead, objects, untilAborted, collectEntries);
      streamId = r.streamId;
      entries.set(layer.id, r.entries);
    } else if (layer.kind === 'tar') {
      const r = await importTarLayer(repo, untilAborted(layer.open(onRead)), tarOpts).catch(async (e: unknown) => {
        throw layer.explain ? await layer.explain(e) : e;
      });
      streamId = r.streamId;
      entries.set(layer.id, r.entries);
    } else {
      streamId = await importBlob(repo, untilAborted(layer.open(() => undefined)), layer.id);
    }
    streams.set(layer.id, streamId);
    progress.done(layer.id, read || layer.size || 0);
  });
  return { streams, entries, imported: todo.length, skipped, objects };
}

/** A layer whose contents are local files: through the splitdirfdstream consumer. */
async function importLocal(
  repo: Repository, layer: LayerToImport, openLocal: () => Promise<LocalLayer>, zerocopy: boolean, onRead: (n: number) => void, objects: ObjectCounts,
  chunks: (src: AsyncIterable<Buffer>) => AsyncIterable<Buffer>, collectEntries: boolean,
): Promise<{ streamId: Buffer; entries: TarEntry[] | null }> {
  const local = await openLocal();
  try {
    const r = await consumeLayerStream(repo, chunks(local.chunks), local.dirfds, { diffId: layer.id, zerocopy, localStore: true, onProgress: onRead, collectEntries });
    addObjects(objects, r.objects);
    return r;
  } catch (e) {
    throw await local.explain(e);
  } finally {
    await local.close();
  }
}

/** A non-tar blob: one object, referenced by a single external chunk (brief 3.6). */
async function importBlob(repo: Repository, data: AsyncIterable<Uint8Array>, id: string): Promise<Buffer> {
  const w = repo.createObjectWriter();
  let size = 0;
  try {
    for await (const chunk of data) {
      await w.write(chunk);
      size += chunk.length;
    }
  } catch (e) {
    w.abort();
    throw e;
  }
  const objectId = await w.commit();
  const s = new SplitStreamWriter(repo, { contentType: CONTENT_TYPES.blob });
  s.addExternal(objectId, size);
  const streamId = await s.finish();
  await repo.linkStream(layerContentId(id), streamId);
  return streamId;
}

/**
 * Import `img` into `repo`. An image whose manifest, config and composefs image are all
 * present does no layer work at all (only the tag is set).
 */
export async function importImage(repo: Repository, img: ImageToImport, opts: ImportOptions = {}): Promise<ImportResult> {
  const progress = opts.progress ?? NO_PROGRESS;
  const erofsVersion = repo.erofsFormats.default;
  const refName = imageRefName(erofsVersion);
  // Refused before any layer work, not after it (artifacts build no image).
  if (!img.artifact && erofsVersion !== 0 && erofsVersion !== 1) {
    throw new CfsError('ENOTSUP', `repository ${repo.path} keeps EROFS format ${erofsVersion} images, which cfs does not write (it writes formats 0 and 1); pull into a repository made by \`cfs init\``);
  }

  if (await repo.hasStream(manifestContentId(img.manifestDigest))) {
    const stored = await openStoredImage(repo, `@${img.manifestDigest}`, erofsVersion).catch(() => null);
    const complete =
      stored !== null &&
      (stored.artifact || (stored.imageId !== null && (await imageIntact(repo, stored.imageId)))) &&
      (await allLayerStreamsIntact(repo, img.layers.map((l) => l.id)));
    if (stored && complete) {
      for (const l of img.layers) progress.skipped(l.id);
      if (opts.name) await tagImage(repo, opts.name, img.manifestDigest);
      return { manifestDigest: img.manifestDigest, configDigest: img.configDigest, imageId: stored.imageId, layersImported: 0, layersSkipped: img.layers.length, objects: noObjects() };
    }
  }

  if (img.layers.length > 0) progress.message(`Importing ${img.layers.length} layer${img.layers.length === 1 ? '' : 's'} from ${img.description}`);
  const { streams, entries, imported, skipped, objects } = await importLayers(repo, img, opts, progress);
  const diffIds = img.layers.map((l) => l.id);

  let imageObject: Buffer | null = null;
  let imageId: string | null = null;
  if (!img.artifact) {
    const prebuilt = opts.prebuiltImage ? await opts.prebuiltImage() : null;
    if (prebuilt) {
      imageId = await repo.writeImage(prebuilt.erofs);
      if (imageId !== prebuilt.imageId) throw new CfsError('EDIGEST', `composefs image of ${img.description}: fs-verity digest ${imageId}, expected ${prebuilt.imageId}`);
    } else {
      progress.message('Building composefs image');
      const erofs = await buildImageFromLayers(repo, diffIds.map((d) => ({ diffId: d, streamId: streams.get(d)!, entries: entries.get(d) })), { erofsVersion }).catch((e: unknown) => {
        // The tree's own errors (no /usr, …) do not know which image they are about.
        throw isCfsError(e) ? new CfsError(e.code, `${img.description}: ${e.message}; its layers are stored, but no composefs image`, e.context) : e;
      });
      imageId = await repo.writeImage(erofs);
    }
    imageObject = Buffer.from(imageId, 'hex');
  }

  // Config stream: layer refs in diff_id order, then the image ref; the raw config bytes.
  const config = new SplitStreamWriter(repo, { contentType: CONTENT_TYPES.config });
  for (const d of diffIds) config.addNamedRef(d, streams.get(d)!);
  if (imageObject) config.addNamedRef(refName, imageObject);
  await config.writeExternal(img.configBytes);
  const configStream = await config.finish();
  await repo.linkStream(configContentId(img.configDigest), configStream);

  // Manifest stream: config first, then the layers in diff_id order (deduplicated).
  const manifest = new SplitStreamWriter(repo, { contentType: CONTENT_TYPES.manifest });
  manifest.addNamedRef(`config:${img.configDigest}`, configStream);
  for (const d of diffIds) manifest.addNamedRef(d, streams.get(d)!);
  await manifest.writeExternal(img.manifestBytes);
  const manifestStream = await manifest.finish();
  await repo.linkStream(manifestContentId(img.manifestDigest), manifestStream);

  if (opts.name) await tagImage(repo, opts.name, img.manifestDigest);
  return { manifestDigest: img.manifestDigest, configDigest: img.configDigest, imageId, layersImported: imported, layersSkipped: skipped, objects };
}

