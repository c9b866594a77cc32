/**
 * Reachability and garbage collection (brief 1.10).
 *
 * Mark: from the named refs (`streams/refs/…`, `images/refs/…`) and explicit roots, through
 * split streams (their object_refs and named refs) and EROFS images (the objects their files
 * redirect to). A named ref that is not a linked stream or image (e.g. a config stream
 * rewritten by prepare-boot leaves the manifest pointing at an older object) is classified by
 * its magic, so nothing a stream can reach is ever lost.
 *
 * Sweep (under the exclusive repository lock, so no importer is between writing an object and
 * referencing it): every unreachable object, leftover temporary files, then the `streams/` and
 * `images/` links whose objects are gone, then refs whose targets are gone.
 *
 * Safety rule: what is missing cannot be protected and does not stop gc; an existing stream or
 * image that cannot be parsed stops it before anything is deleted (its references are unknown).
 */
import { lstat, open, readdir, readlink, rmdir, unlink } from 'node:fs/promises';
import path from 'node:path';
import { CfsError, errnoCode } from '../errors.js';
import { readErofs } from '../erofs/reader.js';
import { CFS_MAGIC, EROFS_MAGIC, SB_OFFSET } from '../erofs/format.js';
import { isReg, sortedEntries, type Inode } from '../tree/inode.js';
import { MAGIC as SPLITSTREAM_MAGIC } from '../splitstream/format.js';
import { SplitStreamReader } from '../splitstream/reader.js';
import { idFromObjectPath, objectRelPath, parseHexId } from './ids.js';
import { TMP_OBJECT_PREFIX } from './objects.js';
import { META_TMP_PREFIX, type Repository } from './repository.js';
import type { LockWaitOptions } from './lock.js';
import { mountedImageIds } from './pins.js';
import { STATE_DEPLOY_DIR } from './location.js';

/** Temporary names writers leave behind when killed (repo root, objects/, objects/XX). */
const ROOT_TMP_PREFIXES = ['.symlink-', META_TMP_PREFIX];
const OBJECTS_TMP_PREFIXES = [TMP_OBJECT_PREFIX];
/** `XX/YYYY.tmp-<hex>` from `mkcomposefs --digest-store` pointed into the objects directory. */
const FANOUT_TMP = /\.tmp-[0-9a-zA-Z]+$/;

export interface RepoProblem {
  kind: string;
  /** Path relative to the repository root. */
  path: string;
  detail: string;
}

export function formatProblem(p: RepoProblem): string {
  return `fsck: ${p.kind}: ${p.path}: ${p.detail}`;
}

export function isTempName(dir: 'root' | 'objects' | 'fanout', name: string): boolean {
  if (dir === 'root') return ROOT_TMP_PREFIXES.some((p) => name.startsWith(p));
  if (dir === 'objects') return OBJECTS_TMP_PREFIXES.some((p) => name.startsWith(p));
  return FANOUT_TMP.test(name);
}

export async function listDirOrEmpty(dir: string): Promise<string[]> {
  try {
    return (await readdir(dir)).sort();
  } catch (e) {
    if (errnoCode(e) === 'ENOENT') return [];
    throw e;
  }
}

async function exists(p: string): Promise<boolean> {
  return lstat(p).then(() => true, () => false);
}

/** A first-level `streams/` or `images/` link: the object it names (null when malformed). */
export async function linkObject(repo: Repository, rel: string): Promise<{ id: Buffer | null; target: string }> {
  const target = await readlink(path.join(repo.path, rel));
  const id = target.startsWith('../objects/') ? idFromObjectPath(target, repo.alg) : null;
  return { id, target };
}

export interface RefLink {
  /** Path of the ref relative to the repository root, e.g. `streams/refs/oci/foo`. */
  rel: string;
  /** Symlink target; null for entries that are neither symlinks nor directories. */
  target: string | null;
  /** The first-level name it points at (basename of the target). */
  name: string | null;
}

/** Every entry under `<kind>/refs/`, recursively (directories are descended, not listed). */
export async function listRefLinks(repo: Repository, kind: 'streams' | 'images'): Promise<RefLink[]> {
  const out: RefLink[] = [];
  const walk = async (rel: string): Promise<void> => {
    for (const name of await listDirOrEmpty(path.join(repo.path, rel))) {
      const r = `${rel}/${name}`;
      const st = await lstat(path.join(repo.path, r));
      if (st.isDirectory()) await walk(r);
      else if (st.isSymbolicLink()) {
        const target = await readlink(path.join(repo.path, r));
        out.push({ rel: r, target, name: path.basename(target) });
      } else out.push({ rel: r, target: null, name: null });
    }
  };
  await walk(`${kind}/refs`);
  return out;
}

/** Whether a ref's target resolves to `<kind>/<name>` (a first-level entry) that exists. */
export async function refResolves(repo: Repository, kind: 'streams' | 'images', ref: RefLink): Promise<boolean> {
  if (ref.target === null || ref.name === null) return false;
  const resolved = path.resolve(path.dirname(path.join(repo.path, ref.rel)), ref.target);
  if (resolved !== path.join(repo.path, kind, ref.name)) return false;
  return exists(resolved);
}

export interface Reachable {
  /** Object ids (hex) that must be kept. */
  objects: Set<string>;
  /** First-level stream names reached. */
  streams: Set<string>;
  /** First-level image names (hex) reached. */
  images: Set<string>;
}

/**
 * Walks the repository graph. `onProblem` receives what cannot be followed; a problem with
 * `fatal` set means an existing object could not be parsed (gc must not proceed).
 */
export class ReachabilityWalker {
  readonly reach: Reachable = { objects: new Set(), streams: new Set(), images: new Set() };
  private readonly repo: Repository;
  private readonly onProblem: (p: RepoProblem, fatal: boolean) => void;
  /** Object hex → first-level stream name, and the image names present. */
  private streamByObject: Map<string, string> | null = null;
  private imageNames: Set<string> | null = null;
  private readonly walkedStreamObjects = new Set<string>();
  private readonly walkedImageObjects = new Set<string>();

  constructor(repo: Repository, onProblem: (p: RepoProblem, fatal: boolean) => void) {
    this.repo = repo;
    this.onProblem = onProblem;
  }

  /** All named refs of both kinds, plus `extraRoots` (first-level stream or image names). */
  async walkAllRoots(extraRoots: string[] = []): Promise<void> {
    for (const kind of ['streams', 'images'] as const) {
      for (const ref of await listRefLinks(this.repo, kind)) await this.walkRef(kind, ref);
    }
    for (const root of extraRoots) await this.walkRoot(root);
  }

  /** A first-level stream or image name given by the user. */
  async walkRoot(name: string): Promise<void> {
    const isStream = name !== 'refs' && !name.includes('/') && (await exists(path.join(this.repo.path, 'streams', name)));
    const isImage = name !== 'refs' && !name.includes('/') && (await exists(path.join(this.repo.path, 'images', name)));
    if (!isStream && !isImage) throw new CfsError('ENOENT', `root '${name}' is neither a stream nor an image in repository ${this.repo.path}`, { root: name });
    if (isStream) await this.walkStream(name);
    if (isImage) await this.walkImage(name);
  }

  async walkRef(kind: 'streams' | 'images', ref: RefLink): Promise<void> {
    if (!(await refResolves(this.repo, kind, ref))) {
      this.onProblem({ kind: ref.target === null ? 'unexpected-file-type' : 'broken-symlink', path: ref.rel, detail: ref.target === null ? 'not a symlink or directory' : `target '${ref.target}' does not exist` }, false);
      return;
    }
    if (kind === 'streams') await this.walkStream(ref.name!);
    else await this.walkImage(ref.name!);
  }

  async walkStream(name: string): Promise<void> {
    if (this.reach.streams.has(name)) return;
    this.reach.streams.add(name);
    const id = await this.firstLevelObject('streams', name);
    if (id) await this.walkStreamObject(id, `streams/${name}`);
  }

  async walkImage(hex: string): Promise<void> {
    if (this.reach.images.has(hex)) return;
    this.reach.images.add(hex);
    const id = await this.firstLevelObject('images', hex);
    if (id) await this.walkImageObject(id, `images/${hex}`);
  }

  /** The object behind a first-level link; problems (not fatal) when it is malformed or dangling. */
  private async firstLevelObject(kind: 'streams' | 'images', name: string): Promise<Buffer | null> {
    const rel = `${kind}/${name}`;
    let link;
    try {
      link = await linkObject(this.repo, rel);
    } catch (e) {
      this.onProblem({ kind: 'entry-not-symlink', path: rel, detail: (e as Error).message }, false);
      return null;
    }
    if (!link.id) {
      this.onProblem({ kind: 'broken-symlink', path: rel, detail: `target '${link.target}' is not an object path` }, false);
      return null;
    }
    if (!(await exists(this.repo.objectPath(link.id)))) {
      this.onProblem({ kind: 'broken-symlink', path: rel, detail: `object ${objectRelPath(link.id)} does not exist` }, false);
      return null;
    }
    return link.id;
  }

  private async walkStreamObject(id: Buffer, label: string): Promise<void> {
    const hex = id.toString('hex');
    this.reach.objects.add(hex);
    if (this.walkedStreamObjects.has(hex)) return;
    this.walkedStreamObjects.add(hex);
    let r: SplitStreamReader;
    try {
      r = await SplitStreamReader.open(this.repo, id, { name: label });
    } catch (e) {
      this.onProblem({ kind: 'stream-open-failed', path: label, detail: (e as Error).message }, true);
      return;
    }
    await r.close();
    for (const o of r.objectRefs) this.reach.objects.add(o.toString('hex'));
    const names = new Map<string, string>();
    for (const [n, ref] of r.namedRefs) names.set(ref.toString('hex'), n);
    for (const ref of r.streamRefs) await this.walkNamedRef(ref, `${label} named ref '${names.get(ref.toString('hex')) ?? '?'}'`, label);
  }

  private async walkNamedRef(id: Buffer, what: string, from: string): Promise<void> {
    const hex = id.toString('hex');
    this.reach.objects.add(hex);
    const streamName = (await this.streamIndex()).get(hex);
    if (streamName !== undefined) return this.walkStream(streamName);
    if ((await this.imageIndex()).has(hex)) return this.walkImage(hex);
    const kind = await this.classify(id);
    if (kind === 'missing') this.onProblem({ kind: 'missing-named-ref', path: from, detail: `${what}: object ${objectRelPath(id)} does not exist` }, false);
    else if (kind === 'stream') await this.walkStreamObject(id, `objects/${objectRelPath(id)}`);
    else if (kind === 'image') await this.walkImageObject(id, `objects/${objectRelPath(id)}`);
  }

  private async walkImageObject(id: Buffer, label: string): Promise<void> {
    const hex = id.toString('hex');
    this.reach.objects.add(hex);
    if (this.walkedImageObjects.has(hex)) return;
    this.walkedImageObjects.add(hex);
    let root: Inode;
    try {
      root = readErofs(await this.repo.readObject(id));
    } catch (e) {
      this.onProblem({ kind: 'image-invalid', path: label, detail: (e as Error).message }, true);
      return;
    }
    for (const { file, id: obj } of imageObjectRefs(root, this.repo.alg)) {
      if (!obj) this.onProblem({ kind: 'image-invalid', path: label, detail: `${file}: backing path is not an object path` }, true);
      else this.reach.objects.add(obj.toString('hex'));
    }
  }

  private async streamIndex(): Promise<Map<string, string>> {
    if (!this.streamByObject) {
      const m = new Map<string, string>();
      for (const name of await listDirOrEmpty(path.join(this.repo.path, 'streams'))) {
        if (name === 'refs') continue;
        const id = await linkObject(this.repo, `streams/${name}`).then((l) => l.id, () => null);
        if (id && !m.has(id.toString('hex'))) m.set(id.toString('hex'), name);
      }
      this.streamByObject = m;
    }
    return this.streamByObject;
  }

  private async imageIndex(): Promise<Set<string>> {
    if (!this.imageNames) this.imageNames = new Set((await listDirOrEmpty(path.join(this.repo.path, 'images'))).filter((n) => n !== 'refs'));
    return this.imageNames;
  }

  /** What an object is, by its magic: a split stream, a composefs image, other data. */
  private async classify(id: Buffer): Promise<'stream' | 'image' | 'data' | 'missing'> {
    let fh;
    try {
      fh = await open(this.repo.objectPath(id), 'r');
    } catch (e) {
      if (errnoCode(e) === 'ENOENT') return 'missing';
      throw e;
    }
    try {
      const head = Buffer.alloc(SB_OFFSET + 4);
      const { bytesRead } = await fh.read(head, 0, head.length, 0);
      if (bytesRead >= SPLITSTREAM_MAGIC.length && head.subarray(0, SPLITSTREAM_MAGIC.length).equals(SPLITSTREAM_MAGIC)) return 'stream';
      if (bytesRead === head.length && head.readUInt32LE(0) === CFS_MAGIC && head.readUInt32LE(SB_OFFSET) === EROFS_MAGIC) return 'image';
      return 'data';
    } finally {
      await fh.close();
    }
  }
}

/**
 * Regular files of an image tree backed by objects: the object their backing path names (null
 * if it names none) and the fs-verity digest the image records for them (null if none).
 */
export function* imageObjectRefs(root: Inode, alg: Repository['alg']): Generator<{ file: string; id: Buffer | null; digest: Buffer | null }> {
  const seen = new Set<Inode>();
  const stack: Array<[string, Inode]> = [['', root]];
  while (stack.length > 0) {
    const [dirPath, dir] = stack.pop()!;
    for (const [name, n] of sortedEntries(dir)) {
      const p = `${dirPath}/${Buffer.from(name, 'latin1').toString('utf8')}`;
      if (n.children) stack.push([p, n]);
      else if (isReg(n) && n.payload !== null && !seen.has(n)) {
        seen.add(n);
        yield { file: p, id: idFromObjectPath(n.payload, alg), digest: n.digest };
      }
    }
  }
}

export interface GcOptions extends LockWaitOptions {
  dryRun?: boolean;
  /** Extra roots: first-level stream or image names. */
  roots?: string[];
  /** Also remove images that are mounted (pins.ts); by default they are kept, as roots. */
  ignoreMounts?: boolean;
  /** Also remove images that have a deployment (`state/deploy/<id>` beside the repository); by default they are kept. */
  ignoreDeployments?: boolean;
}

export interface GcResult {
  dryRun: boolean;
  objectsRemoved: number;
  objectsBytes: number;
  imagesPruned: number;
  streamsPruned: number;
  refsPruned: number;
  tempFilesRemoved: number;
  /** Images kept because they are mounted (and nothing else reaches them): `images/<hex>`. */
  keptMounted: string[];
  /** Images kept because a deployment boots them (prepare-boot's `state/deploy/<hex>`, and nothing else reaches them). */
  keptDeployed: string[];
  /** What was (or, in a dry run, would be) removed, as paths in the repository. */
  removed: { images: string[]; streams: string[]; refs: string[]; objects: string[]; temps: string[] };
}

/** Everything that is unreachable (or a leftover temp file), found by one scan. */
interface Garbage {
  objects: Array<{ rel: string; size: number }>;
  temps: string[];
}

async function findGarbage(repo: Repository, live: Set<string>): Promise<Garbage> {
  const g: Garbage = { objects: [], temps: [] };
  for (const name of await listDirOrEmpty(repo.path)) if (isTempName('root', name)) g.temps.push(name);
  const objectsDir = path.join(repo.path, 'objects');
  for (const xx of await listDirOrEmpty(objectsDir)) {
    if (isTempName('objects', xx)) {
      g.temps.push(`objects/${xx}`);
      continue;
    }
    if (!/^[0-9a-f]{2}$/.test(xx)) continue; // not ours: left alone (brief 1.10)
    for (const rest of await listDirOrEmpty(path.join(objectsDir, xx))) {
      const rel = `objects/${xx}/${rest}`;
      if (isTempName('fanout', rest)) {
        g.temps.push(rel);
        continue;
      }
      const id = parseHexId(xx + rest, repo.alg);
      if (!id) throw new CfsError('ECORRUPT', `${path.join(repo.path, rel)}: unexpected file in the object store (not a ${repo.alg} object name); see 'cfs fsck'`);
      if (!live.has(id.toString('hex'))) g.objects.push({ rel, size: (await lstat(path.join(repo.path, rel))).size });
    }
  }
  return g;
}

async function removeQuietly(p: string): Promise<void> {
  try {
    await unlink(p);
  } catch (e) {
    if (errnoCode(e) !== 'ENOENT') throw e;
  }
}

/** Prune first-level links whose object is gone (or would be), then refs left dangling. */
async function prune(repo: Repository, removed: Set<string>, dryRun: boolean): Promise<{ images: string[]; streams: string[]; refs: string[] }> {
  const names = { images: [] as string[], streams: [] as string[], refs: [] as string[] };
  const gone = new Set<string>();
  for (const kind of ['images', 'streams'] as const) {
    for (const name of await listDirOrEmpty(path.join(repo.path, kind))) {
      if (name === 'refs') continue;
      const rel = `${kind}/${name}`;
      const st = await lstat(path.join(repo.path, rel));
      if (!st.isSymbolicLink()) throw new CfsError('ECORRUPT', `${path.join(repo.path, rel)}: category directory contains non-symlink`);
      const { id } = await linkObject(repo, rel);
      const alive = id !== null && !removed.has(id.toString('hex')) && (await exists(repo.objectPath(id)));
      if (alive) continue;
      gone.add(rel);
      names[kind].push(rel);
      if (!dryRun) await removeQuietly(path.join(repo.path, rel));
    }
  }
  for (const kind of ['images', 'streams'] as const) {
    for (const ref of await listRefLinks(repo, kind)) {
      if (ref.target === null) throw new CfsError('ECORRUPT', `${path.join(repo.path, ref.rel)}: Unexpected file type encountered`);
      const dangling = (ref.name !== null && gone.has(`${kind}/${ref.name}`)) || !(await refResolves(repo, kind, ref));
      if (!dangling) continue;
      names.refs.push(ref.rel);
      if (!dryRun) {
        await removeQuietly(path.join(repo.path, ref.rel));
        await removeEmptyParents(repo, kind, ref.rel);
      }
    }
  }
  return names;
}

/** Ref directories emptied by pruning go too (never `<kind>/refs` itself). */
async function removeEmptyParents(repo: Repository, kind: string, rel: string): Promise<void> {
  const top = `${kind}/refs`;
  for (let dir = path.dirname(rel); dir !== top && dir.startsWith(`${top}/`); dir = path.dirname(dir)) {
    try {
      await rmdir(path.join(repo.path, dir));
    } catch {
      return; // not empty (or already gone)
    }
  }
}

/**
 * Mark from every root, then from the mounted images (image ids) no root reached: those are
 * returned as kept only by their mounts. Any fatal problem aborts with a message naming it.
 */
export async function markLive(
  repo: Repository, roots: string[] = [], mounted: string[] = [], deployed: string[] = [],
): Promise<{ reach: Reachable; keptMounted: string[]; keptDeployed: string[] }> {
  const fatal: RepoProblem[] = [];
  const walker = new ReachabilityWalker(repo, (p, isFatal) => {
    if (isFatal) fatal.push(p);
  });
  await walker.walkAllRoots(roots);
  // Deployments first: the lasting reason an image stays.
  const keep = async (ids: string[]): Promise<string[]> => {
    const kept: string[] = [];
    for (const hex of ids) {
      if (walker.reach.objects.has(hex)) continue;
      kept.push(`images/${hex}`);
      await walker.walkRoot(hex);
    }
    return kept;
  };
  const keptDeployed = await keep(deployed);
  const keptMounted = await keep(mounted);
  if (fatal.length > 0) {
    throw new CfsError('ECORRUPT', `gc: cannot tell what ${fatal[0].path} references (${fatal[0].detail}); nothing was deleted — run 'cfs fsck'`);
  }
  return { reach: walker.reach, keptMounted, keptDeployed };
}

/** The repository's images that are mounted (pins.ts) and still there. */
async function mountedImages(repo: Repository): Promise<string[]> {
  const out: string[] = [];
  for (const hex of mountedImageIds(repo.path)) if (/^[0-9a-f]+$/.test(hex) && (await exists(path.join(repo.path, 'images', hex)))) out.push(hex);
  return out.sort();
}

/**
 * The repository's images that a deployment boots: prepare-boot made `state/deploy/<hex>` beside
 * the repository for each, and setup-root mounts them from there (retiring a deployment is
 * removing its directory).
 */
async function deployedImages(repo: Repository): Promise<string[]> {
  const dir = path.join(path.dirname(repo.path), STATE_DEPLOY_DIR);
  let names: string[];
  try {
    names = await readdir(dir);
  } catch {
    return [];
  }
  const out: string[] = [];
  for (const hex of names) if (/^[0-9a-f]+$/.test(hex) && (await exists(path.join(repo.path, 'images', hex)))) out.push(hex);
  return out.sort();
}

async function collect(repo: Repository, opts: GcOptions): Promise<GcResult> {
  const dryRun = !!opts.dryRun;
  const marked = await markLive(repo, opts.roots, opts.ignoreMounts ? [] : await mountedImages(repo), opts.ignoreDeployments ? [] : await deployedImages(repo));
  const live = marked.reach.objects;
  const { keptMounted, keptDeployed } = marked;
  const garbage = await findGarbage(repo, live);
  const removed = new Set(garbage.objects.map((o) => o.rel.slice('objects/'.length).replace('/', '')));
  // Names first, then what they name: a gc stopped half-way leaves unreferenced objects (the
  // next gc takes them), never a stream or image link to an object already deleted.
  const pruned = await prune(repo, removed, dryRun);
  const prunedCount = pruned.images.length + pruned.streams.length + pruned.refs.length;
  if (!dryRun && prunedCount > 0 && garbage.objects.length > 0) repo.sync();
  let bytes = 0;
  for (const o of garbage.objects) {
    if (!dryRun) await removeQuietly(path.join(repo.path, o.rel));
    bytes += o.size;
  }
  if (!dryRun) for (const t of garbage.temps) await removeQuietly(path.join(repo.path, t));
  if (!dryRun && (garbage.objects.length > 0 || prunedCount > 0)) repo.sync();
  return {
    dryRun,
    objectsRemoved: garbage.objects.length,
    objectsBytes: bytes,
    imagesPruned: pruned.images.length,
    streamsPruned: pruned.streams.length,
    refsPruned: pruned.refs.length,
    tempFilesRemoved: garbage.temps.length,
    keptMounted,
    keptDeployed,
    removed: { ...pruned, objects: garbage.objects.map((o) => o.rel), temps: garbage.temps },
  };
}

/**
 * Garbage-collect the repository. A real run takes the exclusive lock (waiting for every other
 * handle); a dry run only reads, under the shared lock the handle already holds.
 */
export async function collectGarbage(repo: Repository, opts: GcOptions = {}): Promise<GcResult> {
  if (opts.dryRun) return collect(repo, opts);
  await repo.ensureWritable();
  return repo.withExclusiveLock(() => collect(repo, opts), opts);
}

/** cfsctl's text form. */
export function formatGcResult(r: GcResult): string {
  // A dry run says what a real run would do, in the same lines.
  const removed = r.dryRun ? 'would be removed' : 'removed';
  let out = r.dryRun ? 'Dry run (no files deleted):\n' : '';
  out += `Objects: ${r.objectsRemoved} ${removed} (${r.objectsBytes} bytes)\n`;
  if (r.imagesPruned + r.streamsPruned > 0) out += `${r.dryRun ? 'Would prune' : 'Pruned'} symlinks: ${r.imagesPruned} images, ${r.streamsPruned} streams\n`;
  if (r.refsPruned > 0) out += `${r.dryRun ? 'Would prune' : 'Pruned'} refs: ${r.refsPruned}\n`;
  if (r.tempFilesRemoved > 0) out += `Temporary files: ${r.tempFilesRemoved} ${removed}\n`;
  if (r.keptMounted.length > 0) {
    const ids = r.keptMounted.map((p) => p.slice('images/'.length, 'images/'.length + 12)).join(', ');
    out += `Kept ${r.keptMounted.length} mounted image${r.keptMounted.length === 1 ? '' : 's'} that no ref reaches: ${ids} (a gc after the unmount removes ${r.keptMounted.length === 1 ? 'it' : 'them'})\n`;
  }
  if (r.keptDeployed.length > 0) {
    const ids = r.keptDeployed.map((p) => p.slice('images/'.length, 'images/'.length + 12)).join(', ');
    out += `Kept ${r.keptDeployed.length} deployed image${r.keptDeployed.length === 1 ? '' : 's'} that no ref reaches: ${ids} (${STATE_DEPLOY_DIR}/<id> beside the repository boots ${r.keptDeployed.length === 1 ? 'it' : 'them'}; remove that directory to retire a deployment)\n`;
  }
  // A dry run names the images, streams and refs it would remove (objects: see --json).
  if (r.dryRun) for (const rel of [...r.removed.refs, ...r.removed.images, ...r.removed.streams]) out += `  ${rel}\n`;
  return out;
}
