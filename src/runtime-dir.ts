/**
 * The per-user runtime directory cfs keeps per-boot records in (FUSE servers, mounted images):
 * /run/cfs for root, else $XDG_RUNTIME_DIR/cfs, else <tmpdir>/cfs-<uid>. Records vanish with
 * the boot, as the mounts they describe do.
 *
 * Root of a user namespace (`podman unshare`, `unshare -r`) is the user who owns it: its records
 * go where that user's do (its $XDG_RUNTIME_DIR, else <tmpdir>/cfs-<its uid outside>), not to
 * /run/cfs, which belongs to the real root.
 */
import { closeSync, constants as C, fstatSync, mkdirSync, openSync, readdirSync, readFileSync, readSync, statSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { CfsError } from './errors.js';
import { inInitialUserNamespace, outsideId, parseIdMap } from './userns.js';

const ROOT_DIR = '/run/cfs';

function uid(): number {
  return process.getuid?.() ?? 0;
}

/** Our uid as the initial user namespace knows it (the namespace owner's, for its root). */
function uidOutside(): number {
  try {
    return outsideId(parseIdMap(readFileSync('/proc/self/uid_map', 'utf8')), uid()) ?? uid();
  } catch {
    return uid();
  }
}

let realRoot: boolean | undefined;

/** uid 0 of the initial user namespace: the machine's root, whose records are in /run/cfs. */
function isRealRoot(): boolean {
  return uid() === 0 && (realRoot ??= inInitialUserNamespace());
}

/** This user's runtime directory (not created). */
export function runtimeDir(): string {
  if (isRealRoot()) return ROOT_DIR;
  const xdg = process.env['XDG_RUNTIME_DIR'];
  return xdg ? path.join(xdg, 'cfs') : path.join(os.tmpdir(), `cfs-${uidOutside()}`);
}

/** This user's runtime directory, created 0700 and checked to be ours (a shared tmpdir fallback could be planted). */
export function ownRuntimeDir(): string {
  const dir = runtimeDir();
  mkdirSync(dir, { recursive: true, mode: 0o700 });
  if (statSync(dir).uid !== uid()) {
    throw new CfsError('EPERM', `${dir}: runtime directory is owned by another user`, { path: dir });
  }
  return dir;
}

/** Where user `owner` keeps its records, as far as another user (root) can tell: only directories that user owns. */
export function runtimeDirsOf(owner: number): string[] {
  if (owner === uid()) return [runtimeDir()];
  const dirs = owner === 0 ? [ROOT_DIR] : [`/run/user/${owner}/cfs`, path.join(os.tmpdir(), `cfs-${owner}`)];
  return dirs.filter((d) => statSync(d, { throwIfNoEntry: false })?.uid === owner);
}

/**
 * Every user's runtime directory this process may read, with the user it belongs to: its own;
 * for root, everyone's. A directory that does not belong to the user its name says (anyone can
 * make /tmp/cfs-4242) is left out: its records would speak for someone else.
 */
export function readableRuntimeDirs(): Array<{ dir: string; owner: number; own: boolean }> {
  const out = new Map<string, number>([[runtimeDir(), uid()]]);
  if (isRealRoot()) {
    const claim = (dir: string, owner: number): void => {
      if (!out.has(dir) && statSync(dir, { throwIfNoEntry: false })?.uid === owner) out.set(dir, owner);
    };
    for (const n of listOrEmpty('/run/user')) if (/^\d+$/.test(n)) claim(`/run/user/${n}/cfs`, Number(n));
    for (const n of listOrEmpty(os.tmpdir())) if (/^cfs-\d+$/.test(n)) claim(path.join(os.tmpdir(), n), Number(n.slice(4)));
  }
  return [...out].map(([dir, owner], i) => ({ dir, owner, own: i === 0 }));
}

/** A directory's names; none when it cannot be read. */
export function listOrEmpty(dir: string): string[] {
  try {
    return readdirSync(dir);
  } catch {
    return [];
  }
}

/** Records are small JSON documents. */
const RECORD_MAX = 4096;

/**
 * The text of a record file in a runtime directory, or null. Its user controls what is there:
 * anything but a small regular file of theirs (a FIFO would block, a symlink lead anywhere) is
 * not a record. Root reads other users' directories, so this is checked on the opened file.
 */
export function readRecordFile(file: string, owner: number): string | null {
  let fd: number;
  try {
    fd = openSync(file, C.O_RDONLY | C.O_NOFOLLOW | C.O_NONBLOCK | C.O_NOCTTY);
  } catch {
    return null;
  }
  try {
    const st = fstatSync(fd);
    if (!st.isFile() || st.uid !== owner || st.size > RECORD_MAX) return null;
    const buf = Buffer.alloc(RECORD_MAX);
    const n = readSync(fd, buf, 0, RECORD_MAX, 0);
    return buf.toString('utf8', 0, n);
  } catch {
    return null;
  } finally {
    closeSync(fd);
  }
}
