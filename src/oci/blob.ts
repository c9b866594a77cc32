/**
 * Verified blob streams. The compressed blob is hashed while it streams; a size or digest
 * mismatch fails the stream at its end, before the consumer sees a successful finish. Tar layers
 * are decompressed (every gzip member, every zstd frame).
 */
import { createHash } from 'node:crypto';
import { pipeline, type Transform } from 'node:stream';
import { createGunzip } from 'node:zlib';
import { DecompressStream } from 'zstd-napi';
import { CfsError } from '../errors.js';
import { layerCompression, type Compression } from './media-types.js';
import { parseDigest, type Descriptor, type OciRead } from './source.js';

export interface BlobStreamOptions {
  /** Called with the running count of blob (compressed) bytes read. */
  progress?: (bytesRead: number) => void;
}

export interface OpenedLayer {
  /** Uncompressed tar bytes. */
  stream: AsyncIterable<Buffer>;
  compression: Compression;
}

export function isTarLayer(desc: Descriptor): boolean {
  return layerCompression(desc.mediaType) !== null;
}

/** The raw blob bytes, checked against the descriptor's size and digest as they stream. */
export async function* openVerifiedBlob(src: OciRead, desc: Descriptor, opts: BlobStreamOptions = {}): AsyncGenerator<Buffer> {
  // The blob's digest, not the layer's diff_id (which tar errors name): said as such.
  const where = `layer blob ${desc.digest}`;
  const { algorithm, hex } = parseDigest(desc.digest, where);
  const hash = createHash(algorithm);
  let n = 0;
  for await (const chunk of src.openBlob(desc.digest) as AsyncIterable<Buffer>) {
    n += chunk.length;
    if (n > desc.size) throw new CfsError('EDIGEST', `${where}: blob is larger than the descriptor's ${desc.size} bytes`);
    hash.update(chunk);
    opts.progress?.(n);
    yield chunk;
  }
  if (n !== desc.size) throw new CfsError('EDIGEST', `${where}: blob has ${n} bytes, descriptor says ${desc.size}`);
  const actual = hash.digest('hex');
  if (actual !== hex) throw new CfsError('EDIGEST', `${where}: content digest is ${algorithm}:${actual}`);
}

function decoder(c: 'gzip' | 'zstd'): Transform {
  return c === 'gzip' ? createGunzip({ chunkSize: 64 * 1024 }) : new DecompressStream();
}

/** Maps a decoder failure to a CfsError. */
function decodeError(e: unknown, c: 'gzip' | 'zstd', digest: string): CfsError {
  const msg = e instanceof Error ? e.message : String(e);
  if ((e as { code?: string }).code === 'Z_BUF_ERROR' || /unexpected end|ended in middle/i.test(msg)) {
    return new CfsError('EIO', `layer blob ${digest}: truncated ${c} stream`);
  }
  return new CfsError('ECORRUPT', `layer blob ${digest}: invalid ${c} data: ${msg}`);
}

/** Hashes the whole blob; resolves if it matches its descriptor. */
async function verifyBlob(src: OciRead, desc: Descriptor): Promise<void> {
  for await (const _ of openVerifiedBlob(src, desc)) {
    // only the digest check at the end matters
  }
}

async function* decompress(src: OciRead, desc: Descriptor, c: 'gzip' | 'zstd', opts: BlobStreamOptions): AsyncGenerator<Buffer> {
  // pipeline() destroys the decoder with the source's error (digest mismatch), so the
  // iteration below throws instead of ending.
  const out = pipeline(openVerifiedBlob(src, desc, opts), decoder(c), () => {});
  try {
    for await (const chunk of out as AsyncIterable<Buffer>) yield chunk;
  } catch (e) {
    if (e instanceof CfsError) throw e;
    // A corrupt blob usually breaks the decoder before its digest can be checked; report the
    // digest mismatch, the root cause, when there is one.
    await verifyBlob(src, desc);
    throw decodeError(e, c, desc.digest);
  }
}

/** Opens a tar layer as its uncompressed bytes. Non-tar media types → EINVAL (see isTarLayer). */
export function openLayer(src: OciRead, desc: Descriptor, opts: BlobStreamOptions = {}): OpenedLayer {
  const compression = layerCompression(desc.mediaType);
  if (compression === null) throw new CfsError('EINVAL', `layer blob ${desc.digest}: media type "${desc.mediaType}" is not a tar layer`);
  const stream = compression === 'none' ? openVerifiedBlob(src, desc, opts) : decompress(src, desc, compression, opts);
  return { stream, compression };
}
