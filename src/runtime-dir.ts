/**
 * The per-user runtime directory cfs keeps per-boot records in (FUSE servers, mounted images):
 * /run/cfs for root, else $XDG_RUNTIME_DIR/cfs, else <tmpdir>/cfs-<uid>. Records vanish with
 * the boot, as the mounts they describe do.
 */
import { mkdirSync, readdirSync, statSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { CfsError } from './errors.js';

function euid(): number {
  return process.geteuid?.() ?? process.getuid?.() ?? 0;
}

/** This user's runtime directory (not created). */
export function runtimeDir(): string {
  const uid = process.getuid?.() ?? 0;
  if (uid === 0) return '/run/cfs';
  const xdg = process.env.XDG_RUNTIME_DIR;
  return xdg ? path.join(xdg, 'cfs') : path.join(os.tmpdir(), `cfs-${uid}`);
}

/** This user's runtime directory, created 0700 and checked to be ours (a shared tmpdir fallback could be planted). */
export function ownRuntimeDir(): string {
  const dir = runtimeDir();
  mkdirSync(dir, { recursive: true, mode: 0o700 });
  if (statSync(dir).uid !== (process.getuid?.() ?? 0)) {
    throw new CfsError('EPERM', `${dir}: runtime directory is owned by another user`, { path: dir });
  }
  return dir;
}

/** Where user `uid` keeps its records, as far as another user (root) can tell. */
export function runtimeDirsOf(uid: number): string[] {
  if (uid === (process.getuid?.() ?? 0)) return [runtimeDir()];
  return uid === 0 ? ['/run/cfs'] : [`/run/user/${uid}/cfs`, path.join(os.tmpdir(), `cfs-${uid}`)];
}

/** Every user's runtime directory this process may read: its own, and everyone's for root. */
export function readableRuntimeDirs(): string[] {
  const dirs = new Set([runtimeDir()]);
  if (euid() === 0) {
    dirs.add('/run/cfs');
    for (const uid of listOrEmpty('/run/user')) if (/^\d+$/.test(uid)) dirs.add(`/run/user/${uid}/cfs`);
    for (const n of listOrEmpty(os.tmpdir())) if (/^cfs-\d+$/.test(n)) dirs.add(path.join(os.tmpdir(), n));
  }
  return [...dirs];
}

function listOrEmpty(dir: string): string[] {
  try {
    return readdirSync(dir);
  } catch {
    return [];
  }
}
