/**
 * cfs command line. Each command group lives in its own module exporting `register(program)`;
 * heavy modules are imported lazily inside actions so `cfs` starts fast (mount latency matters).
 */
import { Command } from 'commander';
import { readFileSync } from 'node:fs';
import { CfsError, oneLine, systemErrorText } from '../errors.js';
import { register as registerFsverity } from './fsverity.js';
import { register as registerMkcomposefs } from './mkcomposefs.js';
import { register as registerInfo } from './info.js';
import { register as registerRepo } from './repo.js';
import { register as registerOci } from './oci.js';
import { register as registerCopy } from './copy.js';
import { register as registerVarlink } from './varlink.js';
import { register as registerMount } from './mount.js';
import { register as registerBoot } from './boot.js';
import { register as registerIntegrity } from './integrity.js';

/** package.json is two levels up from src/cli (tsx) and three from dist/src/cli (compiled). */
function packageVersion(): string {
  for (const rel of ['../../../package.json', '../../package.json']) {
    try {
      const pkg = JSON.parse(readFileSync(new URL(rel, import.meta.url), 'utf8')) as { name?: string; version: string };
      if (pkg.name === 'cfs') return pkg.version;
    } catch {
      // try the next layout
    }
  }
  return 'unknown';
}

export function buildProgram(): Command {
  const program = new Command();
  program
    .name('cfs')
    .description('composefs tooling: import OCI images into a composefs repository and mount them')
    .version(packageVersion())
    .option('--repo <path>', 'repository path (default: $CFS_REPO, else the system repo for root of the initial user namespace, the user repo otherwise)')
    .option('--user', 'use the user repository ($HOME/.var/lib/composefs)')
    .option('--system', 'use the system repository (/sysroot/composefs)')
    .option('--insecure', 'do not require fs-verity on repository objects')
    .showHelpAfterError(false)
    // Usage errors read like every other error: one `cfs: …` line.
    .configureOutput({ outputError: (text, write) => write(text.replace(/^error: /, 'cfs: ')) });
  registerFsverity(program);
  registerMkcomposefs(program);
  registerInfo(program);
  registerRepo(program);
  registerOci(program);
  registerCopy(program);
  registerVarlink(program);
  registerMount(program);
  registerBoot(program);
  registerIntegrity(program);
  return program;
}

/** The first error writing standard output (EPIPE, ENOSPC, …): said once, as one line. */
let stdoutError: NodeJS.ErrnoException | null = null;

function watchOutput(): void {
  process.stdout.on('error', (e: NodeJS.ErrnoException) => {
    if (stdoutError) return;
    stdoutError = e;
    // A reader that went away (`cfs … | head`) is not an error, as for `cfs cat`.
    if (e.code === 'EPIPE') return;
    process.stderr.write(`cfs: cannot write to standard output: ${e.message}\n`);
    process.exitCode = 1;
  });
  // Nowhere to say it: only the exit status tells.
  process.stderr.on('error', () => {
    process.exitCode ||= 1;
  });
}

export function reportError(e: unknown): number {
  if (e !== null && e === stdoutError) return stdoutError.code === 'EPIPE' ? 0 : 1;
  if (e instanceof CfsError) {
    process.stderr.write(`cfs: ${oneLine(e.message)}\n`);
    return 1;
  }
  const err = e as NodeJS.ErrnoException;
  if (err && typeof err === 'object' && typeof err.code === 'string' && typeof err.message === 'string') {
    // Node's "ENOENT: no such file or directory, open 'x'" said as "x: no such file or directory".
    // Of two paths (rename, link), the destination: the source is often a temporary name.
    const where = (err as { dest?: unknown }).dest ?? err.path;
    process.stderr.write(`cfs: ${oneLine(typeof where === 'string' ? `${where}: ${systemErrorText(err)}` : err.message)}\n`);
    return 1;
  }
  process.stderr.write(`cfs: internal error: ${err instanceof Error ? (err.stack ?? err.message) : String(err)}\n`);
  return 70;
}

export async function main(argv: string[]): Promise<void> {
  watchOutput();
  try {
    await buildProgram().parseAsync(argv);
  } catch (e) {
    // Progress bars (a TTY only) keep a redraw timer: stop them, or the process would not end.
    if (process.stderr.isTTY) (await import('./progress.js')).restoreTerminal();
    process.exitCode = reportError(e);
  }
}
