/**
 * Read-only access to a containers-storage store (overlay or vfs driver), laid out as
 * containers/storage writes it (paths relative to the graph root):
 *
 *   storage.lock                          graph driver lock (not needed for reading)
 *   <driver>-images/images.json           [{id, digest, names, layer, big-data-names, big-data-digests, …}]
 *   <driver>-images/images.lock
 *   <driver>-images/<image-id>/<file>     big data; file = key if it is only [.0-9a-z], else "=" + base64(key):
 *                                         `manifest`, `=base64("manifest-sha256:…")`, `=base64("sha256:<config>")`
 *   <driver>-layers/layers.json           [{id, parent, diff-digest, diff-size, compressed-diff-digest, flags, …}]
 *   <driver>-layers/volatile-layers.json  same shape (in <runroot>/<driver>-layers/ for transient stores)
 *   <driver>-layers/layers.lock
 *   <driver>-layers/<layer-id>.tar-split.gz
 *   overlay/<layer-id>/diff/              layer files (overlay); `lower` = "l/<short>:…" for ancestors
 *   overlay/l/<short> -> ../<layer-id>/diff
 *   vfs/dir/<layer-id>/                   the full tree up to that layer (vfs)
 */
import { closeSync, constants as fsc, existsSync, openSync, readdirSync } from 'node:fs';
import { readFile, readlink, readdir, stat } from 'node:fs/promises';
import path from 'node:path';
import { CfsError, errnoCode } from '../../errors.js';
import type { StorageConfig } from './config.js';
import { acquireShared, withSharedLocks, type HeldLock, type LockOptions } from './lock.js';

export type StoreDriver = 'overlay' | 'vfs';
export const SUPPORTED_DRIVERS: readonly StoreDriver[] = ['overlay', 'vfs'];

export interface ImageRecord {
  id: string;
  /** The image's digest (of its main manifest), if recorded. */
  digest: string | null;
  names: string[];
  /** Top layer ID; null for an image without layers. */
  topLayer: string | null;
  bigDataNames: string[];
  bigDataDigests: Record<string, string>;
}

export interface LayerRecord {
  id: string;
  parent: string | null;
  /** Uncompressed digest (= the config's diff_id). */
  diffDigest: string | null;
  diffSize: number | null;
  compressedDigest: string | null;
  /** Set while a layer is being created or deleted; its files are not to be trusted. */
  incomplete: boolean;
}

/** File name of a big-data item (containers/storage makeBigDataBaseName). */
export function bigDataFileName(key: string): string {
  return /^[.0-9a-z]*$/.test(key) ? key : `=${Buffer.from(key, 'utf8').toString('base64')}`;
}

type Obj = Record<string, unknown>;
const isObj = (v: unknown): v is Obj => typeof v === 'object' && v !== null && !Array.isArray(v);

function corrupt(file: string, why: string): CfsError {
  return new CfsError('ECORRUPT', `${file}: ${why}`);
}

function str(o: Obj, key: string, file: string, i: number): string | null {
  const v = o[key];
  if (v === undefined || v === null) return null;
  if (typeof v !== 'string') throw corrupt(file, `entry ${i}: "${key}" is not a string`);
  return v;
}

function strArray(o: Obj, key: string, file: string, i: number): string[] {
  const v = o[key];
  if (v === undefined || v === null) return [];
  if (!Array.isArray(v) || v.some((x) => typeof x !== 'string')) throw corrupt(file, `entry ${i}: "${key}" is not a string array`);
  return v as string[];
}

/** Reads a JSON array of records; a missing file is an empty list, as in containers/storage. */
async function readRecords(file: string): Promise<Obj[]> {
  let text: string;
  try {
    text = await readFile(file, 'utf8');
  } catch (e) {
    if (errnoCode(e) === 'ENOENT') return [];
    throw new CfsError('EIO', `${file}: cannot read: ${(e as Error).message}`);
  }
  if (text.trim() === '') return [];
  let v: unknown;
  try {
    v = JSON.parse(text);
  } catch (e) {
    throw corrupt(file, `invalid JSON: ${(e as Error).message}`);
  }
  if (!Array.isArray(v)) throw corrupt(file, 'not a JSON array');
  return v.map((r, i) => {
    if (!isObj(r) || typeof r['id'] !== 'string' || r['id'] === '') throw corrupt(file, `entry ${i} has no "id"`);
    return r;
  });
}

function parseImage(o: Obj, file: string, i: number): ImageRecord {
  const digests = o['big-data-digests'];
  if (digests !== undefined && digests !== null && (!isObj(digests) || Object.values(digests).some((d) => typeof d !== 'string'))) {
    throw corrupt(file, `entry ${i}: "big-data-digests" is not a string map`);
  }
  return {
    id: o['id'] as string,
    digest: str(o, 'digest', file, i),
    names: strArray(o, 'names', file, i),
    topLayer: str(o, 'layer', file, i),
    bigDataNames: strArray(o, 'big-data-names', file, i),
    bigDataDigests: (digests ?? {}) as Record<string, string>,
  };
}

function parseLayer(o: Obj, file: string, i: number): LayerRecord {
  const size = o['diff-size'];
  if (size !== undefined && size !== null && (typeof size !== 'number' || !Number.isSafeInteger(size) || size < 0)) {
    throw corrupt(file, `entry ${i}: "diff-size" is not a size`);
  }
  const flags = o['flags'];
  return {
    id: o['id'] as string,
    parent: str(o, 'parent', file, i),
    diffDigest: str(o, 'diff-digest', file, i),
    diffSize: typeof size === 'number' ? size : null,
    compressedDigest: str(o, 'compressed-diff-digest', file, i),
    incomplete: isObj(flags) && flags['incomplete'] === true,
  };
}

const SAFE_ID = /^[0-9A-Za-z][0-9A-Za-z_.-]*$/;

function checkId(id: string, what: string): string {
  if (!SAFE_ID.test(id)) throw new CfsError('EINVAL', `containers-storage: invalid ${what} ID "${id}"`);
  return id;
}

export class ContainersStore {
  /** Every store of the configuration, this one included (lower links may point into any of them). */
  stores: readonly ContainersStore[] = [this];
  /** Short link name → diff dir, from every store's overlay/<id>/link files (built on first need). */
  private linkIndex: Promise<Map<string, string>> | null = null;

  constructor(
    /** Graph root (or image store root) of this store. */
    readonly root: string,
    readonly driver: StoreDriver,
    /** Run root, for transient stores' volatile-layers.json; null for additional stores. */
    readonly runRoot: string | null,
    /** An additional (read-only) image store. */
    readonly readOnly: boolean,
    readonly lockOptions: LockOptions = {},
  ) {}

  get description(): string {
    return `containers-storage ${this.driver}@${this.root}`;
  }
  get imagesDir(): string {
    return path.join(this.root, `${this.driver}-images`);
  }

  /** Drivers whose images are in this root when this store's driver has none there (a store spec or config naming the wrong driver). */
  otherDrivers(): string[] {
    if (existsSync(this.imagesDir)) return [];
    try {
      return readdirSync(this.root).filter((n) => n.endsWith('-images') && n !== `${this.driver}-images`).map((n) => n.slice(0, -'-images'.length));
    } catch {
      return [];
    }
  }
  get layersDir(): string {
    return path.join(this.root, `${this.driver}-layers`);
  }
  get imagesLock(): string {
    return path.join(this.imagesDir, 'images.lock');
  }
  get layersLock(): string {
    return path.join(this.layersDir, 'layers.lock');
  }

  /** images.json, read under a shared lock on images.lock. */
  async readImages(): Promise<ImageRecord[]> {
    const file = path.join(this.imagesDir, 'images.json');
    return withSharedLocks([this.imagesLock], this.lockOptions, async () => (await readRecords(file)).map((r, i) => parseImage(r, file, i)));
  }

  /** layers.json plus volatile-layers.json, read under a shared lock on layers.lock. */
  async readLayers(): Promise<Map<string, LayerRecord>> {
    const files = [path.join(this.layersDir, 'layers.json'), path.join(this.layersDir, 'volatile-layers.json')];
    if (this.runRoot) files.push(path.join(this.runRoot, `${this.driver}-layers`, 'volatile-layers.json'));
    return withSharedLocks([this.layersLock], this.lockOptions, async () => {
      const out = new Map<string, LayerRecord>();
      for (const f of files) for (const [i, r] of (await readRecords(f)).entries()) out.set(r['id'] as string, parseLayer(r, f, i));
      return out;
    });
  }

  /** Whether layers.json still records the layer (true when that cannot be told). */
  private async hasLayer(layerId: string): Promise<boolean> {
    try {
      return (await this.readLayers()).has(layerId);
    } catch {
      return true;
    }
  }

  /** Shared lock on layers.lock, to hold while a layer's files are read. */
  lockLayers(): Promise<HeldLock> {
    return acquireShared([this.layersLock], this.lockOptions);
  }

  /** Shared lock on images.lock, to hold while an image's big data is read. */
  lockImages(): Promise<HeldLock> {
    return acquireShared([this.imagesLock], this.lockOptions);
  }

  bigDataPath(imageId: string, key: string): string {
    return path.join(this.imagesDir, checkId(imageId, 'image'), bigDataFileName(key));
  }

  tarSplitPath(layerId: string): string {
    return path.join(this.layersDir, `${checkId(layerId, 'layer')}.tar-split.gz`);
  }

  /** The layer's own file tree (overlay diff/ or vfs dir). */
  layerDir(layerId: string): string {
    checkId(layerId, 'layer');
    return this.driver === 'overlay' ? path.join(this.root, 'overlay', layerId, 'diff') : path.join(this.root, 'vfs', 'dir', layerId);
  }

  /**
   * Whether the layer is stored in composefs form (`use_composefs = "true"`): its diff/ holds
   * content-addressed files and composefs-data/ the EROFS image that names them, so the layer's
   * paths cannot be read from diff/.
   */
  async isComposefsLayer(layerId: string): Promise<boolean> {
    return this.driver === 'overlay' && (await isDir(path.join(this.root, 'overlay', checkId(layerId, 'layer'), 'composefs-data')));
  }

  /**
   * Directories to search for a layer's files, in order: its own, then (overlay) the diff dirs of
   * the layers in its `lower` file, as containers/storage's DiffGetter does for layers whose
   * files may live in an ancestor. A lower may be in another store of the configuration (a base
   * layer in an additional image store); one whose link is found nowhere is left out: lowers are
   * only searched for files missing from the layer's own dir, and such a file is then reported.
   */
  async layerSearchDirs(layerId: string): Promise<string[]> {
    const own = this.layerDir(layerId);
    if (this.driver !== 'overlay') return [own];
    let lower: string;
    try {
      lower = (await readFile(path.join(this.root, 'overlay', layerId, 'lower'), 'utf8')).trim();
    } catch (e) {
      if (errnoCode(e) === 'ENOENT') return [own];
      throw new CfsError('EIO', `${this.description}: layer ${layerId}: cannot read lower: ${(e as Error).message}`);
    }
    const dirs = [own];
    for (const l of lower.split(':').filter(Boolean)) {
      const dir = await this.resolveLowerLink(l);
      if (dir) dirs.push(dir);
    }
    return dirs;
  }

  /** The layer's search directories (layerSearchDirs) and an O_DIRECTORY fd of each; the caller closes the fds. */
  async openLayerDirs(layerId: string): Promise<{ dirs: string[]; dirfds: number[] }> {
    const dirs = (await this.layerSearchDirs(layerId)).map((d) => path.resolve(d));
    const dirfds: number[] = [];
    try {
      for (const d of dirs) dirfds.push(openSync(d, fsc.O_RDONLY | fsc.O_DIRECTORY));
    } catch (e) {
      for (const fd of dirfds) closeSync(fd);
      const code = errnoCode(e);
      if (code === 'ENOENT' && !(await this.hasLayer(layerId))) {
        // Locks are taken per layer (as c/image does), so an image can be deleted between two of its layers.
        throw new CfsError('ENOENT', `${this.description}: layer ${layerId} was removed from the store while the image was being read (podman rmi or skopeo delete?)`);
      }
      const cfsCode = code === 'EACCES' || code === 'EPERM' ? 'EPERM' : code === 'ENOENT' || code === 'ENOTDIR' ? 'ECORRUPT' : 'EIO';
      throw new CfsError(cfsCode, `${this.description}: layer ${layerId}: cannot open its files: ${(e as Error).message}`);
    }
    return { dirs, dirfds };
  }

  /** `l/<short>` → the diff dir it names: the link in any store, else the layer whose `link` file says <short>. */
  private async resolveLowerLink(l: string): Promise<string | null> {
    const short = l.startsWith('l/') ? l.slice(2) : null;
    if (short === null || !SAFE_ID.test(short)) throw new CfsError('ECORRUPT', `${this.description}: invalid lower entry "${l}"`);
    for (const s of this.stores) {
      const link = path.join(s.root, 'overlay', 'l', short);
      try {
        const dir = path.resolve(path.dirname(link), await readlink(link));
        if (await isDir(dir)) return dir;
      } catch (e) {
        if (errnoCode(e) !== 'ENOENT' && errnoCode(e) !== 'EINVAL') throw new CfsError('EIO', `${link}: ${(e as Error).message}`);
      }
    }
    this.linkIndex ??= buildLinkIndex(this.stores);
    return (await this.linkIndex).get(short) ?? null;
  }
}

/** Every overlay layer's short link name (its `link` file) → its diff dir, over all stores. */
async function buildLinkIndex(stores: readonly ContainersStore[]): Promise<Map<string, string>> {
  const out = new Map<string, string>();
  for (const s of stores) {
    const overlay = path.join(s.root, 'overlay');
    let ids: string[];
    try {
      ids = await readdir(overlay);
    } catch {
      continue;
    }
    for (const id of ids) {
      if (id === 'l' || !SAFE_ID.test(id)) continue;
      const short = await readFile(path.join(overlay, id, 'link'), 'utf8').then((t) => t.trim(), () => null);
      if (short && !out.has(short)) out.set(short, path.join(overlay, id, 'diff'));
    }
  }
  return out;
}

async function exists(p: string): Promise<boolean> {
  return stat(p).then(() => true, () => false);
}

async function isDir(p: string): Promise<boolean> {
  try {
    return (await stat(p)).isDirectory();
  } catch (e) {
    if (errnoCode(e) === 'ENOENT' || errnoCode(e) === 'ENOTDIR') return false;
    throw new CfsError('EIO', `${p}: ${(e as Error).message}`);
  }
}

/**
 * The driver of a store: configured, else the one whose `<driver>-images` exists, else overlay
 * (containers/storage's first choice for a graph root that holds nothing yet: its images may
 * then be in the additional image stores).
 */
async function detectDriver(root: string, configured: string | null): Promise<StoreDriver> {
  let driver = configured;
  if (!driver) {
    const names = await readdir(root);
    const found = names.filter((n) => n.endsWith('-images')).map((n) => n.slice(0, -'-images'.length));
    driver = found.find((d) => (SUPPORTED_DRIVERS as readonly string[]).includes(d)) ?? found[0] ?? 'overlay';
  }
  if (!(SUPPORTED_DRIVERS as readonly string[]).includes(driver)) {
    throw new CfsError('ENOTSUP', `containers-storage ${root}: storage driver "${driver}" is not supported (supported: ${SUPPORTED_DRIVERS.join(', ')})`);
  }
  return driver as StoreDriver;
}

/**
 * The stores of a configuration, in search order: the image store (if any), the graph root,
 * then the additional image stores. The graph root must exist.
 */
export async function openStores(cfg: StorageConfig, lockOptions: LockOptions = {}): Promise<ContainersStore[]> {
  const from = cfg.configFile ? ` (configured in ${cfg.configFile})` : '';
  if (!(await isDir(cfg.graphRoot))) {
    const what = (await exists(cfg.graphRoot)) ? 'is not a directory' : 'does not exist';
    throw new CfsError('ENOENT', `containers-storage graph root ${cfg.graphRoot} ${what}${cfg.graphRootFromReference ? ' (given in the reference)' : from}`);
  }
  const driver = await detectDriver(cfg.graphRoot, cfg.driver);
  const stores: ContainersStore[] = [];
  if (cfg.imageStore && (await isDir(cfg.imageStore))) stores.push(new ContainersStore(cfg.imageStore, driver, cfg.runRoot, false, lockOptions));
  stores.push(new ContainersStore(cfg.graphRoot, driver, cfg.transientStore ? cfg.runRoot : null, false, lockOptions));
  for (const extra of cfg.additionalImageStores) {
    if (!(await isDir(extra))) throw new CfsError('ENOENT', `containers-storage additional image store ${extra} does not exist${from}`);
    stores.push(new ContainersStore(extra, driver, null, true, lockOptions));
  }
  for (const s of stores) s.stores = stores;
  return stores;
}
