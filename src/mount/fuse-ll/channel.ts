/**
 * Getting a mounted /dev/fuse connection without libfuse:
 * - root: open /dev/fuse ourselves and mount(2) `fuse.cfs` with `fd=N` in the options;
 * - anyone else: the setuid `fusermount3`, which mounts and hands the /dev/fuse fd back over
 *   the unix socket named by `_FUSE_COMMFD` (SCM_RIGHTS), then exits.
 * The returned fd is blocking: the serving thread waits in read(2).
 */
import { spawn } from 'node:child_process';
import { closeSync, openSync, constants as fsc } from 'node:fs';
import { CfsError, errnoCode } from '../../errors.js';
import { native } from '../../native.js';

export interface ChannelOptions {
  mountpoint: string;
  /** Mount source shown as `cfs:<name>`. */
  name: string;
  /** allow_other and no nosuid/nodev (root only). */
  privileged: boolean;
}

const S_IFDIR_OCTAL = '40000';

/** fusermount3/libfuse option values: `,` separates options and `\` escapes. */
/** A mount option value with `\\` and `,` escaped. */
export function optValue(s: string): string {
  return s.replace(/[\\,]/g, (c) => `\\${c}`);
}

/** Mount and return the connection's /dev/fuse fd (close-on-exec). */
export async function openChannel(opts: ChannelOptions): Promise<number> {
  return process.getuid?.() === 0 ? mountAsRoot(opts) : mountWithFusermount(opts);
}

function mountAsRoot(opts: ChannelOptions): number {
  const c = native().constants;
  const fd = openSync('/dev/fuse', fsc.O_RDWR);
  const data = [`fd=${fd}`, `rootmode=${S_IFDIR_OCTAL}`, 'user_id=0', 'group_id=0', 'default_permissions'];
  if (opts.privileged) data.push('allow_other');
  // Root: setuid bits and device nodes keep their meaning, as on a kernel composefs mount.
  const flags = c.MS_RDONLY | (opts.privileged ? 0 : c.MS_NOSUID | c.MS_NODEV);
  try {
    native().mount(`cfs:${opts.name}`, opts.mountpoint, 'fuse.cfs', flags, data.join(','));
  } catch (e) {
    closeSync(fd);
    throw new CfsError(errnoCode(e) === 'EPERM' ? 'EPERM' : 'EIO', `${opts.mountpoint}: FUSE mount failed: ${(e as Error).message}`, { path: opts.mountpoint });
  }
  return fd;
}

async function mountWithFusermount(opts: ChannelOptions): Promise<number> {
  const o = ['ro', 'default_permissions', `fsname=${optValue(`cfs:${opts.name}`)}`, 'subtype=cfs'];
  if (opts.privileged) o.push('allow_other', 'suid', 'dev');
  const [ours, theirs] = native().socketpair();
  try {
    const { code, stderr } = await new Promise<{ code: number | null; stderr: string }>((resolve) => {
      const child = spawn('fusermount3', ['-o', o.join(','), '--', opts.mountpoint], {
        stdio: ['ignore', 'ignore', 'pipe', theirs],
        env: { ...process.env, _FUSE_COMMFD: '3' },
      });
      let err = '';
      child.stderr!.setEncoding('utf8').on('data', (s: string) => (err += s));
      child.on('error', (e) => resolve({ code: null, stderr: e.message }));
      child.on('close', (exit) => resolve({ code: exit, stderr: err }));
    });
    const got = code === 0 ? native().recvFds(ours, 16, 1) : null;
    const fd = got?.fds[0];
    if (fd === undefined) {
      // fusermount3 names itself in its messages.
      const why = stderr.trim().split('\n')[0]?.replace(/^fusermount3: /, '') || (code === 0 ? 'no /dev/fuse fd received' : `exit code ${code}`);
      throw new CfsError('EIO', `${opts.mountpoint}: FUSE mount failed: fusermount3: ${why}`, { path: opts.mountpoint });
    }
    for (const extra of got!.fds.slice(1)) closeSync(extra);
    return fd;
  } finally {
    closeSync(ours);
    closeSync(theirs);
  }
}
