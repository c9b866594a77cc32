/**
 * Test helpers to run code as an unprivileged user (root only): a system user without home
 * (`cfstest`), /dev/fuse opened up for the duration, and a child node run via setpriv.
 */
import { execFile } from 'node:child_process';
import { accessSync, chmodSync, constants, statSync } from 'node:fs';
import path from 'node:path';
import { promisify } from 'node:util';

const execFileP = promisify(execFile);

export const UNPRIV_USER = 'cfstest';

export function isRoot(): boolean {
  return process.getuid?.() === 0;
}

export interface UnprivUser {
  name: string;
  uid: number;
  gid: number;
}

/** The test user, created (`useradd -M -s /usr/sbin/nologin`) when missing. */
export async function ensureUnprivUser(name = UNPRIV_USER): Promise<UnprivUser> {
  const ids = async (): Promise<UnprivUser> => {
    const uid = Number((await execFileP('id', ['-u', name])).stdout.trim());
    const gid = Number((await execFileP('id', ['-g', name])).stdout.trim());
    return { name, uid, gid };
  };
  try {
    return await ids();
  } catch {
    // Once more after a moment when /etc/passwd is locked (say, a package update on a fresh
    // VM); status 9 means someone else created the user meanwhile.
    for (let attempt = 1; ; attempt++) {
      try {
        await execFileP('useradd', ['-M', '-s', '/usr/sbin/nologin', name]);
        break;
      } catch (e) {
        if ((e as { code?: number }).code === 9) break;
        if (attempt === 2) throw e;
        await new Promise((r) => setTimeout(r, 2000));
      }
    }
    return ids();
  }
}

/**
 * Run fn with /dev/fuse at `mode` (libfuse 2 opens /dev/fuse itself before it falls back to
 * fusermount, so a 0600 node stops unprivileged mounts), restoring the old mode afterwards.
 */
export async function withDevFuseMode<T>(mode: number, fn: () => Promise<T>): Promise<T> {
  const old = statSync('/dev/fuse').mode & 0o7777;
  chmodSync('/dev/fuse', mode);
  try {
    return await fn();
  } finally {
    chmodSync('/dev/fuse', old);
  }
}

/**
 * Why `user` cannot read the checkout at `dir` (every ancestor must be searchable by others,
 * and dir and node_modules readable), or null when it can. We never copy the checkout.
 */
export function checkoutUnreadableReason(dir: string): string | null {
  const need: Array<[string, number]> = [];
  for (let d = path.resolve(dir); ; d = path.dirname(d)) {
    need.push([d, 0o001]);
    if (d === '/') break;
  }
  need.push([dir, 0o005], [path.join(dir, 'node_modules'), 0o005]);
  for (const [p, bits] of need) {
    const st = statSync(p);
    if ((st.mode & bits) !== bits) return `${p} is not accessible to other users (mode ${(st.mode & 0o7777).toString(8)})`;
  }
  return null;
}

/** Make a directory we created reachable and writable for the test user. */
export function openUpDir(dir: string): void {
  chmodSync(dir, 0o777);
  accessSync(dir, constants.X_OK);
}

export interface RunResult {
  code: number;
  stdout: string;
  stderr: string;
}

/** Run argv as `user` (setpriv, all groups dropped), with a minimal environment. */
export async function runAsUser(user: UnprivUser, argv: string[], opts: { cwd: string; env?: Record<string, string> }): Promise<RunResult> {
  const env = { PATH: '/usr/local/bin:/usr/bin:/bin', HOME: '/', LANG: 'C.UTF-8', ...opts.env };
  const args = [`--reuid=${user.uid}`, `--regid=${user.gid}`, '--clear-groups', '--', ...argv];
  try {
    const r = await execFileP('setpriv', args, { cwd: opts.cwd, env, maxBuffer: 16 << 20 });
    return { code: 0, stdout: r.stdout, stderr: r.stderr };
  } catch (e) {
    const x = e as { code?: number; stdout?: string; stderr?: string };
    return { code: typeof x.code === 'number' ? x.code : 1, stdout: x.stdout ?? '', stderr: x.stderr ?? '' };
  }
}
