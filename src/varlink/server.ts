/**
 * A varlink service: interfaces with method handlers, org.varlink.service introspection, one
 * FdConnection per client, calls on one connection answered in order, clients independent of
 * each other. A client that breaks the framing (bad JSON, oversized message, too many fds) is
 * disconnected; a bad call gets an error reply. Fds that arrive with a call belong to it: a
 * handler takes the ones it uses, the rest are closed when it finishes.
 */
import { closeSync, constants as C, lstatSync, openSync, unlinkSync } from 'node:fs';
import { native, type PollHandle } from '../native.js';
import { CfsError, errnoCode } from '../errors.js';
import { tryLock } from '../repository/lock.js';
import { FdConnection, MAX_FDS_PER_MESSAGE, MAX_MESSAGE, closeQuietly, type Incoming } from './transport.js';
import { invalidParameter, Params, parseCall, SERVICE_INTERFACE, VarlinkError, type Call } from './protocol.js';

/** What one connection's calls waiting behind its running call may hold. */
const MAX_QUEUED_FDS = 2 * MAX_FDS_PER_MESSAGE;
const MAX_QUEUED_BYTES = 2 * MAX_MESSAGE;
const ADDRESS_LOCK_WAIT_MS = 5_000;
/**
 * Clients served at once. Beyond it, and when accept(2) runs out of fds, the listeners pause:
 * new clients wait in the kernel's backlog until a connection closes (or, out of fds, a moment).
 */
export const MAX_CONNECTIONS = 256;
const FD_EXHAUSTED_RETRY_MS = 100;
/** How often a client that stopped writing is checked for having closed its socket. */
const HANGUP_CHECK_MS = 200;

/** Exclusive flock of the address's lock file, waiting at most ADDRESS_LOCK_WAIT_MS. */
function lockWithin(lockFd: number, path: string): void {
  const deadline = Date.now() + ADDRESS_LOCK_WAIT_MS;
  while (!tryLock(lockFd, 'exclusive')) {
    if (Date.now() > deadline) throw new CfsError('EBUSY', `varlink address ${path}: ${path}.lock stays locked by another process`);
    // Only at start-up, for moments: a synchronous pause keeps listenPath synchronous.
    Atomics.wait(new Int32Array(new SharedArrayBuffer(4)), 0, 0, 10);
  }
}

export interface ReplyOptions {
  continues?: boolean;
  fds?: number[];
}

export interface CallContext {
  readonly more: boolean;
  /** Aborted when the client disconnects. */
  readonly signal: AbortSignal;
  readonly connectionId: number;
  /** Fds sent with the call, in order. */
  readonly fds: readonly number[];
  /** Take ownership of the call's fds (otherwise they are closed after the handler). */
  takeFds(): number[];
  /** Send an intermediate reply (`continues: true` unless given); fds are duplicated into the client. */
  reply(parameters: Record<string, unknown>, opts?: ReplyOptions): Promise<void>;
}

export type Handler = (p: Params, ctx: CallContext) => Promise<Record<string, unknown> | FinalReply>;

/** A final reply that carries fds; `sent` runs once they went out (or the client is gone). */
export class FinalReply {
  constructor(readonly parameters: Record<string, unknown>, readonly fds: number[] = [], readonly sent: () => void = () => undefined) {}
}

export interface VarlinkInterface {
  name: string;
  /** The interface description text (IDL), served by GetInterfaceDescription. */
  description: string;
  methods: Record<string, Handler>;
  /** Maps a non-varlink failure to this interface's error. */
  internalError(e: unknown): VarlinkError;
}

export interface ServiceInfo {
  vendor: string;
  product: string;
  version: string;
  url: string;
}

export class VarlinkServer {
  private readonly interfaces = new Map<string, VarlinkInterface>();
  /** Connections, until their last call settles, with what stops their oneway calls. */
  private readonly connections = new Map<FdConnection, AbortController>();
  /** `socket`: the socket file listenPath made (its inode, so close() removes it only while it is still ours). */
  private listeners: Array<{ fd: number; poll: PollHandle; socket: { path: string; ino: number } | null }> = [];
  private nextConn = 1;
  private acceptPaused = false;
  /** The reason last logged for a pause; cleared by the next accepted client (one line per episode, not per retry). */
  private pauseLogged: string | null = null;
  private retryTimer: NodeJS.Timeout | null = null;
  /** Called when a client's connection is gone (after its calls were aborted). */
  onDisconnect: (connectionId: number) => void = () => undefined;
  /** Users besides the service's own and root whose clients are served (`cfs varlink --allow-uid`). */
  readonly allowedUids = new Set<number>();
  /** Receives one line per dropped client or failed background task. */
  log: (text: string) => void = (t) => process.stderr.write(`cfs varlink: ${t}\n`);

  constructor(private readonly info: ServiceInfo) {}

  add(iface: VarlinkInterface): void {
    this.interfaces.set(iface.name, iface);
  }

  /**
   * Listen on a unix socket path. A socket left there by a service that is gone is replaced;
   * a live one, or anything that is not a socket, is an error (never deleted).
   */
  listenPath(path: string): void {
    // Two services starting on one stale socket would each remove it and bind, the second
    // deleting the first's live socket: the check and the replacement happen under an
    // exclusive flock of `PATH.lock` (left in place, like containers/storage's lock files: removing
    // it would let a third service lock a new inode while the second still holds the old one).
    const lockFd = openSync(`${path}.lock`, C.O_RDWR | C.O_CREAT | C.O_NOFOLLOW, 0o600);
    try {
      lockWithin(lockFd, path);
      this.replaceAndListen(path);
    } finally {
      closeSync(lockFd); // releases the lock
    }
  }

  private replaceAndListen(path: string): void {
    const st = lstatSync(path, { throwIfNoEntry: false });
    if (st && !st.isSocket()) throw new CfsError('EEXIST', `varlink address ${path} exists and is not a socket; not replacing it`);
    if (st) {
      let live = false;
      try {
        closeSync(native().connectUnix(path));
        live = true;
      } catch (e) {
        if (errnoCode(e) !== 'ECONNREFUSED') throw new CfsError('EIO', `varlink address ${path}: cannot tell whether a service is listening there: ${(e as Error).message}`);
      }
      if (live) throw new CfsError('EBUSY', `varlink address ${path} is in use: another service is listening there`);
      unlinkSync(path);
    }
    const fd = native().listenUnix(path, 128);
    this.watch(fd, { path, ino: lstatSync(path).ino });
  }

  /** Listen on a unix socket in the abstract namespace (no file: nothing to replace or remove). */
  listenAbstract(name: string): void {
    let fd: number;
    try {
      fd = native().listenUnix(`@${name}`, 128);
    } catch (e) {
      if (errnoCode(e) === 'EADDRINUSE') throw new CfsError('EBUSY', `varlink address unix:@${name} is in use: another service is listening there`);
      throw e;
    }
    this.watch(fd, null);
  }

  /** Accept connections on an already listening fd (socket activation). */
  listenFd(fd: number): void {
    this.watch(fd, null);
  }

  private watch(fd: number, socket: { path: string; ino: number } | null): void {
    native().setNonBlocking(fd);
    const poll = native().pollStart(fd, native().constants.POLL_READABLE, () => this.acceptAll(fd));
    this.listeners.push({ fd, poll, socket });
  }

  /**
   * Serve a client that connected to one of our sockets, if its user may call us (see
   * refusal); otherwise close it, and say so in the log. Null when refused.
   */
  serveClient(fd: number): FdConnection | null {
    const refused = this.refusal(fd);
    if (refused === null) return this.serveFd(fd);
    this.log(refused);
    closeQuietly(fd);
    return null;
  }

  /** Serve one connected socket (whoever is at the other end: for sockets we made ourselves). */
  serveFd(fd: number): FdConnection {
    const conn = new FdConnection(fd);
    const id = this.nextConn++;
    const abort = new AbortController();
    // Oneway calls outlive their client, not the service.
    const onewayStop = new AbortController();
    let chain: Promise<void> = Promise.resolve();
    // Calls wait behind the running one with their fds and bytes: bounded, so a client that
    // pipelines without reading cannot exhaust the service's fds or memory.
    let queuedFds = 0;
    let queuedBytes = 0;
    let hangupWatch: NodeJS.Timeout | null = null;
    this.connections.set(conn, onewayStop);
    conn.listen(
      (m) => {
        queuedFds += m.fds.length;
        queuedBytes += m.data.length;
        if (queuedFds > MAX_QUEUED_FDS || queuedBytes > MAX_QUEUED_BYTES) {
          for (const fd of m.fds) closeQuietly(fd);
          conn.close(new Error(`more than ${MAX_QUEUED_FDS} fds or ${MAX_QUEUED_BYTES} bytes in calls queued behind a running one`));
          return;
        }
        chain = chain.then(() => {
          queuedFds -= m.fds.length;
          queuedBytes -= m.data.length;
          return this.handle(conn, id, { client: abort.signal, oneway: onewayStop.signal }, m);
        });
      },
      (why) => {
        if (hangupWatch) clearInterval(hangupWatch);
        abort.abort();
        if (why) this.log(`client ${id} dropped: ${why.message}`);
        // After the client's queued calls settle (oneway ones still run): none of them sees its
        // handles vanish, and until then the client counts against MAX_CONNECTIONS, so clients
        // leaving oneway work behind cannot pile it up without bound.
        void chain.then(() => {
          this.connections.delete(conn);
          this.resumeAccepting();
          this.onDisconnect(id);
        });
      },
      () => {
        // The client stopped writing: its calls are answered (oneway ones run), then the
        // connection closes; a client gone altogether meanwhile stops them like a disconnect.
        hangupWatch = setInterval(() => {
          if (conn.peerHungUp()) conn.close(null);
        }, HANGUP_CHECK_MS);
        void chain.then(() => conn.close(null));
      },
    );
    return conn;
  }

  close(): void {
    if (this.retryTimer) clearTimeout(this.retryTimer);
    this.retryTimer = null;
    for (const l of this.listeners.splice(0)) {
      native().pollStop(l.poll);
      closeQuietly(l.fd);
      if (l.socket) {
        try {
          if (lstatSync(l.socket.path, { throwIfNoEntry: false })?.ino === l.socket.ino) unlinkSync(l.socket.path);
        } catch {
          // gone, or not ours to remove any more
        }
      }
    }
    for (const [c, onewayStop] of [...this.connections]) {
      onewayStop.abort();
      c.close();
    }
  }

  private acceptAll(fd: number): void {
    for (;;) {
      if (this.connections.size >= MAX_CONNECTIONS) return this.pauseAccepting(`${MAX_CONNECTIONS} clients connected`);
      let c: number | null;
      try {
        c = native().accept(fd);
      } catch (e) {
        const code = errnoCode(e);
        // Out of fds: the listener stays readable, so polling on would spin.
        if (code === 'EMFILE' || code === 'ENFILE') return this.pauseAccepting(`accept: ${code}`, FD_EXHAUSTED_RETRY_MS);
        this.log(`accept: ${(e as Error).message}`);
        return;
      }
      if (c === null) return;
      this.pauseLogged = null;
      this.serveClient(c);
    }
  }

  /**
   * Why a client may not be served, or null. The service acts with its own privileges (it opens
   * repositories, reads image sources, creates repositories where it is told): only its own
   * user and root may call it. An abstract socket (`unix:@NAME`) has no file permissions to keep
   * others out, and a socket file's depend on the umask.
   */
  private refusal(fd: number): string | null {
    const self = process.geteuid?.() ?? 0;
    let peer: { pid: number; uid: number };
    try {
      peer = native().peerCredentials(fd);
    } catch (e) {
      return `client refused: its credentials cannot be read: ${(e as Error).message}`;
    }
    if (peer.uid === self || peer.uid === 0 || this.allowedUids.has(peer.uid)) return null;
    return `client refused: uid ${peer.uid} (pid ${peer.pid}) is not this service's user (uid ${self}) or root`;
  }

  /** Stop polling the listeners until a connection closes (or `retryMs` passes). */
  private pauseAccepting(why: string, retryMs?: number): void {
    if (!this.acceptPaused) {
      this.acceptPaused = true;
      for (const l of this.listeners) native().pollUpdate(l.poll, 0);
    }
    if (this.pauseLogged !== why) {
      this.pauseLogged = why;
      this.log(`not accepting new clients for now: ${why}`);
    }
    // Not unref'd: with no client connected, this timer is what keeps the service alive.
    if (retryMs !== undefined && !this.retryTimer) {
      this.retryTimer = setTimeout(() => {
        this.retryTimer = null;
        this.resumeAccepting();
      }, retryMs);
    }
  }

  private resumeAccepting(): void {
    if (!this.acceptPaused) return;
    this.acceptPaused = false;
    for (const l of this.listeners) native().pollUpdate(l.poll, native().constants.POLL_READABLE);
  }

  private async handle(conn: FdConnection, id: number, signals: { client: AbortSignal; oneway: AbortSignal }, m: Incoming): Promise<void> {
    let fds = m.fds;
    const closeFds = (): void => {
      for (const fd of fds.splice(0)) closeQuietly(fd);
    };
    const call = parseCall(m.data);
    if (!call) {
      closeFds();
      return conn.close(new Error('message is not a varlink call'));
    }
    // A client that is gone cannot be answered, but a oneway call it sent is still made (and
    // is stopped only when the service stops: nobody waits for it).
    if (conn.isClosed && !call.oneway) return closeFds();
    const signal = call.oneway ? signals.oneway : signals.client;
    const send = (body: Record<string, unknown>, replyFds: number[] = []): Promise<void> =>
      call.oneway ? Promise.resolve() : conn.send(body, replyFds).catch(() => undefined);
    try {
      const result = await this.dispatch(call, {
        more: call.more,
        signal,
        connectionId: id,
        fds,
        takeFds: () => {
          const t = fds;
          fds = [];
          return t;
        },
        reply: (parameters, opts = {}) => {
          if (!call.more) return Promise.resolve();
          return send({ parameters, continues: opts.continues ?? true }, opts.fds ?? []);
        },
      });
      if (result instanceof FinalReply) {
        try {
          await send({ parameters: result.parameters }, result.fds);
        } finally {
          result.sent();
        }
      } else await send({ parameters: result });
    } catch (e) {
      const err = e instanceof VarlinkError ? e : this.interfaceOf(call.method)?.internalError(e) ?? new VarlinkError(`${SERVICE_INTERFACE}.InternalError`, { message: String(e) });
      await send({ error: err.errorName, parameters: err.parameters });
    } finally {
      closeFds();
    }
  }

  private interfaceOf(method: string): VarlinkInterface | undefined {
    return this.interfaces.get(method.slice(0, method.lastIndexOf('.')));
  }

  /** org.varlink.service, served like any interface's methods. */
  private readonly serviceMethods: Record<string, Handler> = {
    GetInfo: async () => ({ ...this.info, interfaces: [SERVICE_INTERFACE, ...this.interfaces.keys()] }),
    GetInterfaceDescription: async (p) => {
      const want = p.str('interface');
      if (want === SERVICE_INTERFACE) return { description: SERVICE_DESCRIPTION };
      const iface = this.interfaces.get(want);
      if (!iface) throw new VarlinkError(`${SERVICE_INTERFACE}.InterfaceNotFound`, { interface: want });
      return { description: iface.description };
    },
  };

  private async dispatch(call: Call, ctx: CallContext): Promise<Record<string, unknown> | FinalReply> {
    const dot = call.method.lastIndexOf('.');
    // A method name must be qualified by its interface.
    if (dot <= 0) throw new VarlinkError(`${SERVICE_INTERFACE}.MethodNotFound`, { method: call.method });
    const ifaceName = call.method.slice(0, dot);
    const name = call.method.slice(dot + 1);
    const methods = ifaceName === SERVICE_INTERFACE ? this.serviceMethods : this.interfaces.get(ifaceName)?.methods;
    if (!methods) throw new VarlinkError(`${SERVICE_INTERFACE}.InterfaceNotFound`, { interface: ifaceName });
    const h = Object.prototype.hasOwnProperty.call(methods, name) ? methods[name] : undefined;
    if (!h) throw new VarlinkError(`${SERVICE_INTERFACE}.MethodNotFound`, { method: call.method });
    if (call.badParameters) throw invalidParameter('parameters');
    // No method here hands the connection over to another protocol.
    if (call.upgrade) throw invalidParameter('upgrade');
    return h(new Params(call.parameters), ctx);
  }
}

const SERVICE_DESCRIPTION = `# The Varlink Service Interface is provided by every varlink service.
interface org.varlink.service

method GetInfo() -> (vendor: string, product: string, version: string, url: string, interfaces: []string)
method GetInterfaceDescription(interface: string) -> (description: string)

error InterfaceNotFound (interface: string)
error MethodNotFound (method: string)
error MethodNotImplemented (method: string)
error InvalidParameter (parameter: string)
error PermissionDenied ()
error ExpectedMore ()
`;
