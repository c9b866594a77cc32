/** `cfs mount`, `cfs umount`, `cfs mounts`, and the C-compatible `cfs mount.composefs`. */
import type { Command } from 'commander';
import { statSync } from 'node:fs';
import path from 'node:path';
import { CfsError } from '../errors.js';
import { openRepoFromCli } from './repo.js';
import { LOCAL_FETCH_OPTIONS } from './oci.js';

interface MountOpts {
  fuse: string;
  foreground?: boolean;
  upperdir?: string;
  workdir?: string;
  readWrite?: boolean;
  platform?: string;
  quiet?: boolean;
  localFetch?: string;
  zerocopy?: boolean;
  lockTimeout?: string;
}

function checkMountpoint(mp: string): string {
  let st;
  try {
    st = statSync(mp);
  } catch {
    throw new CfsError('ENOENT', `mount point ${mp} does not exist`, { path: mp });
  }
  if (!st.isDirectory()) throw new CfsError('EINVAL', `mount point ${mp} is not a directory`, { path: mp });
  return path.resolve(mp);
}

/** A second cfs mount on the same directory would hide the first and make umount ambiguous. */
async function refuseStacking(mp: string): Promise<void> {
  const { findMount, isComposefsMount } = await import('../mount/mountinfo.js');
  const top = findMount(mp);
  if (top && isComposefsMount(top)) {
    throw new CfsError('EBUSY', `${mp} already has a cfs mount (${top.source}); cfs umount it first`, { path: mp });
  }
}

async function chooseKernel(mode: string): Promise<boolean> {
  if (!['auto', 'yes', 'no'].includes(mode)) throw new CfsError('EINVAL', `--fuse must be auto, yes or no (got '${mode}')`);
  if (mode === 'yes') return false;
  const { hasMountPrivilege } = await import('../mount/caps.js');
  const privileged = hasMountPrivilege();
  if (mode === 'no' && !privileged) {
    throw new CfsError('EPERM', 'kernel mount (--fuse no) needs CAP_SYS_ADMIN in the initial user namespace; run as root or use --fuse auto|yes');
  }
  return privileged;
}

/** The image object's content still has the digest it is named by (userspace fs-verity). */
async function checkImageIntact(file: string, imageId: Buffer): Promise<void> {
  const { fsverityDigestFile } = await import('../fsverity/file.js');
  const alg = imageId.length === 64 ? 'sha512' : 'sha256';
  const actual = await fsverityDigestFile(file, alg);
  if (!actual.equals(imageId)) {
    throw new CfsError('ECORRUPT', `image ${imageId.toString('hex')} is damaged: its content has digest ${actual.toString('hex')} (run 'cfs fsck')`, { path: file });
  }
}

interface ComposefsHelperOpts {
  o?: string[];
}

/** `-o basedir=…,digest=…,verity,ro,upperdir=…,workdir=…` as the C mount.composefs takes them. */
function parseHelperOptions(list: string[]): { basedir?: string; digest?: Buffer; verity: boolean; rw: boolean; upperdir?: string; workdir?: string } {
  const out: { basedir?: string; digest?: Buffer; verity: boolean; rw: boolean; upperdir?: string; workdir?: string } = { verity: false, rw: false };
  for (const opt of list.flatMap((s) => s.split(',')).filter((s) => s !== '')) {
    const eq = opt.indexOf('=');
    const key = eq < 0 ? opt : opt.slice(0, eq);
    const value = eq < 0 ? '' : opt.slice(eq + 1);
    switch (key) {
      case 'basedir':
        out.basedir = value;
        break;
      case 'digest':
        if (!/^([0-9a-f]{64}|[0-9a-f]{128})$/.test(value)) throw new CfsError('EINVAL', `mount.composefs: digest=${value} is not a sha256/sha512 hex digest`);
        out.digest = Buffer.from(value, 'hex');
        break;
      case 'verity':
        out.verity = true;
        break;
      case 'noverity':
        out.verity = false;
        break;
      case 'ro':
        out.rw = false;
        break;
      case 'rw':
        out.rw = true;
        break;
      case 'upperdir':
        out.upperdir = value;
        break;
      case 'workdir':
        out.workdir = value;
        break;
      case 'defaults':
      case 'nodev':
      case 'nosuid':
      case 'noexec':
      case 'relatime':
        break;
      default:
        throw new CfsError('EINVAL', `mount.composefs: unsupported option '${opt}'`);
    }
  }
  return out;
}

export function register(program: Command): void {
  program
    .command('mount')
    .description('mount an image: a transport reference (imported first if needed), an image name, an image id or ref/NAME')
    .argument('<source>')
    .argument('<mountpoint>')
    .option('--fuse <mode>', 'auto (kernel when privileged, else FUSE), yes, or no', 'auto')
    .option('--foreground', 'FUSE: keep the server attached to this process')
    .option('--upperdir <dir>', 'kernel: writable upper layer')
    .option('--workdir <dir>', 'kernel: overlay work directory (with --upperdir)')
    .option('--read-write', 'kernel: mount read-write (needs --upperdir/--workdir)')
    .option('--platform <os/arch[/variant]>', 'platform to import when SOURCE is a multi-platform reference')
    .option('-q, --quiet', 'no progress output while importing')
    .option(...LOCAL_FETCH_OPTIONS[0])
    .option(...LOCAL_FETCH_OPTIONS[1])
    .option(...LOCAL_FETCH_OPTIONS[2])
    .action(async (source: string, mountpoint: string, opts: MountOpts) => {
      const mp = checkMountpoint(mountpoint);
      await refuseStacking(mp);
      const kernel = await chooseKernel(opts.fuse);
      if ((opts.upperdir || opts.workdir || opts.readWrite) && !kernel) throw new CfsError('EINVAL', '--upperdir/--workdir/--read-write need the kernel mount');
      if (!!opts.upperdir !== !!opts.workdir) throw new CfsError('EINVAL', '--upperdir and --workdir go together');
      if (opts.readWrite && !opts.upperdir) throw new CfsError('EINVAL', '--read-write needs --upperdir and --workdir');
      const repo = await openRepoFromCli(program);
      try {
        const { resolveMountSource } = await import('../mount/resolve.js');
        const { image, label } = await resolveMountSource(repo, source, {
          platform: opts.platform,
          // Loaded only for transport references: the import machinery is heavy for a plain mount.
          pull: async (ref) => {
            const { pullReference, objectsLine } = await import('./oci.js');
            const r = await pullReference(repo, ref, undefined, { platform: opts.platform, quiet: opts.quiet, localFetch: opts.localFetch, zerocopy: opts.zerocopy, lockTimeout: opts.lockTimeout });
            if (!opts.quiet) process.stderr.write(objectsLine(r.objects));
            return r.imageId;
          },
          note: (text) => {
            if (!opts.quiet) process.stderr.write(`cfs: note: ${text}\n`);
          },
        });
        const objectsDir = path.join(repo.path, 'objects');
        if (kernel) {
          const { mountComposefs } = await import('../mount/kernel.js');
          try {
            mountComposefs({
              image: image.path,
              objectsDir,
              mountpoint: mp,
              source: `composefs:${label}`,
              verity: image.verityRequired ? 'require' : 'off',
              // The image object is named by its fs-verity digest: a damaged image is refused
              // here instead of failing file by file later (checked on the fd that gets mounted).
              expectedDigest: image.imageId,
              upperdir: opts.upperdir,
              workdir: opts.workdir,
              readWrite: opts.readWrite,
            });
          } catch (e) {
            if (e instanceof CfsError && e.code === 'EDIGEST') {
              throw new CfsError('ECORRUPT', `image ${image.imageId.toString('hex')} is damaged: ${e.message} (run 'cfs fsck')`, { path: image.path });
            }
            throw e;
          }
        } else {
          await checkImageIntact(image.path, image.imageId);
          const { mountFuseDaemon } = await import('../mount/fuse-daemon.js');
          await mountFuseDaemon({
            imagePath: image.path,
            objectsDir,
            mountpoint: mp,
            name: label,
            verify: image.verityRequired ? { alg: repo.alg } : undefined,
            foreground: opts.foreground,
          });
        }
      } finally {
        repo.close();
      }
    });

  program
    .command('umount')
    .alias('unmount')
    .description('unmount a cfs mount (kernel or FUSE)')
    .argument('<mountpoint>')
    .option('-l, --lazy', 'detach now, clean up when no longer busy')
    .action(async (mountpoint: string, opts: { lazy?: boolean }) => {
      const { findMount, isComposefsMount } = await import('../mount/mountinfo.js');
      const mp = path.resolve(mountpoint);
      const m = findMount(mp);
      if (m && !isComposefsMount(m)) {
        throw new CfsError('EINVAL', `${mp} is a ${m.fsType} mount of ${m.source}, not a cfs mount; use umount(8) for it`, { path: mp });
      }
      if (m && m.fsType.startsWith('fuse')) {
        const { unmountFuse } = await import('../mount/fuse-daemon.js');
        await unmountFuse(mp, opts);
      } else if (m) {
        const { unmount } = await import('../mount/kernel.js');
        unmount(mp, opts);
      } else {
        const { readFuseRecord, unmountFuse } = await import('../mount/fuse-daemon.js');
        if (readFuseRecord(mp)) await unmountFuse(mp, opts);
        else throw new CfsError('EINVAL', `${mp} is not a mount point`, { path: mp });
      }
    });

  program
    .command('mounts')
    .description('list active cfs mounts')
    .option('--json', 'JSON output')
    .action(async (opts: { json?: boolean }) => {
      const { listComposefsMounts } = await import('../mount/mountinfo.js');
      const rows = listComposefsMounts().map((m) => ({
        mountpoint: m.mountpoint,
        source: m.source,
        kind: m.fsType.startsWith('fuse') ? 'fuse' : 'kernel',
        fsType: m.fsType,
        options: m.superOptions,
      }));
      if (opts.json) process.stdout.write(`${JSON.stringify({ mounts: rows }, null, 2)}\n`);
      else if (rows.length === 0) process.stdout.write('No cfs mounts\n');
      else for (const r of rows) process.stdout.write(`${r.mountpoint}\t${r.kind}\t${r.source}\n`);
    });

  program
    .command('mount.composefs')
    .description('mount helper compatible with C mount.composefs: IMAGE MOUNTPOINT -o basedir=DIR[,digest=HEX][,verity][,upperdir=…,workdir=…,rw]')
    .argument('<image>', 'composefs EROFS image file')
    .argument('<mountpoint>')
    .option('-o <options>', 'comma-separated mount options', (v: string, prev: string[] = []) => [...prev, v])
    .action(async (image: string, mountpoint: string, opts: ComposefsHelperOpts) => {
      const mp = checkMountpoint(mountpoint);
      const o = parseHelperOptions(opts.o ?? []);
      if (!o.basedir) throw new CfsError('EINVAL', 'mount.composefs: the basedir= option is required');
      const { mountComposefs } = await import('../mount/kernel.js');
      mountComposefs({
        image: path.resolve(image),
        objectsDir: path.resolve(o.basedir),
        mountpoint: mp,
        source: `composefs:${path.basename(image)}`,
        verity: o.verity ? 'require' : 'off',
        expectedDigest: o.digest,
        upperdir: o.upperdir,
        workdir: o.workdir,
        // As C mount.composefs: without an upper layer the mount is read-only whatever `rw`
        // says (mount(8) passes `rw` by default).
        readWrite: o.rw && o.upperdir !== undefined,
      });
    });
}
