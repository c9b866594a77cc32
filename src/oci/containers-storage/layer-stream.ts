/**
 * A containers-storage layer as a splitdirfdstream (brief 5.1), the same producer/consumer
 * pair as repository-to-repository copies and varlink PutLayer: tar-split's raw segments become
 * Metadata chunks, member contents FileBackedData chunks naming the file relative to one of the
 * layer's search directories (its own diff, then its lowers), passed as directory fds. Members
 * whose names are not UTF-8 (the wire format's names must be) are read here and sent inline,
 * checked against their recorded size and CRC-64.
 *
 * Contents sent by name are not CRC-checked here: the consumer verifies the whole layer against
 * its diff_id, and `findChangedFile` names the culprit when that fails.
 */
import { closeSync, lstatSync } from 'node:fs';
import path from 'node:path';
import { native } from '../../native.js';
import { ACCESS, mayAccessWithoutCaps } from '../../userns.js';
import { CfsError, errnoCode } from '../../errors.js';
import { ChunkBatch } from '../../splitdirfdstream/batch.js';
import { fileHeader, LIMITS, metadataHeader } from '../../splitdirfdstream/format.js';
import type { ContainersStore } from './store.js';
import { fileContent, layerSegments, type LayerSegment } from './tar-split.js';

export interface StoreLayerStream {
  /** The layer's search directories, in the order the stream's dirfd indexes name them. */
  dirfds: number[];
  chunks: AsyncGenerator<Buffer>;
  /** Close the directory fds (and stop the stream, releasing the store's layer lock). */
  close(): Promise<void>;
}

type FileSegment = Extract<LayerSegment, { kind: 'file' }>;

/** The wire format's names are UTF-8 (a memberPath is UTF-8 exactly when its member name is). */
function isWireName(seg: FileSegment): boolean {
  return seg.rel.length <= LIMITS.name && seg.utf8;
}

/** Pieces of at most `max` bytes (Metadata and InlineData bodies are bounded). */
function* pieces(b: Buffer, max: number): Generator<Buffer> {
  for (let off = 0; off < b.length; off += max) yield b.subarray(off, off + max);
}

export interface StoreStreamOptions {
  /** The dirfd slot of each search directory in the consumer's fd array (default: its index). */
  slots?: readonly number[];
  /**
   * The consumer cannot bypass file permissions: it has our uid and gid but not our
   * capabilities (the store's owner outside the user namespace we run in). Only files it may
   * open go by name; the others' bytes are read here and sent inline.
   */
  consumerLacksDacOverride?: boolean;
}

async function* layerChunks(store: ContainersStore, layerId: string, opts: StoreStreamOptions): AsyncGenerator<Buffer> {
  // layerSegments holds the store's layer lock only while it iterates; the last batch is
  // consumed (its files opened and linked) after that, so hold a lock of our own until the end.
  const lock = await store.lockLayers();
  try {
    yield* batched(store, layerId, opts);
  } finally {
    lock.release();
  }
}

/**
 * Whether a process with our uid and gid but without capabilities (the consumer: the store's
 * owner outside the user namespace we run in) may open the file at `dirs[seg.dirIndex]/seg.rel`:
 * the permission class it falls in (owner, group, other), for the file and every directory on
 * the way, as the kernel decides it.
 */
function consumerMayOpen(seg: FileSegment, dirs: readonly string[], searchable: Map<string, boolean>): boolean {
  const st = lstatSync(seg.path, { throwIfNoEntry: false });
  if (!st?.isFile() || !mayAccessWithoutCaps(st, ACCESS.read) || hasAcl(seg.path)) return false;
  const parts = seg.rel.toString('utf8').split('/').slice(0, -1);
  for (let i = 0, dir = dirs[seg.dirIndex]!; ; dir = `${dir}/${parts[i++]}`) {
    let ok = searchable.get(dir);
    if (ok === undefined) {
      const d = lstatSync(dir, { throwIfNoEntry: false });
      ok = !!d?.isDirectory() && mayAccessWithoutCaps(d, ACCESS.search) && !hasAcl(dir);
      searchable.set(dir, ok);
    }
    if (!ok) return false;
    if (i === parts.length) return true;
  }
}

/** A POSIX ACL decides beyond the mode bits (it may deny the owner): such files are sent inline, whatever it says. */
function hasAcl(p: string | Buffer): boolean {
  try {
    return native().lgetxattr(p, ACL_XATTR) !== null;
  } catch (e) {
    // No xattrs on this filesystem: no ACLs either. Anything else: assume one.
    const code = errnoCode(e);
    return code !== 'ENOTSUP' && code !== 'EOPNOTSUPP';
  }
}

const ACL_XATTR = 'system.posix_acl_access';

async function* batched(store: ContainersStore, layerId: string, opts: StoreStreamOptions): AsyncGenerator<Buffer> {
  const batch = new ChunkBatch();
  const dirs = opts.consumerLacksDacOverride ? (await store.layerSearchDirs(layerId)).map((d) => path.resolve(d)) : [];
  const searchable = new Map<string, boolean>();
  for await (const seg of layerSegments(store, layerId)) {
    if (seg.kind === 'raw') {
      for (const p of pieces(seg.data, LIMITS.inlineBody)) {
        batch.add(metadataHeader('metadata', p.length));
        batch.add(p);
      }
    } else if (isWireName(seg) && (!opts.consumerLacksDacOverride || consumerMayOpen(seg, dirs, searchable))) {
      batch.add(fileHeader(seg.size, opts.slots?.[seg.dirIndex] ?? seg.dirIndex, seg.rel));
    } else {
      for await (const chunk of fileContent(layerId, seg)) {
        batch.add(metadataHeader('inline', chunk.length));
        batch.add(chunk);
        if (batch.full) yield batch.take();
      }
    }
    if (batch.full) yield batch.take();
  }
  if (!batch.empty) yield batch.take();
}

/** The layer's splitdirfdstream and directory fds; the caller closes it. */
export async function openStoreLayerStream(store: ContainersStore, layerId: string, opts: StoreStreamOptions = {}): Promise<StoreLayerStream> {
  const { dirfds } = await store.openLayerDirs(layerId);
  const chunks = layerChunks(store, layerId, opts);
  return {
    dirfds,
    chunks,
    close: async () => {
      await chunks.return(undefined);
      for (const fd of dirfds.splice(0)) closeSync(fd);
    },
  };
}

/**
 * The member whose file no longer matches its recorded CRC-64 (or size), as an error naming it;
 * null when every file matches. Used to explain a diff_id mismatch.
 */
export async function findChangedFile(store: ContainersStore, layerId: string): Promise<CfsError | null> {
  try {
    for await (const seg of layerSegments(store, layerId)) {
      if (seg.kind !== 'file') continue;
      // fileContent checks existence, size and CRC-64 and throws naming the member.
      for await (const _ of fileContent(layerId, seg));
    }
  } catch (e) {
    if (e instanceof CfsError && (e.code === 'EDIGEST' || e.code === 'ENOENT')) return e;
    throw e;
  }
  return null;
}
