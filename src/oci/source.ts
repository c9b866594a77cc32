/**
 * `OciRead`: read-only access to an OCI image layout, shared by the layout directory reader and
 * the `oci-archive:` (tar of a layout) reader, plus the JSON documents such a source serves,
 * validated into typed shapes.
 */
import type { FileHandle } from 'node:fs/promises';
import { Readable } from 'node:stream';
import { CfsError } from '../errors.js';
import type { Platform } from './platform.js';

export interface Descriptor {
  /** '' when a descriptor in index.json omits it (older layouts). */
  mediaType: string;
  digest: string;
  size: number;
  annotations?: Record<string, string>;
  platform?: Platform;
  artifactType?: string;
}

export interface ImageIndex {
  schemaVersion: number;
  mediaType?: string;
  manifests: Descriptor[];
}

export interface ImageManifest {
  schemaVersion: number;
  mediaType?: string;
  artifactType?: string;
  config: Descriptor;
  layers: Descriptor[];
}

/** The parts of an image config this tool reads; the raw bytes are kept elsewhere. */
export interface ImageConfig {
  os?: string;
  architecture?: string;
  variant?: string;
  rootfs?: { type: string; diff_ids: string[] };
}

export interface OciRead {
  /** Names the source in messages, e.g. `oci layout /srv/img`. */
  readonly description: string;
  readIndex(): Promise<ImageIndex>;
  /** A whole blob, for JSON documents; larger than MAX_JSON_BLOB → EFBIG. Not verified. */
  readBlob(digest: string): Promise<Buffer>;
  /** Streams a blob's bytes (not verified; see blob.ts). Missing blob → the stream errors ENOENT. */
  openBlob(digest: string): Readable;
  blobSize(digest: string): Promise<number>;
  hasBlob(digest: string): Promise<boolean>;
  close(): Promise<void>;
}

/** Manifests, indexes and configs are small; registries cap manifests at 4 MiB. */
export const MAX_JSON_BLOB = 4 * 1024 * 1024;

export type DigestAlgorithm = 'sha256' | 'sha512';
const DIGEST_RE = /^(sha256:[0-9a-f]{64}|sha512:[0-9a-f]{128})$/;

export function parseDigest(digest: string, where: string): { algorithm: DigestAlgorithm; hex: string } {
  if (!DIGEST_RE.test(digest)) throw new CfsError('EINVAL', `${where}: invalid digest "${digest}"`);
  const colon = digest.indexOf(':');
  return { algorithm: digest.slice(0, colon) as DigestAlgorithm, hex: digest.slice(colon + 1) };
}

/** Path of a blob inside a layout: `blobs/<alg>/<hex>`. */
export function blobPath(digest: string, where: string): string {
  const { algorithm, hex } = parseDigest(digest, where);
  return `blobs/${algorithm}/${hex}`;
}

export function parseJson(bytes: Buffer, where: string): unknown {
  try {
    return JSON.parse(bytes.toString('utf8')) as unknown;
  } catch (e) {
    throw new CfsError('ECORRUPT', `${where}: invalid JSON: ${(e as Error).message}`);
  }
}

type Obj = Record<string, unknown>;
function isObj(v: unknown): v is Obj {
  return typeof v === 'object' && v !== null && !Array.isArray(v);
}
function bad(where: string, what: string): CfsError {
  return new CfsError('ECORRUPT', `${where}: ${what}`);
}
function optString(o: Obj, key: string, where: string): string | undefined {
  const v = o[key];
  if (v === undefined) return undefined;
  if (typeof v !== 'string') throw bad(where, `"${key}" is not a string`);
  return v;
}
function stringMap(v: unknown, where: string): Record<string, string> {
  if (!isObj(v) || Object.values(v).some((x) => typeof x !== 'string')) throw bad(where, 'annotations are not a string map');
  return v as Record<string, string>;
}

export function parseDescriptor(v: unknown, where: string, requireMediaType = true): Descriptor {
  if (!isObj(v)) throw bad(where, 'descriptor is not an object');
  const mediaType = optString(v, 'mediaType', where);
  if (mediaType === undefined && requireMediaType) throw bad(where, 'descriptor has no mediaType');
  const digest = optString(v, 'digest', where);
  if (digest === undefined) throw bad(where, 'descriptor has no digest');
  parseDigest(digest, where);
  const size = v['size'];
  if (typeof size !== 'number' || !Number.isSafeInteger(size) || size < 0) throw bad(where, `descriptor ${digest} has an invalid size`);
  const d: Descriptor = { mediaType: mediaType ?? '', digest, size };
  if (v['annotations'] !== undefined) d.annotations = stringMap(v['annotations'], where);
  const artifactType = optString(v, 'artifactType', where);
  if (artifactType !== undefined) d.artifactType = artifactType;
  const p = v['platform'];
  if (p !== undefined) {
    if (!isObj(p) || typeof p['os'] !== 'string' || typeof p['architecture'] !== 'string') {
      throw bad(where, `descriptor ${digest} has an invalid platform`);
    }
    d.platform = { os: p['os'], architecture: p['architecture'] };
    if (typeof p['variant'] === 'string' && p['variant'] !== '') d.platform.variant = p['variant'];
  }
  return d;
}

function schemaVersion(o: Obj, where: string): number {
  const sv = o['schemaVersion'];
  if (sv !== 2) throw bad(where, `unsupported schemaVersion ${JSON.stringify(sv)}`);
  return sv;
}

export function parseIndex(bytes: Buffer, where: string): ImageIndex {
  const o = parseJson(bytes, where);
  if (!isObj(o)) throw bad(where, 'not a JSON object');
  const manifests = o['manifests'];
  if (!Array.isArray(manifests)) throw bad(where, '"manifests" is not an array');
  const idx: ImageIndex = {
    schemaVersion: schemaVersion(o, where),
    manifests: manifests.map((m) => parseDescriptor(m, where, false)),
  };
  const mt = optString(o, 'mediaType', where);
  if (mt !== undefined) idx.mediaType = mt;
  return idx;
}

export function parseManifest(bytes: Buffer, where: string): ImageManifest {
  const o = parseJson(bytes, where);
  if (!isObj(o)) throw bad(where, 'not a JSON object');
  const layers = o['layers'] ?? [];
  if (!Array.isArray(layers)) throw bad(where, '"layers" is not an array');
  const m: ImageManifest = {
    schemaVersion: schemaVersion(o, where),
    config: parseDescriptor(o['config'], `${where}: config`),
    layers: layers.map((l, i) => parseDescriptor(l, `${where}: layer ${i}`)),
  };
  const mt = optString(o, 'mediaType', where);
  if (mt !== undefined) m.mediaType = mt;
  const at = optString(o, 'artifactType', where);
  if (at !== undefined) m.artifactType = at;
  return m;
}

/** Parses an image config; `image` = true requires rootfs.diff_ids (OCI/Docker image configs). */
export function parseConfig(bytes: Buffer, where: string, image: boolean): ImageConfig {
  const o = parseJson(bytes, where);
  if (!isObj(o)) throw bad(where, 'not a JSON object');
  const c: ImageConfig = {};
  for (const k of ['os', 'architecture', 'variant'] as const) {
    const v = optString(o, k, where);
    if (v !== undefined && v !== '') c[k] = v;
  }
  const rootfs = o['rootfs'];
  if (isObj(rootfs)) {
    const ids = rootfs['diff_ids'];
    if (!Array.isArray(ids) || ids.some((x) => typeof x !== 'string')) throw bad(where, 'rootfs.diff_ids is not a string array');
    for (const id of ids as string[]) parseDigest(id, `${where}: rootfs.diff_ids`);
    c.rootfs = { type: typeof rootfs['type'] === 'string' ? rootfs['type'] : '', diff_ids: ids as string[] };
  } else if (image) {
    throw bad(where, 'image config has no rootfs');
  }
  return c;
}

/** Reads a whole stream into one buffer, failing past `limit` bytes. */
export async function readAll(stream: AsyncIterable<Buffer>, limit: number, what: string): Promise<Buffer> {
  const parts: Buffer[] = [];
  let n = 0;
  for await (const chunk of stream) {
    n += chunk.length;
    if (n > limit) throw new CfsError('EFBIG', `${what}: larger than ${limit} bytes`);
    parts.push(chunk);
  }
  return Buffer.concat(parts, n);
}

const READ_CHUNK = 256 * 1024;

/** A byte range of an open file, and how to let go of the handle afterwards. */
export interface FileRange {
  fh: FileHandle;
  start: number;
  end: number;
  release(): Promise<void>;
}

/**
 * Streams a file range with positioned reads (several streams may share one handle).
 * `locate` runs lazily on first read, so its errors (missing blob) surface as stream errors.
 * A file that ends before the range does fails with EIO naming `what`.
 */
export function fileRangeStream(locate: () => Promise<FileRange>, what: string): Readable {
  async function* chunks(): AsyncGenerator<Buffer> {
    const r = await locate();
    try {
      let pos = r.start;
      while (pos < r.end) {
        const want = Math.min(READ_CHUNK, r.end - pos);
        const buf = Buffer.allocUnsafe(want);
        const { bytesRead } = await r.fh.read(buf, 0, want, pos);
        if (bytesRead === 0) throw new CfsError('EIO', `${what}: file ends at byte ${pos}, expected ${r.end}`);
        pos += bytesRead;
        yield bytesRead === want ? buf : buf.subarray(0, bytesRead);
      }
    } finally {
      await r.release();
    }
  }
  return Readable.from(chunks(), { objectMode: false });
}
