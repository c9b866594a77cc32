/**
 * A varlink connection over a raw unix stream socket fd, with SCM_RIGHTS in both directions.
 *
 * Node's net.Socket reads the socket itself and would drop ancillary data, so the fd is driven
 * directly: the native addon's uv_poll reports readiness on Node's own event loop, recvmsg /
 * sendmsg (non-blocking) move the bytes and fds.
 *
 * Framing: each message is one JSON object followed by NUL. Fds belong to a message: the sender
 * passes them with the sendmsg that carries the message's first bytes. Linux never merges the
 * data of a later sendmsg into a recvmsg after fds were received, so the fds a recvmsg returns
 * belong to the message holding the last byte that recvmsg returned.
 *
 * End of input (the client shut down its write side, as `printf … | socat` does, or closed the
 * socket) ends reading only: calls already received are answered while the socket takes
 * writes (`onReadEnd`; the owner closes the connection when they are done). `peerHungUp` tells
 * a client that is gone from one that only stopped writing.
 */
import { closeSync } from 'node:fs';
import { native, type PollHandle } from '../native.js';
import { errnoCode } from '../errors.js';

export const MAX_MESSAGE = 8 * 1024 * 1024;
/** Kernel limit per sendmsg (SCM_MAX_FD). */
export const MAX_FDS_PER_MESSAGE = 253;
const RECV_SIZE = 256 * 1024;

export interface Incoming {
  data: Buffer;
  fds: number[];
}

export class ProtocolViolation extends Error {}

interface Outgoing {
  data: Buffer;
  fds: number[];
  sent: number;
  resolve: () => void;
  reject: (e: Error) => void;
}

export class FdConnection {
  readonly fd: number;
  private poll: PollHandle | null;
  private parts: Buffer[] = [];
  private partsLen = 0;
  /** Fds received for the message being assembled. */
  private pendingFds: number[] = [];
  private readonly queue: Outgoing[] = [];
  private closed = false;
  private readEnded = false;
  private wantWrite = false;
  private onMessage: (m: Incoming) => void = () => undefined;
  private onClose: (why: Error | null) => void = () => undefined;
  private onReadEnd: () => void = () => this.close(null);

  constructor(fd: number) {
    this.fd = fd;
    native().setNonBlocking(fd);
    this.poll = native().pollStart(fd, native().constants.POLL_READABLE | native().constants.POLL_DISCONNECT, (status, events) => this.ready(status, events));
  }

  /**
   * Start delivering messages (each with the fds that came with it; the receiver owns them).
   * `onReadEnd`: no more messages will come (default: close at once).
   */
  listen(onMessage: (m: Incoming) => void, onClose: (why: Error | null) => void, onReadEnd?: () => void): void {
    this.onMessage = onMessage;
    this.onClose = onClose;
    if (onReadEnd) this.onReadEnd = onReadEnd;
  }

  get isClosed(): boolean {
    return this.closed;
  }

  /** The client closed its socket (not just its write side): nothing sent will be read. */
  peerHungUp(): boolean {
    return !this.closed && native().peerHungUp(this.fd);
  }

  /** Queue one message; `fds` are duplicated into the peer by the kernel (the caller keeps its own). */
  send(json: unknown, fds: number[] = []): Promise<void> {
    if (this.closed) return Promise.reject(new Error('varlink connection closed'));
    if (fds.length > MAX_FDS_PER_MESSAGE) return Promise.reject(new Error(`cannot send ${fds.length} fds in one message`));
    const data = Buffer.concat([Buffer.from(JSON.stringify(json), 'utf8'), Buffer.from([0])]);
    return new Promise((resolve, reject) => {
      this.queue.push({ data, fds, sent: 0, resolve, reject });
      this.flush();
    });
  }

  close(why: Error | null = null): void {
    if (this.closed) return;
    this.closed = true;
    if (this.poll) native().pollStop(this.poll);
    this.poll = null;
    closeSync(this.fd);
    for (const fd of this.pendingFds.splice(0)) closeQuietly(fd);
    for (const o of this.queue.splice(0)) o.reject(new Error('varlink connection closed'));
    this.onClose(why);
  }

  private ready(status: number, events: number): void {
    if (this.closed) return;
    // libuv reports POLLERR (e.g. the peer reset the connection) as a negative status.
    if (status < 0) return this.close(new Error(`connection error (uv status ${status})`));
    const c = native().constants;
    if (events & c.POLL_WRITABLE) this.flush();
    if (events & (c.POLL_READABLE | c.POLL_DISCONNECT) && !this.readEnded) this.readAll();
  }

  /** End of input: a message cut short is dropped with its fds; writing goes on. */
  private endRead(): void {
    this.readEnded = true;
    this.parts = [];
    this.partsLen = 0;
    for (const fd of this.pendingFds.splice(0)) closeQuietly(fd);
    this.updatePoll();
    this.onReadEnd();
  }

  private readAll(): void {
    try {
      while (!this.closed && !this.readEnded) {
        const r = native().recvFds(this.fd, RECV_SIZE, MAX_FDS_PER_MESSAGE);
        if (r === null) return;
        if (r.truncated) {
          for (const fd of r.fds) closeQuietly(fd);
          throw new ProtocolViolation('ancillary data truncated (too many fds in one message)');
        }
        if (r.data.length === 0) {
          for (const fd of r.fds) closeQuietly(fd);
          return this.endRead();
        }
        this.take(r.data, r.fds);
      }
    } catch (e) {
      this.close(e instanceof Error ? e : new Error(String(e)));
    }
  }

  private take(data: Buffer, fds: number[]): void {
    let start = 0;
    // Fds go to the message holding this chunk's last byte: attach them once that message starts.
    const lastNul = data.lastIndexOf(0);
    const fdsForTail = lastNul === data.length - 1 ? null : fds;
    for (let nul = data.indexOf(0, start); nul >= 0; nul = data.indexOf(0, start)) {
      const piece = data.subarray(start, nul);
      const isLastComplete = nul === lastNul;
      this.append(piece);
      const msg = this.parts.length === 1 ? this.parts[0] : Buffer.concat(this.parts, this.partsLen);
      this.parts = [];
      this.partsLen = 0;
      const mine = this.pendingFds;
      this.pendingFds = [];
      if (isLastComplete && fdsForTail === null) mine.push(...fds);
      start = nul + 1;
      this.onMessage({ data: Buffer.from(msg), fds: mine });
      if (this.closed) {
        if (fdsForTail) for (const fd of fdsForTail) closeQuietly(fd);
        return;
      }
    }
    if (fdsForTail) {
      this.pendingFds.push(...fdsForTail);
      if (this.pendingFds.length > MAX_FDS_PER_MESSAGE) throw new ProtocolViolation(`more than ${MAX_FDS_PER_MESSAGE} fds for one message`);
    }
    if (start < data.length) this.append(data.subarray(start));
  }

  private append(b: Buffer): void {
    if (this.partsLen + b.length > MAX_MESSAGE) throw new ProtocolViolation(`message exceeds ${MAX_MESSAGE} bytes`);
    if (b.length > 0) {
      this.parts.push(Buffer.from(b));
      this.partsLen += b.length;
    }
  }

  private flush(): void {
    while (this.queue.length > 0 && !this.closed) {
      const o = this.queue[0];
      let n: number;
      try {
        n = native().sendFds(this.fd, o.data.subarray(o.sent), o.sent === 0 ? o.fds : []);
      } catch (e) {
        if (errnoCode(e) === 'EAGAIN') return this.setWriteWanted(true);
        this.close(e as Error);
        return;
      }
      o.sent += n;
      if (o.sent === o.data.length) {
        this.queue.shift();
        o.resolve();
      }
    }
    this.setWriteWanted(false);
  }

  private setWriteWanted(on: boolean): void {
    if (this.wantWrite === on) return;
    this.wantWrite = on;
    this.updatePoll();
  }

  /** A socket at end of input stays readable: polled then for writability only, when wanted. */
  private updatePoll(): void {
    if (!this.poll) return;
    const c = native().constants;
    native().pollUpdate(this.poll, (this.readEnded ? 0 : c.POLL_READABLE | c.POLL_DISCONNECT) | (this.wantWrite ? c.POLL_WRITABLE : 0));
  }
}

export function closeQuietly(fd: number): void {
  try {
    closeSync(fd);
  } catch {
    // already closed
  }
}
