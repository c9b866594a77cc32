/**
 * Which directory entry of a hardlinked inode is its "real" one. The image format places the
 * inode in BFS order at the position of that entry. The dumpfile parser records the entry of the
 * non-`@` line; without a (still valid) record the writer uses the first entry in depth-first name
 * order, which is what composefs-info dump and composefs-rs treat as the real one. A record is
 * used only if the writer meets that entry while walking the tree.
 */
import type { ByteString, Inode } from '../tree/inode.js';

const primary = new WeakMap<Inode, { parent: Inode; name: ByteString }>();

export function setPrimaryLink(inode: Inode, parent: Inode, name: ByteString): void {
  primary.set(inode, { parent, name });
}

/** True if `parent/name` is the recorded primary entry of `inode` (and the record is still valid). */
export function isRecordedPrimary(inode: Inode, parent: Inode, name: ByteString): boolean {
  const p = primary.get(inode);
  return p !== undefined && p.parent === parent && p.name === name;
}

