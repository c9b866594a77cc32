/**
 * Read-only FUSE server for a composefs image tree that speaks the kernel protocol over
 * /dev/fuse itself (no libfuse): a drop-in for `startFuse` of ../fuse.ts with nanosecond
 * times, any-byte names, 1 MiB reads, READDIRPLUS, kernel-cached ACLs, dirs, symlinks and
 * negative entries, no open/release round trips, and optional FUSE passthrough (root).
 *
 * Requests are served by a worker thread (./worker.ts) that blocks in read(2) on the /dev/fuse
 * fd; the tree is copied to it once. This thread only mounts, relays log lines, and unmounts;
 * it may read the mount with any fs call, sync ones included.
 */
import { closeSync } from 'node:fs';
import path from 'node:path';
import { fileURLToPath, pathToFileURL } from 'node:url';
import { Worker } from 'node:worker_threads';
import { CfsError } from '../../errors.js';
import { fusermountUnmount, type FuseServeOptions, type FuseUnmountOptions } from '../fuse.js';
import { openChannel } from './channel.js';
import type { WorkerConfig, WorkerMessage } from './worker.js';

export interface FuseLlHandle {
  readonly mountpoint: string;
  /** As FuseHandle.unmount: `fusermount3 -u [-z]`; a busy mount → CfsError EBUSY. */
  unmount(opts?: FuseUnmountOptions): Promise<void>;
  /** Resolves when the kernel has ended the connection (see FuseHandle.closed). */
  readonly closed: Promise<void>;
}

function startWorker(config: WorkerConfig): Worker {
  // Same extension as this module: .js when compiled, .ts when run through tsx.
  const self = fileURLToPath(import.meta.url);
  const ext = path.extname(self);
  const entry = pathToFileURL(path.join(path.dirname(self), `worker${ext}`)).href;
  if (ext !== '.ts') return new Worker(new URL(entry), { workerData: config });
  // Under tsx (tests) a worker does not inherit its loader: load the entry through tsx's API.
  const api = import.meta.resolve('tsx/esm/api');
  const boot = `import(${JSON.stringify(api)}).then((m) => m.tsImport(${JSON.stringify(entry)}, ${JSON.stringify(entry)}))`;
  return new Worker(boot, { eval: true, workerData: config });
}

/**
 * Mount `opts.root` at `opts.mountpoint` and serve it from a thread of this process; resolves
 * once the kernel has initialised the connection.
 */
export async function startFuse(opts: FuseServeOptions): Promise<FuseLlHandle> {
  const mountpoint = path.resolve(opts.mountpoint);
  const log = opts.log ?? ((line: string) => process.stderr.write(`${line}\n`));
  // allow_other,suid,dev as root only (fusermount3 refuses them otherwise).
  const privileged = process.getuid?.() === 0;
  const fd = await openChannel({ mountpoint, name: opts.name, privileged });
  // Opt-in (CFS_FUSE_PASSTHROUGH=1, root only: registering backing files needs CAP_SYS_ADMIN):
  // cold reads of large files skip the server, but every open costs a request (see server.ts).
  const passthrough = process.getuid?.() === 0 && process.env.CFS_FUSE_PASSTHROUGH === '1';
  const config: WorkerConfig = { kind: 'cfs-fuse-ll', fd, root: opts.root, objectsDir: opts.objectsDir, verify: opts.verify, passthrough };
  let worker: Worker;
  try {
    worker = startWorker(config);
  } catch (e) {
    closeSync(fd);
    await fusermountUnmount(mountpoint, true).catch(() => undefined);
    throw e;
  }
  let onReady: () => void = () => undefined;
  let onFail: (e: Error) => void = () => undefined;
  const ready = new Promise<void>((resolve, reject) => ((onReady = resolve), (onFail = reject)));
  const closed = new Promise<void>((resolve) => {
    worker.on('message', (m: WorkerMessage) => {
      if (m.kind === 'ready') onReady();
      else if (m.kind === 'log') log(m.line);
      else resolve();
    });
    worker.on('error', (e) => {
      log(`cfs fuse: server thread failed: ${e.message}`);
      onFail(e);
    });
    worker.on('exit', () => {
      closeSync(fd);
      onFail(new CfsError('EIO', `${mountpoint}: FUSE server thread ended before the mount was ready`, { path: mountpoint }));
      resolve();
    });
  });
  try {
    await ready;
  } catch (e) {
    await fusermountUnmount(mountpoint, true).catch(() => undefined);
    throw e;
  }
  let mounted = true;
  return {
    mountpoint,
    closed,
    async unmount(u: FuseUnmountOptions = {}): Promise<void> {
      if (!mounted) return;
      await fusermountUnmount(mountpoint, u.lazy ?? false);
      mounted = false;
    },
  };
}
