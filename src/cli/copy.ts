/** `cfs oci copy IMAGE --from SRC_REPO [--name TAG] [--zerocopy]` (brief 5.7). */
import type { Command } from 'commander';
import { CfsError } from '../errors.js';
import { openRepoFromCli } from './repo.js';
import { objectsLine } from './oci.js';

interface CopyCliOpts {
  from: string;
  name?: string;
  zerocopy?: boolean;
  quiet?: boolean;
  json?: boolean;
}

export function register(program: Command): void {
  const oci = program.commands.find((c) => c.name() === 'oci');
  if (!oci) throw new Error('cfs oci command group must be registered before copy');
  oci
    .command('copy')
    .description('copy an image (manifest, config, layers, composefs image) from another repository into this one')
    .argument('<image>', 'tag, @sha256:<manifest digest> or short id in the source repository')
    .requiredOption('--from <path>', 'source repository')
    .option('--name <tag>', 'tag for the copy in the destination (default: untagged)')
    .option('--zerocopy', 'fail unless every object can be reflinked or hardlinked (same algorithm and filesystem)')
    .option('-q, --quiet', 'no progress output')
    .option('--json', 'print the result as JSON (digests, image id, tag, layer and object counts)')
    .action(async (image: string, opts: CopyCliOpts) => {
      const { Repository } = await import('../repository/repository.js');
      const { copyImage } = await import('../oci/copy.js');
      const { progressFor } = await import('./progress.js');
      const insecure = !!program.opts<{ insecure?: boolean }>().insecure;
      if (opts.name !== undefined && opts.name.trim() === '') throw new CfsError('EINVAL', '--name: the name to tag the copy with is empty');
      const src = await Repository.open(opts.from, { insecure }).catch((e: unknown) => {
        throw e instanceof CfsError ? new CfsError(e.code, `source repository: ${e.message}`) : e;
      });
      try {
        const dst = await openRepoFromCli(program);
        try {
          const r = await copyImage(src, dst, image, { name: opts.name, zerocopy: opts.zerocopy, progress: progressFor({ quiet: opts.quiet }) });
          const untaggedNote = (): void => {
            // As in cfsctl the copy is untagged without --name; say what that means.
            if (!opts.name && !opts.quiet) process.stderr.write(`cfs: note: the copy is untagged: the next \`cfs gc\` removes it (tag it with --name, or \`cfs oci tag ${r.manifestDigest} NAME\`)\n`);
          };
          if (opts.json) {
            process.stdout.write(`${JSON.stringify({ ...r, tag: opts.name ?? null, from: src.path, to: dst.path }, null, 2)}\n`);
            return untaggedNote();
          }
          const lines = [
            `Copied image ${image} from ${src.path} to ${dst.path}${opts.name ? `, tagged as ${opts.name}` : ''}`,
            `Manifest digest: ${r.manifestDigest}`,
            `Manifest verity: ${r.manifestVerity}`,
            `Config digest:   ${r.configDigest}`,
            `Config verity:   ${r.configVerity}`,
          ];
          if (r.imageId) lines.push(`Image ID:        ${r.imageId}`);
          lines.push(`Layers: ${r.layersCopied} copied, ${r.layersSkipped} already present`);
          process.stdout.write(`${lines.join('\n')}\n`);
          // As `cfs oci pull` says it: on stderr, and not with -q.
          if (!opts.quiet) process.stderr.write(objectsLine(r.objects));
          untaggedNote();
        } finally {
          dst.close();
        }
      } finally {
        src.close();
      }
    });
}
