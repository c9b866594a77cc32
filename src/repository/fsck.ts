/**
 * Repository consistency check (brief 1.11, plus the OCI checks of `cfsctl oci fsck`).
 *
 * Phases: meta.json; every object's fs-verity digest against its name (kernel measurement,
 * else userspace hashing on worker threads); every `streams/` link and its split stream
 * (structure, chunk stream, object and named refs, declared size); every `images/` link and its
 * EROFS (parse, backing objects); refs; OCI tags (manifest/config digests, layer refs). With an
 * image tag, only what that tag reaches is checked.
 *
 * A corrupt object (content not of its digest) damages every stream and image that uses it, and
 * the tags using those, as a missing one does. Leftover temporary files of killed writers are
 * counted, not errors. `repair` (exclusive lock) removes them, corrupt objects (every import
 * takes an object that is present for good, so only a missing one is written again) and
 * first-level `streams/` / `images/` links whose object is gone; named refs (tags) are never
 * removed, so a re-pull can restore what they name.
 */
import { createHash } from 'node:crypto';
import { lstat, readFile, rm, unlink } from 'node:fs/promises';
import { closeSync, constants as C, existsSync, fstatSync, lstatSync, openSync, readdirSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { fileURLToPath, pathToFileURL } from 'node:url';
import { Worker } from 'node:worker_threads';
import pLimit from 'p-limit';
import { CfsError, errnoCode, isCfsError } from '../errors.js';
import { fileKind } from '../file-kind.js';
import { atomicSymlink } from './symlink.js';
import type { HashAlg } from '../fsverity/digest.js';
import { measureVerityFd } from '../fsverity/kernel.js';
import { readErofs } from '../erofs/reader.js';
import { CONTENT_TYPES, contentTypeText, contentTypeValue } from '../splitstream/format.js';
import { readExternalSplitStream, SplitStreamReader } from '../splitstream/reader.js';
import { isImageConfigMediaType } from '../oci/media-types.js';
import { parseConfig, parseManifest } from '../oci/source.js';
import { configContentId, encodeTag, imageRefName, TAG_REF_DIR } from '../oci/stored.js';
import { layerContentId } from '../tar/split.js';
import { objectRelPath, parseHexId } from './ids.js';
import { META_FILE, parseMeta } from './meta.js';
import type { Repository } from './repository.js';
import type { LockWaitOptions } from './lock.js';
import { digestObjectFile, type HashWorkerData } from './hash-worker.js';
import {
  formatProblem, imageObjectRefs, isTempName, linkObject, listDirOrEmpty, listRefLinks, ReachabilityWalker, refResolves,
  type RefLink, type RepoProblem,
} from './gc.js';

export interface FsckOptions extends LockWaitOptions {
  /** Check only what this OCI tag reaches. */
  image?: string;
  /** Remove leftover temporary files and dangling first-level links (exclusive lock). */
  repair?: boolean;
  /** Skip phase 1 (reading and hashing every object); streams and images still must find their objects. */
  metadataOnly?: boolean;
  /** Hashing threads (default: number of cores; 1 = hash on the calling thread). */
  parallel?: number;
}

export interface FsckReport {
  ok: boolean;
  hasMetadata: boolean;
  objectsChecked: number;
  objectsCorrupted: number;
  streamsChecked: number;
  streamsCorrupted: number;
  imagesChecked: number;
  imagesCorrupted: number;
  ociImagesChecked: number;
  ociImagesCorrupted: number;
  /** Object contents were not checked (metadataOnly). */
  objectsSkipped: boolean;
  brokenLinks: number;
  missingObjects: number;
  /** Bytes of object data whose digest was checked. */
  bytesChecked: number;
  tempFiles: number;
  /** Paths (relative to the repository) removed by `repair`. */
  repaired: string[];
  /** Layer stream names `repair` linked again to the object their image's config names. */
  relinked: string[];
  errors: RepoProblem[];
}

/** Pool of hashing workers (see hash-worker.ts). */
class HashPool {
  private readonly workers: Worker[] = [];
  private readonly pending = new Map<number, { resolve: (b: Buffer) => void; reject: (e: Error) => void }>();
  private seq = 0;
  private closing = false;

  constructor(alg: HashAlg, n: number) {
    // Same extension as this module. Under tsx (sources) the worker must register tsx itself:
    // Node 20 does not pass --import hooks on to worker threads.
    const self = fileURLToPath(import.meta.url);
    const entry = JSON.stringify(pathToFileURL(path.join(path.dirname(self), `hash-worker${path.extname(self)}`)).href);
    const code = path.extname(self) === '.ts'
      ? `import(${JSON.stringify(import.meta.resolve('tsx/esm/api'))}).then((t) => { t.register(); return import(${entry}); })`
      : `import(${entry})`;
    const fail = (e: Error): void => {
      for (const p of this.pending.values()) p.reject(e);
      this.pending.clear();
    };
    for (let i = 0; i < n; i++) {
      const w = new Worker(code, { eval: true, workerData: { cfsHashWorker: true, alg } satisfies HashWorkerData });
      w.on('message', (m: { seq: number; hex?: string; error?: string }) => {
        const p = this.pending.get(m.seq);
        this.pending.delete(m.seq);
        if (m.hex !== undefined) p?.resolve(Buffer.from(m.hex, 'hex'));
        else p?.reject(new Error(m.error ?? 'hash worker failed'));
      });
      w.on('error', fail);
      w.on('exit', (code) => {
        if (!this.closing) fail(new Error(`hash worker exited with code ${code}`));
      });
      this.workers.push(w);
    }
  }

  digest(file: string): Promise<Buffer> {
    const seq = this.seq++;
    return new Promise((resolve, reject) => {
      this.pending.set(seq, { resolve, reject });
      this.workers[seq % this.workers.length].postMessage({ seq, path: file });
    });
  }

  async close(): Promise<void> {
    this.closing = true;
    await Promise.all(this.workers.map((w) => w.terminate()));
  }
}

function sha(alg: string, data: Buffer): string {
  return `${alg}:${createHash(alg).update(data).digest('hex')}`;
}

class Checker {
  readonly report: FsckReport = {
    ok: false, hasMetadata: false, objectsChecked: 0, objectsCorrupted: 0, streamsChecked: 0, streamsCorrupted: 0,
    imagesChecked: 0, imagesCorrupted: 0, ociImagesChecked: 0, ociImagesCorrupted: 0, objectsSkipped: false, brokenLinks: 0, missingObjects: 0,
    bytesChecked: 0, tempFiles: 0, repaired: [], relinked: [], errors: [],
  };
  private readonly repo: Repository;
  private readonly opts: FsckOptions;
  /** Object sizes by hex id, once objects/ was scanned (null: stat on demand). */
  private sizes: Map<string, number> | null = null;
  private readonly missing = new Set<string>();
  /**
   * Streams and images (first-level names) found damaged, so the OCI tags using them are too;
   * true when only objects are missing (which pulling the image again restores).
   */
  private readonly damaged = new Map<string, Damage>();
  /** Corrupt objects left in place (hex id → what is wrong with them). */
  private readonly corrupt = new Map<string, string>();

  private noteDamage(rel: string, before: number): void {
    const kinds = this.report.errors.slice(before).map((e) => e.kind);
    const only = (set: readonly string[]): boolean => kinds.every((k) => set.includes(k));
    // A corrupt image object itself: the next pull checks it and writes it again.
    // A missing or corrupt image object, or a broken image link: the next pull writes the image
    // and its link again.
    const imageItself = rel.startsWith('images/') && only(['corrupt-object', 'broken-symlink']);
    this.damaged.set(rel, only(MISSING_KINDS) || imageItself ? 'missing' : only([...MISSING_KINDS, ...CORRUPT_KINDS]) ? 'corrupt' : 'other');
  }

  /** What to do about a damaged layer or image a tag uses. */
  private remedy(rel: string): string {
    switch (this.damaged.get(rel)) {
      case 'missing':
        return 'pull the image again to repair it';
      case 'corrupt':
        return 'run `cfs fsck --repair` (it removes corrupt objects), then pull the image again';
      default:
        return 'untag it, run gc, and pull it again';
    }
  }

  /** A problem naming `id` when it is a corrupt object (checked in phase 1); true if it is. */
  private corruptRef(kind: string, rel: string, id: Buffer, what: string): boolean {
    const why = this.corrupt.get(id.toString('hex'));
    if (why === undefined) return false;
    this.problem(kind, rel, `${what}object ${objectRelPath(id)} is corrupt (${why})`);
    return true;
  }
  /** False once the filesystem said it has no fs-verity (then hash in userspace only). */
  private kernelVerity = true;

  constructor(repo: Repository, opts: FsckOptions) {
    this.repo = repo;
    this.opts = opts;
  }

  problem(kind: string, rel: string, detail: string): void {
    this.report.errors.push({ kind, path: rel, detail });
  }

  /** Size of an object, or -1 when it does not exist (then counted as missing). */
  private async objectSize(id: Buffer): Promise<number> {
    const hex = id.toString('hex');
    let size = this.sizes ? (this.sizes.get(hex) ?? -1) : await lstat(this.repo.objectPath(id)).then((s) => s.size, () => -1);
    if (size < 0) this.missing.add(hex);
    return size;
  }

  async run(): Promise<FsckReport> {
    this.report.objectsSkipped = !!this.opts.metadataOnly;
    await this.checkMeta();
    if (this.opts.image !== undefined) await this.checkOneImage(this.opts.image);
    else await this.checkAll();
    const r = this.report;
    r.missingObjects = this.missing.size;
    r.ok = r.errors.length === 0;
    return r;
  }

  private async checkAll(): Promise<void> {
    await this.checkTempFiles();
    if (!this.report.objectsSkipped) await this.checkObjects(null);
    for (const name of await listDirOrEmpty(path.join(this.repo.path, 'streams'))) if (name !== 'refs') await this.checkStream(name);
    for (const name of await listDirOrEmpty(path.join(this.repo.path, 'images'))) if (name !== 'refs') await this.checkImage(name);
    for (const kind of ['streams', 'images'] as const) for (const ref of await listRefLinks(this.repo, kind)) await this.checkRef(kind, ref);
    for (const ref of await listRefLinks(this.repo, 'streams')) {
      if (ref.rel.startsWith(`streams/refs/${TAG_REF_DIR}/`) && ref.name !== null) await this.checkTag(ref);
    }
  }

  private async checkOneImage(tag: string): Promise<void> {
    const rel = `streams/refs/${TAG_REF_DIR}/${encodeTag(tag)}`;
    const ref = (await listRefLinks(this.repo, 'streams')).find((r) => r.rel === rel);
    // A name that is not a tag is a mistake in the command, not damage to report.
    if (!ref) throw new CfsError('ENOENT', `image '${tag}' is not tagged in repository ${this.repo.path} (fsck IMAGE takes a tag; see 'cfs oci images')`);
    // What the walker cannot follow (dangling links, unreadable streams) the checks below report.
    const walker = new ReachabilityWalker(this.repo, () => undefined);
    await this.checkRef('streams', ref);
    if (ref.name !== null && (await refResolves(this.repo, 'streams', ref))) await walker.walkStream(ref.name);
    const reach = walker.reach;
    if (!this.report.objectsSkipped) await this.checkObjects([...reach.objects].sort());
    for (const name of [...reach.streams].sort()) await this.checkStream(name);
    for (const name of [...reach.images].sort()) await this.checkImage(name);
    if (ref.name !== null) await this.checkTag(ref);
  }

  // ---- phase 0 ---------------------------------------------------------------------------

  private async checkMeta(): Promise<void> {
    let text: string;
    try {
      text = await readFile(path.join(this.repo.path, META_FILE), 'utf8');
    } catch (e) {
      this.problem('metadata-parse-failed', META_FILE, errnoCode(e) === 'ENOENT' ? 'file is missing' : (e as Error).message);
      return;
    }
    this.report.hasMetadata = true;
    try {
      const meta = parseMeta(text, META_FILE);
      if (meta.alg !== this.repo.alg) this.problem('metadata-algorithm-mismatch', META_FILE, `algorithm is now ${meta.alg}, the repository was opened as ${this.repo.alg}`);
    } catch (e) {
      this.problem('metadata-parse-failed', META_FILE, (e as Error).message);
    }
  }

  // ---- phase 1 ---------------------------------------------------------------------------

  private async checkTempFiles(): Promise<void> {
    const temps: string[] = [];
    for (const name of await listDirOrEmpty(this.repo.path)) if (isTempName('root', name)) temps.push(name);
    for (const name of await listDirOrEmpty(path.join(this.repo.path, 'objects'))) if (isTempName('objects', name)) temps.push(`objects/${name}`);
    this.report.tempFiles += temps.length;
    for (const t of temps) await this.repair(t);
  }

  /** Check all objects (null: scan objects/) or the given ids (hex). */
  private async checkObjects(only: string[] | null): Promise<void> {
    const todo: Array<{ id: Buffer; rel: string }> = [];
    if (only) {
      for (const hex of only) {
        const id = Buffer.from(hex, 'hex');
        if ((await this.objectSize(id)) >= 0) todo.push({ id, rel: `objects/${objectRelPath(id)}` });
      }
    } else {
      this.sizes = new Map();
      let otherAlg = 0;
      const other: HashAlg = this.repo.alg === 'sha256' ? 'sha512' : 'sha256';
      for (const xx of await listDirOrEmpty(path.join(this.repo.path, 'objects'))) {
        if (isTempName('objects', xx)) continue;
        const dirRel = `objects/${xx}`;
        const st = await lstat(path.join(this.repo.path, dirRel));
        if (!/^[0-9a-f]{2}$/.test(xx) || !st.isDirectory()) {
          this.problem('object-invalid-name', dirRel, 'not an object fan-out directory');
          continue;
        }
        for (const rest of readdirSync(path.join(this.repo.path, dirRel)).sort()) {
          const rel = `${dirRel}/${rest}`;
          if (isTempName('fanout', rest)) {
            this.report.tempFiles++;
            await this.repair(rel);
            continue;
          }
          const id = parseHexId(xx + rest, this.repo.alg);
          if (!id) {
            if (parseHexId(xx + rest, other)) otherAlg++;
            this.problem('object-invalid-name', rel, `not a ${this.repo.alg} object name`);
            continue;
          }
          const ost = lstatSync(path.join(this.repo.path, rel));
          if (!ost.isFile()) {
            // Corrupt like an object with the wrong content: every import takes a name that is
            // present for the object, so only removing it lets the next pull write it again.
            this.report.objectsChecked++;
            this.report.objectsCorrupted++;
            this.problem('object-not-regular', rel, `not a regular file but a ${fileKind(ost)}`);
            await this.damagedObject(rel, id, `it is a ${fileKind(ost)}, not a regular file`, { directory: ost.isDirectory() });
            continue;
          }
          this.sizes.set(id.toString('hex'), ost.size);
          todo.push({ id, rel });
        }
      }
      if (otherAlg > 0) this.problem('metadata-algorithm-mismatch', META_FILE, `algorithm is ${this.repo.alg}, but ${otherAlg} object(s) are named by ${other} digests`);
    }
    const threads = Math.max(1, this.opts.parallel ?? os.availableParallelism());
    const pool = threads > 1 && todo.length > 1 ? new HashPool(this.repo.alg, threads) : null;
    const limit = pLimit(threads * 4);
    try {
      await Promise.all(todo.map((o) => limit(() => this.checkObject(o.id, o.rel, pool))));
    } finally {
      await pool?.close();
    }
  }

  private async checkObject(id: Buffer, rel: string, pool: HashPool | null): Promise<void> {
    const file = path.join(this.repo.path, rel);
    this.report.objectsChecked++;
    const bad = (kind: string, detail: string): void => {
      this.report.objectsCorrupted++;
      this.problem(kind, rel, detail);
    };
    // Synchronous open/measure/close: objects are mostly small and page-cached, where the
    // thread-pool round trips of async I/O cost more than the work.
    let actual: Buffer | null = null;
    let fd: number;
    try {
      fd = openSync(file, C.O_RDONLY);
    } catch (e) {
      bad('object-open-failed', (e as Error).message);
      return this.damagedObject(rel, id, `it cannot be read: ${errnoCode(e) ?? (e as Error).message}`);
    }
    try {
      this.report.bytesChecked += fstatSync(fd).size;
      try {
        if (this.kernelVerity) {
          const m = measureVerityFd(fd, rel);
          if (m.alg !== this.repo.alg) return bad('object-digest-mismatch', `fs-verity uses ${m.alg}, the repository ${this.repo.alg}`);
          actual = m.digest;
        }
      } catch (e) {
        if (!(isCfsError(e) && (e.code === 'ENOENT' || e.code === 'ENOTSUP'))) throw e;
        if (e.code === 'ENOTSUP') this.kernelVerity = false; // the filesystem has none: no object has it
      }
      if (!actual && this.repo.secure) return bad('object-verity-missing', 'fs-verity is not enabled on this object of a secure repository');
    } finally {
      closeSync(fd);
    }
    if (!actual) {
      try {
        actual = pool ? await pool.digest(file) : digestObjectFile(file, this.repo.alg);
      } catch (e) {
        return bad('object-verity-failed', (e as Error).message);
      }
    }
    if (actual.equals(id)) return;
    bad('object-digest-mismatch', `content has fs-verity digest ${actual.toString('hex')}`);
    await this.damagedObject(rel, id, 'its content does not have that digest');
  }

  /**
   * An object that is not what its name says. Removed by repair: then missing, which pulling
   * (or copying) the image again restores, since an object that is present counts as good to
   * every import. Otherwise kept as corrupt, and put on every stream and image using it.
   */
  private async damagedObject(rel: string, id: Buffer, why: string, opts: { directory?: boolean } = {}): Promise<void> {
    const hex = id.toString('hex');
    if (await this.repair(rel, opts)) {
      this.sizes?.delete(hex);
      return;
    }
    // Present to its users (corrupt, not missing); no size to check streams against.
    if (this.sizes && !this.sizes.has(hex)) this.sizes.set(hex, 0);
    this.corrupt.set(hex, why);
  }

  // ---- phase 2 and 3: first-level links ----------------------------------------------------

  /** The object a first-level link names, or null after reporting why there is none. */
  private async firstLevel(kind: 'streams' | 'images', name: string): Promise<Buffer | null> {
    const rel = `${kind}/${name}`;
    let st;
    try {
      st = await lstat(path.join(this.repo.path, rel));
    } catch (e) {
      this.problem('stat-failed', rel, (e as Error).message);
      return null;
    }
    if (!st.isSymbolicLink()) {
      this.problem('entry-not-symlink', rel, 'not a symlink');
      return null;
    }
    const { id, target } = await linkObject(this.repo, rel);
    if (!id) {
      this.report.brokenLinks++;
      this.problem('broken-symlink', rel, `target '${target}' is not an object path`);
      return null;
    }
    if ((await this.objectSize(id)) < 0) {
      this.report.brokenLinks++;
      if (!(await this.repair(rel))) this.problem('broken-symlink', rel, `object ${objectRelPath(id)} does not exist`);
      return null;
    }
    if (this.corruptRef('corrupt-object', rel, id, '')) return null;
    return id;
  }

  private async checkStream(name: string): Promise<void> {
    const rel = `streams/${name}`;
    const before = this.report.errors.length;
    this.report.streamsChecked++;
    const id = await this.firstLevel('streams', name);
    if (id) await this.checkStreamObject(id, rel, name);
    if (this.report.errors.length > before) {
      this.report.streamsCorrupted++;
      this.noteDamage(rel, before);
    }
  }

  private async checkStreamObject(id: Buffer, rel: string, name: string): Promise<void> {
    const expectedType = name.startsWith('oci-manifest-') ? [CONTENT_TYPES.manifest]
      : name.startsWith('oci-config-') ? [CONTENT_TYPES.config]
        : name.startsWith('oci-layer-') ? [CONTENT_TYPES.layer, CONTENT_TYPES.blob] : null;
    let r: SplitStreamReader;
    try {
      r = await SplitStreamReader.open(this.repo, id, { name: rel });
    } catch (e) {
      this.problem('stream-open-failed', rel, (e as Error).message);
      return;
    }
    try {
      if (expectedType && !expectedType.some((t) => contentTypeValue(t) === r.contentType)) {
        this.problem('stream-content-type', rel, `content type ${contentTypeText(r.contentType)}, expected ${expectedType.join(' or ')}`);
      }
      let complete = true;
      for (const o of r.objectRefs) {
        if ((await this.objectSize(o)) < 0) {
          complete = false;
          this.problem('missing-object-ref', rel, `object ${objectRelPath(o)} does not exist`);
        } else if (this.corruptRef('corrupt-object-ref', rel, o, '')) complete = false; // its size says nothing
      }
      for (const [refName, o] of r.namedRefs) {
        if ((await this.objectSize(o)) < 0) this.problem('missing-named-ref', rel, `named ref '${refName}': object ${objectRelPath(o)} does not exist`);
      }
      let size = 0;
      try {
        for (let c = await r.next(); c; c = await r.next()) size += c.kind === 'inline' ? c.data.length : Math.max(0, await this.objectSize(c.id));
      } catch (e) {
        this.problem('stream-read-failed', rel, (e as Error).message);
        return;
      }
      if (complete && size !== r.streamSize) this.problem('stream-size-mismatch', rel, `chunks add up to ${size} bytes, the header says ${r.streamSize}`);
    } finally {
      await r.close();
    }
  }

  private async checkImage(hex: string): Promise<void> {
    const rel = `images/${hex}`;
    const before = this.report.errors.length;
    this.report.imagesChecked++;
    const id = await this.firstLevel('images', hex);
    if (id) {
      if (id.toString('hex') !== hex) this.problem('image-name-mismatch', rel, `links to object ${objectRelPath(id)}, not to the object of that name`);
      await this.checkImageObject(id, rel);
    }
    if (this.report.errors.length > before) {
      this.report.imagesCorrupted++;
      this.noteDamage(rel, before);
    }
  }

  private async checkImageObject(id: Buffer, rel: string): Promise<void> {
    let root;
    try {
      root = readErofs(await this.repo.readObject(id));
    } catch (e) {
      this.problem('image-invalid', rel, (e as Error).message);
      return;
    }
    for (const f of imageObjectRefs(root, this.repo.alg)) {
      if (!f.id) this.problem('image-invalid', rel, `${f.file}: backing path is not an object path`);
      else if (f.digest && !f.digest.equals(f.id)) this.problem('image-invalid', rel, `${f.file}: recorded digest differs from its backing object ${objectRelPath(f.id)}`);
      else if ((await this.objectSize(f.id)) < 0) this.problem('image-missing-object', rel, `${f.file}: object ${objectRelPath(f.id)} does not exist`);
      else this.corruptRef('image-corrupt-object', rel, f.id, `${f.file}: `);
    }
  }

  private async checkRef(kind: 'streams' | 'images', ref: RefLink): Promise<void> {
    if (ref.target === null) this.problem('unexpected-file-type', ref.rel, 'not a symlink or directory');
    else if (!(await refResolves(this.repo, kind, ref))) {
      this.report.brokenLinks++;
      this.problem('broken-symlink', ref.rel, `target '${ref.target}' does not exist`);
    }
  }

  // ---- phase 4: OCI tags -----------------------------------------------------------------

  private async checkTag(ref: RefLink): Promise<void> {
    const before = this.report.errors.length;
    this.report.ociImagesChecked++;
    await this.checkTagContent(ref);
    if (this.report.errors.length > before) this.report.ociImagesCorrupted++;
  }

  private async checkTagContent(ref: RefLink): Promise<void> {
    const target = ref.name!;
    if (!target.startsWith('oci-manifest-')) {
      this.problem('invalid-tag-target', ref.rel, `points at '${target}', not a manifest stream`);
      return;
    }
    const manifestStream = await this.repo.hasStream(target).catch(() => null);
    if (!manifestStream || (await this.objectSize(manifestStream)) < 0) return; // reported with the link
    const digest = target.slice('oci-manifest-'.length);
    const alg = digest.split(':')[0];
    if (!['sha256', 'sha384', 'sha512'].includes(alg)) {
      this.problem('manifest-digest-mismatch', ref.rel, `unsupported digest '${digest}'`);
      return;
    }
    let m;
    try {
      m = await readExternalSplitStream(this.repo, manifestStream, { name: target, expectedContentType: CONTENT_TYPES.manifest });
    } catch (e) {
      this.problem('manifest-read-failed', `streams/${target}`, (e as Error).message);
      return;
    }
    if (sha(alg, m.data) !== digest) {
      this.problem('manifest-digest-mismatch', `streams/${target}`, `content has digest ${sha(alg, m.data)}`);
      return;
    }
    let manifest;
    try {
      manifest = parseManifest(m.data, `manifest ${digest}`);
    } catch (e) {
      this.problem('manifest-parse-failed', `streams/${target}`, (e as Error).message);
      return;
    }
    const configDigest = manifest.config.digest;
    const configStream = m.namedRefs.get(`config:${configDigest}`);
    if (!configStream) {
      this.problem('config-ref-missing', `streams/${target}`, `no named ref 'config:${configDigest}'`);
      return;
    }
    let c;
    try {
      c = await readExternalSplitStream(this.repo, configStream, { name: configContentId(configDigest), expectedContentType: CONTENT_TYPES.config });
    } catch (e) {
      this.problem('config-read-failed', `streams/${configContentId(configDigest)}`, (e as Error).message);
      return;
    }
    const calg = configDigest.split(':')[0];
    if (!['sha256', 'sha384', 'sha512'].includes(calg) || sha(calg, c.data) !== configDigest) {
      this.problem('config-digest-mismatch', `streams/${configContentId(configDigest)}`, `content has digest ${sha('sha256', c.data)}`);
      return;
    }
    const artifact = !isImageConfigMediaType(manifest.config.mediaType);
    if (artifact) {
      for (const l of manifest.layers) {
        const o = m.namedRefs.get(l.digest);
        if (!o) this.problem('artifact-layer-ref-missing', `streams/${target}`, `no named ref '${l.digest}'`);
        else if ((await this.objectSize(o)) < 0) this.problem('artifact-layer-object-missing', `streams/${target}`, `${l.digest}: object ${objectRelPath(o)} does not exist`);
      }
      return;
    }
    let config;
    try {
      config = parseConfig(c.data, `config ${configDigest}`, true);
    } catch (e) {
      this.problem('config-parse-failed', `streams/${configContentId(configDigest)}`, (e as Error).message);
      return;
    }
    for (const diffId of config.rootfs?.diff_ids ?? []) {
      const o = c.namedRefs.get(diffId);
      const present = o !== undefined && (await this.objectSize(o)) >= 0;
      if (!o) this.problem('layer-ref-missing', `streams/${configContentId(configDigest)}`, `no named ref '${diffId}'`);
      else if (!present) this.problem('layer-object-missing', `streams/${configContentId(configDigest)}`, `${diffId}: object ${objectRelPath(o)} does not exist`);
      if (!(await this.repo.hasStream(layerContentId(diffId)).catch(() => null))) {
        const rel = `streams/${layerContentId(diffId)}`;
        // The config still names the layer's stream object: its name can be given back.
        if (present && this.opts.repair) {
          await atomicSymlink(this.repo.path, rel, `objects/${objectRelPath(o)}`);
          this.report.relinked.push(rel);
        } else {
          this.problem('layer-stream-missing', rel, `layer of image '${ref.rel}' is not in the repository${present ? ' under its name (`cfs fsck --repair` links it again)' : ''}`);
        }
      } else if (this.damaged.has(`streams/${layerContentId(diffId)}`)) {
        this.problem('layer-damaged', ref.rel, `layer ${diffId} is damaged (see streams/${layerContentId(diffId)}); ${this.remedy(`streams/${layerContentId(diffId)}`)}`);
      }
    }
    const image = c.namedRefs.get(imageRefName(this.repo.erofsFormats.default));
    if (image && !(await lstat(path.join(this.repo.path, 'images', image.toString('hex'))).then(() => true, () => false))) {
      this.problem('image-missing', `images/${image.toString('hex')}`, `composefs image of '${ref.rel}' is not linked under images/`);
    } else if (image && this.damaged.has(`images/${image.toString('hex')}`)) {
      const rel = `images/${image.toString('hex')}`;
      this.problem('image-damaged', ref.rel, `its composefs image ${image.toString('hex')} is damaged (see ${rel}); ${this.remedy(rel)}`);
    }
  }

  /** Remove a leftover (repair mode only). Returns whether it was removed. */
  private async repair(rel: string, opts: { directory?: boolean } = {}): Promise<boolean> {
    if (!this.opts.repair) return false;
    try {
      // A directory where an object belongs goes with whatever it holds: nothing in objects/ is a tree.
      if (opts.directory) await rm(path.join(this.repo.path, rel), { recursive: true, force: true });
      else await unlink(path.join(this.repo.path, rel));
    } catch (e) {
      if (errnoCode(e) !== 'ENOENT') throw e;
    }
    this.report.repaired.push(rel);
    return true;
  }
}

/** Problems that pulling the image again repairs: missing objects… */
const MISSING_KINDS = ['missing-object-ref', 'image-missing-object'] as const;
/** …and corrupt ones, once `--repair` has removed them. */
const CORRUPT_KINDS = ['corrupt-object', 'corrupt-object-ref', 'image-corrupt-object'] as const;
type Damage = 'missing' | 'corrupt' | 'other';

/**
 * Check the repository (or what one OCI tag reaches). With `repair`, runs under the exclusive
 * lock (so no writer's temporary files are in use) and removes leftovers.
 */
export async function fsck(repo: Repository, opts: FsckOptions = {}): Promise<FsckReport> {
  if (!opts.repair) return new Checker(repo, opts).run();
  await repo.ensureWritable();
  return repo.withExclusiveLock(async () => {
    const r = await new Checker(repo, opts).run();
    if (r.repaired.length > 0) repo.sync();
    return r;
  }, opts);
}

function ratio(total: number, bad: number): string {
  return `${total - bad}/${total} ok`;
}

/** The text report: cfsctl's summary lines, then one line per problem. */
export function formatFsckReport(r: FsckReport): string {
  const lines = [
    `meta.json: ${!r.hasMetadata ? 'absent' : r.errors.some((e) => e.path === META_FILE) ? 'error' : 'ok'}`,
    `objects: ${r.objectsSkipped ? 'not checked (--metadata-only)' : ratio(r.objectsChecked, r.objectsCorrupted)}`,
    `streams: ${ratio(r.streamsChecked, r.streamsCorrupted)}`,
    `images: ${ratio(r.imagesChecked, r.imagesCorrupted)}`,
    `oci images: ${ratio(r.ociImagesChecked, r.ociImagesCorrupted)}`,
  ];
  if (r.brokenLinks > 0) lines.push(`broken symlinks: ${r.brokenLinks}`);
  if (r.missingObjects > 0) lines.push(`missing objects: ${r.missingObjects}`);
  if (r.tempFiles > 0) lines.push(`temporary files: ${r.tempFiles}${r.repaired.length > 0 ? '' : ' (removed by gc or fsck --repair)'}`);
  for (const p of r.repaired) lines.push(`repaired: removed ${p}`);
  for (const p of r.relinked) lines.push(`repaired: linked ${p} again`);
  lines.push(r.ok ? 'status: ok' : `status: ${r.errors.length} error(s)`);
  for (const e of r.errors) lines.push(`  - ${formatProblem(e)}`);
  return `${lines.join('\n')}\n`;
}

/** The varlink FsckReply shape (brief 5.5) plus cfs's extra counters. */
export function fsckReportJson(r: FsckReport): Record<string, unknown> {
  return {
    ok: r.ok,
    has_metadata: r.hasMetadata,
    objects_checked: r.objectsChecked,
    objects_corrupted: r.objectsCorrupted,
    streams_checked: r.streamsChecked,
    streams_corrupted: r.streamsCorrupted,
    images_checked: r.imagesChecked,
    images_corrupted: r.imagesCorrupted,
    broken_links: r.brokenLinks,
    missing_objects: r.missingObjects,
    errors: r.errors.map(formatProblem),
    oci_images_checked: r.ociImagesChecked,
    oci_images_corrupted: r.ociImagesCorrupted,
    metadata_only: r.objectsSkipped,
    temp_files: r.tempFiles,
    repaired: r.repaired,
    relinked: r.relinked,
    problems: r.errors,
  };
}

/** A report for a repository whose meta.json cannot be read (the handle cannot be opened). */
export function metadataFailureReport(repoPath: string, e: unknown): FsckReport {
  const detail = (e as Error).message;
  return {
    ok: false, hasMetadata: existsSync(path.join(repoPath, META_FILE)), objectsChecked: 0, objectsCorrupted: 0, streamsChecked: 0, streamsCorrupted: 0,
    imagesChecked: 0, imagesCorrupted: 0, ociImagesChecked: 0, ociImagesCorrupted: 0, objectsSkipped: false, brokenLinks: 0, missingObjects: 0,
    bytesChecked: 0, tempFiles: 0, repaired: [], relinked: [], errors: [{ kind: 'metadata-parse-failed', path: META_FILE, detail }],
  };
}

/** Whether an error from Repository.open is about meta.json itself (fsck reports it as a finding). */
export function isMetadataError(e: unknown): boolean {
  return isCfsError(e) && e.code !== 'EPERM' && e.message.includes(META_FILE);
}
