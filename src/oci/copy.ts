/**
 * Copying an OCI image between repositories (brief 5.7): every layer travels as a
 * splitdirfdstream from the source's producer (file-backed chunks naming the source's objects)
 * to the destination's verifying consumer, which reflinks, hardlinks or copies each object and
 * re-hashes it under the destination's algorithm. Then the destination builds its own composefs
 * image and config/manifest streams (the import path with every layer present), so a copied
 * image is identical to one pulled directly into the destination.
 */
import os from 'node:os';
import path from 'node:path';
import { closeSync, constants as C, openSync, statSync } from 'node:fs';
import { native } from '../native.js';
import { CfsError, isCfsError } from '../errors.js';
import type { Repository } from '../repository/repository.js';
import { NO_PROGRESS, type ProgressSink } from '../progress/events.js';
import { existingLayer, layerContentId } from '../tar/split.js';
import { consumeLayerStream } from '../splitdirfdstream/consumer.js';
import { openObjectsDir, produceLayerStream } from '../splitdirfdstream/producer.js';
import { addObjects, noObjects, type ObjectCounts } from '../repository/object-counts.js';
import { importImage, type ImageToImport } from './import.js';
import { runLayerTasks } from './layer-tasks.js';
import { encodeTag, manifestContentId, configContentId, openStoredImage } from './stored.js';

export interface CopyOptions {
  /** Tag in the destination; without it the copy is untagged (collected by the next gc). */
  name?: string;
  /** Fail unless every object can be reflinked or hardlinked. */
  zerocopy?: boolean;
  progress?: ProgressSink;
  /** Layers copied at once (default: number of cores). */
  parallel?: number;
}

export interface CopyResult {
  manifestDigest: string;
  configDigest: string;
  manifestVerity: string;
  configVerity: string;
  imageId: string | null;
  layersCopied: number;
  layersSkipped: number;
  /** How the copied layers' file contents reached the destination's objects/. */
  objects: ObjectCounts;
}

/** Refuse --zerocopy early when it cannot work (different algorithms or filesystems). */
export function checkZerocopy(src: Repository, dst: Repository): void {
  if (src.alg !== dst.alg) {
    throw new CfsError('EINVAL', `--zerocopy requires matching hash algorithms; source uses ${src.alg} but destination uses ${dst.alg}`);
  }
  if (!canShareData(src, dst)) {
    throw new CfsError('ENOTSUP', `--zerocopy requires both repositories on the same filesystem; ${src.path} and ${dst.path} are on different filesystems`);
  }
}

/**
 * Whether src's files can be reflinked or hardlinked into dst's objects/: the same st_dev, or,
 * since btrfs subvolumes differ in st_dev yet reflink (hardlinks never cross st_dev), a clone of
 * src's meta.json into an unnamed tmpfile in dst's objects/.
 */
function canShareData(src: Repository, dst: Repository): boolean {
  const objects = path.join(dst.path, 'objects');
  if (statSync(path.join(src.path, 'objects')).dev === statSync(objects).dev) return true;
  const fd = openSync(path.join(src.path, 'meta.json'), C.O_RDONLY);
  try {
    const tmp = native().openTmpfile(objects, C.O_RDWR, 0o600);
    try {
      native().ficlone(tmp, fd);
      return true;
    } finally {
      closeSync(tmp);
    }
  } catch {
    return false;
  } finally {
    closeSync(fd);
  }
}

export async function copyImage(src: Repository, dst: Repository, image: string, opts: CopyOptions = {}): Promise<CopyResult> {
  const progress = opts.progress ?? NO_PROGRESS;
  if (opts.zerocopy) checkZerocopy(src, dst);
  // A name that cannot be a tag is refused before anything is copied.
  if (opts.name !== undefined) encodeTag(opts.name);
  const stored = await openStoredImage(src, image, src.erofsFormats.default);
  const objects = noObjects();
  const todo: string[] = [];
  let skipped = 0;
  for (const id of new Set(stored.diffIds)) {
    if (await existingLayer(dst, id)) {
      progress.skipped(id);
      skipped++;
    } else {
      todo.push(id);
    }
  }
  if (todo.length > 0) {
    await dst.ensureWritable();
    progress.message(`Copying ${todo.length} layer${todo.length === 1 ? '' : 's'} from ${src.path}`);
    const objectsFd = openObjectsDir(src);
    try {
      await runLayerTasks(todo, opts.parallel ?? os.availableParallelism(), (id) => copyLayer(src, dst, stored.layerStreams.get(id), id, objectsFd, stored.artifact, opts, progress, objects));
    } catch (e) {
      // The source's layer does not rebuild to its diff_id: its objects changed since they were stored.
      if (isCfsError(e) && e.code === 'EDIGEST' && e.context['actual'] !== undefined) {
        throw new CfsError('EDIGEST', `${e.message}; the source repository ${src.path} is damaged (run cfs --repo ${src.path} fsck)`);
      }
      throw e;
    } finally {
      closeSync(objectsFd);
    }
  }
  const img: ImageToImport = {
    description: `${src.path} ${image}`,
    manifestDigest: stored.manifestDigest,
    manifestBytes: stored.manifestBytes,
    configDigest: stored.configDigest,
    configBytes: stored.configBytes,
    layers: stored.diffIds.map((id) => ({
      id,
      size: null,
      kind: stored.artifact ? 'blob' : 'tar',
      open: () => {
        throw new CfsError('ENOENT', `layer ${id} vanished from ${dst.path} during the copy`);
      },
    })),
    artifact: stored.artifact,
    close: async () => undefined,
  };
  // Layers are all present now: the import only builds the image and the config/manifest streams.
  const quietLayers: ProgressSink = { ...NO_PROGRESS, message: (t) => (t.startsWith('Importing') ? undefined : progress.message(t)) };
  // Same algorithm and format: the source's image is the image the layers give, byte for byte
  // (writeImage re-hashes it and the digest must match); otherwise it is built here.
  const reuse = src.alg === dst.alg && src.erofsFormats.default === dst.erofsFormats.default && stored.imageId !== null;
  const prebuiltImage = async (): Promise<{ erofs: Buffer; imageId: string } | null> =>
    reuse ? { erofs: await src.readObject(Buffer.from(stored.imageId!, 'hex')), imageId: stored.imageId! } : null;
  const r = await importImage(dst, img, { name: opts.name, progress: quietLayers, prebuiltImage });
  const manifestVerity = await dst.hasStream(manifestContentId(r.manifestDigest));
  const configVerity = await dst.hasStream(configContentId(r.configDigest));
  return {
    manifestDigest: r.manifestDigest,
    configDigest: r.configDigest,
    manifestVerity: manifestVerity!.toString('hex'),
    configVerity: configVerity!.toString('hex'),
    imageId: r.imageId,
    layersCopied: todo.length,
    layersSkipped: skipped,
    objects,
  };
}

async function copyLayer(
  src: Repository, dst: Repository, streamId: Buffer | undefined, id: string, objectsFd: number, artifact: boolean,
  opts: CopyOptions, progress: ProgressSink, objects: ObjectCounts,
): Promise<void> {
  if (!streamId) throw new CfsError('ECORRUPT', `layer ${id}: split stream missing from source repository ${src.path}`);
  progress.started(id, null);
  const r = await consumeLayerStream(dst, produceLayerStream(src, streamId, 0, layerContentId(id)), [objectsFd], {
    diffId: id,
    kind: artifact ? 'blob' : 'tar',
    zerocopy: opts.zerocopy,
    onProgress: (n) => progress.progress(id, n),
  }).catch((e: unknown) => {
    // An object the source's layer names is gone: its repository is damaged, not the copy.
    if (isCfsError(e) && e.code === 'ENOENT' && e.message.startsWith('object ')) {
      throw new CfsError('ENOENT', `layer ${id}: ${e.message}; the source repository is damaged (run cfs --repo ${src.path} fsck)`);
    }
    throw e;
  });
  addObjects(objects, r.objects);
  progress.done(id, r.size);
}
