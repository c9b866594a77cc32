/**
 * Background FUSE server for a composefs image.
 *
 * `mountFuseDaemon` spawns a detached node process (fuse-server-main) in its own session, with
 * stdin/stdout on /dev/null and stderr inherited. The child reads the image, mounts, and writes
 * one line to its fd 3 (a pipe to the parent): `ready` or `error <message>`; the parent returns
 * on `ready` and throws the child's message otherwise (also when the child dies silently).
 *
 * Runtime record: the server writes `<runtime dir>/fuse-<sha256(mountpoint)[0..32]>.json`
 * ({ pid, started, mountpoint, name }; runtime-dir.ts). `unmountFuse` uses it to find and wait
 * for the server; the server removes it when it exits.
 *
 * Unmounting: `unmountFuse` runs `fusermount3 -u` (root and the mounting user alike), then
 * SIGTERMs the server and waits for it to exit. A busy mount fails with CfsError EBUSY and stays
 * mounted, unless `lazy` is asked: then it is detached at once (`fusermount3 -u -z`) and the
 * server keeps answering already-open files, exiting when the last one is closed.
 * The server also exits by itself when its connection ends (plain `umount`/`fusermount3 -u`).
 */
import { execFileSync, spawn } from 'node:child_process';
import { createHash } from 'node:crypto';
import { closeSync, existsSync, openSync, readdirSync, readFileSync, rmSync, statSync, writeFileSync } from 'node:fs';
import { readFile } from 'node:fs/promises';
import type { Readable } from 'node:stream';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { CfsError, errnoCode, isCfsError } from '../errors.js';
import type { HashAlg } from '../fsverity/digest.js';
import { fusermountUnmount, startFuse as startLibfuse } from './fuse.js';
import { startFuse as startLowLevel } from './fuse-ll/index.js';

/** The server: our own /dev/fuse protocol server, or fuse-native (libfuse 2) when asked. */
function startFuse(opts: Parameters<typeof startLowLevel>[0]): Promise<ServerHandle> {
  const server = process.env.CFS_FUSE_SERVER || 'fuse-ll';
  if (server !== 'fuse-ll' && server !== 'fuse-native') throw new CfsError('EINVAL', `CFS_FUSE_SERVER=${server}: unknown FUSE server (fuse-ll, the default, or fuse-native)`);
  return server === 'fuse-native' ? startLibfuse(opts) : startLowLevel(opts);
}

interface ServerHandle {
  mountpoint: string;
  unmount(opts?: { lazy?: boolean }): Promise<void>;
  closed: Promise<void>;
}
import { canonical, findMount, fuseMountUid, isComposefsMount, readMountinfo, type MountInfo } from './mountinfo.js';
import { listOrEmpty, ownRuntimeDir, readRecordFile, runtimeDir, runtimeDirsOf } from '../runtime-dir.js';

export interface FuseDaemonOptions {
  imagePath: string;
  objectsDir: string;
  mountpoint: string;
  name: string;
  verify?: { alg: HashAlg };
  /** Serve in this process until SIGTERM/SIGINT (which unmount), instead of detaching. */
  foreground?: boolean;
}

export interface FuseDaemonRecord {
  pid: number;
  /** The server's start time (processStart): a foreground server's command line does not say it serves. */
  started?: string;
  mountpoint: string;
  name: string;
}

const READY_FD = 3;
const ABORT_WAIT_MS = 2_000;
/** A server still there this long after the unmount serves a copy held elsewhere (it exits within moments otherwise, also under load). */
const HELD_WAIT_MS = 10_000;
/** Where the fusectl filesystem shows FUSE connections (by the device minor of their superblock). */
const FUSECTL = '/sys/fs/fuse/connections';

/** The FUSE connection number of a mount (the minor of its device 0:N), from mountinfo: no stat of a mount point whose server may hang. */
function fuseConnection(m: MountInfo | undefined): number | null {
  const minor = m && /^0:(\d+)$/.exec(m.device)?.[1];
  return minor ? Number(minor) : null;
}

/** Whether FUSE connection `n` still exists (a lazily unmounted mount serving open files); null when fusectl cannot tell. */
function connectionAlive(n: number): boolean | null {
  if (!existsSync(FUSECTL) || readdirSync(FUSECTL).length === 0) return null;
  return existsSync(path.join(FUSECTL, String(n)));
}

/** Whether a mount in this namespace is on the FUSE device 0:n. */
function mountedHere(n: number): boolean {
  return readMountinfo().some((m) => m.device === `0:${n}`);
}

/** Abort FUSE connection `n` through fusectl, mounting fusectl when it is not (root only); false when that cannot be done. */
function abortConnection(n: number): boolean {
  const file = path.join(FUSECTL, String(n), 'abort');
  try {
    if (!existsSync(path.join(FUSECTL, String(n)))) execFileSync('mount', ['-t', 'fusectl', 'fusectl', FUSECTL], { stdio: 'ignore' });
    writeFileSync(file, '1');
    return true;
  } catch {
    return false;
  }
}

async function exitsWithin(pid: number, ms: number): Promise<boolean> {
  const deadline = Date.now() + ms;
  while (alive(pid)) {
    if (Date.now() > deadline) return false;
    await new Promise((r) => setTimeout(r, 50));
  }
  return true;
}

export function fuseRecordPath(mountpoint: string): string {
  return recordPathOf(canonical(mountpoint));
}

/** Touches no file: the server must not stat its own mountpoint from its serving thread. */
function recordPathOf(canonicalMountpoint: string, dir = runtimeDir()): string {
  const key = createHash('sha256').update(canonicalMountpoint).digest('hex').slice(0, 32);
  return path.join(dir, `fuse-${key}.json`);
}

export interface FuseServerState {
  /** active: its server runs; dead: its server is gone (files there fail with ENOTCONN); unknown: no record of it found. */
  state: 'active' | 'dead' | 'unknown';
  pid: number | null;
}

/**
 * Whether the FUSE mount `m` still has its server, from the record of the user who mounted it
 * (its `user_id=` option). The mount point is never touched: a dead one fails, a hung one hangs.
 */
export function fuseServerState(m: MountInfo): FuseServerState {
  const uid = fuseMountUid(m) ?? process.getuid?.() ?? 0;
  for (const dir of runtimeDirsOf(uid)) {
    const rec = readRecordAt(recordPathOf(m.mountpoint, dir), uid);
    if (!rec) continue;
    const serving = alive(rec.pid) && (isServer(rec.pid, m.mountpoint) || (rec.started !== undefined && processStart(rec.pid) === rec.started));
    return { state: serving ? 'active' : 'dead', pid: serving ? rec.pid : null };
  }
  return { state: 'unknown', pid: null };
}

/** A process's start time (clock ticks since boot, /proc/PID/stat field 22): with the pid, it names one process. */
function processStart(pid: number): string | null {
  try {
    const stat = readFileSync(`/proc/${pid}/stat`, 'latin1');
    return stat.slice(stat.lastIndexOf(')') + 2).split(' ')[19] ?? null;
  } catch {
    return null;
  }
}

export function readFuseRecord(mountpoint: string): FuseDaemonRecord | null {
  return readRecordAt(fuseRecordPath(mountpoint));
}

/** The record in `file`, written by user `owner` (by default us), or null. */
function readRecordAt(file: string, owner = process.getuid?.() ?? 0): FuseDaemonRecord | null {
  const text = readRecordFile(file, owner);
  if (text === null) return null;
  try {
    const rec = JSON.parse(text) as FuseDaemonRecord;
    return typeof rec.pid === 'number' ? rec : null;
  } catch {
    return null;
  }
}

function writeFuseRecord(rec: FuseDaemonRecord): void {
  writeFileSync(recordPathOf(rec.mountpoint, ownRuntimeDir()), `${JSON.stringify(rec)}\n`, { mode: 0o600 });
}

/** Remove the record (and an empty log) of server `pid`; those of a server started since (a lazy unmount, then a new mount here) stay. */
function removeFuseRecord(canonicalMountpoint: string, pid: number): void {
  const record = recordPathOf(canonicalMountpoint);
  if (readRecordAt(record)?.pid !== pid) return;
  rmSync(record, { force: true });
  removeEmptyLog(logPathOf(record));
}

/** The server's log beside its record. */
function logPathOf(record: string): string {
  return record.replace(/\.json$/, '.log');
}

function alive(pid: number): boolean {
  try {
    process.kill(pid, 0);
  } catch (e) {
    return errnoCode(e) === 'EPERM';
  }
  // A detached server that has exited stays a zombie until init reaps it (not at once on every
  // init): it is gone for us.
  try {
    const stat = readFileSync(`/proc/${pid}/stat`, 'latin1');
    return stat.slice(stat.lastIndexOf(')') + 2, stat.lastIndexOf(')') + 3) !== 'Z';
  } catch {
    return false;
  }
}

/** Whether pid still runs our server for `mountpoint` (guards against a recycled pid). */
function isServer(pid: number, mountpoint: string): boolean {
  try {
    const cmdline = readFileSync(`/proc/${pid}/cmdline`, 'utf8');
    return cmdline.includes('fuse-server-main') && cmdline.includes(JSON.stringify(mountpoint));
  } catch {
    return false;
  }
}

async function readImageTree(imagePath: string) {
  const { readErofs } = await import('../erofs/reader.js');
  return readErofs(await readFile(imagePath));
}

/** Mount and serve until unmounted; `onReady` runs once the mount is up. */
export async function serveFuse(opts: FuseDaemonOptions, onReady: () => boolean | void): Promise<void> {
  const mountpoint = canonical(opts.mountpoint);
  const root = await readImageTree(opts.imagePath);
  const handle = await startFuse({ root, objectsDir: opts.objectsDir, mountpoint, name: opts.name, verify: opts.verify });
  // Ours: the mount just made at the mount point (its device 0:N names the connection).
  const connection = fuseConnection(findMount(mountpoint));
  try {
    writeFuseRecord({ pid: process.pid, started: processStart(process.pid) ?? undefined, mountpoint, name: opts.name });
  } catch (e) {
    // Nobody could find this server to unmount it: no mount either.
    await handle.unmount({ lazy: true }).catch(() => undefined);
    throw e;
  }
  // The caller gave up meanwhile (a `cfs mount` interrupted): nobody wants the mount.
  if (onReady() === false) await handle.unmount({ lazy: true }).catch(() => undefined);
  await untilStopped(handle, connection, () => removeFuseRecord(mountpoint, process.pid));
}

/**
 * Resolves when the kernel connection has ended: after an unmount from outside, or after
 * SIGTERM/SIGINT, which unmount (lazily when busy, so open files are served until closed).
 * `cleanup` runs while the signal handlers are still installed: `cfs umount` signals right after
 * unmounting, and a SIGTERM landing between handler removal and cleanup would kill the server
 * with the default action and leave its runtime record behind.
 */
async function untilStopped(handle: ServerHandle, connection: number | null, cleanup: () => void): Promise<void> {
  const log = (line: string): void => void process.stderr.write(`cfs fuse: ${line}\n`);
  const onSignal = (): void => {
    const top = findMount(handle.mountpoint);
    const ours = connection === null || fuseConnection(top) === connection;
    if (!top || !ours) {
      if (connection !== null && mountedHere(connection)) {
        // Another mount was put over ours: unmounting would take that one.
        return log(`${handle.mountpoint}: not unmounting: another mount (${top?.fsType ?? '?'} ${top?.source ?? ''}) covers this server's`);
      }
      if (connection !== null && connectionAlive(connection)) {
        // Lazily unmounted: files opened before are still served, until they are closed.
        return log(`${handle.mountpoint}: lazily unmounted; serving open files until they are closed (SIGKILL ends them now)`);
      }
      // `cfs umount` unmounts first and then signals: nothing left to do but exit.
      removeFuseRecord(handle.mountpoint, process.pid);
      process.exit(0);
    }
    handle.unmount().catch((e: unknown) => {
      if (isCfsError(e) && e.code === 'EBUSY') return handle.unmount({ lazy: true });
      throw e;
    }).catch((e: unknown) => process.stderr.write(`cfs fuse: ${(e as Error).message}\n`));
  };
  process.on('SIGTERM', onSignal);
  process.on('SIGINT', onSignal);
  try {
    await handle.closed;
  } finally {
    cleanup();
    process.off('SIGTERM', onSignal);
    process.off('SIGINT', onSignal);
  }
}

/** The module-loader flags of this node (tsx during tests), without test-runner or inspector flags. */
function loaderArgs(): string[] {
  const out: string[] = [];
  const argv = process.execArgv;
  for (let i = 0; i < argv.length; i++) {
    const a = argv[i];
    if (/^--(import|loader|experimental-loader|require)=/.test(a)) out.push(a);
    else if (/^(--import|--loader|--experimental-loader|--require|-r)$/.test(a) && i + 1 < argv.length) out.push(a, argv[++i]);
  }
  return out;
}

function serverEntry(): string {
  // Same extension as this module: .js when compiled, .ts when run through tsx.
  const self = fileURLToPath(import.meta.url);
  return path.join(path.dirname(self), `fuse-server-main${path.extname(self)}`);
}

/** How long the log of a server that has exited is kept for its user to read. */
const LOG_KEEP_MS = 24 * 60 * 60 * 1000;

/** Logs of servers gone for a day (no record beside them) are removed: one per mount point would pile up. */
function pruneOldLogs(dir: string): void {
  const now = Date.now();
  for (const name of listOrEmpty(dir)) {
    if (!/^fuse-[0-9a-f]+\.log$/.test(name)) continue;
    const log = path.join(dir, name);
    if (existsSync(log.replace(/\.log$/, '.json'))) continue;
    const st = statSync(log, { throwIfNoEntry: false });
    if (st && now - st.mtimeMs > LOG_KEEP_MS) rmSync(log, { force: true });
  }
}

/** The server's log (its runtime directory made first: the first mount after a boot has none yet). */
function openServerLog(canonicalMountpoint: string): { fd: number | 'ignore'; path: string | null } {
  try {
    const dir = ownRuntimeDir();
    pruneOldLogs(dir);
    const file = logPathOf(recordPathOf(canonicalMountpoint, dir));
    return { fd: openSync(file, 'a', 0o600), path: file };
  } catch {
    return { fd: 'ignore', path: null };
  }
}

/** A log that says nothing is not kept (one per mount would pile up). */
function removeEmptyLog(log: string): void {
  if (statSync(log, { throwIfNoEntry: false })?.size === 0) rmSync(log, { force: true });
}

/**
 * Mount an image through a background FUSE server (or in the foreground, see options);
 * `onMounted` runs once the mount is up (in the foreground, before serving until unmounted).
 */
export async function mountFuseDaemon(opts: FuseDaemonOptions, onMounted?: () => void): Promise<void> {
  const config: FuseDaemonOptions = {
    ...opts,
    imagePath: path.resolve(opts.imagePath),
    objectsDir: path.resolve(opts.objectsDir),
    mountpoint: canonical(opts.mountpoint),
  };
  if (opts.foreground) {
    await serveFuse(config, () => void onMounted?.());
    return;
  }
  const log = openServerLog(config.mountpoint);
  const before = findMount(config.mountpoint)?.mountId;
  const child = spawn(process.execPath, [...loaderArgs(), serverEntry(), JSON.stringify(config)], {
    detached: true,
    // Not the caller's directory: the server would keep it busy (an unmountable USB stick).
    cwd: '/',
    // Startup errors come back over the readiness pipe; later messages go to a log file beside
    // the runtime record, so callers capturing our stderr are not held open by the server.
    stdio: ['ignore', 'ignore', log.fd, 'pipe'],
  });
  if (typeof log.fd === 'number') closeSync(log.fd);
  const pipe = child.stdio[READY_FD] as Readable | null;
  if (!pipe) throw new CfsError('EIO', 'FUSE server: no readiness pipe');
  const exited = new Promise<string>((resolve) => {
    child.on('error', (e) => resolve(`cannot start: ${e.message}`));
    child.on('exit', (code, signal) => resolve(`exited with ${signal ?? `code ${code}`} before the mount was ready`));
  });
  let text = '';
  pipe.setEncoding('utf8');
  pipe.on('data', (chunk: string) => (text += chunk));
  const eof = new Promise<void>((resolve) => pipe.on('close', () => resolve()));
  await Promise.race([eof, exited]);
  await eof;
  const line = text.split('\n')[0];
  if (line === 'ready') {
    child.unref();
    onMounted?.();
    return;
  }
  const why = line.startsWith('error ') ? line.slice('error '.length) : `FUSE server ${await exited}`;
  if (log.path !== null) removeEmptyLog(log.path);
  // A server killed after mounting leaves its mount without anyone serving it: undo it.
  const top = findMount(config.mountpoint);
  if (top && top.mountId !== before && top.fsType.startsWith('fuse') && isComposefsMount(top)) await fusermountUnmount(config.mountpoint, true).catch(() => undefined);
  // The server's errors name the mount point already.
  throw new CfsError('EIO', why.startsWith(`${config.mountpoint}: `) ? why : `${config.mountpoint}: ${why}`, { path: config.mountpoint });
}

/**
 * Unmount a cfs FUSE mount and wait for its server to exit (see the module comment for busy
 * mounts and `lazy`). Without a runtime record (mounted by another user, or the server died)
 * only the unmount is done.
 */
export async function unmountFuse(mountpoint: string, opts: { lazy?: boolean } = {}): Promise<void> {
  const mp = canonical(mountpoint);
  const rec = readFuseRecord(mp);
  // Only a background server is signalled and waited for: a foreground one (which `cfs mounts`
  // counts as active too) is its caller's own process, and ends by itself once unmounted.
  const server = rec && alive(rec.pid) && isServer(rec.pid, mp) ? rec.pid : null;
  const mount = findMount(mp);
  let connection: number | null = null;
  if (mount) {
    connection = fuseConnection(mount);
    await fusermountUnmount(mp, opts.lazy ?? false);
  } else if (!rec) {
    throw new CfsError('ENOENT', `${mp}: not a mount point`, { path: mp });
  } else if (server !== null) {
    // Unmounted already (lazily): its server answers the files opened before until they are
    // closed; ending it now would break them.
    throw new CfsError('EINVAL', `${mp}: not a mount point (unmounted lazily; its FUSE server pid ${server} serves the files still open there and exits when they are closed)`, { path: mp });
  }
  if (server === null) {
    if (rec) removeFuseRecord(mp, rec.pid);
    return;
  }
  if (opts.lazy) return; // the server drains open files, then exits by itself
  try {
    process.kill(server, 'SIGTERM');
  } catch (e) {
    // The server saw the unmount and exited by itself first.
    if (errnoCode(e) !== 'ESRCH') throw e;
  }
  if (!(await exitsWithin(server, HELD_WAIT_MS))) {
    // Gone here, but a mount namespace made while it was mounted (a rootless podman's pause
    // process, `unshare -m`) holds a copy, which keeps the session, and so the server, alive.
    // The user asked for it to end: abort the connection (fusectl), which ends every copy.
    // Only a connection no mount here uses any more: the number could have been reused.
    const aborted = connection !== null && !mountedHere(connection) && abortConnection(connection);
    if (!aborted || !(await exitsWithin(server, ABORT_WAIT_MS))) {
      const how = connection === null ? '' : `, or abort it: echo 1 > ${FUSECTL}/${connection}/abort (as root, with fusectl mounted there)`;
      throw new CfsError('EBUSY', `${mp}: unmounted, but FUSE server pid ${server} still serves a copy of the mount that another mount namespace holds (one made while it was mounted, e.g. by a rootless podman's pause process); it ends when that namespace lets go${how}`, { path: mp, pid: server });
    }
  }
  // A server killed before its own cleanup leaves its record: it is stale now.
  removeFuseRecord(mp, server);
}
