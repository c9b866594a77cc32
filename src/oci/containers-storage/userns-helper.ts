/**
 * Rootless stores hold files of every id of their user namespace (container users map to the
 * owner's subordinate ids), which their owner cannot read from outside. As cfsctl does, cfs then
 * reads the store through a helper inside that namespace: `podman unshare cfs
 * internal-cstor-helper`, serving the containers-storage layer service (varlink/cstor-service.ts)
 * on a socketpair. Each layer comes back as a splitdirfdstream over the layer's directory fds;
 * files the caller could not open itself come inline. Everything else (image lookup, the
 * repository, linking) stays in this process.
 */
import { spawn, type ChildProcess } from 'node:child_process';
import { closeSync, existsSync, fstatSync, openSync, statSync, constants as fsc } from 'node:fs';
import net from 'node:net';
import { fileURLToPath } from 'node:url';
import { CfsError } from '../../errors.js';
import { native } from '../../native.js';
import { inInitialUserNamespace } from '../../userns.js';
import { MAX_TIMER_MS, WAIT_NOTICE_MS } from './lock.js';
import { VarlinkClient } from '../../varlink/client.js';
import { OCI } from '../../varlink/interfaces.js';
import { VarlinkError } from '../../varlink/protocol.js';
import { closeQuietly } from '../../varlink/transport.js';

/** The helper's hidden command (src/cli/varlink.ts). */
export const HELPER_COMMAND = 'internal-cstor-helper';
/** How long `podman unshare` may take to exit once the helper failed. */
const EXIT_WAIT_MS = 2_000;
/** Where the helper's stderr stops being kept (it is shown only when the helper fails). */
const STDERR_KEEP = 16 * 1024;

/** A GetLayer reply carries 1 + dir slots + 1 + a few lifetime fds; far more is a broken helper. */
const MAX_REPLY_FDS = 1024;

export interface LayerWaitOptions {
  /** Called once when the layer takes a while to come (the helper waits for the store's lock). */
  onWait?: () => void;
  /** Give up after this long (--lock-timeout). */
  timeoutMs?: number;
  signal?: AbortSignal;
}

export interface HelperLayer {
  dirfds: number[];
  chunks: AsyncIterable<Buffer>;
  close(): Promise<void>;
}

/**
 * Whether reading `storeRoot` needs the helper: we are not root, not already inside a user
 * namespace (`podman unshare` itself), and the store is ours (a rootless store). CFS_USERNS_HELPER=0
 * turns it off (files are then read as the invoking user, and unreadable ones reported).
 */
export function wantsUsernsHelper(storeRoot: string, env: NodeJS.ProcessEnv = process.env): boolean {
  if (env.CFS_USERNS_HELPER === '0') return false;
  const uid = process.geteuid?.() ?? 0;
  if (uid === 0 || !inInitialUserNamespace()) return false;
  return statSync(storeRoot, { throwIfNoEntry: false })?.uid === uid;
}

export class UsernsHelper {
  /** How the helper ended before we closed it (`status N`, `signal S`), with its last words; null while it runs. */
  ended: string | null = null;
  private closing = false;

  private constructor(private readonly client: VarlinkClient, private readonly child: ChildProcess, private readonly stderr: () => string) {
    child.once('exit', (code, signal) => {
      if (!this.closing) this.ended = `${code !== null ? `status ${code}` : `signal ${signal}`}${this.stderrNote()}`;
    });
  }

  /**
   * Start `podman unshare` with the helper; fails naming podman's complaint. podman may wait for
   * the store's locks while it starts, so this waits as long as the direct path would: without
   * limit, or `wait.timeoutMs` (--lock-timeout), until `wait.signal`; `wait.onWait` is called
   * once when it takes a while.
   */
  static async start(wait: LayerWaitOptions = {}): Promise<UsernsHelper> {
    const [ours, theirs] = native().socketpair();
    // Compiled, or run from the sources through tsx.
    const compiled = fileURLToPath(new URL('../../cli/entry.js', import.meta.url));
    const entry = existsSync(compiled) ? [compiled] : ['--import', 'tsx', fileURLToPath(new URL('../../cli/entry.ts', import.meta.url))];
    let child: ChildProcess;
    try {
      child = spawn('podman', ['unshare', process.execPath, ...entry, HELPER_COMMAND], { stdio: [theirs, 'ignore', 'pipe'] });
    } finally {
      closeQuietly(theirs);
    }
    let err = '';
    child.stderr!.setEncoding('utf8').on('data', (t: string) => {
      if (err.length < STDERR_KEEP) err += t;
    });
    const spawnFailed = new Promise<Error>((resolve) => child.once('error', resolve));
    const exited = new Promise<string>((resolve) => child.once('exit', (code, signal) => resolve(code !== null ? `status ${code}` : `signal ${signal}`)));
    const client = new VarlinkClient(ours, 'the containers-storage helper (podman unshare)');
    const helper = new UsernsHelper(client, child, () => err);
    process.on('exit', helper.kill);
    const answered = (async () => {
      for await (const _ of client.call('org.varlink.service.GetInfo', {}));
    })();
    const after = (ms: number): Promise<void> => new Promise((resolve) => setTimeout(resolve, ms).unref());
    const failure = (e: Error): string => ((e as NodeJS.ErrnoException).code === 'ENOENT' ? 'podman is not installed' : e.message);
    let why: string | null = null;
    let stop: (why: Error) => void = () => undefined;
    const stopped = new Promise<never>((_, reject) => (stop = reject));
    const unguard = guardWait(wait, (how) => stop(new Error(how === 'timeout' ? `podman did not start it within ${wait.timeoutMs! / 1000} s (--lock-timeout; is the store locked?)` : 'stopped')));
    try {
      await Promise.race([answered, spawnFailed.then((e) => Promise.reject(e)), stopped]);
    } catch (e) {
      // The connection closes as the child exits: its status (or the spawn error) says more.
      why = await Promise.race([
        spawnFailed.then(failure),
        exited.then((how) => `podman unshare exited with ${how}`),
        after(EXIT_WAIT_MS).then(() => failure(e as Error)),
      ]);
    } finally {
      unguard();
    }
    if (why !== null) {
      // Kills podman too: one that hangs (or a helper that never answered) must not outlive us.
      helper.close();
      const said = lastLines(err);
      throw new CfsError('EPERM', `cannot start the containers-storage helper in the store's user namespace: ${why}${said ? ` (${said})` : ''}`);
    }
    return helper;
  }

  /**
   * Layer `layerId` of the store at `storeRoot` as a splitdirfdstream and its directory fds.
   * `searchDirs`: the layer's directories as this process sees them, in chain order; each one
   * that is the same directory as the helper's is used instead of the helper's fd. The helper
   * lives in podman's mount namespace, and a file opened through a mount of another namespace
   * cannot be hardlinked here (EXDEV); through our own it can.
   */
  async openLayer(storeRoot: string, layerId: string, searchDirs: readonly string[], opts: LayerWaitOptions = {}): Promise<HelperLayer> {
    const fds: number[] = [];
    let dirCount = -1;
    // The helper waits for the store's layers lock as long as it is held: what the direct
    // path does on our side (notice, --lock-timeout, cancellation) is done here by giving up the
    // helper, whose lock wait ends with its connection.
    let why: 'timeout' | 'stopped' | null = null;
    const unguard = guardWait(opts, (how) => {
      why ??= how;
      this.close();
    });
    try {
      const params = { storage: { storage_path: storeRoot, layer_id: layerId }, consumer_has_cap_dac_override: false };
      for await (const f of this.client.call(`${OCI}.GetLayer`, { handle: 0, params }, { more: true })) {
        fds.push(...f.fds);
        dirCount = Number(f.parameters.dir_count);
        if (fds.length > MAX_REPLY_FDS) throw new Error(`more than ${MAX_REPLY_FDS} fds in the reply`);
      }
      if (!Number.isInteger(dirCount) || dirCount < 0 || fds.length < dirCount + 2) throw new Error(`reply with ${fds.length} fds for ${dirCount} directory slots`);
      const data = new net.Socket({ fd: fds[0]!, readable: true, writable: false });
      data.on('error', () => undefined);
      // The keepalive and lifetime dummies stay open until the layer is consumed (brief 5.2).
      const keep = fds.slice(dirCount + 1);
      const dirfds = adoptOwnDirs(fds.slice(1, dirCount + 1), searchDirs);
      return {
        dirfds,
        chunks: data,
        close: async () => {
          data.destroy();
          for (const fd of [...dirfds.splice(0), ...keep.splice(0)]) closeQuietly(fd);
        },
      };
    } catch (e) {
      fds.forEach(closeQuietly);
      if (why === 'timeout') throw new CfsError('EBUSY', `containers-storage helper: layer ${layerId}: the store's layers lock stayed held by another process (podman?) for ${(opts.timeoutMs ?? 0) / 1000} s`);
      if (why === 'stopped') throw new CfsError('ECANCELED', `containers-storage helper: layer ${layerId}: stopped`);
      if (e instanceof VarlinkError && e.errorName.endsWith('.NoSuchLayer')) {
        throw new CfsError('ENOENT', `layer ${layerId} was removed from the store while it was read (podman rmi?); pull again`);
      }
      if (e instanceof VarlinkError) {
        const m = e.parameters.message;
        throw new CfsError('EIO', `containers-storage helper: layer ${layerId}: ${typeof m === 'string' ? m : e.errorName}${this.stderrNote()}`);
      }
      throw new CfsError('EIO', `containers-storage helper: layer ${layerId}: ${(e as Error).message}${this.stderrNote()}`);
    } finally {
      unguard();
    }
  }

  /**
   * Ends the helper. Its node process exits when its connection closes; podman, which may be
   * waiting for a store lock to shut down, is killed (its locks go with it), also when this
   * process exits without closing us (a signal).
   */
  close(): void {
    this.closing = true;
    this.client.close();
    this.child.stderr?.destroy();
    this.kill();
    process.off('exit', this.kill);
    this.child.unref();
  }

  private readonly kill = (): void => {
    if (this.child.exitCode === null && this.child.signalCode === null) this.child.kill('SIGKILL');
  };

  private stderrNote(): string {
    const said = lastLines(this.stderr());
    return said ? ` (helper: ${said})` : '';
  }
}

/**
 * The direct path's lock-wait behaviour around a wait for the helper: `opts.onWait` after
 * WAIT_NOTICE_MS, and `giveUp` at `opts.timeoutMs` or once `opts.signal` aborts (at once if it
 * has). Returns what ends the guard.
 */
function guardWait(opts: LayerWaitOptions, giveUp: (how: 'timeout' | 'stopped') => void): () => void {
  const notice = setTimeout(() => opts.onWait?.(), WAIT_NOTICE_MS);
  const timeout = opts.timeoutMs !== undefined && opts.timeoutMs <= MAX_TIMER_MS ? setTimeout(() => giveUp('timeout'), opts.timeoutMs) : null;
  const onAbort = (): void => giveUp('stopped');
  opts.signal?.addEventListener('abort', onAbort, { once: true });
  if (opts.signal?.aborted) onAbort();
  return () => {
    clearTimeout(notice);
    if (timeout) clearTimeout(timeout);
    opts.signal?.removeEventListener('abort', onAbort);
  };
}

/** The region's real directories (in slot order = chain order) replaced by our own fds of the same directories. */
function adoptOwnDirs(region: number[], searchDirs: readonly string[]): number[] {
  let next = 0;
  return region.map((fd) => {
    const theirs = fstatSync(fd);
    if (!theirs.isDirectory()) return fd; // a dummy slot
    const dir = searchDirs[next++];
    if (dir === undefined) return fd;
    let own: number;
    try {
      own = openSync(dir, fsc.O_RDONLY | fsc.O_DIRECTORY);
    } catch {
      return fd; // not ours to open: the helper's fd serves (files then copy)
    }
    const mine = fstatSync(own);
    if (mine.dev !== theirs.dev || mine.ino !== theirs.ino) {
      closeSync(own);
      return fd;
    }
    closeSync(fd);
    return own;
  });
}

/** The helper's last words, without podman's warnings, on one line. */
function lastLines(text: string): string {
  return text.split('\n').map((l) => l.trim()).filter((l) => l && !/level=warning/.test(l)).slice(-2).join('; ');
}
