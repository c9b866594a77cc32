/**
 * Boot tooling: `cfs create-image`, `cfs compute-karg`, `cfs oci prepare-boot`, `cfs setup-root`.
 * (`compute-id` / `create-dumpfile` of a directory live in mkcomposefs.ts; the directory image
 * library they can share is src/boot/image.ts.)
 */
import type { Command } from 'commander';
import { CfsError } from '../errors.js';
import { KEEP_USER_XATTRS_HELP, keepUserXattrs, NO_PROPAGATE_HELP, XATTRS_HELP } from './tree-options.js';
import { hashForRepository, openRepoFromCli, type GlobalOptions } from './repo.js';

interface TreeOpts {
  bootable?: boolean;
  propagateUsrToRoot: boolean;
  xattrs?: string;
  keepUserXattrs?: boolean;
}



function parseErofsVersion(v: string | undefined): number | undefined {
  if (v === undefined) return undefined;
  // Format 2 images are not written by cfs (image-build.ts).
  if (v !== '0' && v !== '1') throw new CfsError('EINVAL', `invalid EROFS format version '${v}' (0 or 1)`);
  return Number(v);
}

function registerPrepareBoot(program: Command): void {
  const oci = program.commands.find((c) => c.name() === 'oci') ?? program.command('oci').description('OCI images in the repository');
  oci
    .command('prepare-boot')
    .description('make a stored image bootable: boot image, BLS entries per kernel, deployment state for setup-root')
    .argument('<image>', 'tag, @sha256:… manifest digest, or a short id as `cfs oci images` shows it')
    .option('--bootdir <dir>', 'boot partition mount point', '/boot')
    .option('--entry-id <id>', 'boot entry id (default: the kernel version)')
    .option('--cmdline <arg>', 'extra kernel argument (repeatable)', (v: string, prev: string[]) => [...prev, v], [] as string[])
    .action(async (image: string, o: { bootdir: string; entryId?: string; cmdline: string[] }) => {
      const { prepareBoot } = await import('../boot/oci-boot.js');
      const repo = await openRepoFromCli(program, { create: false });
      try {
        const r = await prepareBoot(repo, image, { bootdir: o.bootdir, entryId: o.entryId, cmdline: o.cmdline });
        process.stdout.write(`${repo.alg}:${r.imageId}\n`);
        for (const e of r.entries) process.stdout.write(`wrote ${e}\n`);
        for (const e of r.replaced) {
          const was = e.previousKarg === '' ? 'was not a composefs entry' : `booted another image (${e.previousKarg})`;
          process.stderr.write(`cfs: note: ${e.entry} ${was}; it boots this one now (give --entry-id to keep both)\n`);
        }
        process.stdout.write(`state ${r.stateDir}\n`);
      } finally {
        repo.close();
      }
    });
}

export function register(program: Command): void {
  program
    .command('create-image')
    .description('store a directory tree as a composefs image in the repository and print its id')
    .argument('<path>', 'root directory of the tree')
    .argument('[name]', 'image ref name (images/refs/NAME)')
    .option('--bootable', 'apply the boot transform (empty /boot and /sysroot, SELinux labels)')
    .option('--no-propagate-usr-to-root', NO_PROPAGATE_HELP)
    .option('--xattrs <mode>', XATTRS_HELP)
    .option('--keep-user-xattrs', KEEP_USER_XATTRS_HELP)
    .action(async (dir: string, name: string | undefined, o: TreeOpts) => {
      const { createDirImage } = await import('../boot/image.js');
      const repo = await openRepoFromCli(program);
      try {
        const hex = await createDirImage(repo, dir, {
          name,
          bootable: o.bootable,
          propagateUsrToRoot: o.propagateUsrToRoot,
          keepUserXattrs: keepUserXattrs(o),
        });
        process.stdout.write(`${repo.alg}:${hex}\n`);
      } finally {
        repo.close();
      }
    });

  program
    .command('compute-karg')
    .description('print the composefs kernel argument for the bootable image of a directory (nothing is stored)')
    .argument('<path>', 'root directory of the tree')
    .option('--no-propagate-usr-to-root', NO_PROPAGATE_HELP)
    .option('--xattrs <mode>', XATTRS_HELP)
    .option('--keep-user-xattrs', KEEP_USER_XATTRS_HELP)
    .option('--hash <alg>', 'sha256 or sha512 (default: the repository\'s, else sha256, as `cfs init` makes them)')
    .option('--erofs-version <n>', 'EROFS format version 0 or 1 (default 1)')
    .option('--insecure', "mark the digest optional ('?'): fs-verity is not enforced at boot")
    .action(async (dir: string, o: { propagateUsrToRoot: boolean; xattrs?: string; keepUserXattrs?: boolean; hash?: string; erofsVersion?: string; insecure?: boolean }) => {
      const { computeDirKarg } = await import('../boot/image.js');
      const alg = await hashForRepository(program, o.hash, 'sha256');
      const karg = await computeDirKarg(dir, {
        alg,
        propagateUsrToRoot: o.propagateUsrToRoot,
        keepUserXattrs: keepUserXattrs(o),
        erofsVersion: parseErofsVersion(o.erofsVersion),
        insecure: !!(o.insecure || program.opts<GlobalOptions>().insecure),
      });
      process.stdout.write(`${karg}\n`);
    });

  program
    .command('setup-root')
    .description('initramfs: mount the composefs image named on the kernel command line as the new root')
    .option('--cmdline <file|string>', 'kernel command line file or text (default /proc/cmdline)')
    .option('--sysroot <dir>', 'sysroot holding composefs/ and state/', '/sysroot')
    .option('--target <dir>', 'where to mount the new root (default: over the sysroot)')
    .action(async (o: { cmdline?: string; sysroot: string; target?: string }) => {
      const { readCmdlineArg, setupRoot } = await import('../boot/setup-root.js');
      await setupRoot({
        cmdline: readCmdlineArg(o.cmdline),
        sysroot: o.sysroot,
        target: o.target,
        log: (line) => process.stderr.write(`${line}\n`),
      });
    });

  registerPrepareBoot(program);
}
