/**
 * Test fixture: builds OCI image layouts (and oci-archive tars of them) from declarative specs,
 * with knobs for broken inputs. Layer tars are written with tar-stream; PAX records (xattrs,
 * sub-second mtimes, long or non-ASCII names) are emitted by hand so binary values keep their
 * exact byte lengths.
 */
import { execFileSync } from 'node:child_process';
import { createHash } from 'node:crypto';
import { mkdir, readdir, readFile, rm, truncate, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { gzipSync } from 'node:zlib';
import { pack as tarPack, type Header } from 'tar-stream';
import { compress as zstdCompress } from 'zstd-napi';
import { MT, REF_NAME_ANNOTATION } from '../../src/oci/media-types.js';

export type EntryType = 'file' | 'directory' | 'symlink' | 'hardlink' | 'char' | 'block' | 'fifo';

export interface EntrySpec {
  path: string;
  /** Default: 'directory' when path ends in '/', else 'file'. */
  type?: EntryType;
  mode?: number;
  uid?: number;
  gid?: number;
  /** Seconds; default 1700000000. */
  mtime?: number;
  /** Nanoseconds, written as a PAX mtime fraction. */
  mtimeNsec?: number;
  content?: string | Buffer;
  /** Symlink or hardlink target. */
  linkname?: string;
  /** Written as PAX SCHILY.xattr.<key> records. */
  xattrs?: Record<string, string | Buffer>;
  devmajor?: number;
  devminor?: number;
}

export type Compression = 'gzip' | 'zstd' | 'none';

export interface LayerOptions {
  entries?: EntrySpec[];
  /** Raw uncompressed tar instead of entries. */
  tar?: Buffer;
  /** Raw blob for non-tar (artifact) layers; requires mediaType. */
  blob?: Buffer;
  mediaType?: string;
  compression?: Compression;
  /** Compress in this many independent gzip members / zstd frames. */
  pieces?: number;
}
export type LayerSpec = EntrySpec[] | LayerOptions;

export interface ImageSpec {
  /** ref.name annotation; null/undefined = untagged. */
  tag?: string | null;
  layers: LayerSpec[];
  /** 'os/arch[/variant]', written to the config and (unless disabled) the descriptor. */
  platform?: string;
  platformInDescriptor?: boolean;
  mediaTypes?: 'oci' | 'docker';
  /** Default compression of layers; default gzip. */
  compression?: Compression;
  /** Extra config fields (e.g. { config: { Cmd: [...] } }). */
  config?: Record<string, unknown>;
  /** Artifact: config media type and bytes (default OCI empty config `{}`). */
  artifact?: { artifactType?: string; configMediaType?: string; configBytes?: Buffer };
  /** Broken-input knobs. */
  bad?: {
    /** Flip a byte of these layers' stored blobs after their digests were taken. */
    corruptLayerBlob?: number[];
    /** Replace this layer's diff_id in the config with a wrong digest. */
    wrongDiffId?: number;
    /** Cut this layer's compressed stream in half before digesting (descriptor consistent). */
    truncateLayer?: number;
    missingLayerBlob?: number;
    missingConfig?: boolean;
    corruptManifest?: boolean;
  };
}

export interface LayoutSpec {
  images: ImageSpec[];
  /** flat: one index.json entry per image; manifest-list: one nested index of all images. */
  index?: 'flat' | 'manifest-list';
  /** ref.name of the nested index (manifest-list mode); default: the first image's tag. */
  indexTag?: string | null;
  corruptIndexJson?: boolean;
}

export interface BuiltLayer {
  digest: string;
  size: number;
  mediaType: string;
  diffId: string;
  /** Uncompressed tar (or the raw blob for artifacts). */
  tar: Buffer;
  blob: Buffer;
}

export interface BuiltImage {
  tag: string | null;
  manifestDigest: string;
  manifestBytes: Buffer;
  configDigest: string;
  configBytes: Buffer;
  layers: BuiltLayer[];
}

export interface BuiltLayout {
  dir: string;
  images: BuiltImage[];
  /** Digest of the nested index (manifest-list mode). */
  indexDigest?: string;
}

export function sha256(b: Buffer): string {
  return `sha256:${createHash('sha256').update(b).digest('hex')}`;
}

function paxRecord(key: string, value: Buffer): Buffer {
  const body = Buffer.concat([Buffer.from(` ${key}=`, 'utf8'), value, Buffer.from('\n')]);
  let len = body.length + String(body.length).length;
  if (String(len).length !== String(body.length).length) len = body.length + String(len).length;
  return Buffer.concat([Buffer.from(String(len)), body]);
}

type TarHeaders = Partial<Header> & Pick<Header, 'name'>;

/**
 * tar-stream cannot write a PAX header with arbitrary bytes, so PAX data is written as a file
 * member with this name prefix and its typeflag patched to 'x' afterwards.
 */
const PAX_MARKER = 'PaxHeaders.cfs-fixture/';

function patchPaxMarkers(tar: Buffer): void {
  for (let pos = 0; pos + 512 <= tar.length; ) {
    const h = tar.subarray(pos, pos + 512);
    if (h.every((b) => b === 0)) return;
    const size = parseInt(h.toString('latin1', 124, 136).replace(/\0.*$/, '').trim() || '0', 8);
    if (h.toString('latin1', 0, PAX_MARKER.length) === PAX_MARKER) {
      h[156] = 'x'.charCodeAt(0);
      h.fill(0x20, 148, 156);
      let sum = 0;
      for (const b of h) sum += b;
      h.write(`${sum.toString(8).padStart(6, '0')}\0 `, 148, 'latin1');
    }
    pos += 512 + Math.ceil(size / 512) * 512;
  }
}

const TAR_TYPE: Readonly<Record<EntryType, Header['type']>> = {
  file: 'file',
  directory: 'directory',
  symlink: 'symlink',
  hardlink: 'link',
  char: 'character-device',
  block: 'block-device',
  fifo: 'fifo',
};

const asciiSafe = (s: string, max: number): boolean => /^[\x20-\x7e]*$/.test(s) && Buffer.byteLength(s) <= max;

/** Builds an uncompressed tar from entry specs. */
export async function makeTar(entries: EntrySpec[]): Promise<Buffer> {
  const pack = tarPack();
  const chunks: Buffer[] = [];
  pack.on('data', (c: unknown) => {
    chunks.push(c as Buffer);
  });
  const done = new Promise<void>((resolve, reject) => {
    pack.on('end', resolve);
    pack.on('error', reject);
  });
  const add = (h: TarHeaders, body?: Buffer): Promise<void> =>
    new Promise((resolve, reject) => {
      const cb = (err?: Error | null): void => (err ? reject(err) : resolve());
      if (body) pack.entry(h, body, cb);
      else pack.entry(h, cb);
    });
  for (const e of entries) {
    const type = e.type ?? (e.path.endsWith('/') ? 'directory' : 'file');
    const mtime = e.mtime ?? 1700000000;
    const records: Buffer[] = [];
    // ustar splits long names into prefix/name; keep PAX for what it cannot hold.
    const nameFits = asciiSafe(e.path, 100) || (asciiSafe(e.path, 255) && e.path.indexOf('/') > 0 && e.path.length - e.path.lastIndexOf('/') <= 100);
    let name = e.path;
    if (!nameFits) {
      records.push(paxRecord('path', Buffer.from(e.path, 'utf8')));
      name = `pax/${createHash('sha256').update(e.path).digest('hex').slice(0, 32)}`;
    }
    let linkname = e.linkname;
    if (linkname !== undefined && !asciiSafe(linkname, 100)) {
      records.push(paxRecord('linkpath', Buffer.from(linkname, 'utf8')));
      linkname = 'pax-linkpath';
    }
    if (e.mtimeNsec) records.push(paxRecord('mtime', Buffer.from(`${mtime}.${String(e.mtimeNsec).padStart(9, '0')}`)));
    for (const [k, v] of Object.entries(e.xattrs ?? {})) {
      records.push(paxRecord(`SCHILY.xattr.${k}`, typeof v === 'string' ? Buffer.from(v, 'utf8') : v));
    }
    if (records.length) {
      const pax = Buffer.concat(records);
      await add({ name: `${PAX_MARKER}entry`, type: 'file', size: pax.length, mtime: new Date(mtime * 1000) }, pax);
    }
    const body = type === 'file' ? (typeof e.content === 'string' ? Buffer.from(e.content) : (e.content ?? Buffer.alloc(0))) : undefined;
    const header: TarHeaders = {
      name,
      type: TAR_TYPE[type],
      mode: e.mode ?? (type === 'directory' ? 0o755 : type === 'symlink' ? 0o777 : 0o644),
      uid: e.uid ?? 0,
      gid: e.gid ?? 0,
      mtime: new Date(mtime * 1000),
      size: body?.length ?? 0,
    };
    if (linkname !== undefined) header.linkname = linkname;
    if (e.devmajor !== undefined) header.devmajor = e.devmajor;
    if (e.devminor !== undefined) header.devminor = e.devminor;
    await add(header, body);
  }
  pack.finalize();
  await done;
  const tar = Buffer.concat(chunks);
  patchPaxMarkers(tar);
  return tar;
}

/** Compresses in `pieces` independent gzip members / zstd frames. */
export function compressBlob(data: Buffer, c: Compression, pieces = 1): Buffer {
  if (c === 'none') return data;
  const parts: Buffer[] = [];
  const step = Math.max(1, Math.ceil(data.length / pieces));
  for (let off = 0; off < data.length || parts.length === 0; off += step) {
    const piece = data.subarray(off, off + step);
    parts.push(c === 'gzip' ? gzipSync(piece) : zstdCompress(piece));
  }
  return Buffer.concat(parts);
}

function layerMediaType(kind: 'oci' | 'docker', c: Compression): string {
  if (kind === 'docker') return c === 'gzip' ? MT.dockerLayerGzip : c === 'zstd' ? MT.dockerLayerZstd : MT.dockerLayerTar;
  return c === 'gzip' ? MT.ociLayerGzip : c === 'zstd' ? MT.ociLayerZstd : MT.ociLayerTar;
}

function parsePlatformSpec(p: string): { os: string; architecture: string; variant?: string } {
  const [os, architecture, variant] = p.split('/') as [string, string, string | undefined];
  return variant ? { os, architecture, variant } : { os, architecture };
}

class BlobWriter {
  constructor(readonly dir: string) {}
  async put(b: Buffer): Promise<string> {
    const d = sha256(b);
    await writeFile(join(this.dir, 'blobs', 'sha256', d.slice(7)), b);
    return d;
  }
  path(digest: string): string {
    return join(this.dir, 'blobs', 'sha256', digest.slice(7));
  }
  async corrupt(digest: string): Promise<void> {
    const p = this.path(digest);
    const b = await readFile(p);
    b[b.length >> 1] = b[b.length >> 1]! ^ 0xff;
    await writeFile(p, b);
  }
}

async function buildImage(w: BlobWriter, spec: ImageSpec): Promise<BuiltImage & { descriptor: Record<string, unknown> }> {
  const kind = spec.mediaTypes ?? 'oci';
  const bad = spec.bad ?? {};
  const layers: BuiltLayer[] = [];
  for (const [i, ls] of spec.layers.entries()) {
    const opts: LayerOptions = Array.isArray(ls) ? { entries: ls } : ls;
    const c = opts.compression ?? spec.compression ?? 'gzip';
    let tar: Buffer;
    let blob: Buffer;
    if (opts.blob) {
      tar = blob = opts.blob;
    } else {
      tar = opts.tar ?? (await makeTar(opts.entries ?? []));
      blob = compressBlob(tar, c, opts.pieces);
    }
    if (bad.truncateLayer === i) blob = blob.subarray(0, blob.length >> 1);
    const digest = await w.put(blob);
    const mediaType = opts.mediaType ?? layerMediaType(kind, c);
    layers.push({ digest, size: blob.length, mediaType, diffId: sha256(tar), tar, blob });
  }
  const platform = spec.platform ? parsePlatformSpec(spec.platform) : undefined;
  let configBytes: Buffer;
  let configMediaType: string;
  if (spec.artifact) {
    configBytes = spec.artifact.configBytes ?? Buffer.from('{}');
    configMediaType = spec.artifact.configMediaType ?? 'application/vnd.oci.empty.v1+json';
  } else {
    const diffIds = layers.map((l, i) => (bad.wrongDiffId === i ? sha256(Buffer.from(`wrong ${i}`)) : l.diffId));
    const config = {
      ...(platform ?? {}),
      config: {},
      rootfs: { type: 'layers', diff_ids: diffIds },
      history: [],
      ...(spec.config ?? {}),
    };
    configBytes = Buffer.from(JSON.stringify(config));
    configMediaType = kind === 'docker' ? MT.dockerConfig : MT.ociConfig;
  }
  const configDigest = await w.put(configBytes);
  const manifest: Record<string, unknown> = {
    schemaVersion: 2,
    mediaType: kind === 'docker' ? MT.dockerManifest : MT.ociManifest,
    ...(spec.artifact?.artifactType ? { artifactType: spec.artifact.artifactType } : {}),
    config: { mediaType: configMediaType, digest: configDigest, size: configBytes.length },
    layers: layers.map((l) => ({ mediaType: l.mediaType, digest: l.digest, size: l.size })),
  };
  const manifestBytes = Buffer.from(JSON.stringify(manifest));
  const manifestDigest = await w.put(manifestBytes);

  for (const i of bad.corruptLayerBlob ?? []) await w.corrupt(layers[i]!.digest);
  if (bad.missingLayerBlob !== undefined) await rm(w.path(layers[bad.missingLayerBlob]!.digest));
  if (bad.missingConfig) await rm(w.path(configDigest));
  if (bad.corruptManifest) await w.corrupt(manifestDigest);

  const tag = spec.tag ?? null;
  const descriptor: Record<string, unknown> = {
    mediaType: manifest['mediaType'],
    digest: manifestDigest,
    size: manifestBytes.length,
  };
  if (platform && spec.platformInDescriptor !== false) descriptor['platform'] = platform;
  return { tag, manifestDigest, manifestBytes, configDigest, configBytes, layers, descriptor };
}

/** Writes an OCI image layout into `dir` (created if needed). */
export async function buildOciLayout(dir: string, spec: LayoutSpec): Promise<BuiltLayout> {
  await mkdir(join(dir, 'blobs', 'sha256'), { recursive: true });
  await writeFile(join(dir, 'oci-layout'), JSON.stringify({ imageLayoutVersion: '1.0.0' }));
  const w = new BlobWriter(dir);
  const images: BuiltImage[] = [];
  const descriptors: Array<Record<string, unknown>> = [];
  for (const s of spec.images) {
    const { descriptor, ...img } = await buildImage(w, s);
    images.push(img);
    descriptors.push(descriptor);
  }
  const annotate = (d: Record<string, unknown>, tag: string | null | undefined): Record<string, unknown> =>
    tag === null || tag === undefined ? d : { ...d, annotations: { [REF_NAME_ANNOTATION]: tag } };
  const built: BuiltLayout = { dir, images };
  let manifests: Array<Record<string, unknown>>;
  if (spec.index === 'manifest-list') {
    const docker = spec.images[0]?.mediaTypes === 'docker';
    const list = { schemaVersion: 2, mediaType: docker ? MT.dockerManifestList : MT.ociIndex, manifests: descriptors };
    const listBytes = Buffer.from(JSON.stringify(list));
    const listDigest = await w.put(listBytes);
    built.indexDigest = listDigest;
    const tag = spec.indexTag === undefined ? images[0]?.tag : spec.indexTag;
    manifests = [annotate({ mediaType: list.mediaType, digest: listDigest, size: listBytes.length }, tag)];
  } else {
    manifests = descriptors.map((d, i) => annotate(d, images[i]!.tag));
  }
  const index = JSON.stringify({ schemaVersion: 2, mediaType: MT.ociIndex, manifests });
  await writeFile(join(dir, 'index.json'), spec.corruptIndexJson ? index.slice(0, index.length >> 1) : index);
  return built;
}

async function listFiles(root: string, rel = ''): Promise<Array<{ rel: string; dir: boolean }>> {
  const out: Array<{ rel: string; dir: boolean }> = [];
  const ents = await readdir(join(root, rel), { withFileTypes: true });
  ents.sort((a, b) => (a.name < b.name ? -1 : a.name > b.name ? 1 : 0));
  for (const e of ents) {
    const r = rel ? `${rel}/${e.name}` : e.name;
    if (e.isDirectory()) {
      out.push({ rel: r, dir: true });
      out.push(...(await listFiles(root, r)));
    } else {
      out.push({ rel: r, dir: false });
    }
  }
  return out;
}

export interface ArchiveOptions {
  /** tar-stream (default) or GNU tar (`tar -C DIR -cf TAR .`: `./` names, GNU long names). */
  tool?: 'tar-stream' | 'gnu-tar';
  /** tar-stream: prefix member names with `./`. */
  dotSlash?: boolean;
  /** tar-stream: members written first (e.g. long names, to exercise the indexer). */
  extraMembers?: Array<{ name: string; content: string | Buffer }>;
  /** tar-stream: write this layout-relative file last and cut the archive in its middle. */
  truncateMember?: string;
}

/** Writes a tar of an OCI layout directory (an `oci-archive:`). */
export async function buildOciArchive(layoutDir: string, tarPath: string, opts: ArchiveOptions = {}): Promise<void> {
  if (opts.tool === 'gnu-tar') {
    execFileSync('tar', ['--format=gnu', '-C', layoutDir, '-cf', tarPath, '.']);
    return;
  }
  const files = await listFiles(layoutDir);
  const last = opts.truncateMember;
  if (last !== undefined) {
    const i = files.findIndex((f) => f.rel === last);
    if (i < 0) throw new Error(`buildOciArchive: no member ${last}`);
    files.push(...files.splice(i, 1));
  }
  const prefix = opts.dotSlash ? './' : '';
  const specs: EntrySpec[] = (opts.extraMembers ?? []).map((m) => ({ path: m.name, content: m.content }));
  for (const f of files) {
    specs.push(f.dir ? { path: `${prefix}${f.rel}/`, type: 'directory' } : { path: prefix + f.rel, content: await readFile(join(layoutDir, f.rel)) });
  }
  const tar = await makeTar(specs);
  await writeFile(tarPath, tar);
  if (last !== undefined) {
    const size = (await readFile(join(layoutDir, last))).length;
    const dataEnd = tar.length - 1024 - ((512 - (size % 512)) % 512);
    await truncate(tarPath, dataEnd - size + (size >> 1));
  }
}
