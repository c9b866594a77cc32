/**
 * Layers (split streams in the repository) → merged tree → composefs EROFS image.
 * The rules that decide the image ID are in docs/design.md.
 */
import { CfsError } from '../errors.js';
import type { Repository } from '../repository/repository.js';
import { readLayerEntries } from '../tar/layer.js';
import { TreeBuilder } from '../tree/merge.js';
import { ociTransform } from '../tree/oci-transform.js';
import type { Inode } from '../tree/inode.js';
import type { TarEntry } from '../tar/entry.js';
import { writeErofs } from '../erofs/writer.js';

export interface LayerStreamRef {
  diffId: string;
  streamId: Buffer;
  /** The stream's entries as its import just parsed them (EntryCollector): not read back from the stream. */
  entries?: TarEntry[] | null;
}

export interface TreeOptions {
  /** Keep `user.*` xattrs besides `security.capability` (xattr mode keep-user-xattrs). */
  keepUserXattrs?: boolean;
}

export async function buildTreeFromLayers(repo: Repository, layers: LayerStreamRef[], opts: TreeOptions = {}): Promise<Inode> {
  const builder = new TreeBuilder();
  for (const l of layers) {
    if (!l.streamId) throw new CfsError('ECORRUPT', `layer ${l.diffId}: split stream missing from repository ${repo.path}`);
    await builder.applyLayer(l.entries ?? readLayerEntries(repo, l.streamId), l.diffId);
  }
  const root = builder.finish();
  ociTransform(root, { keepUserXattrs: opts.keepUserXattrs });
  return root;
}

/** EROFS bytes for a repository format version (0 and 1 are C mkcomposefs layouts). */
export function erofsForFormat(root: Inode, erofsVersion: number): Buffer {
  if (erofsVersion !== 0 && erofsVersion !== 1) {
    throw new CfsError('ENOTSUP', `EROFS format version ${erofsVersion} is not supported (cfs writes versions 0 and 1)`);
  }
  return writeErofs(root, { minVersion: erofsVersion, maxVersion: erofsVersion });
}

export async function buildImageFromLayers(repo: Repository, layers: LayerStreamRef[], opts: TreeOptions & { erofsVersion: number }): Promise<Buffer> {
  return erofsForFormat(await buildTreeFromLayers(repo, layers, opts), opts.erofsVersion);
}
