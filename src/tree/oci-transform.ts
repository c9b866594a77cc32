/**
 * The OCI transform composefs-rs applies to a merged container tree before writing its image
 * (`transform_for_oci`), so the image ID matches `cfsctl oci pull` + `compute-id`:
 *
 * 1. `/` takes `/usr`'s mode, uid, gid, mtime (seconds and nanoseconds) and xattrs. An image
 *    without a `/usr` directory (scratch images: a static binary at the root) keeps the root's
 *    own metadata: composefs-rs refuses such images, so no ID of theirs is at stake.
 * 2. `/run`, if present (it must then be a directory), is emptied and takes `/usr`'s mtime
 *    (seconds and nanoseconds; without `/usr` its own stays); its other metadata stays. Link
 *    counts lose the names dropped.
 * 3. xattrs on every inode are filtered: only `security.capability` survives, plus `user.*`
 *    with `keepUserXattrs`.
 * Orphaned inodes need no compaction here: unreferenced Inode objects simply drop out.
 */
import { CfsError } from '../errors.js';
import { isDir, type Inode } from './inode.js';

export interface OciTransformOptions {
  /** Keep `user.*` xattrs too (composefs-rs `keep-user-xattrs`). */
  keepUserXattrs?: boolean;
}

const XATTR_ALLOWLIST: ReadonlySet<string> = new Set(['security.capability']);

export function ociTransform(root: Inode, opts: OciTransformOptions = {}): void {
  const found = root.children?.get('usr');
  const usr = found && isDir(found) ? found : null;
  if (usr) {
    root.mode = usr.mode;
    root.uid = usr.uid;
    root.gid = usr.gid;
    root.mtimeSec = usr.mtimeSec;
    root.mtimeNsec = usr.mtimeNsec;
    root.xattrs = new Map(usr.xattrs);
  }

  const run = root.children!.get('run');
  if (run) {
    if (!isDir(run)) throw new CfsError('EINVAL', 'image /run is not a directory');
    if (usr) {
      run.mtimeSec = usr.mtimeSec;
      run.mtimeNsec = usr.mtimeNsec;
    }
    // Link counts follow the names that remain (composefs-rs counts them in the final tree): a
    // file also named outside /run loses the names it had inside.
    const dropNames = (dir: Inode): void => {
      for (const c of dir.children!.values()) {
        if (isDir(c)) dropNames(c);
        else c.nlink = Math.max(1, c.nlink - 1);
      }
    };
    dropNames(run);
    run.children!.clear();
    run.nlink = 2;
  }

  const keep = (name: string): boolean => XATTR_ALLOWLIST.has(name) || (opts.keepUserXattrs === true && name.startsWith('user.'));
  const seen = new Set<Inode>();
  const filter = (n: Inode): void => {
    if (seen.has(n)) return;
    seen.add(n);
    for (const k of [...n.xattrs.keys()]) if (!keep(k)) n.xattrs.delete(k);
    if (n.children) for (const c of n.children.values()) filter(c);
  };
  filter(root);
}
