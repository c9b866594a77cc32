/**
 * containers-storage: images as ImageToImport. Each layer is offered two ways:
 *   open()          the exact tar, rebuilt from tar-split metadata and the store's diff files,
 *                   every file checked against its recorded size and CRC-64;
 *   openSegments()  the same tar as raw segments plus references to the diff files, so the
 *                   importer can reflink or hardlink contents into objects/ (local fetch).
 * Either way the tar importer checks the whole layer against its diff_id, so a file changed in
 * the store after podman imported it is caught.
 *
 * Rootless stores: files are read as the invoking user. Files owned by mapped IDs that the user
 * cannot read fail with a message saying so (never skipped).
 */
import { CfsError, errnoCode, isCfsError } from '../errors.js';
import { Crc64 } from './containers-storage/crc64.js';
import { openStorageImage } from './containers-storage/image.js';
import type { ContainersStore } from './containers-storage/store.js';
import { layerSegments, layerTarStream, type LayerSegment } from './containers-storage/tar-split.js';
import type { ContentCheck, TarSegment } from '../tar/split-segments.js';
import type { ImageToImport } from './import.js';
import type { SourceOptions } from './sources.js';

export async function openContainersStorageImage(spec: string, _opts: SourceOptions): Promise<ImageToImport> {
  const img = await openStorageImage(spec);
  return {
    description: `containers-storage ${img.reference}`,
    manifestDigest: img.manifestDigest,
    manifestBytes: img.manifestBytes,
    configDigest: img.configDigest,
    configBytes: img.configBytes,
    artifact: false,
    layers: img.layers.map((l) => ({
      id: l.diffId,
      size: l.uncompressedSize,
      kind: 'tar' as const,
      open: (progress: (n: number) => void) => explained(countBytes(layerTarStream(l.store, l.layerId), progress), l.store),
      openSegments: (progress: (n: number) => void) => explained(tarSegments(l.store, l.layerId, progress), l.store),
    })),
    close: async () => undefined,
  };
}

function unreadableHint(store: ContainersStore): string {
  return `the store ${store.root} is rootless or belongs to another user; run as its owner inside \`podman unshare\`, or as root`;
}

/** Permission errors of the store's own reads, explained (the importer explains its reads). */
async function* explained<T>(src: AsyncIterable<T>, store: ContainersStore): AsyncGenerator<T> {
  try {
    yield* src;
  } catch (e) {
    const code = errnoCode(e);
    const denied = isCfsError(e) ? /\b(EACCES|EPERM)\b|permission denied/i.test(e.message) : code === 'EACCES' || code === 'EPERM';
    if (!denied) throw e;
    const what = isCfsError(e) ? e.message : `${(e as NodeJS.ErrnoException).path ?? ''}: permission denied`;
    throw new CfsError('EPERM', `${what}; ${unreadableHint(store)}`);
  }
}

async function* countBytes(src: AsyncIterable<Buffer>, progress: (n: number) => void): AsyncGenerator<Buffer> {
  let n = 0;
  for await (const b of src) {
    n += b.length;
    progress(n);
    yield b;
  }
}

/** CRC-64 of a file's content against the one tar-split recorded. */
function crcCheck(layerId: string, seg: Extract<LayerSegment, { kind: 'file' }>): () => ContentCheck {
  return () => {
    const crc = new Crc64();
    return {
      update: (chunk) => void crc.update(chunk),
      end: () => {
        if (!crc.digest().equals(seg.crc64)) throw new CfsError('EDIGEST', `layer ${layerId}: ${seg.name} changed since import (crc64 mismatch)`);
      },
    };
  };
}

/** layerSegments as TarSegments; progress counts the tar bytes handed out. */
async function* tarSegments(store: ContainersStore, layerId: string, progress: (n: number) => void): AsyncGenerator<TarSegment> {
  const hint = unreadableHint(store);
  let n = 0;
  for await (const seg of layerSegments(store, layerId)) {
    if (seg.kind === 'raw') {
      n += seg.data.length;
      yield seg;
    } else {
      n += seg.size;
      yield { kind: 'file', path: seg.path, name: seg.name, size: seg.size, check: crcCheck(layerId, seg), unreadableHint: hint };
    }
    progress(n);
  }
}
