/**
 * Images from a directory tree (`create-image`, `compute-id`, `compute-karg`), the way cfsctl
 * reads one: scan, optionally store the file contents as repository objects, apply the OCI
 * transform (unless `propagateUsrToRoot` is false, which also skips its xattr filter), then for
 * bootable images the boot transform with the SELinux policy read from the directory.
 */
import { open } from 'node:fs/promises';
import path from 'node:path';
import { CfsError } from '../errors.js';
import { fsverityDigest, type HashAlg } from '../fsverity/digest.js';
import { erofsForFormat } from '../oci/image-build.js';
import type { Repository } from '../repository/repository.js';
import { isDir, isReg, type Inode } from '../tree/inode.js';
import { ociTransform } from '../tree/oci-transform.js';
import { scanDirectory } from '../tree/scan.js';
import { bootTransform } from './boot-transform.js';
import { formatKarg } from './karg.js';
import { loadSelinuxPolicy } from './selinux.js';
import { dirTreeFiles } from './tree-files.js';

export interface DirImageOptions {
  alg: HashAlg;
  /** Apply the boot transform (and relabel from the tree's SELinux policy). */
  bootable?: boolean;
  /** Copy /usr metadata to / (the OCI transform); default true. */
  propagateUsrToRoot?: boolean;
  /** OCI transform xattr mode keep-user-xattrs. */
  keepUserXattrs?: boolean;
}

const COPY_CHUNK = 1 << 20;

async function storeFile(repo: Repository, file: Buffer, expected: Buffer): Promise<void> {
  const w = repo.createObjectWriter();
  const fh = await open(file, 'r');
  try {
    const buf = Buffer.allocUnsafe(COPY_CHUNK);
    for (;;) {
      const { bytesRead } = await fh.read(buf, 0, COPY_CHUNK, null);
      if (bytesRead === 0) break;
      await w.write(buf.subarray(0, bytesRead));
    }
  } catch (e) {
    w.abort();
    throw e;
  } finally {
    await fh.close();
  }
  const id = await w.commit();
  if (!id.equals(expected)) throw new CfsError('EIO', `${file.toString()}: file changed while it was read`);
}

/** Store every external regular file of a freshly scanned tree of `dir` in the repository. */
export async function storeTreeObjects(repo: Repository, root: Inode, dir: string): Promise<number> {
  const seen = new Set<string>();
  // Names are bytes (latin1 strings in the tree): build byte paths, not UTF-8 strings.
  const base = Buffer.from(path.resolve(dir));
  let stored = 0;
  const walk = async (node: Inode, rel: string): Promise<void> => {
    for (const [name, c] of node.children!) {
      const childRel = `${rel}/${name}`;
      if (isDir(c)) {
        await walk(c, childRel);
      } else if (isReg(c) && c.digest) {
        const hex = c.digest.toString('hex');
        if (seen.has(hex)) continue;
        seen.add(hex);
        if (await repo.hasObject(c.digest)) continue;
        await storeFile(repo, Buffer.concat([base, Buffer.from(childRel, 'latin1')]), c.digest);
        stored++;
      }
    }
  };
  await walk(root, '');
  return stored;
}

/**
 * The image tree of a directory. With `repo`, file contents are stored as objects first
 * (create-image); without, nothing is written (compute-id, compute-karg).
 */
export async function treeFromDirectory(dir: string, opts: DirImageOptions, repo?: Repository): Promise<Inode> {
  const root = await scanDirectory(dir, { hashAlg: opts.alg });
  if (repo) await storeTreeObjects(repo, root, dir);
  if (opts.propagateUsrToRoot !== false) ociTransform(root, { keepUserXattrs: opts.keepUserXattrs });
  if (opts.bootable) bootTransform(root, await loadSelinuxPolicy(root, dirTreeFiles(dir).read));
  return root;
}

/** EROFS bytes and image id of a directory, nothing stored. */
export async function computeDirImage(dir: string, opts: DirImageOptions & { erofsVersion?: number }): Promise<{ erofs: Buffer; id: Buffer }> {
  const erofs = erofsForFormat(await treeFromDirectory(dir, opts), opts.erofsVersion ?? 1);
  return { erofs, id: fsverityDigest(erofs, opts.alg) };
}

/** The kernel argument for the bootable image of a directory (`compute-karg`). */
export async function computeDirKarg(dir: string, opts: Omit<DirImageOptions, 'bootable'> & { erofsVersion?: number; insecure?: boolean }): Promise<string> {
  const { id } = await computeDirImage(dir, { ...opts, bootable: true });
  return formatKarg(id, opts.alg, { insecure: opts.insecure, erofsVersion: opts.erofsVersion });
}

/** Store a directory as an image (`create-image`); returns the image id (hex). */
export async function createDirImage(repo: Repository, dir: string, opts: Omit<DirImageOptions, 'alg'> & { name?: string }): Promise<string> {
  await repo.ensureWritable();
  const root = await treeFromDirectory(dir, { ...opts, alg: repo.alg }, repo);
  return repo.writeImage(erofsForFormat(root, repo.erofsFormats.default), opts.name);
}
