/**
 * The repository lock (brief 1.9): flock(2) on the repository directory itself, the same lock
 * composefs-rs takes, so cfs and cfsctl exclude each other. Every open handle holds it shared
 * (imports, mounts, fsck, `cfs transaction`); gc and `fsck --repair` convert it to exclusive,
 * which waits for every other handle, so nothing a concurrent writer is about to reference can
 * disappear under it.
 *
 * Waiting polls with LOCK_NB instead of blocking in flock(2): a blocking call would freeze the
 * event loop, and a process holding two handles on one repository would deadlock itself.
 */
import { native } from '../native.js';
import { errnoCode } from '../errors.js';

export type LockMode = 'shared' | 'exclusive';

export interface LockWaitOptions {
  /** Called once when the lock is busy and the caller starts waiting. */
  onWait?: () => void;
}

const POLL_MIN_MS = 1;
const POLL_MAX_MS = 50;

/** flock(2) without waiting: false when another holder conflicts. */
export function tryLock(fd: number, mode: LockMode): boolean {
  try {
    const k = native().constants;
    native().flock(fd, (mode === 'shared' ? k.LOCK_SH : k.LOCK_EX) | k.LOCK_NB);
    return true;
  } catch (e) {
    if (errnoCode(e) === 'EWOULDBLOCK' || errnoCode(e) === 'EAGAIN') return false;
    throw e;
  }
}

/**
 * Take (or convert to) `mode` on `fd`, waiting as long as it takes. A conversion is not atomic
 * (flock(2) drops the old lock first), so callers must not rely on state seen before it.
 */
export async function acquireLock(fd: number, mode: LockMode, opts: LockWaitOptions = {}): Promise<void> {
  let delay = POLL_MIN_MS;
  let waited = false;
  while (!tryLock(fd, mode)) {
    if (!waited) {
      waited = true;
      opts.onWait?.();
    }
    await new Promise((resolve) => setTimeout(resolve, delay));
    delay = Math.min(POLL_MAX_MS, delay * 2);
  }
}
