/** `cfs mount`, `cfs umount`, `cfs mounts`, and the C-compatible `cfs mount.composefs`. */
import type { Command } from 'commander';
import path from 'node:path';
import { CfsError } from '../errors.js';
import type { FuseMode } from '../mount/mount-image.js';
import type { MountAttributes } from '../mount/kernel.js';
import { openRepoFromCli, probeBeforeCreating } from './repo.js';
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

interface ComposefsHelperOpts {
  o?: string[];
  t?: string;
  sloppy?: boolean;
  fake?: boolean;
}

/** `-o basedir=…,digest=…,verity,ro,upperdir=…,workdir=…` as the C mount.composefs takes them. */
const MOUNT_FLAGS = ['nosuid', 'nodev', 'noexec', 'nodiratime'] as const;

interface HelperOptions {
  basedir?: string;
  digest?: Buffer;
  verity: boolean;
  rw?: boolean;
  upperdir?: string;
  workdir?: string;
  attributes: MountAttributes;
}

function parseHelperOptions(list: string[], sloppy: boolean): HelperOptions {
  const out: HelperOptions = { verity: false, attributes: {} };
  const a = out.attributes;
  for (const opt of list.flatMap((s) => s.split(',')).filter((s) => s !== '')) {
    const eq = opt.indexOf('=');
    const key = eq < 0 ? opt : opt.slice(0, eq);
    const value = eq < 0 ? '' : opt.slice(eq + 1);
    // The generic mount flags, which mount(8) passes helpers as options (`nosuid`, and `suid` to
    // undo it, …): set on the mount.
    const flag = MOUNT_FLAGS.find((f) => key === f || `no${key}` === f);
    if (flag) {
      a[flag] = key === flag;
      continue;
    }
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
      case 'relatime':
      case 'noatime':
      case 'strictatime':
        a.atime = key;
        break;
      case 'defaults':
      case 'auto':
      case 'noauto':
      case 'nouser':
      case 'nofail':
        break;
      default:
        // mount -s: options this helper does not know are ignored.
        if (!sloppy) throw new CfsError('EINVAL', `mount.composefs: unsupported option '${opt}'`);
    }
  }
  return out;
}

/**
 * The name a mount shows for an image file: its file name, or, for an object path
 * (`objects/XX/REST`, which is what mount(8) passes for a repository's `images/ID` link), the id.
 */
function imageName(image: string): string {
  const base = path.basename(image);
  const fanout = path.basename(path.dirname(image));
  return /^[0-9a-f]{2}$/.test(fanout) && /^([0-9a-f]{62}|[0-9a-f]{126})$/.test(base) ? fanout + base : base;
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
      const { checkMountRequest, mountImage } = await import('../mount/mount-image.js');
      const { objectsLine, pullOptionsFromCli, retagNote } = await import('./oci.js');
      const request = { fuse: opts.fuse as FuseMode, foreground: opts.foreground, upperdir: opts.upperdir, workdir: opts.workdir, readWrite: opts.readWrite };
      // Before the repository is opened (and maybe created).
      checkMountRequest(mountpoint, request);
      const pull = await pullOptionsFromCli(opts);
      await probeBeforeCreating(program, source, pull);
      // Only a pull creates a repository: an image name or id needs one that exists.
      const { isTransportReference } = await import('../oci/sources.js');
      const repo = await openRepoFromCli(program, { create: isTransportReference(source) });
      try {
        await mountImage(repo, source, mountpoint, {
          ...request,
          pull,
          onPulled: (r) => {
            if (!opts.quiet) process.stderr.write(objectsLine(r.objects));
            retagNote(r);
          },
          // Not progress: what was mounted differs from what was asked, so -q does not hide it.
          onNotice: (text) => void process.stderr.write(`cfs: note: ${text}\n`),
          // A foreground server lasts until the unmount and needs no repository handle: its
          // shared lock would hold off gc all that time.
          onMounted: () => opts.foreground && repo.close(),
        });
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
      const { unmountImage } = await import('../mount/mount-image.js');
      await unmountImage(mountpoint, opts);
    });

  program
    .command('mounts')
    .description('list active cfs mounts')
    .option('--json', 'JSON output')
    .action(async (opts: { json?: boolean }) => {
      const { listMounts } = await import('../mount/mount-image.js');
      const rows = await listMounts();
      if (opts.json) process.stdout.write(`${JSON.stringify({ mounts: rows }, null, 2)}\n`);
      else if (rows.length === 0) process.stderr.write('No cfs mounts\n');
      else {
        // One row per mount, tab-separated: tabs, newlines and backslashes in paths and names are
        // octal escapes, as in /proc/self/mountinfo (--json has them as they are).
        const field = (v: string): string => v.replace(/[\t\n\\]/g, (c) => `\\${c.charCodeAt(0).toString(8).padStart(3, '0')}`);
        for (const r of rows) {
          const dead = r.state === 'dead' ? "\tdead: its FUSE server is gone ('cfs umount' removes it)" : '';
          process.stdout.write(`${field(r.mountpoint)}\t${r.kind}\t${field(r.source)}${dead}\n`);
        }
      }
    });

  program
    .command('mount.composefs')
    .description('mount helper compatible with C mount.composefs: IMAGE MOUNTPOINT -o basedir=DIR[,digest=HEX][,verity][,upperdir=…,workdir=…,rw]')
    .argument('<image>', 'composefs EROFS image file')
    .argument('<mountpoint>')
    .option('-o <options>', 'comma-separated mount options', (v: string, prev: string[] = []) => [...prev, v])
    // What mount(8) passes a helper: -t type, -s (sloppy), -f (fake), -n (no mtab), -v (verbose).
    .option('-t <type>', 'filesystem type (composefs)')
    .option('-s, --sloppy', 'ignore mount options this helper does not know')
    .option('-f, --fake', 'check the options, the mount point, the image and basedirs, but do not mount')
    .option('-n', 'do not write /etc/mtab (there is none to write)')
    .option('-v', 'verbose (accepted for mount(8))')
    .action(async (image: string, mountpoint: string, opts: ComposefsHelperOpts) => {
      if (opts.t !== undefined && opts.t !== 'composefs') throw new CfsError('EINVAL', `mount.composefs: -t ${opts.t}: this helper mounts composefs only`);
      const { checkMountpoint } = await import('../mount/mount-image.js');
      const mp = checkMountpoint(mountpoint);
      const o = parseHelperOptions(opts.o ?? [], !!opts.sloppy);
      if (!o.basedir) throw new CfsError('EINVAL', 'mount.composefs: the basedir= option is required');
      // basedir=A:B: objects are looked up in A, then in B.
      const [first, ...more] = o.basedir.split(':').filter((d) => d !== '').map((d) => path.resolve(d));
      if (!first) throw new CfsError('EINVAL', 'mount.composefs: basedir= names no directory');
      if (opts.fake) {
        // What a mount would open first: the image file and the object directories.
        const { statSync } = await import('node:fs');
        const kind = (p: string): string => {
          const st = statSync(p, { throwIfNoEntry: false });
          return st?.isFile() ? 'file' : st?.isDirectory() ? 'directory' : st ? 'other' : 'missing';
        };
        if (kind(image) !== 'file') throw new CfsError('ENOENT', `mount.composefs: image ${image} is not a file (${kind(image)})`);
        for (const d of [first, ...more]) if (kind(d) !== 'directory') throw new CfsError('ENOENT', `mount.composefs: basedir ${d} is not a directory (${kind(d)})`);
        return;
      }
      const { mountComposefs } = await import('../mount/kernel.js');
      mountComposefs({
        image: path.resolve(image),
        objectsDir: first,
        moreObjectsDirs: more,
        mountpoint: mp,
        source: `composefs:${imageName(image)}`,
        verity: o.verity ? 'require' : 'off',
        expectedDigest: o.digest,
        upperdir: o.upperdir,
        workdir: o.workdir,
        attributes: o.attributes,
        // As C mount.composefs: with an upper layer read-write unless `ro`; without one read-only
        // whatever `rw` says (mount(8) passes `rw` by default).
        readWrite: o.upperdir !== undefined && o.rw !== false,
      });
    });
}
