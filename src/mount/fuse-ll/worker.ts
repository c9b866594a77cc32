/**
 * The serving thread: blocking reads of requests from the /dev/fuse fd, each answered at once
 * (libfuse's single-threaded loop, minus libfuse). A worker thread rather than the main loop
 * because a blocking read costs one syscall per request, where polling on the event loop costs
 * a wakeup, a callback and a failed read; and the main thread (and the libuv pool) stay free
 * for whoever else runs in the process, including code that reads the mount.
 *
 * Messages to the parent: { kind: 'ready' } after INIT, { kind: 'log', line }, and
 * { kind: 'closed' } when the connection has ended (the thread then exits; the parent, which
 * opened the fd, closes it).
 */
import { readSync, writeSync } from 'node:fs';
import { parentPort, workerData } from 'node:worker_threads';
import { errnoCode } from '../../errors.js';
import { native } from '../../native.js';
import type { Inode } from '../../tree/inode.js';
import { FuseLlServer, REQUEST_BUFFER_SIZE, type PassthroughOps } from './server.js';

export interface WorkerConfig {
  kind: 'cfs-fuse-ll';
  fd: number;
  root: Inode;
  objectsDir: string;
  verify?: { alg: 'sha256' | 'sha512' };
  /** Offer FUSE passthrough (needs CAP_SYS_ADMIN). */
  passthrough: boolean;
}

export type WorkerMessage = { kind: 'ready' } | { kind: 'log'; line: string } | { kind: 'closed' };

/** Structured clone turns Buffers into plain Uint8Arrays: make them Buffers again. */
function reviveBuffers(root: Inode): void {
  const seen = new Set<Inode>();
  const stack = [root];
  const buf = (u: Uint8Array): Buffer => Buffer.from(u.buffer, u.byteOffset, u.byteLength);
  while (stack.length > 0) {
    const n = stack.pop()!;
    if (seen.has(n)) continue;
    seen.add(n);
    if (n.content) n.content = buf(n.content);
    if (n.digest) n.digest = buf(n.digest);
    for (const [k, v] of n.xattrs) n.xattrs.set(k, buf(v));
    if (n.children) for (const c of n.children.values()) stack.push(c);
  }
}

function serve(cfg: WorkerConfig): void {
  const post = (m: WorkerMessage): void => parentPort!.postMessage(m);
  const log = (line: string): void => post({ kind: 'log', line });
  reviveBuffers(cfg.root);
  const server = new FuseLlServer(cfg.root, { objectsDir: cfg.objectsDir, verify: cfg.verify, log });
  if (cfg.passthrough) {
    const ops: PassthroughOps = {
      open: (fd) => native().fuseBackingOpen(cfg.fd, fd),
      close: (id) => native().fuseBackingClose(cfg.fd, id),
    };
    server.offerPassthrough(ops);
  }
  const req = Buffer.alloc(REQUEST_BUFFER_SIZE);
  let ready = false;
  for (;;) {
    let len: number;
    try {
      len = readSync(cfg.fd, req, 0, req.length, null);
    } catch (e) {
      const code = errnoCode(e);
      // ENOENT: the request was interrupted before we got it.
      if (code === 'EINTR' || code === 'EAGAIN' || code === 'ENOENT') continue;
      if (code !== 'ENODEV') log(`cfs fuse: reading /dev/fuse failed: ${(e as Error).message}`);
      break;
    }
    let out = 0;
    try {
      out = server.dispatch(req, len);
    } catch (e) {
      log(`cfs fuse: request failed: ${(e as Error).message}`);
    }
    if (out > 0) {
      try {
        writeSync(cfg.fd, server.out, 0, out);
      } catch (e) {
        const code = errnoCode(e);
        // ENOENT: the request was interrupted meanwhile; ENODEV: the connection is gone.
        if (code === 'ENODEV') break;
        if (code !== 'ENOENT') log(`cfs fuse: reply failed: ${(e as Error).message}`);
      }
    }
    if (!ready && server.initialized) {
      ready = true;
      post({ kind: 'ready' });
    }
  }
  server.shutdown();
  post({ kind: 'closed' });
}

// Only as the thread index.ts starts (importing this module elsewhere does nothing).
if (parentPort && (workerData as Partial<WorkerConfig> | null)?.kind === 'cfs-fuse-ll') serve(workerData as WorkerConfig);
