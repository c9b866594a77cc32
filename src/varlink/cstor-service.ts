/**
 * The containers-storage layer service (brief 5.8): stateless, product `composefs-storage`,
 * org.composefs.Oci with GetLayer only (plus org.varlink.service). It serves a store's layers as
 * splitdirfdstreams over the layer's diff directories, holding the store's layers lock until the
 * client closes the keepalive. cfs runs it as the helper of rootless pulls: inside
 * `podman unshare`, on a socketpair, where the store's files of every mapped id are readable;
 * the client (outside, without DAC override there) gets the bytes of files it could not open
 * itself inline.
 */
import path from 'node:path';
import { CfsError, isCfsError } from '../errors.js';
import { applyStoreSpec, loadStorageConfig } from '../oci/containers-storage/config.js';
import { openStores, type ContainersStore } from '../oci/containers-storage/store.js';
import type { LockOptions } from '../oci/containers-storage/lock.js';
import { openStoreLayerStream } from '../oci/containers-storage/layer-stream.js';
import { layerRegion, replyWithLayer } from './layer-reply.js';
import { FinalReply, VarlinkServer, type CallContext } from './server.js';
import { VarlinkError, type Params } from './protocol.js';
import { errorFor, interfaceText, OCI } from './interfaces.js';

const LAYER_ID_RE = /^[0-9a-f]{64}$/;

export class CstorLayerService {
  readonly server: VarlinkServer;

  constructor(version = 'unknown') {
    this.server = new VarlinkServer({ vendor: 'org.composefs', product: 'composefs-storage', version, url: 'https://github.com/composefs/composefs' });
    this.server.add({
      name: OCI,
      description: interfaceText(OCI),
      methods: { GetLayer: async (p, ctx) => this.getLayer(p, ctx) },
      internalError: errorFor(OCI, 'InvalidRequest'),
    });
  }

  close(): void {
    this.server.close();
  }

  /** `handle` is ignored: the layer is named by params.storage. */
  private async getLayer(p: Params, ctx: CallContext): Promise<FinalReply> {
    const lp = p.obj('params');
    const storage = lp.optObj('storage');
    if (!storage) throw new VarlinkError(`${OCI}.InvalidRequest`, { message: 'the containers-storage service needs params.storage {storage_path, layer_id}' });
    const root = storage.str('storage_path');
    const layerId = storage.str('layer_id');
    if (!LAYER_ID_RE.test(layerId)) throw new VarlinkError(`${OCI}.InvalidRequest`, { message: `invalid storage layer id '${layerId}'` });
    const lacksDac = !(lp.optBool('consumer_has_cap_dac_override') ?? false);
    let store: ContainersStore;
    try {
      // The lock wait ends when the client goes (the pull gave up: --lock-timeout, cancelled).
      store = await storeAt(root, { signal: ctx.signal });
    } catch (e) {
      throw new VarlinkError(`${OCI}.RepoNotFound`, { message: isCfsError(e) ? e.message : String(e) });
    }
    // Held until the client closed the keepalive: it opens the diff files by name until then.
    const lock = await store.lockLayers();
    let dirCount: number;
    try {
      dirCount = (await store.layerSearchDirs(layerId)).length;
      if (!(await store.readLayers()).has(layerId)) throw new CfsError('ENOENT', `layer ${layerId} is not in ${store.description}`);
    } catch (e) {
      lock.release();
      if (isCfsError(e) && (e.code === 'ENOENT' || e.code === 'EIO')) throw new VarlinkError(`${OCI}.NoSuchLayer`, { diff_id: layerId });
      throw e;
    }
    const region = layerRegion(layerId, dirCount);
    const s = await openStoreLayerStream(store, layerId, { slots: region.realSlots, consumerLacksDacOverride: lacksDac }).catch((e: unknown) => {
      lock.release();
      throw e;
    });
    return replyWithLayer(ctx, OCI, {
      id: layerId,
      dirfds: s.dirfds.splice(0),
      stream: () => s.chunks,
      release: () => {
        void s.close().finally(() => lock.release());
      },
      log: (m) => this.server.log(m),
    });
  }
}

/** The store whose graph root is `root`: one of the configuration's (with its other stores, which lower links may name), else that root alone. */
async function storeAt(root: string, lockOptions: LockOptions): Promise<ContainersStore> {
  const cfg = await loadStorageConfig();
  const want = path.resolve(root);
  const configured = await openStores(cfg, lockOptions).catch(() => []);
  const found = configured.find((s) => path.resolve(s.root) === want);
  if (found) return found;
  const alone = await openStores(applyStoreSpec(cfg, { driver: null, graphRoot: want, runRoot: null, options: [] }), lockOptions);
  return alone.find((s) => path.resolve(s.root) === want) ?? alone[0]!;
}
