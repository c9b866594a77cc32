/**
 * containers-storage: images as ImageToImport. Each layer is offered two ways:
 *   open()       the exact tar, rebuilt from tar-split metadata and the store's diff files,
 *                every file checked against its recorded size;
 *   openLocal()  the same tar as a splitdirfdstream naming the diff files beneath directory
 *                fds, so the importer can reflink or hardlink contents into objects/ (local
 *                fetch) through the same consumer as copies and varlink PutLayer.
 * Either way the whole layer is checked against its diff_id, so a file changed in the store
 * after podman imported it is caught; a mismatch is explained by finding the changed file.
 *
 * Rootless stores: their owner reads them through a helper in the store's user namespace
 * (`podman unshare`, userns-helper.ts). Without it (it cannot start, CFS_USERNS_HELPER=0, or the
 * store is another user's) files are read as the invoking user, and one the user cannot read
 * fails with a message saying whose it is and what to do (never skipped).
 */
import { lstatSync, statSync } from 'node:fs';
import path from 'node:path';
import { CfsError, errnoCode, isCfsError } from '../errors.js';
import { configPlatform, openStorageImage, type StorageImage } from './containers-storage/image.js';
import { findChangedFile, openStoreLayerStream } from './containers-storage/layer-stream.js';
import type { ContainersStore } from './containers-storage/store.js';
import { layerTarStream, ownerOf } from './containers-storage/tar-split.js';
import type { ImageToImport, LocalLayer } from './import.js';
import { formatPlatform, parsePlatform, platformMatches } from './platform.js';
import type { SourceOptions } from './sources.js';
import { UsernsHelper, wantsUsernsHelper, type HelperLayer } from './containers-storage/userns-helper.js';
import { rebuildStream } from '../splitdirfdstream/rebuild.js';

/**
 * A store holds one image per ID, already of one platform: --platform is checked against its
 * config (not defaulted to this machine's: podman keeps images pulled with --arch too).
 */
function checkPlatform(img: StorageImage, platform: string): void {
  const want = parsePlatform(platform);
  const have = configPlatform(img.configBytes);
  // No platform in the config: nothing to check against (as for a lone oci: manifest).
  if (have && !platformMatches(want, have)) {
    throw new CfsError('EPLATFORM', `${img.reference}: the image is ${formatPlatform(have)}, not ${formatPlatform(want)}`);
  }
}

export async function openContainersStorageImage(spec: string, opts: SourceOptions): Promise<ImageToImport> {
  // Said once per lock file: each layer takes the layers lock again.
  const waitedFor = new Set<string>();
  const onWait = (lock: string): void => {
    if (!waitedFor.has(lock)) opts.onWait?.(`waiting for ${lock}: another process (podman?) is writing to the store`);
    waitedFor.add(lock);
  };
  const img = await openStorageImage(spec, { platform: opts.platform, onWait, signal: opts.signal, timeoutMs: opts.timeoutMs }).catch((e: unknown) => {
    // A store (or its lock files) the invoking user may not read: say whose it is and what to do.
    if (!isDenied(e)) throw e;
    const where = (e as NodeJS.ErrnoException).path ?? '';
    throw new CfsError('EPERM', `${isCfsError(e) ? e.message : `${where}: permission denied`}; the store belongs to another user (rootless stores are read as their owner, e.g. inside \`podman unshare\`; the system store as root)`);
  });
  if (opts.platform !== undefined) checkPlatform(img, opts.platform);
  for (const l of img.layers) {
    if (await l.store.isComposefsLayer(l.layerId)) {
      throw new CfsError('ENOTSUP', `${img.reference}: layer ${l.layerId} is stored in composefs form (use_composefs in ${l.store.description}); cfs cannot read such layers: export the image (skopeo copy … oci:DIR) and pull that`);
    }
  }
  const helper = new HelperSlot(opts, onWait);
  return {
    description: img.reference,
    manifestDigest: img.manifestDigest,
    manifestBytes: img.manifestBytes,
    configDigest: img.configDigest,
    configBytes: img.configBytes,
    artifact: false,
    layers: img.layers.map((l) => ({
      id: l.diffId,
      size: l.uncompressedSize,
      kind: 'tar' as const,
      open: (progress: (n: number) => void) => explained(countBytes(layerTar(l.store, l.layerId, helper), progress), l.store, helper),
      explain: (e: unknown) => explainChanged(e, l.store, l.layerId),
      openLocal: () => openLocal(l.store, l.layerId, helper),
    })),
    close: async () => helper.close(),
  };
}

/**
 * The userns helper of a pull (userns-helper.ts): started on the first layer of a rootless store
 * that wants it. When it cannot start, layers are read as the invoking user, and a file that
 * cannot be read is reported with the reason the helper gave.
 */
class HelperSlot {
  private started: Promise<UsernsHelper | null> | null = null;
  failure: string | null = null;
  /** The helper serves this pull's layers. */
  running = false;
  private instance: UsernsHelper | null = null;

  constructor(private readonly opts: SourceOptions, private readonly onLockWait: (lock: string) => void) {}

  async for(store: ContainersStore): Promise<UsernsHelper | null> {
    if (!wantsUsernsHelper(store.root)) return null;
    const onWait = (): void => this.opts.onWait?.(`starting the containers-storage helper for ${store.root} (podman unshare; podman waits for the store's locks)`);
    this.started ??= UsernsHelper.start({ onWait, timeoutMs: this.opts.timeoutMs, signal: this.opts.signal }).then(
      (h) => {
        this.running = true;
        this.instance = h;
        return h;
      },
      (e: unknown) => {
        this.failure = (e as Error).message;
        return null;
      },
    );
    return this.started;
  }

  /** A layer through the helper, with the direct path's lock-wait behaviour (notice, timeout, cancellation). */
  openLayer(h: UsernsHelper, store: ContainersStore, layerId: string, searchDirs: readonly string[]): Promise<HelperLayer> {
    return h.openLayer(store.root, layerId, searchDirs, {
      onWait: () => this.onLockWait(store.layersLock),
      timeoutMs: this.opts.timeoutMs,
      signal: this.opts.signal,
    });
  }

  /** How the helper ended, if it did by itself (a truncated stream is then its doing). */
  get ended(): string | null {
    return this.instance?.ended ?? null;
  }

  async close(): Promise<void> {
    (await this.started)?.close();
  }
}

/** The layer's tar: rebuilt here from tar-split and the store's files, or from the helper's stream. */
async function* layerTar(store: ContainersStore, layerId: string, helper: HelperSlot): AsyncGenerator<Buffer> {
  const h = await helper.for(store);
  if (!h) return yield* layerTarStream(store, layerId);
  const layer = await helper.openLayer(h, store, layerId, await store.layerSearchDirs(layerId));
  try {
    yield* rebuildStream(layer.chunks, layer.dirfds, `layer ${layerId} from the containers-storage helper`);
  } finally {
    await layer.close();
  }
}

/** What to do about a store file we may not read: depends on whose store it is. */
function unreadableHint(store: ContainersStore, helper: HelperSlot | null = null): string {
  if (helper?.running) {
    return `the containers-storage helper in the store's user namespace found it readable by you, so its permissions changed during the pull; pull again`;
  }
  const owner = statSync(store.root, { throwIfNoEntry: false })?.uid;
  if (owner !== undefined && owner === process.geteuid?.() && owner !== 0) {
    const why = helper?.failure ? ` (${helper.failure})` : '';
    return `the store ${store.root} is your rootless store, whose files belong to ids of its user namespace: run cfs inside \`podman unshare\`${why}`;
  }
  const whose = owner === undefined ? '' : ` (uid ${owner})`;
  return `the store ${store.root}${whose} is rootless or belongs to another user; run as its owner inside \`podman unshare\`, or as root`;
}

function isDenied(e: unknown): boolean {
  const code = errnoCode(e);
  return isCfsError(e) ? e.code === 'EPERM' || /\b(EACCES|EPERM)\b|permission denied/i.test(e.message) : code === 'EACCES' || code === 'EPERM';
}

/** Permission errors of the store's own reads, explained (the importer explains its reads). */
async function* explained<T>(src: AsyncIterable<T>, store: ContainersStore, helper: HelperSlot): AsyncGenerator<T> {
  try {
    yield* src;
  } catch (e) {
    if (!isDenied(e)) throw e;
    const what = isCfsError(e) ? e.message : `${(e as NodeJS.ErrnoException).path ?? ''}: permission denied`;
    throw new CfsError('EPERM', `${what}; ${unreadableHint(store, helper)}`);
  }
}

async function* countBytes(src: AsyncIterable<Buffer>, progress: (n: number) => void): AsyncGenerator<Buffer> {
  let n = 0;
  for await (const b of src) {
    n += b.length;
    progress(n);
    yield b;
  }
}

async function openLocal(store: ContainersStore, layerId: string, helper: HelperSlot): Promise<LocalLayer> {
  const h = await helper.for(store);
  const s = h ? await helper.openLayer(h, store, layerId, await store.layerSearchDirs(layerId)) : await openStoreLayerStream(store, layerId).catch((e: unknown) => {
    throw isDenied(e) ? new CfsError('EPERM', `${(e as Error).message}; ${unreadableHint(store, helper)}`) : e;
  });
  return {
    dirfds: s.dirfds,
    chunks: s.chunks,
    close: () => s.close(),
    explain: (e) => explainLocal(e, store, layerId, helper),
  };
}

/** A diff_id mismatch, a file of the wrong size or a missing one, explained by naming the store file that changed. */
async function explainChanged(e: unknown, store: ContainersStore, layerId: string): Promise<unknown> {
  if (isCfsError(e) && (e.code === 'EDIGEST' || e.code === 'ENOENT' || (e.code === 'EIO' && /declared length/.test(e.message)))) {
    return (await findChangedFile(store, layerId).catch(() => null)) ?? e;
  }
  return e;
}

/**
 * A failed local import, said in terms of the store: which file changed, which is unreadable.
 * Permission errors of the repository's side (objects/, streams/) are left as they are.
 */
async function explainLocal(e: unknown, store: ContainersStore, layerId: string, helper: HelperSlot): Promise<unknown> {
  if (helper.ended !== null && isCfsError(e)) {
    return new CfsError(e.code, `${e.message} (the containers-storage helper in podman unshare ended: ${helper.ended})`);
  }
  const changed = await explainChanged(e, store, layerId);
  if (changed !== e) return changed;
  // (A name that is not UTF-8 also travels inline, whoever may read it: shown with U+FFFD.)
  if (helper.running && isCfsError(e) && e.code === 'ENOTSUP' && /as inline data/.test(e.message) && !e.message.includes('\ufffd')) {
    return new CfsError('ENOTSUP', `${e.message}: you may not read that file of your rootless store (another id of its user namespace owns it, or a directory on its way), so the helper inside \`podman unshare\` sent its bytes; pull without --zerocopy to copy it`);
  }
  const hint = unreadableHint(store, helper);
  if (!isDenied(e) || (e as Error).message.includes(hint)) return e;
  // The consumer names a file relative to a layer directory: show where it is and who owns it.
  const name = isCfsError(e) ? e.context['name'] : undefined;
  if (typeof name !== 'string') {
    const what = isCfsError(e) ? e.message : `${(e as NodeJS.ErrnoException).path ?? ''}: permission denied`;
    if (!what.includes(store.root)) return e;
    return new CfsError('EPERM', `${what}; ${hint}`);
  }
  let detail = '';
  for (const dir of await store.layerSearchDirs(layerId)) {
    if (!lstatSync(path.join(dir, name), { throwIfNoEntry: false })) continue;
    detail = ` (${ownerOf(path.join(dir, name))})`;
    break;
  }
  return new CfsError('EPERM', `layer ${layerId}: cannot read ${name}${detail}: permission denied; ${hint}`);
}
