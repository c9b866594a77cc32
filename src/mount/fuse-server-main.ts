/**
 * Entry of the background FUSE server spawned by mountFuseDaemon:
 *   node [execArgv] fuse-server-main.js '<FuseDaemonOptions as JSON>'
 * fd 3 is the readiness pipe: one line, `ready` or `error <message>`, then it is closed.
 */
import { closeSync, writeSync } from 'node:fs';
import { serveFuse, type FuseDaemonOptions } from './fuse-daemon.js';

const READY_FD = 3;

/** Whether the parent (`cfs mount`, waiting for this line) got it. */
function signalParent(line: string): boolean {
  try {
    writeSync(READY_FD, `${line}\n`);
    closeSync(READY_FD);
    return true;
  } catch {
    // The parent is gone (interrupted): nothing to tell.
    return false;
  }
}

async function main(): Promise<void> {
  const opts = JSON.parse(process.argv[2] ?? '') as FuseDaemonOptions;
  let ready = false;
  try {
    // A `cfs mount` interrupted before the mount was ready has failed for its user: the mount
    // is undone (serveFuse), not left behind.
    await serveFuse(opts, () => {
      ready = true;
      return signalParent('ready');
    });
  } catch (e) {
    const msg = ((e as Error).message || String(e)).split('\n')[0];
    if (ready) process.stderr.write(`cfs fuse: ${msg}\n`);
    else signalParent(`error ${msg}`);
    process.exitCode = 1;
  }
  // libfuse's thread may linger after the kernel closed the channel; we are done serving.
  process.exit();
}

void main();
