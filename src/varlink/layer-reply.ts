/**
 * A GetLayer reply (brief 5.2), for any producer: the repository's layer streams and the
 * containers-storage helper's store layers. The client gets [data socket, dirfd region with the
 * real directories in their slots and dummies between, keepalive, lifetime dummies] in one or
 * more frames; the producer writes the stream into the data socket whatever the connection does,
 * and `release` runs once the stream is written (or its reader is gone) and the client has
 * closed the keepalive, so what the client opens by name stays valid until then.
 */
import net from 'node:net';
import { native } from '../native.js';
import { FinalReply, type CallContext } from './server.js';
import { VarlinkError } from './protocol.js';
import { closeQuietly } from './transport.js';
import { CHUNK } from '../splitdirfdstream/format.js';
import { dirRegion, FDS_PER_FRAME, frameSizes, layoutSeed, lifetimeDummies, openDummy, type DirRegion } from './fdlayout.js';

export interface LayerReplySource {
  /** Seeds the fd layout: the layer content id (repository) or the storage layer ID. */
  id: string;
  /** The real directory fds, in the order the stream's slots name them; closed once sent. */
  dirfds: number[];
  /** The stream, given the slot of each real directory. */
  stream(slots: readonly number[]): AsyncIterable<Buffer>;
  /** Runs once the stream is written and the keepalive closed (also when the reply fails). */
  release(): void;
  log(message: string): void;
}

/** The dirfd region GetLayer will use for `id` with `nReal` real directories. */
export function layerRegion(id: string, nReal: number): DirRegion {
  return dirRegion(layoutSeed(id), nReal);
}

export async function replyWithLayer(ctx: CallContext, iface: string, src: LayerReplySource): Promise<FinalReply> {
  const seed = layoutSeed(src.id);
  const region = dirRegion(seed, src.dirfds.length);
  const extra = lifetimeDummies(seed);
  const total = 1 + region.total + 1 + extra;
  const ours: number[] = [...src.dirfds]; // every fd opened here; the client gets kernel duplicates
  if (!ctx.more && total > FDS_PER_FRAME) {
    ours.forEach(closeQuietly);
    src.release();
    throw new VarlinkError(`${iface}.FdLimitExceeded`, { fd_count: total, max_per_frame: FDS_PER_FRAME });
  }
  const sizes = frameSizes(seed, total, ctx.more);
  let dataW = -1;
  let keepR = -1;
  try {
    const [w, dataR] = native().socketpair();
    dataW = w;
    ours.push(dataR);
    const [r, keepW] = native().socketpair();
    keepR = r;
    ours.push(keepW);
    const fds = [dataR];
    let dummy = 0;
    const real = new Map(region.realSlots.map((slot, i) => [slot, src.dirfds[i]]));
    for (let slot = 0; slot < region.total; slot++) {
      let fd = real.get(slot);
      if (fd === undefined) ours.push((fd = openDummy(dummy++)));
      fds.push(fd);
    }
    fds.push(keepW);
    for (let i = 0; i < extra; i++) {
      const d = openDummy(dummy++);
      ours.push(d);
      fds.push(d);
    }
    // Frames: all but the last as intermediate replies.
    let off = 0;
    for (const n of sizes.slice(0, -1)) {
      await ctx.reply({ dir_count: region.total }, { continues: true, fds: fds.slice(off, off + n) });
      off += n;
    }
    runProducer(src, region.realSlots, dataW, keepR);
    return new FinalReply({ dir_count: region.total }, fds.slice(off), () => ours.forEach(closeQuietly));
  } catch (e) {
    [dataW, keepR, ...ours].filter((fd) => fd >= 0).forEach(closeQuietly);
    src.release();
    throw e;
  }
}

/**
 * Phase 1: write the stream and close (EOF). Phase 2: hold until the client closes keepalive.
 * The fds may outlive the varlink connection (a client hands them to another process, or
 * hangs up at once): the producer runs until the stream is written or its reader is gone
 * (EPIPE), whatever the connection does.
 */
function runProducer(src: LayerReplySource, slots: readonly number[], dataW: number, keepR: number): void {
  const out = new net.Socket({ fd: dataW, readable: false, writable: true });
  const keep = new net.Socket({ fd: keepR, readable: true, writable: false });
  keep.on('error', () => undefined);
  keep.resume();
  const keepClosed = new Promise<void>((resolve) => keep.once('close', () => resolve()));
  const written = (async () => {
    for await (const b of src.stream(slots)) {
      if (out.destroyed) return;
      if (!out.write(b)) {
        await new Promise<void>((resolve) => {
          const done = (): void => {
            out.off('drain', done);
            out.off('close', done);
            resolve();
          };
          out.on('drain', done);
          out.on('close', done);
        });
      }
    }
    out.end();
  })().catch((e: unknown) => {
    src.log(`GetLayer ${src.id}: ${(e as Error).message}`);
    // Ended inside a chunk header (a lone type byte), so no reader takes what came for the whole
    // layer: a clean end at a chunk boundary would look like a complete stream.
    if (out.destroyed || out.writableEnded) out.destroy();
    else out.end(Buffer.from([CHUNK.metadata]));
  });
  void Promise.all([written, keepClosed]).finally(() => src.release());
  out.on('error', (e) => src.log(`GetLayer ${src.id}: ${e.message}`));
}
