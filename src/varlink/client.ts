/**
 * A varlink client over one connected unix socket, with fds: calls go out in order and their
 * replies come back in order (a varlink service answers one connection's calls in turn), so
 * concurrent callers are simply queued. Used to talk to cfs's own helpers.
 */
import { closeQuietly, FdConnection, type Incoming } from './transport.js';
import { VarlinkError } from './protocol.js';

export interface Reply {
  parameters: Record<string, unknown>;
  /** Fds that came with this reply frame; the caller owns them. */
  fds: number[];
}

interface PendingCall {
  frames: Reply[];
  done: boolean;
  error: Error | null;
  wake: (() => void) | null;
}

export class VarlinkClient {
  private readonly conn: FdConnection;
  private readonly pending: PendingCall[] = [];
  private closedWhy: Error | null = null;

  /** `fd`: a connected socket, owned by the client from here on. */
  constructor(fd: number, private readonly what = 'varlink service') {
    this.conn = new FdConnection(fd);
    this.conn.listen(
      (m) => this.received(m),
      (why) => this.closed(why ?? new Error(`${this.what} closed the connection`)),
    );
  }

  /** Every reply frame of the call, in order; an error reply is thrown as VarlinkError. */
  async *call(method: string, parameters: Record<string, unknown>, opts: { more?: boolean } = {}): AsyncGenerator<Reply> {
    if (this.closedWhy) throw this.closedWhy;
    const c: PendingCall = { frames: [], done: false, error: null, wake: null };
    this.pending.push(c);
    await this.conn.send({ method, parameters, ...(opts.more ? { more: true } : {}) });
    try {
      for (;;) {
        const f = c.frames.shift();
        if (f) {
          yield f;
          continue;
        }
        if (c.error) throw c.error;
        if (c.done) return;
        await new Promise<void>((resolve) => (c.wake = resolve));
        c.wake = null;
      }
    } finally {
      // Frames left unread (the caller stopped early) still own fds.
      for (const f of c.frames.splice(0)) f.fds.forEach(closeQuietly);
    }
  }

  close(): void {
    this.conn.close();
  }

  private received(m: Incoming): void {
    const c = this.pending[0];
    let reply: { parameters?: Record<string, unknown>; continues?: boolean; error?: string };
    try {
      reply = JSON.parse(m.data.toString('utf8')) as typeof reply;
    } catch {
      m.fds.forEach(closeQuietly);
      this.conn.close(new Error(`${this.what} sent a reply that is not JSON`));
      return;
    }
    if (!c) {
      m.fds.forEach(closeQuietly);
      this.conn.close(new Error(`${this.what} sent a reply to no call`));
      return;
    }
    if (reply.error) {
      m.fds.forEach(closeQuietly);
      c.error = new VarlinkError(reply.error, reply.parameters ?? {});
      this.settle(c);
      return;
    }
    c.frames.push({ parameters: reply.parameters ?? {}, fds: m.fds });
    if (!reply.continues) this.settle(c, true);
    else c.wake?.();
  }

  private settle(c: PendingCall, done = false): void {
    c.done = done;
    this.pending.shift();
    c.wake?.();
  }

  private closed(why: Error): void {
    this.closedWhy = why;
    for (const c of this.pending.splice(0)) {
      c.error ??= why;
      c.wake?.();
    }
  }
}
