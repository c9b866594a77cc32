/**
 * Access to the contents of regular files of an image tree: inline bytes from the tree itself,
 * larger files from the repository's objects or from the directory the tree was scanned from.
 */
import { readFile } from 'node:fs/promises';
import path from 'node:path';
import { CfsError } from '../errors.js';
import type { Repository } from '../repository/repository.js';
import type { Inode } from '../tree/inode.js';

export interface TreeFiles {
  /** The bytes of a regular file of the tree (`treePath` names it in messages and on disk). */
  read(file: Inode, treePath: string): Promise<Buffer>;
  /** A file on disk holding those bytes, or null when they are inline (or empty). */
  backingPath(file: Inode, treePath: string): string | null;
}

function inline(file: Inode): Buffer | null {
  if (file.content) return file.content;
  if (file.size === 0) return Buffer.alloc(0);
  return null;
}

/** Contents from repository objects (verified against their IDs in a secure repository). */
export function repoTreeFiles(repo: Repository): TreeFiles {
  return {
    async read(file, treePath) {
      const data = inline(file);
      if (data) return data;
      if (!file.digest) throw new CfsError('ECORRUPT', `${treePath}: regular file has neither inline content nor an object id`);
      return repo.readObject(file.digest);
    },
    backingPath(file, treePath) {
      if (inline(file)) return null;
      if (!file.digest) throw new CfsError('ECORRUPT', `${treePath}: regular file has neither inline content nor an object id`);
      return repo.objectPath(file.digest);
    },
  };
}

/** Contents from the directory the tree was scanned from (tree paths are relative to it). */
export function dirTreeFiles(dir: string): TreeFiles {
  const onDisk = (treePath: string): string => path.join(dir, treePath);
  return {
    async read(file, treePath) {
      return inline(file) ?? readFile(onDisk(treePath));
    },
    backingPath(file, treePath) {
      return inline(file) ? null : onDisk(treePath);
    },
  };
}
