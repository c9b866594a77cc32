/**
 * The boot transform composefs-rs applies for `--bootable` images (`transform_for_boot`),
 * after the OCI transform. Boot entries must be taken from the tree before it (bls.ts), since
 * /boot is emptied here.
 *
 * 1. `/boot` and `/sysroot` must both exist as directories; each is emptied and takes `/usr`'s
 *    mtime seconds (its nanoseconds are kept). `/usr` must exist.
 * 2. (compaction: inodes no longer referenced simply drop out of the tree)
 * 3. SELinux: with a policy from the image, every inode is relabelled; without one, every
 *    `security.selinux` xattr is removed (selinux.ts).
 * 4. Link counts of non-directories are recounted from the references left in the tree, as the
 *    Rust writer counts them (emptied directories change them).
 */
import { CfsError } from '../errors.js';
import { isDir, type Inode } from '../tree/inode.js';
import { relabelTree, stripSelinuxLabels, type SelinuxPolicy } from './selinux.js';

const EMPTIED_DIRS = ['boot', 'sysroot'];

/** The top-level directories; every one missing (or not a directory) is named in one error. */
function topDirs(root: Inode, names: string[]): Inode[] {
  const nodes = names.map((name) => root.children?.get(name));
  const missing = names.filter((_, i) => !nodes[i]).map((n) => `/${n}`);
  const notDirs = names.filter((_, i) => nodes[i] && !isDir(nodes[i])).map((n) => `/${n}`);
  if (missing.length > 0) throw new CfsError('EINVAL', `bootable image needs the directories ${names.map((n) => `/${n}`).join(', ')}; this tree lacks ${missing.join(', ')}${notDirs.length ? ` and ${notDirs.join(', ')} is not a directory` : ''}`);
  if (notDirs.length > 0) throw new CfsError('EINVAL', `bootable image needs ${notDirs.join(', ')} to be a directory`);
  return nodes as Inode[];
}

/** Set nlink of every non-directory to the number of directory entries referring to it. */
export function recountLinks(root: Inode): void {
  const refs = new Map<Inode, number>();
  const walk = (dir: Inode): void => {
    for (const c of dir.children!.values()) {
      if (isDir(c)) walk(c);
      else refs.set(c, (refs.get(c) ?? 0) + 1);
    }
  };
  walk(root);
  for (const [n, count] of refs) n.nlink = count;
}

/** Apply the boot transform in place. `policy` comes from loadSelinuxPolicy on the same tree. */
export function bootTransform(root: Inode, policy: SelinuxPolicy | null): void {
  const [usr, ...emptied] = topDirs(root, ['usr', ...EMPTIED_DIRS]);
  for (const d of emptied) {
    d.mtimeSec = usr.mtimeSec;
    d.children!.clear();
  }
  if (policy) relabelTree(root, policy);
  else stripSelinuxLabels(root);
  recountLinks(root);
}
