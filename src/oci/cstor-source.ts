/**
 * containers-storage: images as ImageToImport. Layers are the exact tars rebuilt from tar-split
 * metadata and the store's diff files; the tar importer checks each against its diff_id, so a
 * file changed in the store after podman imported it is caught.
 */
import { openStorageImage } from './containers-storage/image.js';
import { layerTarStream } from './containers-storage/tar-split.js';
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
      open: (progress: (n: number) => void) => countBytes(layerTarStream(l.store, l.layerId), progress),
    })),
    close: async () => undefined,
  };
}

async function* countBytes(src: AsyncIterable<Buffer>, progress: (n: number) => void): AsyncGenerator<Buffer> {
  let n = 0;
  for await (const b of src) {
    n += b.length;
    progress(n);
    yield b;
  }
}
