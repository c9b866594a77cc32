/**
 * Read locks on containers-storage lock files (`<driver>-images/images.lock`,
 * `<driver>-layers/layers.lock`), held while their JSON is read and while a layer's files are
 * streamed, so a concurrent `podman rmi` cannot delete them mid-read.
 *
 * containers/storage locks with POSIX record locks (fcntl F_SETLKW, F_RDLCK/F_WRLCK on the
 * whole file; internal/rawfilelock), which on Linux do not interact with flock(2). When the
 * native addon offers `fcntlLock` that is used, so our readers exclude its writers; otherwise
 * flock is taken, which only excludes other users of this module (see `lockMechanism`).
 *
 * POSIX locks belong to the process and vanish when any fd of the file is closed, so one fd per
 * lock file is kept open and shared by all holders in this process (reference counted).
 * Waiting is done by polling the non-blocking call, which keeps the event loop free. By default
 * it lasts as long as the writer holds the lock, as in containers/storage (podman applies a
 * large layer under layers.lock for minutes); `onWait` says so once the wait gets noticeable.
 */
import { closeSync, constants as fsc, openSync } from 'node:fs';
import { setTimeout as sleep } from 'node:timers/promises';
import { CfsError, errnoCode } from '../../errors.js';
import { native, type NativeAddon } from '../../native.js';

export type LockMode = 'shared' | 'exclusive';

export interface LockOptions {
  /** How long to wait for a conflicting holder; 0 = fail at once. Default: as long as it takes. */
  timeoutMs?: number;
  /** Called once per lock (its path) when a conflicting holder has kept us waiting WAIT_NOTICE_MS. */
  onWait?: (path: string) => void;
  /** Stops waiting (ECANCELED). */
  signal?: AbortSignal;
}

export interface HeldLock {
  release(): void;
}

/** `fcntlLock(fd, op)`: POSIX whole-file lock, op as for flock (LOCK_SH/EX/UN, | LOCK_NB). */
type FcntlAddon = NativeAddon & { fcntlLock?: (fd: number, op: number) => void };

/** How long a wait lasts before `onWait` hears of it. */
export const WAIT_NOTICE_MS = 1000;
const CONFLICT = new Set(['EWOULDBLOCK', 'EAGAIN', 'EACCES']);

export function lockMechanism(): 'fcntl' | 'flock' {
  return typeof (native() as FcntlAddon).fcntlLock === 'function' ? 'fcntl' : 'flock';
}

function lockCall(fd: number, op: number): void {
  const n = native() as FcntlAddon;
  if (n.fcntlLock) n.fcntlLock(fd, op);
  else n.flock(fd, op);
}

interface Entry {
  fd: number;
  mode: LockMode;
  holders: number;
}
/** One acquisition per lock file and process, in flight or held (see the module comment). */
const entries = new Map<string, Promise<Entry>>();

function tryLock(fd: number, mode: LockMode): boolean {
  const c = native().constants;
  try {
    lockCall(fd, (mode === 'shared' ? c.LOCK_SH : c.LOCK_EX) | c.LOCK_NB);
    return true;
  } catch (e) {
    if (CONFLICT.has(errnoCode(e) ?? '')) return false;
    throw e;
  }
}

async function lockFd(path: string, fd: number, mode: LockMode, opts: LockOptions): Promise<Entry> {
  const start = Date.now();
  const timeout = opts.timeoutMs ?? Infinity;
  const deadline = start + timeout;
  let noticed = false;
  try {
    for (let delay = 10; !tryLock(fd, mode); delay = Math.min(delay * 2, 250)) {
      if (opts.signal?.aborted) throw new CfsError('ECANCELED', `${path}: stopped waiting for the lock`);
      const now = Date.now();
      if (now >= deadline) {
        throw new CfsError(
          'EBUSY',
          `${path}: locked by another process (a containers-storage writer?); gave up after ${Math.round(timeout / 1000)} s`,
        );
      }
      if (!noticed && now - start >= WAIT_NOTICE_MS) {
        noticed = true;
        opts.onWait?.(path);
      }
      await sleep(Math.min(delay, Math.max(1, deadline - now)));
    }
  } catch (e) {
    closeSync(fd);
    throw e;
  }
  return { fd, mode, holders: 0 };
}

function handle(path: string, entry: Entry): HeldLock {
  entry.holders++;
  let done = false;
  return {
    release: () => {
      if (done) return;
      done = true;
      if (--entry.holders > 0) return;
      entries.delete(path);
      closeSync(entry.fd); // closing drops both kinds of lock
    },
  };
}

/**
 * Takes a lock on one lock file, waiting (up to the timeout, if any) for a conflicting holder.
 * A missing lock file means no containers/storage process uses that store part: no lock.
 */
export async function acquireLock(path: string, mode: LockMode, opts: LockOptions = {}): Promise<HeldLock> {
  const pending = entries.get(path);
  if (pending) {
    const entry = await pending;
    // Released by its last holder while we waited for the promise: start over.
    if (entries.get(path) !== pending) return acquireLock(path, mode, opts);
    if (entry.mode === 'exclusive' || mode === 'exclusive') throw new CfsError('EBUSY', `${path}: already locked by this process`);
    return handle(path, entry);
  }
  let fd: number;
  try {
    fd = openSync(path, mode === 'shared' ? fsc.O_RDONLY : fsc.O_RDWR);
  } catch (e) {
    if (errnoCode(e) === 'ENOENT') return { release: () => undefined };
    throw new CfsError('EIO', `${path}: cannot open lock file: ${(e as Error).message}`);
  }
  const p = lockFd(path, fd, mode, opts);
  entries.set(path, p);
  try {
    return handle(path, await p);
  } catch (e) {
    entries.delete(path);
    throw e;
  }
}

/** Takes shared locks on all `paths` in order; releases what it took if one fails. */
export async function acquireShared(paths: string[], opts: LockOptions = {}): Promise<HeldLock> {
  const locks: HeldLock[] = [];
  try {
    for (const p of paths) locks.push(await acquireLock(p, 'shared', opts));
  } catch (e) {
    for (const l of locks.reverse()) l.release();
    throw e;
  }
  return { release: () => locks.reverse().forEach((l) => l.release()) };
}

export async function withSharedLocks<T>(paths: string[], opts: LockOptions, fn: () => Promise<T>): Promise<T> {
  const lock = await acquireShared(paths, opts);
  try {
    return await fn();
  } finally {
    lock.release();
  }
}
