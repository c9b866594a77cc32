/**
 * Runs the real `cfs` CLI in a child process: the compiled one when the tests run from dist/,
 * else the TypeScript sources through tsx.
 */
import { spawnSync, type SpawnSyncOptions } from 'node:child_process';
import { existsSync, readFileSync } from 'node:fs';
import path from 'node:path';
import { fileURLToPath } from 'node:url';

function findRoot(): string {
  let dir = path.dirname(fileURLToPath(import.meta.url));
  for (;;) {
    const pkg = path.join(dir, 'package.json');
    if (existsSync(pkg) && (JSON.parse(readFileSync(pkg, 'utf8')) as { name?: string }).name === 'cfs') return dir;
    const up = path.dirname(dir);
    if (up === dir) throw new Error('cfs project root not found');
    dir = up;
  }
}

export const PROJECT_ROOT = findRoot();
const compiled = fileURLToPath(import.meta.url).includes(`${path.sep}dist${path.sep}`);

/** argv prefix that runs the CLI (node + script). */
export function cfsCommand(): string[] {
  return compiled
    ? [process.execPath, path.join(PROJECT_ROOT, 'dist/src/cli/entry.js')]
    : [process.execPath, '--import', 'tsx', path.join(PROJECT_ROOT, 'src/cli/entry.ts')];
}

export interface CfsResult {
  status: number;
  stdout: string;
  stderr: string;
  stdoutBuf: Buffer;
}

export function runCfs(args: string[], opts: SpawnSyncOptions = {}): CfsResult {
  const [cmd, ...pre] = cfsCommand();
  const r = spawnSync(cmd, [...pre, ...args], { cwd: PROJECT_ROOT, maxBuffer: 512 * 1024 * 1024, ...opts });
  const stdoutBuf = Buffer.isBuffer(r.stdout) ? r.stdout : Buffer.from(r.stdout ?? '');
  return { status: r.status ?? -1, stdout: stdoutBuf.toString('utf8'), stdoutBuf, stderr: String(r.stderr ?? '') };
}

/** Runs cfs and fails with its stderr when the exit status is not 0. */
export function cfsOk(args: string[], opts: SpawnSyncOptions = {}): CfsResult {
  const r = runCfs(args, opts);
  if (r.status !== 0) throw new Error(`cfs ${args.join(' ')} exited ${r.status}: ${r.stderr}`);
  return r;
}
