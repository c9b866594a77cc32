/**
 * Read locks on containers-storage lock files (`<driver>-images/images.lock`,
 * `<driver>-layers/layers.lock`), held while their JSON is read and while a layer's files are
 * streamed, so a concurrent `podman rmi` cannot delete them mid-read.
 *
 * containers/storage locks with POSIX record locks (fcntl F_SETLKW, F_RDLCK/F_WRLCK on the
 * whole file; internal/rawfilelock), which on Linux do not interact with flock(2). So we take
 * the same locks (the addon's `fcntlLock`): our readers exclude its writers.
 *
 * POSIX locks belong to the process and vanish when any fd of the file is closed, so one fd per
 * lock file is kept open and shared by all holders in this process (reference counted).
 * Waiting is done by polling the non-blocking call, which keeps the event loop free. By default
 * it lasts as long as the writer holds the lock, as in containers/storage (podman applies a
 * large layer under layers.lock for minutes); `onWait` says so once the wait gets noticeable.
 * Callers waiting at once (two varlink clients' pulls) share the polling fd but each has its own
 * notice, timeout and signal: one giving up does not fail the others.
 */
import { closeSync, constants as fsc, fstatSync, openSync, statSync } from 'node:fs';
import { setTimeout as sleep } from 'node:timers/promises';
import { CfsError, errnoCode } from '../../errors.js';
import { native } from '../../native.js';

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

/** How long a wait lasts before `onWait` hears of it. */
export const WAIT_NOTICE_MS = 1000;
const CONFLICT = new Set(['EWOULDBLOCK', 'EAGAIN', 'EACCES']);

/** POSIX whole-file lock, op as for flock (LOCK_SH/EX/UN, | LOCK_NB). */
function lockCall(fd: number, op: number): void {
  native().fcntlLock(fd, op);
}

/** Someone waiting for a lock file's slot to be taken. */
interface Waiter {
  grant(): void;
  fail(e: unknown): void;
}

/**
 * One per lock file (inode) and process, while waited for or held (see the module comment): two
 * spellings of one file must share it, since closing either fd would drop the process's lock.
 * Waiting is shared: one fd polls, and every caller waits on it with its own notice, timeout and
 * signal; when the last waiter gives up, the slot goes at once.
 */
interface Slot {
  key: string;
  fd: number;
  /** More fds of the same file (opened under another name in a race): closed with the slot, never before. */
  extraFds: number[];
  mode: LockMode;
  held: boolean;
  dropped: boolean;
  holders: number;
  waiters: Set<Waiter>;
}
const slots = new Map<string, Slot>();
/** Longest timer Node runs (ms); a longer timeout is no timeout. */
export const MAX_TIMER_MS = 2 ** 31 - 1;

function inodeKey(st: { dev: number; ino: number }): string {
  return `${st.dev}:${st.ino}`;
}

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

function drop(slot: Slot): void {
  if (slot.dropped) return;
  slot.dropped = true;
  if (slots.get(slot.key) === slot) slots.delete(slot.key);
  closeSync(slot.fd); // closing drops both kinds of lock
  for (const fd of slot.extraFds) closeSync(fd);
}

/** Polls until the lock is taken (granting every waiter), fails (failing them), or nobody waits any more. */
async function poll(slot: Slot): Promise<void> {
  try {
    for (let delay = 10; ; delay = Math.min(delay * 2, 250)) {
      await sleep(delay);
      if (slot.dropped) return;
      if (tryLock(slot.fd, slot.mode)) break;
    }
  } catch (e) {
    drop(slot);
    for (const w of [...slot.waiters]) w.fail(e);
    return;
  }
  slot.held = true;
  const waiters = [...slot.waiters];
  slot.waiters.clear();
  for (const w of waiters) w.grant();
  if (slot.holders === 0) drop(slot);
}

function handle(slot: Slot): HeldLock {
  slot.holders++;
  let done = false;
  return {
    release: () => {
      if (done) return;
      done = true;
      if (--slot.holders === 0) drop(slot);
    },
  };
}

/** This caller's wait for `slot`: its own notice, timeout and signal. */
function waitFor(path: string, slot: Slot, opts: LockOptions): Promise<HeldLock> {
  return new Promise((resolve, reject) => {
    const timers: NodeJS.Timeout[] = [];
    const leave = (): void => {
      for (const t of timers) clearTimeout(t);
      opts.signal?.removeEventListener('abort', onAbort);
      slot.waiters.delete(w);
      // Nobody else waiting: the slot goes now (a later caller starts afresh).
      if (!slot.held && slot.waiters.size === 0) drop(slot);
    };
    const w: Waiter = {
      grant: () => {
        leave();
        resolve(handle(slot));
      },
      fail: (e) => {
        leave();
        reject(e);
      },
    };
    const onAbort = (): void => w.fail(new CfsError('ECANCELED', `${path}: stopped waiting for the lock`));
    slot.waiters.add(w);
    if (opts.signal?.aborted) return onAbort();
    opts.signal?.addEventListener('abort', onAbort, { once: true });
    const onWait = opts.onWait;
    if (onWait) {
      timers.push(setTimeout(() => {
        try {
          onWait(path);
        } catch {
          // A notice that cannot be given changes nothing about the wait.
        }
      }, WAIT_NOTICE_MS));
    }
    const timeout = opts.timeoutMs;
    if (timeout !== undefined && timeout <= MAX_TIMER_MS) {
      const seconds = Number((timeout / 1000).toFixed(1));
      timers.push(setTimeout(() => w.fail(new CfsError('EBUSY', `${path}: locked by another process (a containers-storage writer?); gave up after ${seconds} s`)), timeout));
    }
  });
}

/** A caller joining a slot this process has: shared with shared only. */
function join(path: string, slot: Slot, mode: LockMode, opts: LockOptions): Promise<HeldLock> {
  if (slot.mode === 'exclusive' || mode === 'exclusive') return Promise.reject(new CfsError('EBUSY', `${path}: already locked by this process`));
  return slot.held ? Promise.resolve(handle(slot)) : waitFor(path, slot, opts);
}

/**
 * Takes a lock on one lock file, waiting (up to the timeout, if any) for a conflicting holder.
 * A missing lock file means no containers/storage process uses that store part: no lock.
 */
export async function acquireLock(path: string, mode: LockMode, opts: LockOptions = {}): Promise<HeldLock> {
  // The slot is found by stat, never by opening: closing a second fd would drop a held lock.
  const st = statSync(path, { throwIfNoEntry: false });
  const slot = st ? slots.get(inodeKey(st)) : undefined;
  if (slot) return join(path, slot, mode, opts);
  let fd: number;
  try {
    fd = openSync(path, mode === 'shared' ? fsc.O_RDONLY : fsc.O_RDWR);
  } catch (e) {
    if (errnoCode(e) === 'ENOENT') return { release: () => undefined };
    throw new CfsError('EIO', `${path}: cannot open lock file: ${(e as Error).message}`);
  }
  let key: string;
  try {
    key = inodeKey(fstatSync(fd));
  } catch (e) {
    closeSync(fd);
    throw e;
  }
  const raced = slots.get(key);
  if (raced) {
    // The name now leads to a file a slot has (replaced since the stat): closing this fd now
    // would drop that slot's lock, so it lives as long as the slot.
    raced.extraFds.push(fd);
    return join(path, raced, mode, opts);
  }
  const fresh: Slot = { key, fd, extraFds: [], mode, held: false, dropped: false, holders: 0, waiters: new Set() };
  slots.set(fresh.key, fresh);
  let taken: boolean;
  try {
    taken = tryLock(fd, mode);
  } catch (e) {
    drop(fresh);
    throw e;
  }
  if (taken) {
    fresh.held = true;
    return handle(fresh);
  }
  if (opts.timeoutMs === 0) {
    drop(fresh);
    throw new CfsError('EBUSY', `${path}: locked by another process (a containers-storage writer?); gave up after 0 s`);
  }
  const mine = waitFor(path, fresh, opts);
  void poll(fresh);
  return mine;
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
