/**
 * Rebuilding a layer's exact tar from tar-split metadata plus the layer's files.
 *
 * `<driver>-layers/<id>.tar-split.gz` is gzip'd JSON, one entry per line (vbatts/tar-split):
 *   {"type":2,"payload":"<base64>","position":N}   raw bytes: headers (incl. PAX/GNU), padding, trailer
 *   {"type":1,"name":"etc/x","size":N,"payload":"<base64 crc64>","position":N}   a member's content
 * (`name_raw` replaces `name`, base64, when the name is not UTF-8; size and payload are omitted
 * when the size is 0). Concatenating the segments with the named files' contents gives back the
 * original tar byte for byte, so its sha256 is the layer's diff_id.
 *
 * Whiteouts need nothing special: the `.wh.` members are recorded as headers with size 0 (the
 * overlay diff holds char device 0/0 or an opaque xattr instead), and only members with
 * size > 0 are looked up on disk, like tar-split's own assembler.
 */
import { createGunzip } from 'node:zlib';
import { closeSync, constants as fsc, createReadStream, fstatSync, lstatSync, openSync, read as fsRead, readSync } from 'node:fs';
import { promisify } from 'node:util';
import { CfsError, errnoCode, isCfsError } from '../../errors.js';
import { native } from '../../native.js';
import { Crc64 } from './crc64.js';
import type { ContainersStore } from './store.js';

export type TarSplitEntry =
  | { type: 'segment'; payload: Buffer }
  | { type: 'file'; name: string; nameBytes: Buffer; utf8: boolean; size: number; crc64: Buffer | null };

export type LayerSegment =
  | { kind: 'raw'; data: Buffer }
  | {
      kind: 'file';
      /** Absolute path of the content in the layer's files (a Buffer when the name is not UTF-8), for messages. */
      path: string | Buffer;
      /** The same as an index into the layer's search dirs plus a path relative to it. */
      dirIndex: number;
      /** That search dir, open while the iteration runs: `rel` is opened beneath it (fileContent). */
      dirfd: number;
      rel: Buffer;
      /** Whether the name (so `rel`) is valid UTF-8. */
      utf8: boolean;
      /** Member name as recorded in the tar. */
      name: string;
      size: number;
      /** Expected CRC-64/ISO (big-endian), for consumers that read the file themselves. */
      crc64: Buffer;
    };

const TYPE_FILE = 1;
const TYPE_SEGMENT = 2;
const READ_CHUNK = 1024 * 1024;
const readFd = promisify(fsRead);
/** A JSON line longer than this is not tar-split (PAX headers are capped well below). */
const MAX_LINE = 64 * 1024 * 1024;

function corrupt(file: string, line: number, why: string): CfsError {
  return new CfsError('ECORRUPT', `${file}:${line}: ${why}`);
}

function b64(v: unknown, file: string, line: number, what: string): Buffer {
  if (v === undefined || v === null) return Buffer.alloc(0);
  if (typeof v !== 'string' || !/^[A-Za-z0-9+/]*={0,2}$/.test(v)) throw corrupt(file, line, `${what} is not base64`);
  return Buffer.from(v, 'base64');
}

function parseEntry(text: string, file: string, line: number): TarSplitEntry {
  let o: unknown;
  try {
    o = JSON.parse(text);
  } catch (e) {
    throw corrupt(file, line, `invalid JSON: ${(e as Error).message}`);
  }
  if (typeof o !== 'object' || o === null || Array.isArray(o)) throw corrupt(file, line, 'entry is not an object');
  const r = o as Record<string, unknown>;
  if (r['type'] === TYPE_SEGMENT) return { type: 'segment', payload: b64(r['payload'], file, line, 'payload') };
  if (r['type'] !== TYPE_FILE) throw corrupt(file, line, `unknown entry type ${JSON.stringify(r['type'])}`);
  const size = r['size'] ?? 0;
  if (typeof size !== 'number' || !Number.isSafeInteger(size) || size < 0) throw corrupt(file, line, 'invalid size');
  let nameBytes: Buffer;
  let utf8 = true; // the UTF-8 encoding of a JSON string always is
  if (r['name_raw'] !== undefined && r['name_raw'] !== null) {
    nameBytes = b64(r['name_raw'], file, line, 'name_raw');
    utf8 = Buffer.from(nameBytes.toString('utf8'), 'utf8').equals(nameBytes);
  } else if (typeof r['name'] === 'string') nameBytes = Buffer.from(r['name'], 'utf8');
  else throw corrupt(file, line, 'file entry has no name');
  const crc = r['payload'] === undefined || r['payload'] === null ? null : b64(r['payload'], file, line, 'payload');
  if (size > 0 && (crc === null || crc.length !== 8)) throw corrupt(file, line, 'file entry has no 8-byte crc64');
  return { type: 'file', name: nameBytes.toString('utf8'), nameBytes, utf8, size, crc64: crc };
}

/**
 * Reads and inflates in pieces this large: the defaults (64 KiB reads, 16 KiB of output) cost
 * a threadpool round trip and a stream event per 16 KiB, a thousand for a 15 MB tar-split.
 */
const GUNZIP_CHUNK = 1024 * 1024;

/** Streams the entries of a tar-split file. */
export async function* readTarSplit(file: string): AsyncGenerator<TarSplitEntry> {
  const input = createReadStream(file, { highWaterMark: GUNZIP_CHUNK });
  const gunzip = input.pipe(createGunzip({ chunkSize: GUNZIP_CHUNK }));
  input.on('error', (e) => gunzip.destroy(e));
  let pending: Buffer[] = [];
  let pendingLen = 0;
  let line = 0;
  try {
    for await (const chunk of gunzip as AsyncIterable<Buffer>) {
      let start = 0;
      for (let nl = chunk.indexOf(0x0a); nl >= 0; nl = chunk.indexOf(0x0a, start)) {
        let text: string;
        if (pending.length === 0) {
          text = chunk.toString('utf8', start, nl);
        } else {
          pending.push(chunk.subarray(start, nl));
          text = Buffer.concat(pending).toString('utf8');
          pending = [];
          pendingLen = 0;
        }
        start = nl + 1;
        line++;
        if (text.trim() !== '') yield parseEntry(text, file, line);
      }
      if (start < chunk.length) {
        pending.push(chunk.subarray(start));
        pendingLen += chunk.length - start;
      }
      if (pendingLen > MAX_LINE) throw corrupt(file, line + 1, 'line too long');
    }
  } catch (e) {
    if (e instanceof CfsError) throw e;
    if (errnoCode(e) === 'ENOENT') throw new CfsError('ENOENT', `${file}: tar-split metadata is missing; the layer's tar cannot be reproduced`);
    throw new CfsError('ECORRUPT', `${file}: ${(e as Error).message}`);
  } finally {
    input.destroy();
  }
  const tail = Buffer.concat(pending).toString('utf8');
  // tar-split's own reader ignores a final line that is not JSON (it writes none).
  if (tail.trim() !== '') {
    try {
      JSON.parse(tail);
    } catch {
      return;
    }
    yield parseEntry(tail, file, line + 1);
  }
}

/** Names that are their own relative path: no empty, `.` or `..` component. */
const PLAIN_NAME = /^(?!\.\.?(?:\/|$))(?:[^/]+\/(?!\.\.?(?:\/|$)))*[^/]+$/;

/** Relative path of a member inside the layer dir; `..` components would escape it. */
function memberPath(nameBytes: Buffer, layerId: string, name: string): Buffer {
  const latin1 = nameBytes.toString('latin1');
  if (PLAIN_NAME.test(latin1)) return nameBytes;
  const parts = latin1
    .split('/')
    .filter((p) => p !== '' && p !== '.');
  if (parts.includes('..')) throw new CfsError('ECORRUPT', `layer ${layerId}: member "${name}" escapes the layer directory`);
  if (parts.length === 0) throw new CfsError('ECORRUPT', `layer ${layerId}: file member with an empty name`);
  return Buffer.from(parts.join('/'), 'latin1');
}

/** `dir` (absolute, normalized) joined with a memberPath. */
function joinPath(dir: string, rel: Buffer, utf8: boolean): string | Buffer {
  return utf8 ? `${dir}/${rel.toString('utf8')}` : Buffer.concat([Buffer.from(`${dir}/`, 'utf8'), rel]);
}

let openat2Missing = false;

/**
 * Open `rel` beneath a layer directory: no `..`, absolute or magic-link escape, no other mount,
 * so a symlinked directory inside a store cannot make cfs read a file outside the layer.
 */
function openInLayer(dirfd: number, rel: Buffer, flags: number, layerId: string, name: string): number {
  const c = native().constants;
  try {
    if (!openat2Missing) {
      try {
        return native().openat2(dirfd, rel, flags | fsc.O_NOFOLLOW, 0, c.RESOLVE_BENEATH | c.RESOLVE_NO_MAGICLINKS | c.RESOLVE_NO_XDEV);
      } catch (e) {
        if (errnoCode(e) !== 'ENOSYS') throw e;
        openat2Missing = true;
      }
    }
    // Kernels before 5.6: the member path has no `..` or leading `/` (memberPath), only a
    // symlinked parent could still lead out.
    return openSync(Buffer.concat([Buffer.from(`/proc/self/fd/${dirfd}/`), rel]), flags | fsc.O_NOFOLLOW);
  } catch (e) {
    const code = errnoCode(e);
    if (code === 'EXDEV') throw new CfsError('ECORRUPT', `layer ${layerId}: ${name} leads out of the layer's directory (a symlinked parent or another mount)`);
    if (code === 'EACCES' || code === 'EPERM') throw new CfsError('EPERM', `layer ${layerId}: ${name}: permission denied`);
    throw e;
  }
}

/** First regular file of the right size for a member, searching the layer's dirs in order. */
// Per-file metadata calls are synchronous on purpose: a layer has thousands of small files and
// the promise round trip per call cost more than the (page-cached) syscalls themselves.
function findFile(dirs: string[], dirfds: number[], rel: Buffer, size: number, layerId: string, name: string): number {
  // One place to look: whoever opens the file checks that it exists and has the recorded size.
  if (dirs.length === 1) return 0;
  let wrongSize: number | null = null;
  for (const [dirIndex, dirfd] of dirfds.entries()) {
    let st;
    try {
      const fd = openInLayer(dirfd, rel, native().constants.O_PATH, layerId, name);
      try {
        st = fstatSync(fd);
      } finally {
        closeSync(fd);
      }
    } catch (e) {
      if (errnoCode(e) === 'ENOENT' || errnoCode(e) === 'ENOTDIR') continue;
      throw e instanceof CfsError ? e : new CfsError('EIO', `layer ${layerId}: ${name}: ${(e as Error).message}`);
    }
    if (!st.isFile()) continue;
    if (st.size === size) return dirIndex;
    wrongSize ??= st.size;
  }
  if (wrongSize !== null) {
    throw new CfsError('EDIGEST', `layer ${layerId}: ${name} changed since import (size ${wrongSize}, recorded ${size})`);
  }
  throw new CfsError('ENOENT', `layer ${layerId}: ${name} is missing from the layer's files in ${dirs[0]}`);
}

/**
 * The layer's tar as raw segments and file references, without reading file contents. Holds a
 * shared lock on layers.lock until the iteration ends, so a consumer that hardlinks or reflinks
 * `path` should do so before asking for the next segment.
 */
export async function* layerSegments(store: ContainersStore, layerId: string): AsyncGenerator<LayerSegment> {
  const tarSplit = store.tarSplitPath(layerId);
  const lock = await store.lockLayers();
  let dirfds: number[] = [];
  try {
    const opened = await store.openLayerDirs(layerId);
    const dirs = opened.dirs;
    dirfds = opened.dirfds;
    for await (const e of readTarSplit(tarSplit)) {
      if (e.type === 'segment') {
        if (e.payload.length) yield { kind: 'raw', data: e.payload };
        continue;
      }
      if (e.size === 0) continue; // directories, links, devices, whiteouts, empty files
      const rel = memberPath(e.nameBytes, layerId, e.name);
      const dirIndex = findFile(dirs, dirfds, rel, e.size, layerId, e.name);
      const p = joinPath(dirs[dirIndex]!, rel, e.utf8);
      yield { kind: 'file', path: p, dirIndex, dirfd: dirfds[dirIndex]!, rel, utf8: e.utf8, name: e.name, size: e.size, crc64: e.crc64! };
    }
  } finally {
    for (const fd of dirfds) closeSync(fd);
    lock.release();
  }
}

/**
 * Streams one file's content, checking its length against the tar-split record, and its CRC-64
 * unless `checkCrc` is false (the caller then verifies the whole layer's digest).
 */
export async function* fileContent(layerId: string, seg: Extract<LayerSegment, { kind: 'file' }>, checkCrc = true): AsyncGenerator<Buffer> {
  const changed = (why: string): CfsError => new CfsError('EDIGEST', `layer ${layerId}: ${seg.name} changed since import (${why})`);
  let fd: number;
  try {
    // Not following a symlink, not blocking on a FIFO: either is "no longer a regular file".
    fd = openInLayer(seg.dirfd, seg.rel, fsc.O_RDONLY | fsc.O_NONBLOCK, layerId, seg.name);
  } catch (e) {
    const code = errnoCode(e);
    if (code === 'ENOENT' || code === 'ENOTDIR') throw new CfsError('ENOENT', `layer ${layerId}: ${seg.name} is missing from the layer's files (${seg.path.toString()})`);
    if (code === 'ELOOP') throw changed('no longer a regular file');
    // Said with the file's path and owner, as the importer says it of files it opens by name
    // (cstor-source explainLocal); a name that is not UTF-8 comes this way.
    if (isCfsError(e) && e.code === 'EPERM') throw new CfsError('EPERM', `layer ${layerId}: cannot read ${seg.name} (${ownerOf(seg.path)}): permission denied`);
    throw e;
  }
  try {
    const st = fstatSync(fd);
    if (!st.isFile()) throw changed('no longer a regular file');
    if (st.size !== seg.size) throw changed(`size ${st.size}, recorded ${seg.size}`);
    if (seg.size <= READ_CHUNK) {
      // Small files: synchronously (see findFile), into one buffer a byte longer than recorded,
      // so a file that grew shows.
      const buf = Buffer.allocUnsafe(seg.size + 1);
      const n = readAllSync(fd, buf, 0);
      if (n > seg.size) throw changed(`longer than the recorded ${seg.size} bytes`);
      if (n < seg.size) throw changed(`shorter than the recorded ${seg.size} bytes`);
      const data = buf.subarray(0, n);
      if (checkCrc && !new Crc64().update(data).digest().equals(seg.crc64)) throw changed('crc64 mismatch');
      yield data;
      return;
    }
    const crc = new Crc64();
    let done = 0;
    while (done <= seg.size) {
      const buf = Buffer.allocUnsafe(Math.min(READ_CHUNK, seg.size - done + 1));
      const { bytesRead: n } = await readFd(fd, buf, 0, buf.length, done);
      if (n === 0) break;
      if (done + n > seg.size) throw changed(`longer than the recorded ${seg.size} bytes`);
      const chunk = buf.subarray(0, n);
      if (checkCrc) crc.update(chunk);
      done += n;
      yield chunk;
    }
    if (done < seg.size) throw changed(`shorter than the recorded ${seg.size} bytes`);
    if (checkCrc && !crc.digest().equals(seg.crc64)) throw changed('crc64 mismatch');
  } finally {
    closeSync(fd);
  }
}

/** `path, owned by uid U gid G, mode M` for messages (just the path when it cannot be stat'ed). */
export function ownerOf(p: string | Buffer): string {
  const st = lstatSync(p, { throwIfNoEntry: false });
  const shown = p.toString();
  return st ? `${shown}, owned by uid ${st.uid} gid ${st.gid}, mode ${(st.mode & 0o7777).toString(8).padStart(4, '0')}` : shown;
}

/** Fill `buf` from file offset `pos` until it is full or the file ends; the byte count. */
function readAllSync(fd: number, buf: Buffer, pos: number): number {
  let done = 0;
  for (let n = readSync(fd, buf, 0, buf.length, pos); n > 0; n = readSync(fd, buf, done, buf.length - done, pos + done)) done += n;
  return done;
}

/**
 * The layer's uncompressed tar, streamed: raw segments as recorded, file contents read from the
 * layer's files and checked against their recorded size. Contents are not CRC-checked here (a
 * third of the JS thread's time for a large layer): the caller checks the whole tar against the
 * diff_id, and `findChangedFile` names the culprit when that fails.
 */
export async function* layerTarStream(store: ContainersStore, layerId: string): AsyncGenerator<Buffer> {
  for await (const seg of layerSegments(store, layerId)) {
    if (seg.kind === 'raw') yield seg.data;
    else yield* fileContent(layerId, seg, false);
  }
}
