/**
 * Relative symlinks inside the repository, created or replaced atomically (brief 1.2): try
 * directly; keep an identical existing link; otherwise make `.symlink-<random>` at the repo
 * root and rename it over the name.
 */
import { mkdir, readlink, rename, symlink, unlink } from 'node:fs/promises';
import { randomBytes } from 'node:crypto';
import path from 'node:path';
import { CfsError, errnoCode } from '../errors.js';

const TMP_TRIES = 16;
const ALNUM = 'abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789';

export function randomAlnum(n: number): string {
  const b = randomBytes(n);
  let s = '';
  for (let i = 0; i < n; i++) s += ALNUM[b[i] % ALNUM.length];
  return s;
}

/** Ref names are relative paths of plain components (no '', '.', '..'). */
export function validateRefName(name: string): void {
  const bad = name.length === 0 || name.startsWith('/') || name.split('/').some((c) => c === '' || c === '.' || c === '..');
  if (bad || name.includes('\0')) throw new CfsError('EINVAL', `invalid ref name '${name}'`);
}

/** Point `<root>/<linkRel>` at `<root>/<targetRel>` with a relative target. */
export async function atomicSymlink(root: string, linkRel: string, targetRel: string): Promise<void> {
  const linkAbs = path.join(root, linkRel);
  const target = path.relative(path.dirname(linkAbs), path.join(root, targetRel));
  try {
    await symlink(target, linkAbs);
    return;
  } catch (e) {
    const code = errnoCode(e);
    if (code === 'ENOENT') {
      await mkdir(path.dirname(linkAbs), { recursive: true, mode: 0o755 });
      return atomicSymlink(root, linkRel, targetRel);
    }
    if (code !== 'EEXIST') throw e;
  }
  try {
    if ((await readlink(linkAbs)) === target) return;
  } catch (e) {
    if (errnoCode(e) !== 'EINVAL' && errnoCode(e) !== 'ENOENT') throw e;
  }
  for (let i = 0; i < TMP_TRIES; i++) {
    const tmp = path.join(root, `.symlink-${randomAlnum(12)}`);
    try {
      await symlink(target, tmp);
    } catch (e) {
      if (errnoCode(e) === 'EEXIST') continue;
      throw e;
    }
    try {
      await rename(tmp, linkAbs);
    } catch (e) {
      await unlink(tmp).catch(() => undefined);
      throw e;
    }
    return;
  }
  throw new CfsError('EEXIST', `${linkAbs}: could not create a temporary symlink after ${TMP_TRIES} tries`);
}
