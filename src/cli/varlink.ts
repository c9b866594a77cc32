/** `cfs varlink [--address unix:PATH]` (also `cfs oci varlink`): the composefs varlink service. */
import type { Command } from 'commander';
import { CfsError } from '../errors.js';

/** Socket-activation fds (LISTEN_FDS / LISTEN_PID), starting at 3. */
function activationFds(): number[] {
  const pid = process.env.LISTEN_PID;
  const n = Number(process.env.LISTEN_FDS ?? '0');
  if (!pid || Number(pid) !== process.pid || !Number.isInteger(n) || n <= 0) return [];
  delete process.env.LISTEN_PID;
  delete process.env.LISTEN_FDS;
  delete process.env.LISTEN_FDNAMES;
  return Array.from({ length: n }, (_, i) => 3 + i);
}

/** `unix:PATH[;parameters]` or `unix:@NAME` (abstract namespace): the transports served (no TCP). */
function parseAddress(a: string): string {
  const p = a.startsWith('unix:') ? a.slice('unix:'.length).split(';')[0]! : '';
  if (p === '' || p === '@') throw new CfsError('EINVAL', `unsupported varlink address '${a}' (expected unix:/path/to/socket or unix:@name)`);
  return p;
}

async function serve(program: Command, address: string | undefined, idleTimeout: string, allowUids: string[]): Promise<void> {
  const idle = Number(idleTimeout);
  if (!Number.isFinite(idle) || idle <= 0) throw new CfsError('EINVAL', `--idle-timeout must be a positive number of seconds, not '${idleTimeout}'`);
  const uids = allowUids.map((u) => {
    if (!/^\d+$/.test(u)) throw new CfsError('EINVAL', `--allow-uid ${u}: not a numeric uid`);
    return Number(u);
  });
  const { ComposefsService } = await import('../varlink/service.js');
  const { native } = await import('../native.js');
  const g = program.opts<{ insecure?: boolean }>();
  const service = new ComposefsService({ insecure: !!g.insecure, version: program.version(), streamIdleMs: idle * 1000 });
  for (const u of uids) service.server.allowedUids.add(u);
  // Before the socket exists: a service stopped right after creating it still removes it.
  const stop = (): void => {
    service.close();
    process.exit(0);
  };
  process.on('SIGTERM', stop);
  process.on('SIGINT', stop);
  const fds = activationFds();
  if (fds.length > 0) {
    for (const fd of fds) {
      // A listening socket accepts (null = nothing pending); a connected one fails with EINVAL.
      let listening = true;
      try {
        native().setNonBlocking(fd);
        const c = native().accept(fd);
        if (c !== null) service.server.serveClient(c);
      } catch {
        listening = false;
      }
      if (listening) service.server.listenFd(fd);
      else service.server.serveClient(fd);
    }
  } else {
    if (address === undefined) throw new CfsError('EINVAL', 'no --address given and not socket-activated');
    const where = parseAddress(address);
    if (where.startsWith('@')) service.server.listenAbstract(where.slice(1));
    else service.server.listenPath(where);
  }
  // One client's failure must not take the others down: log anything that escaped a handler.
  process.on('uncaughtException', (e) => service.server.log(`internal error (still serving): ${e instanceof Error ? (e.stack ?? e.message) : String(e)}`));
  process.stderr.write(`cfs varlink: serving${address ? ` on ${address}` : ' socket-activated fds'}\n`);
}

export function register(program: Command): void {
  const add = (parent: Command): void => {
    parent
      .command('varlink')
      .description('serve org.composefs.Repository and org.composefs.Oci over varlink')
      .option('--address <unix:PATH>', 'listen on this unix socket, or unix:@NAME in the abstract namespace (not needed under socket activation)')
      .option('--idle-timeout <SECONDS>', 'a PutLayer whose client sends nothing for this long fails (it holds the repository lock)', '300')
      .option('--allow-uid <UID>', "also serve this user's clients (repeatable; by default only the service's own user and root: calls act with the service's privileges)", (v: string, acc: string[]) => [...acc, v], [] as string[])
      .action(async (opts: { address?: string; idleTimeout: string; allowUid: string[] }) => serve(program, opts.address, opts.idleTimeout, opts.allowUid));
  };
  add(program);
  const oci = program.commands.find((c) => c.name() === 'oci');
  if (oci) add(oci);
  // Run by rootless containers-storage pulls inside `podman unshare` (oci/containers-storage/userns-helper.ts).
  program
    .command('internal-cstor-helper', { hidden: true })
    .description('serve the containers-storage layer service on standard input (a socket)')
    .action(async () => {
      const { CstorLayerService } = await import('../varlink/cstor-service.js');
      const service = new CstorLayerService(program.version());
      // One client, the pull that started us: when it is gone, so are we.
      service.server.onDisconnect = () => process.exit(0);
      service.server.serveFd(0);
    });
}
