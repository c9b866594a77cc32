/**
 * `cfs mkcomposefs`, `cfs compute-id`, `cfs create-dumpfile`: build composefs images from a
 * dumpfile or a directory, like C mkcomposefs.
 */
import type { Command } from 'commander';
import { CfsError, errnoCode, systemErrorText } from '../errors.js';
import { KEEP_USER_XATTRS_HELP, keepUserXattrs, NO_PROPAGATE_HELP, XATTRS_HELP } from './tree-options.js';
import type { Inode } from '../tree/inode.js';

interface MkOpts {
  fromFile?: boolean;
  digestStore?: string;
  minVersion?: string;
  maxVersion?: string;
  printDigest?: boolean;
  printDigestOnly?: boolean;
  useEpoch?: boolean;
  skipXattrs?: boolean;
  userXattrs?: boolean;
  skipDevices?: boolean;
  threads?: string;
}

function parseVersion(v: string | undefined, what: string): number | undefined {
  if (v === undefined) return undefined;
  if (!/^\d+$/.test(v)) throw new CfsError('EINVAL', `invalid ${what} '${v}'`);
  return Number(v);
}

async function readAll(source: string): Promise<Buffer> {
  if (source !== '-') {
    const { readFile } = await import('node:fs/promises');
    return readFile(source);
  }
  const chunks: Buffer[] = [];
  for await (const c of process.stdin) chunks.push(c as Buffer);
  return Buffer.concat(chunks);
}

async function scan(dir: string, o: MkOpts): Promise<Inode> {
  const { scanDirectory } = await import('../tree/scan.js');
  return scanDirectory(dir, { useEpoch: o.useEpoch, skipXattrs: o.skipXattrs, userXattrs: o.userXattrs, skipDevices: o.skipDevices, digestStore: o.digestStore });
}

/** Write `data` to `dest` atomically: a temp file in the same directory, renamed into place. */
async function writeAtomic(dest: string, data: Buffer): Promise<void> {
  const { writeFile, rename, rm } = await import('node:fs/promises');
  const path = await import('node:path');
  const { randomBytes } = await import('node:crypto');
  const tmp = path.join(path.dirname(dest), `.${path.basename(dest)}.tmp-${randomBytes(6).toString('hex')}`);
  try {
    await writeFile(tmp, data, { mode: 0o644 });
    await rename(tmp, dest);
  } catch (e) {
    await rm(tmp, { force: true });
    // Name the output asked for, not the temporary file beside it.
    const code = errnoCode(e);
    if (code === 'ENOENT') throw new CfsError('ENOENT', `${dest}: cannot write the image: directory ${path.dirname(dest)} does not exist`, { path: dest });
    throw new CfsError(code === 'EACCES' || code === 'EPERM' ? 'EPERM' : 'EIO', `${dest}: cannot write the image: ${systemErrorText(e)}`, { path: dest });
  }
}

function writeStdout(data: Buffer | string): Promise<void> {
  return new Promise((resolve, reject) => process.stdout.write(data, (e) => (e ? reject(e) : resolve())));
}

export function register(program: Command): void {
  program
    .command('mkcomposefs')
    .description('build a composefs image from a directory or (--from-file) a dumpfile')
    .argument('<source>', "source directory, or dumpfile with --from-file ('-' = stdin)")
    .argument('[image]', "output image ('-' = stdout); not with --print-digest-only")
    .option('--from-file', 'SOURCE is a dumpfile (strict parsing when CFS_PARSE_STRICT is set)')
    .option('--digest-store <dir>', 'copy non-inlined files into DIR/xx/yyyy… (directory source)')
    .option('--min-version <n>', 'lowest composefs format version (default 0)')
    .option('--max-version <n>', 'highest composefs format version (default 1; used only for whiteouts)')
    .option('--print-digest', 'print the fs-verity digest of the image')
    .option('--print-digest-only', 'print the fs-verity digest of the image without writing it')
    .option('--use-epoch', 'set all mtimes to 0 (directory source)')
    .option('--skip-xattrs', 'ignore xattrs (directory source)')
    .option('--user-xattrs', 'only user.* xattrs (directory source)')
    .option('--skip-devices', 'leave out block and character devices (directory source)')
    // C mkcomposefs (1.0.4+) digests files on N threads; here digests already run on libuv's pool.
    .option('--threads <n>', 'accepted for C mkcomposefs compatibility (file digests use libuv\'s thread pool)')
    .action(async (source: string, image: string | undefined, o: MkOpts) => {
      if (o.printDigestOnly && image !== undefined) throw new CfsError('EINVAL', 'cannot specify an image with --print-digest-only');
      if (!o.printDigestOnly && image === undefined) throw new CfsError('EINVAL', 'missing image argument');
      if (o.threads !== undefined && !/^[1-9][0-9]*$/.test(o.threads)) throw new CfsError('EINVAL', `--threads ${o.threads}: invalid threads count`);
      // As C mkcomposefs: a binary image is not written to a terminal.
      if (image === '-' && process.stdout.isTTY) throw new CfsError('EINVAL', 'stdout is a tty: refusing to write the image to it (redirect stdout)');
      const minVersion = parseVersion(o.minVersion, 'min version');
      const maxVersion = parseVersion(o.maxVersion, 'max version');
      if (minVersion !== undefined && maxVersion !== undefined && minVersion > maxVersion) {
        throw new CfsError('EINVAL', `--min-version ${minVersion} is above --max-version ${maxVersion}`);
      }
      let root: Inode;
      if (o.fromFile) {
        const { parseDumpfile } = await import('../dumpfile/parse.js');
        root = parseDumpfile(await readAll(source), { strict: process.env.CFS_PARSE_STRICT !== undefined });
      } else {
        root = await scan(source, o);
      }
      const { writeErofs } = await import('../erofs/writer.js');
      const data = writeErofs(root, { minVersion, maxVersion });
      if (o.printDigest || o.printDigestOnly) {
        const { fsverityDigest } = await import('../fsverity/index.js');
        await writeStdout(`${fsverityDigest(data, 'sha256').toString('hex')}\n`);
      }
      if (image === undefined) return;
      if (image === '-') await writeStdout(data);
      else await writeAtomic(image, data);
    });

  // Tree options shared with `cfs create-image` (cfsctl semantics: the OCI transform applies
  // unless --no-propagate-usr-to-root).
  const treeCommand = (name: string, description: string) =>
    program
      .command(name)
      .description(description)
      .argument('<path>')
      .option('--bootable', 'apply the boot transform (/boot and /sysroot emptied, SELinux relabel)')
      .option('--no-propagate-usr-to-root', NO_PROPAGATE_HELP)
      .option('--xattrs <mode>', XATTRS_HELP)
      .option('--keep-user-xattrs', KEEP_USER_XATTRS_HELP)
      .option('--hash <alg>', "sha256 or sha512 (default: the repository's, else sha256)")
      .option('--erofs-version <n>', 'EROFS format version (0 or 1)', '1');

  interface TreeOpts {
    bootable?: boolean;
    propagateUsrToRoot: boolean;
    xattrs?: string;
    keepUserXattrs?: boolean;
    hash?: string;
    erofsVersion: string;
  }
  // As `cfs create-image` would store it: in the selected repository's algorithm.
  const dirOpts = async (o: TreeOpts) => {
    const { hashForRepository } = await import('./repo.js');
    return {
      alg: await hashForRepository(program, o.hash, 'sha256'),
      bootable: o.bootable,
      propagateUsrToRoot: o.propagateUsrToRoot,
      keepUserXattrs: keepUserXattrs(o),
      erofsVersion: parseVersion(o.erofsVersion, 'EROFS version'),
    };
  };

  treeCommand('compute-id', 'print the image id (hex) of a directory tree as `cfs create-image` would store it; nothing is written').action(
    async (dir: string, o: TreeOpts) => {
      const { computeDirImage } = await import('../boot/image.js');
      const { id } = await computeDirImage(dir, await dirOpts(o));
      await writeStdout(`${id.toString('hex')}\n`);
    },
  );

  treeCommand('create-dumpfile', 'print the dumpfile of a directory tree (same tree options as compute-id)').action(async (dir: string, o: TreeOpts) => {
    const { treeFromDirectory } = await import('../boot/image.js');
    const { printDumpfile } = await import('../dumpfile/print.js');
    await writeStdout(printDumpfile(await treeFromDirectory(dir, await dirOpts(o))));
  });
}
