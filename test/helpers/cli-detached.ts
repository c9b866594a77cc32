/**
 * Runs the real `cfs` CLI and returns when the CLI process exits, not when its output pipes
 * close: `cfs mount` may leave a background FUSE server behind that still holds inherited
 * descriptors. Output goes through temporary files for that reason.
 */
import { spawn } from 'node:child_process';
import { closeSync, mkdtempSync, openSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { cfsCommand, PROJECT_ROOT } from './cli.js';
import type { UnprivUser } from './unpriv.js';

export interface RunOutput {
  status: number;
  stdout: string;
  stderr: string;
}

export interface RunOptions {
  /** Run as this user (setpriv, groups dropped) with a minimal environment. */
  user?: UnprivUser;
  env?: Record<string, string>;
  cwd?: string;
}

/** Start argv; resolves with its exit status and output once the process itself has exited. */
export async function runDetached(argv: string[], opts: RunOptions = {}): Promise<RunOutput> {
  const dir = mkdtempSync(path.join(tmpdir(), 'cfs-run-'));
  const outFile = path.join(dir, 'out');
  const errFile = path.join(dir, 'err');
  const out = openSync(outFile, 'w', 0o666);
  const err = openSync(errFile, 'w', 0o666);
  try {
    let cmd = argv;
    let env: NodeJS.ProcessEnv = { ...process.env, ...opts.env };
    if (opts.user) {
      cmd = ['setpriv', `--reuid=${opts.user.uid}`, `--regid=${opts.user.gid}`, '--clear-groups', '--', ...argv];
      env = { PATH: '/usr/local/bin:/usr/bin:/bin', HOME: '/', LANG: 'C.UTF-8', ...opts.env };
    }
    const child = spawn(cmd[0]!, cmd.slice(1), { cwd: opts.cwd ?? PROJECT_ROOT, env, stdio: ['ignore', out, err] });
    const status = await new Promise<number>((resolve) => {
      child.on('error', () => resolve(-1));
      child.on('exit', (code, signal) => resolve(code ?? (signal ? 128 : -1)));
    });
    return { status, stdout: readFileSync(outFile, 'utf8'), stderr: readFileSync(errFile, 'utf8') };
  } finally {
    closeSync(out);
    closeSync(err);
    rmSync(dir, { recursive: true, force: true });
  }
}

/** `cfs ARGS` (see runDetached). */
export function cfs(args: string[], opts: RunOptions = {}): Promise<RunOutput> {
  return runDetached([...cfsCommand(), ...args], opts);
}

/** `cfs ARGS`, failing with its stderr on a non-zero exit. */
export async function cfsOkAsync(args: string[], opts: RunOptions = {}): Promise<RunOutput> {
  const r = await cfs(args, opts);
  if (r.status !== 0) throw new Error(`cfs ${args.join(' ')} exited ${r.status}: ${r.stderr}`);
  return r;
}

/** Whether a (detached) process has exited: gone, or a zombie its new parent has not reaped yet. */
export function processGone(pid: number): boolean {
  try {
    process.kill(pid, 0);
  } catch (e) {
    return (e as NodeJS.ErrnoException).code === 'ESRCH';
  }
  try {
    const stat = readFileSync(`/proc/${pid}/stat`, 'latin1');
    return stat[stat.lastIndexOf(')') + 2] === 'Z';
  } catch {
    return true;
  }
}
