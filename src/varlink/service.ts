/**
 * The composefs varlink service (brief 5.4–5.6): org.composefs.Repository and org.composefs.Oci
 * over repository handles. Handles are per service, start at 1 and are never reused.
 */
import { createHash } from 'node:crypto';
import { existsSync, statSync, fstatSync, createReadStream, type ReadStream } from 'node:fs';
import net from 'node:net';
import path from 'node:path';
import { CfsError, isCfsError } from '../errors.js';
import { fileKind } from '../file-kind.js';
import { Repository, initRepository, type ImageHandle } from '../repository/repository.js';
import { resolveRepositoryPath } from '../repository/location.js';
import { parseAlgorithm } from '../repository/meta.js';
import type { ProgressSink } from '../progress/events.js';
import type { LocalFetch } from '../oci/import.js';
import { existingLayer, layerContentId } from '../tar/split.js';
import { openObjectsDir, produceLayerStream } from '../splitdirfdstream/producer.js';
import { consumeLayerStream } from '../splitdirfdstream/consumer.js';
import { FinalReply, type CallContext, type Handler, type ServiceInfo, VarlinkServer } from './server.js';
import { VarlinkError, type Params } from './protocol.js';
import { closeQuietly } from './transport.js';
import { pinDetachedMount } from '../repository/pins.js';
import { replyWithLayer } from './layer-reply.js';
import { errorFor, interfaceText, OCI, REPO } from './interfaces.js';
import { formatStorageReference, parseStorageReference } from '../oci/containers-storage/reference.js';
import { bootRef, buildStoredErofs, formatVersionName, imageIdOf, parseXattrMode, recordedBootImage, XATTR_MODES, type XattrMode } from './oci-images.js';

export const FEATURES = ['splitdirfdstream-v0'];

export interface ServiceOptions {
  /** Open repositories in insecure mode (missing fs-verity tolerated). */
  insecure?: boolean;
  version?: string;
  /** A PutLayer stream that delivers nothing for this long fails (default 300 s). */
  streamIdleMs?: number;
}

const DIGEST_RE = /^sha256:[0-9a-f]{64}$/;
/** CfsError codes of a PutLayer that are the client's doing (InvalidRequest); the rest are InternalError. */
const CLIENT_FAULTS = new Set(['EINVAL', 'ENOENT', 'EPERM', 'ENOTSUP', 'EIO', 'ECORRUPT']);

/** The optional `xattrs` parameter of ComputeId and Pull. */
function xattrMode(p: Params): XattrMode | undefined {
  const v = p.optStr('xattrs');
  if (v === undefined) return undefined;
  const m = parseXattrMode(v);
  if (!m) throw new VarlinkError(`${OCI}.InvalidRequest`, { message: `unknown xattrs mode '${v}' (${XATTR_MODES.join(' or ')})` });
  return m;
}

/**
 * Pull's `storage_root`: the graph root of the containers-storage store to read, in place of the
 * configured one (a `[graphroot]` store spec in the reference says the same, so not both).
 */
function withStorageRoot(image: string, storageRoot: string | undefined): string {
  if (storageRoot === undefined) return image;
  if (!image.startsWith('containers-storage:')) {
    throw new VarlinkError(`${OCI}.InvalidRequest`, { message: `storage_root applies to containers-storage: images only, not '${image}'` });
  }
  if (!path.isAbsolute(storageRoot)) throw new VarlinkError(`${OCI}.InvalidRequest`, { message: `storage_root '${storageRoot}' is not an absolute path` });
  // The client's mistake, not the service's failure.
  if (!statSync(storageRoot, { throwIfNoEntry: false })?.isDirectory()) throw new VarlinkError(`${OCI}.InvalidRequest`, { message: `storage_root '${storageRoot}' is not a directory` });
  let ref;
  try {
    ref = parseStorageReference(image);
  } catch (e) {
    throw new VarlinkError(`${OCI}.InvalidRequest`, { message: (e as Error).message });
  }
  if (ref.store?.graphRoot) throw new VarlinkError(`${OCI}.InvalidRequest`, { message: `storage_root and the store spec of '${image}' both name a graph root` });
  // Only the store spec changes: the image part stays as the client wrote it (a short name or
  // id is looked up as given, with its localhost/ and id-prefix fallbacks).
  const spec = formatStorageReference({ ...ref, name: null, digest: null, id: null, idPrefix: null, store: { driver: ref.store?.driver ?? null, graphRoot: storageRoot, runRoot: ref.store?.runRoot ?? null, options: ref.store?.options ?? [] } });
  const rest = image.slice('containers-storage:'.length);
  return spec + (rest.startsWith('[') ? rest.slice(rest.indexOf(']') + 1) : rest);
}

/** Least time between two Pull progress frames of one layer. */
const PROGRESS_INTERVAL_MS = 100;

/** Pull's `local_fetch`: anything unrecognised means disabled (brief 5.6). */
function localFetchOf(v: string | undefined): LocalFetch {
  if (v === 'auto' || v === 'if-possible') return 'auto';
  if (v === 'zerocopy' || v === 'zero-copy') return 'zerocopy';
  return 'disabled';
}

/** The image `name` names in `repo` (a ref, an ID); NoSuchRef when there is none. */
async function openImageRef(repo: Repository, name: string): Promise<ImageHandle> {
  try {
    return await repo.openImage(name);
  } catch (e) {
    if (isCfsError(e) && e.code === 'ENOENT') throw new VarlinkError(`${REPO}.NoSuchRef`, { reference: name });
    throw e;
  }
}

const DEFAULT_STREAM_IDLE_MS = 300_000;

/**
 * `src`, failing with `stalled()` when one read waits longer than `ms` for the client (time the
 * consumer spends elsewhere does not count). A PutLayer holds the repository's shared lock, so a
 * client that opens the stream and never writes must not hold it (and keep gc out) forever.
 */
async function* withIdleLimit<T>(src: AsyncIterable<T>, ms: number, stalled: () => Error): AsyncGenerator<T> {
  const it = src[Symbol.asyncIterator]();
  for (;;) {
    let timer: NodeJS.Timeout | undefined;
    const timeout = new Promise<never>((_, reject) => {
      timer = setTimeout(() => reject(stalled()), ms);
    });
    let r: IteratorResult<T>;
    try {
      r = await Promise.race([it.next(), timeout]);
    } finally {
      clearTimeout(timer);
    }
    if (r.done) return;
    yield r.value;
  }
}

function createdOf(config: Buffer): string | null {
  const v = (JSON.parse(config.toString('utf8')) as { created?: unknown }).created;
  return typeof v === 'string' ? v : null;
}

/**
 * A repository handle. It holds the repository's shared lock (which blocks gc), so it lives until
 * CloseRepository or until the connection that opened it goes away; other connections may use it
 * meanwhile. A closed handle's repository is released once the calls still using it finish.
 */
interface OpenHandle {
  repo: Repository;
  owner: number;
  /** Calls (and GetLayer producers) using the handle right now. */
  busy: number;
  closed: boolean;
}

export class ComposefsService {
  readonly server: VarlinkServer;
  private readonly handles = new Map<number, OpenHandle>();
  private nextHandle = 1;

  constructor(private readonly opts: ServiceOptions = {}) {
    const info: ServiceInfo = { vendor: 'org.composefs', product: 'cfs', version: opts.version ?? 'unknown', url: 'https://github.com/composefs/composefs' };
    this.server = new VarlinkServer(info);
    this.server.add({ name: REPO, description: interfaceText(REPO), methods: this.holding(this.repositoryMethods()), internalError: errorFor(REPO, 'InvalidSpec') });
    this.server.add({ name: OCI, description: interfaceText(OCI), methods: this.holding(this.ociMethods()), internalError: errorFor(OCI, 'InvalidRequest') });
    // Handles are shared by the service, but one left open by a vanished client only holds a lock.
    this.server.onDisconnect = (conn) => {
      for (const [h, v] of this.handles) if (v.owner === conn) this.closeHandle(h, v);
    };
  }

  close(): void {
    this.server.close();
    for (const h of this.handles.values()) h.repo.close();
    this.handles.clear();
  }

  private repo(iface: string, p: Params): Repository {
    return this.entry(iface, p).repo;
  }

  private entry(iface: string, p: Params): OpenHandle {
    const handle = p.int('handle');
    const h = this.handles.get(handle);
    if (!h) throw new VarlinkError(`${iface}.InvalidHandle`, { handle });
    return h;
  }

  /** No new call gets the handle; its repository is released when the last one using it ends. */
  private closeHandle(handle: number, h: OpenHandle): void {
    this.handles.delete(handle);
    h.closed = true;
    if (h.busy === 0) h.repo.close();
  }

  private hold(h: OpenHandle): () => void {
    h.busy++;
    let released = false;
    return () => {
      if (released) return;
      released = true;
      if (--h.busy === 0 && h.closed) h.repo.close();
    };
  }

  /** Every call naming an open handle holds it while it runs (see OpenHandle). */
  private holding(methods: Record<string, Handler>): Record<string, Handler> {
    const wrapped: Record<string, Handler> = {};
    for (const [name, h] of Object.entries(methods)) {
      wrapped[name] = async (p, ctx) => {
        const raw = p.raw('handle');
        const entry = typeof raw === 'number' ? this.handles.get(raw) : undefined;
        const release = entry ? this.hold(entry) : () => undefined;
        try {
          return await h(p, ctx);
        } finally {
          release();
        }
      };
    }
    return wrapped;
  }

  private repositoryMethods(): Record<string, Handler> {
    const E = (name: string, params: Record<string, unknown>): VarlinkError => new VarlinkError(`${REPO}.${name}`, params);
    const hashOf = (p: Params): 'sha256' | 'sha512' | undefined => {
      const a = p.optStr('algorithm');
      if (a === undefined) return undefined;
      try {
        return a === 'sha256' || a === 'sha512' ? a : parseAlgorithm(a);
      } catch (e) {
        throw E('InvalidSpec', { message: (e as Error).message });
      }
    };
    /** Repository paths are absolute: the service's working directory means nothing to a client. */
    const repoPath = (p: Params, name = 'path'): string => {
      const v = p.str(name);
      if (!path.isAbsolute(v)) throw E('InvalidSpec', { message: `${name} '${v}' is not an absolute path` });
      return v;
    };
    /** A repository that cannot be created as asked (no fs-verity there, a file in the way) is the client's to fix. */
    const init = async (p: Params, ensure: boolean): Promise<{ created: boolean }> => {
      try {
        const where = repoPath(p);
        // The algorithm defaults to sha512 (brief 5.5); Ensure opens an existing repository
        // whatever its own when none is named, Init requires the default to match.
        const hashAlg = hashOf(p) ?? (ensure && existsSync(path.join(where, 'meta.json')) ? undefined : 'sha512');
        return await initRepository(where, { hashAlg, insecure: p.optBool('insecure') ?? false });
      } catch (e) {
        if (isCfsError(e) && ['ENOTSUP', 'EEXIST', 'ENOTDIR'].includes(e.code)) throw E('InvalidSpec', { message: e.message });
        throw e;
      }
    };
    return {
      InitRepository: async (p) => ({ created: (await init(p, false)).created }),
      EnsureRepository: async (p) => ({ status: (await init(p, true)).created ? 'Created' : 'Opened' }),
      OpenRepository: async (p, ctx) => {
        const sel = [p.optStr('path') !== undefined, p.optBool('user'), p.optBool('system')].filter(Boolean).length;
        if (sel !== 1) throw E('InvalidSpec', { message: 'exactly one of path, user, system must be given' });
        const where = resolveRepositoryPath({ repo: p.optStr('path') === undefined ? undefined : repoPath(p), user: p.optBool('user'), system: p.optBool('system') });
        let repo: Repository;
        try {
          repo = await Repository.open(where, { insecure: this.opts.insecure });
        } catch (e) {
          throw E('RepoNotFound', { message: (e as Error).message });
        }
        const handle = this.nextHandle++;
        this.handles.set(handle, { repo, owner: ctx.connectionId, busy: 0, closed: false });
        return { handle, hash_algorithm: repo.alg, objects_device_id: statSync(path.join(repo.path, 'objects')).dev };
      },
      CloseRepository: async (p) => {
        this.closeHandle(p.int('handle'), this.entry(REPO, p));
        return {};
      },
      Fsck: async (p) => {
        const repo = this.repo(REPO, p);
        const { fsck, fsckReportJson } = await import('../repository/fsck.js');
        return fsckReportJson(await fsck(repo, { metadataOnly: p.optBool('metadata_only') ?? false }));
      },
      Gc: async (p) => {
        const repo = this.repo(REPO, p);
        const { collectGarbage } = await import('../repository/gc.js');
        const dryRun = p.bool('dry_run');
        const roots = p.strArray('roots');
        const r = await collectGarbage(repo, { dryRun, roots }).catch((e: unknown) => {
          throw isCfsError(e) && e.context['root'] !== undefined ? E('NoSuchRef', { reference: e.context['root'] }) : e;
        });
        return { result: { objects_removed: r.objectsRemoved, objects_bytes: r.objectsBytes, images_pruned: r.imagesPruned, streams_pruned: r.streamsPruned }, dry_run: dryRun };
      },
      ListImageRefs: async (p) => {
        const repo = this.repo(REPO, p);
        return { images: (await repo.listImageRefs()).map((r) => ({ name: r.name, digest: r.imageId })) };
      },
      ImageObjects: async (p) => {
        const repo = this.repo(REPO, p);
        const name = p.str('name');
        const image = await openImageRef(repo, name);
        const { readErofs } = await import('../erofs/reader.js');
        const { imageObjectRefs } = await import('../repository/gc.js');
        const ids = new Set<string>();
        for (const r of imageObjectRefs(readErofs(await repo.readObject(image.imageId)), repo.alg)) if (r.id) ids.add(`${repo.alg}:${r.id.toString('hex')}`);
        return { object_ids: [...ids].sort() };
      },
      Mount: async (p, ctx) => {
        const repo = this.repo(REPO, p);
        const name = p.str('name');
        const image = await openImageRef(repo, name);
        return this.detachedMount(repo, image, name, p.obj('options'), ctx, (message) => E('InvalidSpec', { message }));
      },
    };
  }

  /** Mount and Oci.OciMount: the detached composefs mount of an image, returned as fd 0. */
  private async detachedMount(
    repo: Repository, image: ImageHandle, label: string, options: Params, ctx: CallContext, invalid: (message: string) => VarlinkError,
  ): Promise<FinalReply> {
    const overlay = options.optBool('overlay') ?? false;
    // The composefs mount itself is read-only: only an overlay upper layer takes writes.
    if (!overlay && options.optBool('read_write')) throw invalid('read_write needs overlay (an upper layer to write to); the composefs mount itself is read-only');
    const want = overlay ? 2 : 0;
    if (ctx.fds.length !== want) throw invalid(`Mount expects ${want} fds (${overlay ? 'upperdir, workdir' : 'none without overlay'}), got ${ctx.fds.length}`);
    const { fitParam, openComposefsMount } = await import('../mount/kernel.js');
    const source = fitParam(`composefs:${label}`);
    let mnt: number;
    try {
      mnt = openComposefsMount({
        image: image.path,
        objectsDir: path.join(repo.path, 'objects'),
        source,
        verity: image.verityRequired ? 'require' : 'off',
        expectedDigest: image.imageId,
        upperdir: overlay ? `/proc/self/fd/${ctx.fds[0]}` : undefined,
        workdir: overlay ? `/proc/self/fd/${ctx.fds[1]}` : undefined,
        readWrite: overlay && (options.optBool('read_write') ?? false),
      });
    } catch (e) {
      // What the client sent (a bad upper or work directory fd) is its mistake.
      if (isCfsError(e) && (e.code === 'EINVAL' || e.code === 'ENOENT')) throw invalid(e.message);
      throw e;
    }
    // gc keeps the image while the mount lives, wherever the client attaches it (pins.ts).
    const why = pinDetachedMount(repo.path, image.imageId.toString('hex'), mnt, source);
    if (why !== null) this.server.log(`${label}: mounted, but not pinned against gc: ${why}`);
    return new FinalReply({ fd_index: 0 }, [mnt], () => closeQuietly(mnt));
  }

  private ociMethods(): Record<string, Handler> {
    const E = (name: string, params: Record<string, unknown>): VarlinkError => new VarlinkError(`${OCI}.${name}`, params);
    const digestParam = (v: string): string => {
      if (!DIGEST_RE.test(v)) throw E('InvalidDigest', { message: `invalid digest '${v}' (expected sha256:<64 hex>)` });
      return v;
    };
    const openImage = async (repo: Repository, image: string) => {
      const { openStoredImage } = await import('../oci/stored.js');
      try {
        return await openStoredImage(repo, image, repo.erofsFormats.default);
      } catch (e) {
        if (isCfsError(e) && e.code === 'ENOENT') throw E('NoSuchImage', { image });
        throw e;
      }
    };
    return {
      GetInfo: async () => ({ features: FEATURES }),
      ListImages: async (p) => {
        const repo = this.repo(OCI, p);
        const filter = p.optStr('filter');
        const { listTags } = await import('../oci/stored.js');
        const images: Array<Record<string, unknown>> = [];
        // Many tags may name one image: each is opened (and checked) once.
        const opened = new Map<string, ReturnType<typeof openImage>>();
        for (const t of await listTags(repo)) {
          if (filter !== undefined && !t.name.includes(filter)) continue;
          let pending = opened.get(t.manifestDigest);
          if (!pending) opened.set(t.manifestDigest, (pending = openImage(repo, `@${t.manifestDigest}`)));
          const img = await pending;
          images.push({
            name: t.name,
            manifest_digest: t.manifestDigest,
            is_container: !img.artifact,
            architecture: img.config.architecture ?? '',
            os: img.config.os ?? '',
            created: createdOf(img.configBytes),
            layer_count: img.diffIds.length,
            referrer_count: 0,
          });
        }
        return { images };
      },
      Inspect: async (p) => {
        const repo = this.repo(OCI, p);
        const img = await openImage(repo, p.str('image'));
        const v = repo.erofsFormats.default;
        const boot = (await recordedBootImage(repo, img, bootRef(v, 'AllowlistOnly'))) ?? (await recordedBootImage(repo, img, bootRef(v, 'KeepUserXattrs')));
        return { manifest: img.manifestBytes.toString('utf8'), config: img.configBytes.toString('utf8'), referrers: [], composefs_erofs: img.imageId, composefs_boot_erofs: boot };
      },
      Tag: async (p) => {
        const repo = this.repo(OCI, p);
        const { tagImage } = await import('../oci/stored.js');
        const digest = digestParam(p.str('manifest_digest'));
        try {
          await tagImage(repo, p.str('name'), digest);
        } catch (e) {
          if (isCfsError(e) && e.code === 'ENOENT') throw E('NoSuchImage', { image: digest });
          throw e;
        }
        return {};
      },
      Untag: async (p) => {
        const repo = this.repo(OCI, p);
        const { untagImage } = await import('../oci/stored.js');
        const name = p.str('name');
        try {
          await untagImage(repo, name);
        } catch (e) {
          if (isCfsError(e) && e.code === 'ENOENT') throw E('NoSuchImage', { image: name });
          throw e;
        }
        return {};
      },
      Pull: async (p, ctx) => this.pull(p, ctx),
      ComputeId: async (p) => {
        const repo = this.repo(OCI, p);
        const img = await openImage(repo, p.str('image'));
        const verity = p.optStr('verity');
        let alg = repo.alg;
        if (verity !== undefined) {
          try {
            alg = verity === 'sha256' || verity === 'sha512' ? verity : parseAlgorithm(verity);
          } catch {
            throw E('InvalidRequest', { message: `verity '${verity}' is not sha256 or sha512 (or fsverity-sha256-12, fsverity-sha512-12)` });
          }
        }
        if (img.artifact) throw E('InvalidRequest', { message: `image '${p.str('image')}' is an OCI artifact, not a container image` });
        const erofs = await buildStoredErofs(repo, img, { bootable: p.bool('bootable'), mode: xattrMode(p) ?? 'AllowlistOnly' });
        return { image_id: imageIdOf(erofs, alg) };
      },
      OciMount: async (p, ctx) => {
        const repo = this.repo(OCI, p);
        const name = p.str('image');
        const img = await openImage(repo, name);
        const hex = p.bool('bootable') ? await recordedBootImage(repo, img, bootRef(repo.erofsFormats.default, 'AllowlistOnly')) : img.imageId;
        // InternalError, as composefs-rs answers it (clients may rely on it).
        if (hex === null) throw E('InternalError', { message: `No composefs EROFS image linked${p.bool('bootable') ? ' (boot image: pull with bootable first)' : ''} for '${name}'` });
        return this.detachedMount(repo, await repo.openImage(hex), name, p.obj('options'), ctx, (message) => E('InvalidRequest', { message }));
      },
      Check: async (p) => {
        const repo = this.repo(OCI, p);
        const { fsck, fsckReportJson } = await import('../repository/fsck.js');
        const image = p.optStr('image');
        const r = await fsck(repo, { image }).catch((e: unknown) => {
          if (image !== undefined && isCfsError(e) && e.code === 'ENOENT') throw E('NoSuchImage', { image });
          throw e;
        });
        const j = fsckReportJson(r);
        return { ok: r.ok, images_checked: r.ociImagesChecked, images_corrupted: r.ociImagesCorrupted, errors: j.errors, repo: j };
      },
      HasLayer: async (p) => {
        const repo = this.repo(OCI, p);
        const id = (await existingLayer(repo, digestParam(p.str('diff_id'))))?.streamId;
        return id ? { present: true, layer_verity: id.toString('hex') } : { present: false };
      },
      GetLayer: async (p, ctx) => this.getLayer(p, ctx),
      PutLayer: async (p, ctx) => this.putLayer(p, ctx),
      FinalizeImage: async (p) => this.finalizeImage(p),
    };
  }

  private async pull(p: Params, ctx: CallContext): Promise<Record<string, unknown>> {
    const repo = this.repo(OCI, p);
    const image = withStorageRoot(p.str('image'), p.optStr('storage_root'));
    const name = p.optStr('name');
    const bootable = p.optBool('bootable') ?? false;
    const mode = xattrMode(p);
    const expected = p.optStr('expected_digest');
    if (expected !== undefined) {
      if (!bootable) throw new VarlinkError(`${OCI}.InvalidRequest`, { message: 'expected_digest needs bootable' });
      if (mode !== undefined) throw new VarlinkError(`${OCI}.InvalidRequest`, { message: 'expected_digest and xattrs exclude each other (every xattrs mode is tried)' });
      if (!new RegExp(`^[0-9a-f]{${repo.alg === 'sha256' ? 64 : 128}}$`).test(expected)) {
        throw new VarlinkError(`${OCI}.InvalidDigest`, { message: `invalid expected_digest '${expected}' (expected ${repo.alg} fs-verity digest as hex)` });
      }
    }
    const send = (field: string, value: unknown): void => {
      void ctx.reply({ [field]: value });
    };
    // Progress at most every PROGRESS_INTERVAL_MS per layer: a layer read in 64 KiB pieces would
    // otherwise send thousands of frames.
    const lastProgress = new Map<string, number>();
    const progress: ProgressSink = {
      started: (id, total) => send('started', { id, total, unit: 'Bytes' }),
      progress: (id, fetched) => {
        const now = Date.now();
        if (now - (lastProgress.get(id) ?? 0) < PROGRESS_INTERVAL_MS) return;
        lastProgress.set(id, now);
        send('progress', { id, fetched });
      },
      skipped: (id) => send('skipped', { id }),
      done: (id, transferred) => send('done', { id, transferred }),
      message: (text) => send('message', text),
    };
    const { openImageSource } = await import('../oci/sources.js');
    const { importImage } = await import('../oci/import.js');
    const { manifestContentId, configContentId, tagImage } = await import('../oci/stored.js');
    let completed: Record<string, unknown>;
    try {
      const src = await openImageSource(image, { onWait: (text) => progress.message(text), signal: ctx.signal }).catch((e: unknown) => {
        // The reference names nothing (NoSuchImage) or is not one cfs can read (InvalidRequest).
        if (isCfsError(e) && e.context['missingImage'] !== undefined) throw new VarlinkError(`${OCI}.NoSuchImage`, { image });
        if (isCfsError(e) && (e.code === 'EINVAL' || e.code === 'ENOTSUP' || e.code === 'EPLATFORM')) throw new VarlinkError(`${OCI}.InvalidRequest`, { message: e.message });
        throw e;
      });
      try {
        // Tagged last, and only for a client still there to hear of it: a pull whose caller
        // hung up leaves its data for the next pull (or gc), not a name nobody asked to keep.
        const r = await importImage(repo, src, { progress, localFetch: localFetchOf(p.optStr('local_fetch')), signal: ctx.signal });
        completed = {
          manifest_digest: r.manifestDigest,
          config_digest: r.configDigest,
          stats: `${r.layersImported} layers imported, ${r.layersSkipped} already present`,
        };
      } finally {
        await src.close();
      }
      if (bootable) Object.assign(completed, await this.bootImage(repo, `@${String(completed.manifest_digest)}`, mode, expected, progress));
      // After any boot image rewrite: the streams' current verities.
      completed.manifest_verity = (await repo.hasStream(manifestContentId(String(completed.manifest_digest))))?.toString('hex') ?? '';
      completed.config_verity = (await repo.hasStream(configContentId(String(completed.config_digest))))?.toString('hex') ?? '';
      if (name !== undefined) {
        if (ctx.signal.aborted) throw new VarlinkError(`${OCI}.InternalError`, { message: `the client disconnected: '${name}' not tagged` });
        await tagImage(repo, name, String(completed.manifest_digest));
      }
    } catch (e) {
      // What the client asked for cannot be done (EINVAL: e.g. a bootable image without /sysroot): InvalidRequest.
      throw errorFor(OCI, 'InvalidRequest')(e);
    }
    return { completed };
  }

  /**
   * Pull with bootable: the boot image for `mode` (default AllowlistOnly), recorded in the
   * config stream unless already there. With `expected`, every mode is tried and the one whose
   * image id matches is recorded; none matching is BootImageMismatch.
   */
  private async bootImage(repo: Repository, ref: string, mode: XattrMode | undefined, expected: string | undefined, progress: ProgressSink): Promise<Record<string, unknown>> {
    const { openStoredImage } = await import('../oci/stored.js');
    const { recordBootImage } = await import('../boot/oci-boot.js');
    const erofsVersion = repo.erofsFormats.default;
    const img = await openStoredImage(repo, ref, erofsVersion);
    const tried: string[] = [];
    for (const m of mode ? [mode] : expected ? XATTR_MODES : (['AllowlistOnly'] as const)) {
      const refName = bootRef(erofsVersion, m);
      let hex = await recordedBootImage(repo, img, refName);
      if (hex === null || (expected !== undefined && hex !== expected)) {
        progress.message(`Building boot image (${m})`);
        const erofs = await buildStoredErofs(repo, img, { bootable: true, mode: m });
        hex = imageIdOf(erofs, repo.alg);
        tried.push(hex);
        if (expected !== undefined && hex !== expected) continue;
        await repo.writeImage(erofs);
        await recordBootImage(repo, img, hex, erofsVersion, refName);
      }
      return { boot_image: hex, boot_image_mode: m, boot_image_format_version: formatVersionName(erofsVersion) };
    }
    throw new VarlinkError(`${OCI}.BootImageMismatch`, { expected, tried });
  }

  /** Reply fds (brief 5.2): the repository's objects/ as the one real directory. */
  private async getLayer(p: Params, ctx: CallContext): Promise<FinalReply> {
    const entry = this.entry(OCI, p);
    const repo = entry.repo;
    const lp = p.obj('params');
    const diffId = lp.optStr('diff_id');
    if (diffId === undefined) throw new VarlinkError(`${OCI}.InvalidRequest`, { message: 'GetLayer on a repository needs params.diff_id' });
    if (!DIGEST_RE.test(diffId)) throw new VarlinkError(`${OCI}.InvalidDigest`, { message: `invalid diff_id '${diffId}'` });
    const contentId = layerContentId(diffId);
    const streamId = await repo.hasStream(contentId);
    if (!streamId) throw new VarlinkError(`${OCI}.NoSuchLayer`, { diff_id: diffId });
    // The handle (and so the repository's lock, which keeps gc away) is held until the client
    // closed the keepalive: it may open objects by name until then.
    return replyWithLayer(ctx, OCI, {
      id: contentId,
      dirfds: [openObjectsDir(repo)],
      stream: ([slot]) => produceLayerStream(repo, streamId, slot!, contentId),
      release: this.hold(entry),
      log: (m) => this.server.log(m),
    });
  }

  private async putLayer(p: Params, ctx: CallContext): Promise<Record<string, unknown>> {
    const repo = this.repo(OCI, p);
    const diffId = p.str('diff_id');
    if (!DIGEST_RE.test(diffId)) throw new VarlinkError(`${OCI}.InvalidDigest`, { message: `invalid diff_id '${diffId}'` });
    const zerocopy = p.bool('zerocopy');
    if (ctx.fds.length < 2) throw new VarlinkError(`${OCI}.InvalidRequest`, { message: `PutLayer needs at least 2 fds (stream, directory…), got ${ctx.fds.length}` });
    const fds = ctx.takeFds();
    const [streamFd, ...dirfds] = fds;
    let input: net.Socket | ReadStream;
    try {
      const st = fstatSync(streamFd);
      if (!st.isFile() && !st.isFIFO() && !st.isSocket()) {
        throw new VarlinkError(`${OCI}.InvalidRequest`, { message: `PutLayer: fd 0 (the stream) must be a pipe, a socket or a regular file, not a ${fileKind(st)}` });
      }
      input = st.isFile() ? createReadStream('', { fd: streamFd, autoClose: true }) : new net.Socket({ fd: streamFd, readable: true, writable: false });
    } catch (e) {
      // Taken fds are ours to close, whatever went wrong.
      fds.forEach(closeQuietly);
      throw e instanceof VarlinkError ? e : new VarlinkError(`${OCI}.InvalidRequest`, { message: `PutLayer: fd 0 (the stream) is unusable: ${(e as Error).message}` });
    }
    // Read errors reach the consumer through its iterator; one after the iterator finished
    // (the client vanishing) must not become an uncaught 'error' event.
    input.on('error', () => undefined);
    const abort = (): void => {
      input.destroy();
    };
    ctx.signal.addEventListener('abort', abort, { once: true });
    try {
      const idleMs = this.opts.streamIdleMs ?? DEFAULT_STREAM_IDLE_MS;
      const stalled = (): CfsError => new CfsError('EINVAL', `PutLayer ${diffId}: the client sent nothing on the stream for ${idleMs / 1000} s; giving up`);
      const r = await consumeLayerStream(repo, withIdleLimit(input, idleMs, stalled), dirfds, { diffId, zerocopy });
      return {
        layer_verity: r.streamId.toString('hex'),
        already_present: r.alreadyPresent,
        objects_reflinked: r.objects.reflinked,
        objects_hardlinked: r.objects.hardlinked,
        objects_copied: r.objects.copied,
        objects_already_present: r.objects.present,
      };
    } catch (e) {
      if (isCfsError(e) && e.code === 'EDIGEST') throw new VarlinkError(`${OCI}.DiffIdMismatch`, { expected: diffId, actual: String(e.context.actual ?? '') });
      // What the client sent is wrong (a bad stream, a name that is not there); else the service failed (fds, space, I/O).
      if (isCfsError(e) && CLIENT_FAULTS.has(e.code)) throw new VarlinkError(`${OCI}.InvalidRequest`, { message: e.message });
      if (isCfsError(e)) throw new VarlinkError(`${OCI}.InternalError`, { message: e.message });
      throw e;
    } finally {
      ctx.signal.removeEventListener('abort', abort);
      input.destroy();
      dirfds.forEach(closeQuietly);
    }
  }

  private async finalizeImage(p: Params): Promise<Record<string, unknown>> {
    const repo = this.repo(OCI, p);
    const manifestBytes = Buffer.from(p.str('manifest_json'), 'utf8');
    const configBytes = Buffer.from(p.str('config_json'), 'utf8');
    const given = p.objArray('layers').map((l) => ({ diffId: l.str('diff_id'), verity: l.str('layer_verity') }));
    const name = p.optStr('name');
    const { parseManifest, parseConfig } = await import('../oci/source.js');
    const { isImageConfigMediaType } = await import('../oci/media-types.js');
    const { importImage } = await import('../oci/import.js');
    const { manifestContentId, configContentId } = await import('../oci/stored.js');
    const invalid = (message: string): VarlinkError => new VarlinkError(`${OCI}.InvalidRequest`, { message });
    if (name === '') throw invalid('FinalizeImage: name must not be empty');
    const sha = (b: Buffer): string => `sha256:${createHash('sha256').update(b).digest('hex')}`;
    let manifest;
    let layers: string[];
    try {
      manifest = parseManifest(manifestBytes, 'manifest_json');
      const configDigest = sha(configBytes);
      if (manifest.config.digest !== configDigest) throw invalid(`manifest names config ${manifest.config.digest}, config_json is ${configDigest}`);
      // The image is what manifest and config say; the client's list must agree, layer by layer.
      layers = isImageConfigMediaType(manifest.config.mediaType) ? parseConfig(configBytes, 'config_json', true).rootfs!.diff_ids : manifest.layers.map((l) => l.digest);
    } catch (e) {
      throw e instanceof VarlinkError ? e : invalid((e as Error).message);
    }
    if (layers.length !== manifest.layers.length) throw invalid(`config_json lists ${layers.length} diff_ids but manifest_json has ${manifest.layers.length} layers`);
    if (given.length !== layers.length || given.some((g, i) => g.diffId !== layers[i])) {
      throw invalid(`layers must list the image's ${layers.length} layer${layers.length === 1 ? '' : 's'} in order (${layers.join(', ')}), got ${given.map((g) => g.diffId).join(', ') || 'none'}`);
    }
    for (const g of given) {
      const present = await existingLayer(repo, g.diffId);
      if (!present) throw new VarlinkError(`${OCI}.NoSuchLayer`, { diff_id: g.diffId });
      const verity = present.streamId.toString('hex');
      if (g.verity !== verity) throw invalid(`layer ${g.diffId}: layer_verity ${g.verity} is not the stored layer's ${verity} (as HasLayer and PutLayer report it)`);
    }
    const artifact = !isImageConfigMediaType(manifest.config.mediaType);
    const r = await importImage(repo, {
      description: 'FinalizeImage',
      manifestDigest: sha(manifestBytes),
      manifestBytes,
      configDigest: manifest.config.digest,
      configBytes,
      layers: layers.map((id) => ({ id, size: null, kind: artifact ? 'blob' : 'tar', open: () => { throw new CfsError('ENOENT', `layer ${id} vanished`); } })),
      artifact,
      close: async () => undefined,
    }, { name });
    return {
      manifest_digest: r.manifestDigest,
      manifest_verity: (await repo.hasStream(manifestContentId(r.manifestDigest)))!.toString('hex'),
      config_digest: r.configDigest,
      config_verity: (await repo.hasStream(configContentId(r.configDigest)))!.toString('hex'),
    };
  }
}
