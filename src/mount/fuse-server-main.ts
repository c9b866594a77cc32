/**
 * Entry of the background FUSE server spawned by mountFuseDaemon:
 *   node [execArgv] fuse-server-main.js '<FuseDaemonOptions as JSON>'
 * fd 3 is the readiness pipe: one line, `ready` or `error <message>`, then it is closed.
 */
import { closeSync, writeSync } from 'node:fs';
import { serveFuse, type FuseDaemonOptions } from './fuse-daemon.js';

const READY_FD = 3;

function signalParent(line: string): void {
  try {
    writeSync(READY_FD, `${line}\n`);
    closeSync(READY_FD);
  } catch {
    // The parent is gone; nothing to tell.
  }
}

async function main(): Promise<void> {
  const opts = JSON.parse(process.argv[2] ?? '') as FuseDaemonOptions;
  let ready = false;
  try {
    await serveFuse(opts, () => {
      ready = true;
      signalParent('ready');
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
