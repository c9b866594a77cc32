/**
 * Transport references → ImageToImport. Each source verifies what it reads (blob digests,
 * diff_ids are checked by the tar importer) and yields uncompressed layer tars.
 */
import { CfsError } from '../errors.js';
import { isTarLayer, openLayer, openVerifiedBlob } from './blob.js';
import { openOciSource, resolveImage } from './image.js';
import type { ImageToImport, LayerToImport } from './import.js';
import { parseImageReference } from './reference.js';
import { formatPlatform, hostPlatform } from './platform.js';

export interface SourceOptions {
  /** `os/arch[/variant]`; default: the running machine. */
  platform?: string;
  /** Told a note to show (e.g. the only image in a layout is for another platform). */
  onNote?: (text: string) => void;
  /** Told (a line to show) when a source waits noticeably for another process's lock (containers-storage: podman writing); once per lock. */
  onWait?: (text: string) => void;
  /** Stops waiting for such locks. */
  signal?: AbortSignal;
  /** Gives up waiting for such locks after this long (default: as long as it takes). */
  timeoutMs?: number;
}

/** True when `s` names a transport (`oci:`, `oci-archive:`, `containers-storage:`). */
export function isTransportReference(s: string): boolean {
  return /^(oci|oci-archive|containers-storage):/.test(s);
}

async function openOciImage(transport: 'oci' | 'oci-archive', refPath: string, tag: string | null, opts: SourceOptions, text: string): Promise<ImageToImport> {
  const src = await openOciSource({ transport, path: refPath });
  try {
    const img = await resolveImage(src, tag, { platform: opts.platform });
    if (img.otherPlatform !== null) opts.onNote?.(`note: ${text} is a ${img.otherPlatform} image, not for this machine (${formatPlatform(hostPlatform())}); importing it anyway`);
    const layers: LayerToImport[] = img.layers.map((desc, i) => {
      const tar = !img.artifact && isTarLayer(desc);
      if (!img.artifact && !tar) {
        throw new CfsError('EINVAL', `${text}: layer ${desc.digest} has media type "${desc.mediaType}", which is not a tar layer`);
      }
      return {
        id: img.diffIds[i],
        size: desc.size,
        kind: tar ? 'tar' : 'blob',
        open: (progress) => (tar ? openLayer(src, desc, { progress }).stream : openVerifiedBlob(src, desc, { progress })),
      };
    });
    return {
      description: src.description,
      manifestDigest: img.manifestDigest,
      manifestBytes: img.manifestBytes,
      configDigest: img.configDigest,
      configBytes: img.configBytes,
      layers,
      artifact: img.artifact,
      close: async () => src.close(),
    };
  } catch (e) {
    await src.close();
    throw e;
  }
}

export async function openImageSource(reference: string, opts: SourceOptions = {}): Promise<ImageToImport> {
  const ref = parseImageReference(reference);
  switch (ref.transport) {
    case 'oci':
    case 'oci-archive':
      return openOciImage(ref.transport, ref.path, ref.tag || null, opts, reference);
    case 'containers-storage': {
      const { openContainersStorageImage } = await import('./cstor-source.js');
      return openContainersStorageImage(ref.path, opts);
    }
  }
}
