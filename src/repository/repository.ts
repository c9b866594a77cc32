/**
 * A composefs repository (composefs-rs compatible layout, brief section 1):
 *
 *   meta.json
 *   objects/XX/YYYY…                    content-addressed files, named by fs-verity digest
 *   streams/<content-id> -> ../objects/XX/YYYY…      split streams
 *   streams/refs/<name…> -> …/<content-id>           named stream refs (GC roots)
 *   images/<hex> -> ../objects/XX/YYYY…              EROFS images that may be mounted
 *   images/refs/<name…> -> …/<hex>                   named image refs (GC roots)
 *
 * An open handle holds flock(LOCK_SH) on the repository directory (GC takes LOCK_EX, see lock.ts).
 */
import { closeSync, constants as C, existsSync, fstatSync, mkdirSync, openSync, readdirSync, readFileSync, renameSync, rmSync, statSync, writeFileSync, writeSync, fsyncSync, unlinkSync } from 'node:fs';
import { access, lstat, mkdir, open, readdir, readlink, readFile, unlink, type FileHandle } from 'node:fs/promises';
import path from 'node:path';
import { native } from '../native.js';
import { CfsError, errnoCode, isCfsError } from '../errors.js';
import { fsverityDigest, HASH_SIZE, type HashAlg } from '../fsverity/digest.js';
import { enableVerityFd, measureVerityFd } from '../fsverity/kernel.js';
import { idFromObjectPath, objectRelPath } from './ids.js';
import { SYSTEM_REPO_PATH } from './location.js';
import {
  algorithmString, effectiveErofsFormats, META_FILE, newMeta, parseMeta, serializeMeta, unknownReadOnlyFeatures,
  type ErofsFormat, type ErofsFormats, type RepoMeta,
} from './meta.js';
import { NOT_AN_OBJECT, ObjectWriter, objectSizeAt, TMP_OBJECT_PREFIX, type ObjectStore } from './objects.js';
import { atomicSymlink, randomAlnum, validateRefName } from './symlink.js';
import { acquireLock, type LockWaitOptions } from './lock.js';

/** Prefix of meta.json's temporary name when O_TMPFILE is unavailable (removed by gc / fsck --repair). */
export const META_TMP_PREFIX = '.meta.json.tmp-';

export type RefKind = 'streams' | 'images';

export interface InitOptions {
  /** Of a new repository (default sha256); an existing one must have it only when it is given. */
  hashAlg?: HashAlg;
  /** Do not seal meta.json (and later objects) with fs-verity. */
  insecure?: boolean;
  /** Default EROFS format of the repository (1 unless given). */
  erofsVersion?: ErofsFormat;
}

export interface OpenOptions {
  /** Initialise the repository with defaults when it does not exist yet. */
  create?: boolean;
  /** Force insecure mode (missing fs-verity is tolerated). Also used when creating. */
  insecure?: boolean;
  /** Only a check against meta.json (or the algorithm for a repository created now). */
  hashAlg?: HashAlg;
  /** When creating: fall back to insecure mode if the filesystem lacks fs-verity. */
  fallbackInsecure?: boolean;
  /** Receives one-line notices (e.g. the insecure fallback). */
  onNotice?: (text: string) => void;
}

export interface ImageHandle {
  imageId: Buffer;
  /** Absolute path of the image object. */
  path: string;
  /** Whether a mount must enforce fs-verity on the image (brief 1.8). */
  verityRequired: boolean;
}

/** meta.json's text, or null when there is none. */
function readMetaIfPresent(metaPath: string): string | null {
  try {
    return readFileSync(metaPath, 'utf8');
  } catch (e) {
    if (errnoCode(e) !== 'ENOENT') throw e;
    return null;
  }
}

/** Write meta.json so that it appears complete or not at all. Returns false if one exists. */
function writeMetaFile(repoPath: string, text: string, insecure: boolean, shownPath = repoPath): boolean {
  const dest = path.join(repoPath, META_FILE);
  const seal = (fd: number): void => {
    if (insecure) return;
    try {
      enableVerityFd(fd, parseMeta(text, dest).alg, dest);
    } catch (e) {
      if (isCfsError(e) && e.code === 'ENOTSUP') {
        throw new CfsError('ENOTSUP', `cannot initialise repository ${shownPath}: its filesystem does not support fs-verity (use --insecure)`);
      }
      throw e;
    }
  };
  // Without O_TMPFILE: a named temporary file, renamed without replacing once complete, so a
  // crash never leaves a partial meta.json (only a temp file that gc / fsck --repair remove).
  let fd: number;
  let tmp: string | null = null;
  try {
    fd = native().openTmpfile(repoPath, C.O_RDWR, 0o644);
  } catch (e) {
    const code = errnoCode(e);
    if (code !== 'EOPNOTSUPP' && code !== 'ENOTSUP' && code !== 'EISDIR' && code !== 'ENOSYS') throw e;
    tmp = path.join(repoPath, `${META_TMP_PREFIX}${randomAlnum(12)}`);
    fd = openSync(tmp, C.O_RDWR | C.O_CREAT | C.O_EXCL, 0o644);
  }
  let ro = -1;
  try {
    writeSync(fd, Buffer.from(text));
    fsyncSync(fd);
    ro = openSync(tmp ?? `/proc/self/fd/${fd}`, C.O_RDONLY);
    closeSync(fd);
    fd = -1;
    seal(ro);
    try {
      if (tmp) native().renameNoReplace(tmp, dest);
      else native().linkFd(ro, dest);
    } catch (e) {
      if (errnoCode(e) === 'EEXIST') return false;
      throw e;
    }
    tmp = null;
    return true;
  } finally {
    if (tmp) unlinkSync(tmp);
    if (fd >= 0) closeSync(fd);
    if (ro >= 0) closeSync(ro);
  }
}

/** Suffix of a repository being built beside its final name (initRepository). */
const INIT_TMP_SUFFIX = '.tmp-init-';

/** Temporary directories of inits killed at least this long ago. */
const STALE_INIT_MS = 10 * 60_000;

/** Remove `<repo>.tmp-init-*` directories left by inits that were killed. */
function removeStaleInitDirs(repoPath: string): void {
  const dir = path.dirname(repoPath);
  const prefix = `${path.basename(repoPath)}${INIT_TMP_SUFFIX}`;
  let names: string[];
  try {
    names = readdirSync(dir).filter((n) => n.startsWith(prefix));
  } catch {
    return;
  }
  for (const n of names) {
    const p = path.join(dir, n);
    const st = statSync(p, { throwIfNoEntry: false });
    if (st?.isDirectory() && Date.now() - st.mtimeMs > STALE_INIT_MS) rmSync(p, { recursive: true, force: true });
  }
}

/** objects/ with all 256 fan-out directories, streams/, images/ (idempotent). */
function populateRepository(dir: string): void {
  for (const d of ['objects', 'streams', 'images']) mkdirSync(path.join(dir, d), { recursive: true, mode: 0o755 });
  // All 256 object directories up front: made one by one during an import, each first use
  // stalls behind the links being written (measured: 100 ms of a 5000-file import).
  for (let i = 0; i < 256; i++) mkdirSync(path.join(dir, 'objects', i.toString(16).padStart(2, '0')), { recursive: true, mode: 0o755 });
}

function describeMeta(m: RepoMeta): string {
  return `algorithm: ${algorithmString(m.alg)}, erofs_version: ${effectiveErofsFormats(m).default}`;
}

/**
 * Create a repository; an existing one must have the hash and EROFS format given, if any.
 * Without `insecure`, meta.json is sealed with fs-verity, so this fails on filesystems without
 * fs-verity.
 */
export async function initRepository(repoPathIn: string, opts: InitOptions = {}): Promise<{ created: boolean }> {
  // Resolved: a trailing slash would put the temporary directory inside the repository's path.
  const repoPath = path.resolve(repoPathIn);
  if (opts.erofsVersion !== undefined && opts.erofsVersion !== 0 && opts.erofsVersion !== 1) {
    throw new CfsError('ENOTSUP', `cannot create repository ${repoPathIn} with EROFS format ${opts.erofsVersion}: cfs writes formats 0 and 1`);
  }
  const meta = newMeta(opts.hashAlg ?? 'sha256', opts.erofsVersion ?? 1);
  const text = serializeMeta(meta);
  const failed = (e: unknown): unknown => (isCfsError(e) ? e : new CfsError('EINVAL', `cannot create repository ${repoPath}: ${(e as Error).message}`));
  try {
    await mkdir(path.dirname(repoPath), { recursive: true });
    if (!existsSync(repoPath)) {
      // Built beside its name and renamed into place: a repository appears whole or not at all.
      // A kill leaves the temporary directory, which a later init removes.
      removeStaleInitDirs(repoPath);
      const tmp = `${repoPath}${INIT_TMP_SUFFIX}${randomAlnum(8)}`;
      await mkdir(tmp, { mode: 0o700 });
      try {
        // meta.json first: on a filesystem without fs-verity a secure init fails before 260 mkdirs.
        writeMetaFile(tmp, text, !!opts.insecure, repoPath);
        populateRepository(tmp);
        try {
          renameSync(tmp, repoPath);
          return { created: true };
        } catch (e) {
          // Another process created it meanwhile: theirs stands (checked below).
          if (errnoCode(e) !== 'EEXIST' && errnoCode(e) !== 'ENOTEMPTY') throw e;
        }
      } finally {
        rmSync(tmp, { recursive: true, force: true });
      }
    } else if (!existsSync(path.join(repoPath, META_FILE)) && writeMetaFile(repoPath, text, !!opts.insecure)) {
      // An existing directory (say, made by hand): meta.json first, as Repository.open expects
      // of a repository being created (objects/ without meta.json is an old-format one).
      populateRepository(repoPath);
      return { created: true };
    }
  } catch (e) {
    throw failed(e);
  }
  const file = path.join(repoPath, META_FILE);
  const existing = parseMeta(await readFile(file, 'utf8'), file);
  // Only what was asked for must match: `cfs init` of an existing sha512 repository is fine.
  const differs = (opts.hashAlg !== undefined && existing.alg !== meta.alg) || (opts.erofsVersion !== undefined && effectiveErofsFormats(existing).default !== opts.erofsVersion);
  if (differs) {
    throw new CfsError('EEXIST', `repository ${repoPath} already initialized with different configuration (${describeMeta(existing)}); cannot re-initialize with (${describeMeta(meta)})`);
  }
  return { created: false };
}

export class Repository implements ObjectStore {
  readonly path: string;
  readonly meta: RepoMeta;
  readonly alg: HashAlg;
  /** fs-verity is required on objects (meta.json has verity and --insecure was not given). */
  readonly secure: boolean;
  tmpfileUnsupported = false;
  readonly knownDirs = new Set<string>();
  private dirFd: number;
  private writableChecked = false;

  private constructor(repoPath: string, dirFd: number, meta: RepoMeta, secure: boolean) {
    this.path = repoPath;
    this.dirFd = dirFd;
    this.meta = meta;
    this.alg = meta.alg;
    this.secure = secure;
  }

  static async init(repoPath: string, opts: InitOptions = {}): Promise<Repository> {
    await initRepository(repoPath, opts);
    return Repository.open(repoPath, { insecure: opts.insecure, hashAlg: opts.hashAlg });
  }

  static async open(repoPath: string, opts: OpenOptions = {}): Promise<Repository> {
    const abs = path.resolve(repoPath);
    const metaPath = path.join(abs, META_FILE);
    let dirFd: number;
    try {
      dirFd = openSync(abs, C.O_RDONLY | C.O_DIRECTORY);
    } catch (e) {
      const code = errnoCode(e);
      if (code === 'EACCES' || code === 'EPERM') {
        throw new CfsError('EPERM', `repository ${abs}: permission denied${abs === SYSTEM_REPO_PATH ? " (the system repository is root's; use --user or --repo)" : ''}`);
      }
      if (code !== 'ENOENT') throw e;
      if (!opts.create) throw new CfsError('ENOENT', `repository ${abs} does not exist (create it with \`cfs init\`)`);
      return Repository.createOnFirstUse(abs, opts);
    }
    try {
      await acquireLock(dirFd, 'shared');
      let text: string | null;
      try {
        text = readFileSync(metaPath, 'utf8');
      } catch (e) {
        if (errnoCode(e) !== 'ENOENT') throw e;
        const hasObjects = await access(path.join(abs, 'objects')).then(() => true, () => false);
        // Another process may be creating the repository: it links meta.json, then makes
        // objects/. Read meta.json again after looking for objects/ (not before).
        text = readMetaIfPresent(metaPath);
        if (hasObjects && text === null) throw new CfsError('ENOTSUP', `${abs}: old-format repository without meta.json (upgrading is not supported; re-create it)`);
        if (text === null && !opts.create) throw new CfsError('ENOENT', `${metaPath}: meta.json not found; this repository must be initialized with \`cfs init\``);
      }
      if (text === null) {
        closeSync(dirFd);
        dirFd = -1;
        return await Repository.createOnFirstUse(abs, opts);
      }
      const meta = parseMeta(text, metaPath);
      if (opts.hashAlg && opts.hashAlg !== meta.alg) {
        throw new CfsError('EINVAL', `repository ${abs} is configured for ${algorithmString(meta.alg)} (from meta.json) but --hash ${opts.hashAlg} was specified`);
      }
      const secure = !opts.insecure && metaHasVerity(metaPath, meta.alg);
      const repo = new Repository(abs, dirFd, meta, secure);
      try {
        mkdirSync(path.join(abs, 'objects'), { mode: 0o755 });
      } catch {
        // exists, or a read-only repository (reported by ensureWritable when writing)
      }
      return repo;
    } catch (e) {
      if (dirFd >= 0) closeSync(dirFd);
      throw e;
    }
  }

  /**
   * Implicit creation by a command other than `init`: secure when the filesystem has fs-verity;
   * otherwise, with `fallbackInsecure`, an insecure repository (reported through `onNotice`)
   * so that `cfs mount oci:…` works in one step on any filesystem.
   */
  private static async createOnFirstUse(abs: string, opts: OpenOptions): Promise<Repository> {
    try {
      return await Repository.init(abs, { hashAlg: opts.hashAlg, insecure: opts.insecure });
    } catch (e) {
      if (opts.insecure || !opts.fallbackInsecure || !(e instanceof CfsError) || e.code !== 'ENOTSUP') throw e;
      opts.onNotice?.(`created repository ${abs} in insecure mode: its filesystem does not support fs-verity`);
      return Repository.init(abs, { hashAlg: opts.hashAlg, insecure: true });
    }
  }

  get insecure(): boolean {
    return !this.secure;
  }

  get hashSize(): number {
    return HASH_SIZE[this.alg];
  }

  /** EROFS format config in effect for new images (brief 1.3). */
  get erofsFormats(): ErofsFormats {
    return effectiveErofsFormats(this.meta);
  }

  /** Release the shared lock. The handle must not be used afterwards. */
  close(): void {
    if (this.dirFd >= 0) closeSync(this.dirFd);
    this.dirFd = -1;
  }

  /**
   * Run `fn` holding the repository lock exclusively: waits until no other handle (in any
   * process) holds the repository, then returns to the shared lock. For gc and repairs.
   */
  async withExclusiveLock<T>(fn: () => Promise<T>, opts: LockWaitOptions = {}): Promise<T> {
    this.checkOpen();
    await acquireLock(this.dirFd, 'exclusive', opts);
    try {
      return await fn();
    } finally {
      await acquireLock(this.dirFd, 'shared');
    }
  }

  /** Fail early with a clear message when the repository cannot be written (brief 1.4). */
  async ensureWritable(): Promise<void> {
    this.checkOpen();
    if (this.writableChecked) return;
    // What read-only-compatible flags mean (ext4's ro_compat): a tool that does not know one may
    // read the repository but must not change it.
    const unknown = unknownReadOnlyFeatures(this.meta);
    if (unknown.length > 0) {
      throw new CfsError('EPERM', `Repository is not writable by this version of cfs: ${this.path} has read-only-compatible features it does not know (${unknown.join(', ')}); it may only be read`);
    }
    try {
      await access(this.path, C.W_OK);
    } catch (e) {
      const code = errnoCode(e);
      if (code === 'EROFS') throw new CfsError('EPERM', `Repository is not writable: read-only file system (${this.path})`);
      if (code === 'EACCES' || code === 'EPERM') throw new CfsError('EPERM', `Repository is not writable: permission denied (${this.path})`);
      throw e;
    }
    this.writableChecked = true;
  }

  /** syncfs on the repository: makes every object written so far durable. */
  sync(): void {
    this.checkOpen();
    native().syncfs(this.dirFd);
  }

  /** A closed handle holds no lock: nothing may be done through it. */
  private checkOpen(): void {
    if (this.dirFd < 0) throw new CfsError('EINVAL', `repository ${this.path}: this handle is closed`);
  }

  // ---- objects -------------------------------------------------------------------------

  objectPath(id: Buffer): string {
    return path.join(this.path, 'objects', objectRelPath(id));
  }

  async hasObject(id: Buffer): Promise<boolean> {
    return lstat(this.objectPath(id)).then(() => true, () => false);
  }

  /** Streaming writer for a new object: `await w.write(buf)…; const id = await w.commit()`. */
  createObjectWriter(): ObjectWriter {
    return new ObjectWriter(this);
  }

  /**
   * Store in-memory data as an object (no write when it is already present). With
   * `replaceDamaged`, an insecure repository's object that is present is compared with `data`
   * and replaced when it differs (see replaceDamaged).
   */
  async writeObject(data: Uint8Array, opts: { replaceDamaged?: boolean } = {}): Promise<Buffer> {
    const id = fsverityDigest(data, this.alg);
    const size = objectSizeAt(this.objectPath(id));
    if (size >= 0 && opts.replaceDamaged && !this.secure) {
      this.replaceDamaged(id, data);
      return id;
    }
    if (size === data.length) return id;
    const w = this.createObjectWriter();
    try {
      await w.write(data);
    } catch (e) {
      w.abort();
      throw e;
    }
    return w.commit();
  }

  /**
   * An insecure repository's object can be changed behind its name, and every import takes an
   * object that is present for good. For a small one whose bytes are at hand (an image: pulling
   * an image again should repair it), a damaged copy is replaced: written beside, renamed over.
   */
  private replaceDamaged(id: Buffer, data: Uint8Array): void {
    const file = this.objectPath(id);
    if (readFileSync(file).equals(data)) return;
    const tmp = path.join(this.path, 'objects', `${TMP_OBJECT_PREFIX}${randomAlnum(12)}`);
    // Made durable by the sync before a name that reaches it is linked.
    writeFileSync(tmp, data, { flag: 'wx', mode: 0o644 });
    renameSync(tmp, file);
  }

  /** Open an object read-only; in a secure repository its fs-verity digest must equal the ID. */
  async openObject(id: Buffer): Promise<FileHandle> {
    const p = this.objectPath(id);
    let fh: FileHandle;
    try {
      fh = await open(p, C.O_RDONLY);
    } catch (e) {
      if (errnoCode(e) === 'ENOENT') throw new CfsError('ENOENT', `object ${objectRelPath(id)} not found in repository ${this.path}`);
      throw e;
    }
    if (this.secure) {
      try {
        this.checkVerity(fh.fd, id);
      } catch (e) {
        await fh.close();
        throw e;
      }
    }
    return fh;
  }

  /** The kernel's fs-verity digest of an open object must be its name. */
  private checkVerity(fd: number, id: Buffer): void {
    const m = measureVerityFd(fd, `object ${objectRelPath(id)}`);
    if (m.alg !== this.alg || !m.digest.equals(id)) {
      throw new CfsError('ECORRUPT', `object ${objectRelPath(id)}: fs-verity digest mismatch (kernel reports ${m.digest.toString('hex')})`);
    }
  }

  /**
   * Size of an object, synchronously (callers list thousands). Secure repositories also check
   * its fs-verity digest, as openObject does.
   */
  objectSize(id: Buffer): number {
    if (this.secure) {
      let fd: number;
      try {
        fd = openSync(this.objectPath(id), C.O_RDONLY);
      } catch (e) {
        if (errnoCode(e) === 'ENOENT') throw new CfsError('ENOENT', `object ${objectRelPath(id)} not found in repository ${this.path}`);
        throw e;
      }
      try {
        this.checkVerity(fd, id);
        return fstatSync(fd).size;
      } finally {
        closeSync(fd);
      }
    }
    const size = objectSizeAt(this.objectPath(id));
    if (size === NOT_AN_OBJECT) throw new CfsError('ECORRUPT', `object ${objectRelPath(id)} in repository ${this.path} is not a regular file (run 'cfs fsck --repair')`);
    if (size < 0) throw new CfsError('ENOENT', `object ${objectRelPath(id)} not found in repository ${this.path}`);
    return size;
  }

  async readObject(id: Buffer): Promise<Buffer> {
    const fh = await this.openObject(id);
    try {
      return await fh.readFile();
    } finally {
      await fh.close();
    }
  }

  // ---- streams -------------------------------------------------------------------------

  /** The object ID behind `streams/<contentId>`, or null when there is no such stream. */
  async hasStream(contentId: string): Promise<Buffer | null> {
    validateContentId(contentId);
    let target: string;
    try {
      target = await readlink(path.join(this.path, 'streams', contentId));
    } catch (e) {
      const code = errnoCode(e);
      if (code === 'ENOENT') return null;
      if (code === 'EINVAL') throw new CfsError('ECORRUPT', `streams/${contentId} is not a symlink`);
      throw e;
    }
    const id = target.startsWith('../') ? idFromObjectPath(target, this.alg) : null;
    if (!id) throw new CfsError('ECORRUPT', `streams/${contentId}: unexpected symlink target '${target}'`);
    return id;
  }

  /**
   * Publish a split stream under `streams/<contentId>`. Runs syncfs first, so the stream and
   * every object it refers to are durable before the name appears.
   */
  async linkStream(contentId: string, objectId: Buffer): Promise<void> {
    validateContentId(contentId);
    await this.ensureWritable();
    if (!(await this.hasObject(objectId))) throw new CfsError('ENOENT', `cannot link stream ${contentId}: object ${objectRelPath(objectId)} is missing`);
    this.sync();
    await mkdir(path.join(this.path, 'streams'), { recursive: true, mode: 0o755 });
    await atomicSymlink(this.path, `streams/${contentId}`, `objects/${objectRelPath(objectId)}`);
  }

  /**
   * Create or replace the named ref `<kind>/refs/<name>`, pointing at `<kind>/<target>`
   * (a stream content id, or an image's full hex id).
   */
  async setRef(kind: RefKind, name: string, target: string): Promise<void> {
    validateRefName(name);
    validateContentId(target);
    await this.ensureWritable();
    // The target's own link must be durable before a ref to it can be.
    this.sync();
    await atomicSymlink(this.path, `${kind}/refs/${name}`, `${kind}/${target}`);
  }

  async removeRef(kind: RefKind, name: string): Promise<void> {
    validateRefName(name);
    await this.ensureWritable();
    try {
      await unlink(path.join(this.path, kind, 'refs', name));
    } catch (e) {
      if (errnoCode(e) === 'ENOENT') throw new CfsError('ENOENT', `${kind} ref '${name}' not found`);
      throw e;
    }
  }

  /** The target name (content id / image hex) of a named ref, or null. */
  async readRef(kind: RefKind, name: string): Promise<string | null> {
    validateRefName(name);
    try {
      return path.basename(await readlink(path.join(this.path, kind, 'refs', name)));
    } catch (e) {
      if (errnoCode(e) === 'ENOENT') return null;
      throw e;
    }
  }

  /** A stream by content id, or by named ref as `refs/NAME` (also `ref/NAME`). */
  async resolveStream(ref: string): Promise<{ contentId: string; objectId: Buffer }> {
    let contentId = ref;
    const m = /^refs?\/(.+)$/.exec(ref);
    if (m) {
      const target = await this.readRef('streams', m[1]);
      if (target === null) throw new CfsError('ENOENT', `stream ref '${m[1]}' not found in repository ${this.path}`);
      contentId = target;
    }
    const objectId = await this.hasStream(contentId);
    if (!objectId) throw new CfsError('ENOENT', `stream '${contentId}' not found in repository ${this.path}`);
    return { contentId, objectId };
  }

  /** First-level stream content ids, sorted. */
  async listStreams(): Promise<string[]> {
    return (await listDir(path.join(this.path, 'streams'))).filter((n) => n !== 'refs').sort();
  }

  async listStreamRefs(): Promise<Array<{ name: string; contentId: string }>> {
    return (await this.listRefs('streams')).map(({ name, target }) => ({ name, contentId: target }));
  }

  // ---- images --------------------------------------------------------------------------

  /** Store an EROFS image as an object and publish `images/<hex>` (and `images/refs/<name>`). */
  async writeImage(erofs: Buffer, name?: string): Promise<string> {
    await this.ensureWritable();
    const id = await this.writeObject(erofs, { replaceDamaged: true });
    const hex = id.toString('hex');
    this.sync();
    await mkdir(path.join(this.path, 'images'), { recursive: true, mode: 0o755 });
    await atomicSymlink(this.path, `images/${hex}`, `objects/${objectRelPath(id)}`);
    if (name !== undefined) await this.setRef('images', name, hex);
    return hex;
  }

  /** First-level image ids (full hex), sorted. */
  async listImages(): Promise<string[]> {
    return (await listDir(path.join(this.path, 'images'))).filter((n) => n !== 'refs').sort();
  }

  async listImageRefs(): Promise<Array<{ name: string; imageId: string }>> {
    return (await this.listRefs('images')).map(({ name, target }) => ({ name, imageId: target }));
  }

  /**
   * Find a mountable image (brief 1.8): `images/<name>`, else `images/refs/<name>` for names
   * without '/'. Secure repository: images named through a ref require verity (they were sealed
   * when written); a full hex id is measured and must match. Insecure repository: verity is
   * required only when the image object actually carries the matching digest.
   */
  async openImage(name: string): Promise<ImageHandle> {
    // Names are resolved beneath images/: no absolute paths, no '.'/'..' components.
    if (name === '' || name.includes('\0') || name.split('/').some((c) => c === '' || c === '.' || c === '..')) {
      throw new CfsError('EINVAL', `invalid image name '${name}'`);
    }
    let rel = `images/${name}`;
    let viaRef = name.includes('/');
    if (!(await lstat(path.join(this.path, rel)).then(() => true, () => false))) {
      if (name.includes('/')) throw new CfsError('ENOENT', `image not found: ${name}`);
      rel = `images/refs/${name}`;
      viaRef = true;
      if (!(await lstat(path.join(this.path, rel)).then(() => true, () => false))) throw new CfsError('ENOENT', `image not found: ${name}`);
    }
    const imageId = await this.imageIdOf(rel);
    const objPath = this.objectPath(imageId);
    if (viaRef && this.secure) return { imageId, path: objPath, verityRequired: true };
    let fd: number;
    try {
      fd = openSync(objPath, C.O_RDONLY);
    } catch (e) {
      if (errnoCode(e) !== 'ENOENT') throw e;
      throw new CfsError('ECORRUPT', `image ${name} is damaged: its object objects/${objectRelPath(imageId)} is missing (run 'cfs fsck'; pulling the image again writes it)`, { path: objPath });
    }
    try {
      const m = measureVerityFd(fd, `image ${name}`);
      if (!m.digest.equals(imageId)) throw new CfsError('ECORRUPT', `image ${name}: fs-verity content mismatch`);
      return { imageId, path: objPath, verityRequired: true };
    } catch (e) {
      if (isCfsError(e) && (e.code === 'ENOTSUP' || e.code === 'ENOENT') && !this.secure) {
        return { imageId, path: objPath, verityRequired: false };
      }
      throw e;
    } finally {
      closeSync(fd);
    }
  }

  // ---- helpers -------------------------------------------------------------------------

  /** Follow an images/ entry (or ref) to its object and parse the ID from the object path. */
  private async imageIdOf(rel: string): Promise<Buffer> {
    let cur = path.join(this.path, rel);
    for (let i = 0; i < 4; i++) {
      const t = await readlink(cur);
      const next = path.resolve(path.dirname(cur), t);
      const id = idFromObjectPath(t, this.alg);
      if (id && path.dirname(path.dirname(next)) === path.join(this.path, 'objects')) return id;
      cur = next;
    }
    throw new CfsError('ECORRUPT', `${rel}: does not lead to an object`);
  }

  private async listRefs(kind: RefKind): Promise<Array<{ name: string; target: string }>> {
    const out: Array<{ name: string; target: string }> = [];
    const walk = async (dirRel: string): Promise<void> => {
      let entries;
      try {
        entries = await readdir(path.join(this.path, kind, 'refs', dirRel), { withFileTypes: true });
      } catch (e) {
        if (errnoCode(e) === 'ENOENT') return;
        throw e;
      }
      for (const ent of entries) {
        const rel = dirRel ? `${dirRel}/${ent.name}` : ent.name;
        if (ent.isDirectory()) await walk(rel);
        else if (ent.isSymbolicLink()) {
          out.push({ name: rel, target: path.basename(await readlink(path.join(this.path, kind, 'refs', rel))) });
        }
      }
    };
    await walk('');
    return out.sort((a, b) => (a.name < b.name ? -1 : a.name > b.name ? 1 : 0));
  }
}

/** Whether meta.json carries fs-verity with the repository's algorithm (=> secure repository). */
function metaHasVerity(metaPath: string, alg: HashAlg): boolean {
  const fd = openSync(metaPath, C.O_RDONLY);
  try {
    return measureVerityFd(fd, metaPath).alg === alg;
  } catch (e) {
    if (isCfsError(e) && (e.code === 'ENOTSUP' || e.code === 'ENOENT')) return false;
    throw e;
  } finally {
    closeSync(fd);
  }
}

/** Stream content ids and image ids are single path components used as file names as they are. */
function validateContentId(id: string): void {
  if (id.length === 0 || id.includes('/') || id.includes('\0') || id === '.' || id === '..' || id === 'refs' || id.startsWith('.')) {
    throw new CfsError('EINVAL', `invalid stream or image name '${id}'`);
  }
}

async function listDir(dir: string): Promise<string[]> {
  try {
    return await readdir(dir);
  } catch (e) {
    if (errnoCode(e) === 'ENOENT') return [];
    throw e;
  }
}
