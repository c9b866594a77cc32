/** `cfs oci …`: pull, images, inspect, tag, untag, dump, compute-id. */
import type { Command } from 'commander';
import { CfsError, oneLine } from '../errors.js';
import { openRepoFromCli, probeBeforeCreating } from './repo.js';
import type { Repository } from '../repository/repository.js';
import type { StoredImage } from '../oci/stored.js';
import type { PullOptions } from '../oci/pull.js';

interface PullOpts {
  platform?: string;
  quiet?: boolean;
  /** containers-storage: local fetch (disabled|auto|zerocopy); default auto. */
  localFetch?: string;
  zerocopy?: boolean;
  /** Seconds to wait for a containers-storage lock a writer holds (default: as long as it takes). */
  lockTimeout?: string;
}

/** The pull options `cfs mount` shares: [flags, description]. */
export const LOCAL_FETCH_OPTIONS = [
  ['--local-fetch <mode>', 'containers-storage: reflink/hardlink file contents into the repository: auto (default: when on the same filesystem, else copy), zerocopy (required), disabled (always copy)'],
  ['--zerocopy', 'same as --local-fetch zerocopy'],
  ['--lock-timeout <seconds>', 'containers-storage: how long to wait for a lock podman holds while writing (default: as long as it takes)'],
] as const;

/** The library's pull options from the command line's (progress bars on a terminal unless quiet). */
export async function pullOptionsFromCli(opts: PullOpts): Promise<PullOptions> {
  const { LOCAL_FETCH_MODES } = await import('../oci/pull.js');
  const { progressFor } = await import('./progress.js');
  const mode = opts.zerocopy ? 'zerocopy' : (opts.localFetch ?? 'auto');
  const localFetch = LOCAL_FETCH_MODES.find((m) => m === mode);
  if (!localFetch) throw new CfsError('EINVAL', `--local-fetch: '${mode}' is not one of ${LOCAL_FETCH_MODES.join(', ')}`);
  if (opts.zerocopy && opts.localFetch !== undefined && opts.localFetch !== 'zerocopy') {
    throw new CfsError('EINVAL', `--zerocopy contradicts --local-fetch ${opts.localFetch}`);
  }
  const v = opts.lockTimeout;
  if (v !== undefined && !/^\d+(\.\d+)?$/.test(v)) throw new CfsError('EINVAL', `--lock-timeout: '${v}' is not a number of seconds`);
  return { platform: opts.platform, localFetch, lockTimeoutMs: v === undefined ? undefined : Number(v) * 1000, progress: progressFor({ quiet: opts.quiet }) };
}

/** Said on stderr whatever -q: the tag now names another image than before. */
export function retagNote(r: { tag: string; manifestDigest: string; replacedManifest: string | null }): void {
  if (r.replacedManifest === null) return;
  process.stderr.write(`cfs: note: tag '${r.tag}' moved from ${r.replacedManifest.slice(0, 19)}… to ${r.manifestDigest.slice(0, 19)}… (the earlier image stays until gc while untagged, and while mounted)\n`);
}

/** The summary of where a pull's objects came from (stderr, unless quiet). */
export function objectsLine(o: { reflinked: number; hardlinked: number; copied: number; present: number }): string {
  return `objects: ${o.reflinked} reflinked + ${o.hardlinked} hardlinked + ${o.copied} copied${o.present ? ` (+ ${o.present} already present)` : ''}\n`;
}

interface ImageRow {
  name: string;
  manifestDigest: string;
  configDigest: string | null;
  imageId: string | null;
  architecture: string | null;
  variant: string | null;
  os: string | null;
  layers: number | null;
  /** Why the image cannot be read (it is listed all the same: `cfs fsck` says more). */
  error?: string;
}

/** One row per tag; a tag whose image cannot be read is a row with `error` (and a warning on stderr). */
async function imageRows(repo: Repository): Promise<ImageRow[]> {
  const { listTags, openStoredImage } = await import('../oci/stored.js');
  const rows: ImageRow[] = [];
  // Many tags may name one image: each is opened (and checked) once.
  const opened = new Map<string, ReturnType<typeof openStoredImage>>();
  for (const t of await listTags(repo)) {
    try {
      let pending = opened.get(t.manifestDigest);
      if (!pending) opened.set(t.manifestDigest, (pending = openStoredImage(repo, `@${t.manifestDigest}`, repo.erofsFormats.default)));
      const img = await pending;
      // Cheap (one lstat): a listing shows an image that cannot be mounted as damaged.
      if (img.imageId !== null && !(await repo.hasObject(Buffer.from(img.imageId, 'hex')))) {
        throw new CfsError('ECORRUPT', `its composefs image ${img.imageId.slice(0, 12)} is missing (pulling it again writes it)`);
      }
      rows.push({
        name: t.name,
        manifestDigest: t.manifestDigest,
        configDigest: img.configDigest,
        imageId: img.imageId,
        architecture: img.artifact ? 'artifact' : (img.config.architecture ?? ''),
        variant: img.artifact ? null : (img.config.variant ?? null),
        os: img.config.os ?? '',
        layers: img.diffIds.length,
      });
    } catch (e) {
      const error = (e as Error).message;
      process.stderr.write(`cfs: warning: ${oneLine(`image ${t.name}: ${error}`)} (see 'cfs fsck')\n`);
      rows.push({ name: t.name, manifestDigest: t.manifestDigest, configDigest: null, imageId: null, architecture: null, variant: null, os: null, layers: null, error });
    }
  }
  return rows;
}

async function writeOut(data: Buffer | string): Promise<void> {
  await new Promise<void>((resolve, reject) => process.stdout.write(data, (e) => (e ? reject(e) : resolve())));
}

async function storedTree(repo: Repository, img: StoredImage) {
  if (img.artifact) throw new CfsError('EINVAL', `${img.name ?? img.manifestDigest} is an artifact (config ${img.manifest.config.mediaType}): it has no filesystem`);
  const { buildTreeFromLayers } = await import('../oci/image-build.js');
  return buildTreeFromLayers(repo, img.diffIds.map((d) => ({ diffId: d, streamId: img.layerStreams.get(d)! })));
}

export function register(program: Command): void {
  const oci = program.command('oci').description('OCI images in the repository');

  oci
    .command('pull')
    .description('import an image from oci:DIR[:TAG], oci-archive:FILE[:TAG] or containers-storage:[STORE]NAME[:TAG|@DIGEST]')
    .argument('<source>', 'transport reference')
    .argument('[name]', 'tag to give the image (default: the source reference; a containers-storage: one as the store names the image)')
    .option('--platform <os/arch[/variant]>', 'platform to select from a multi-platform index (default: this machine)')
    .option('-q, --quiet', 'no progress output')
    .option('--json', 'print the result as JSON (digests, image id, tag, layer and object counts)')
    .option(...LOCAL_FETCH_OPTIONS[0])
    .option(...LOCAL_FETCH_OPTIONS[1])
    .option(...LOCAL_FETCH_OPTIONS[2])
    .action(async (source: string, name: string | undefined, opts: PullOpts & { json?: boolean }) => {
      const pull = await pullOptionsFromCli(opts);
      await probeBeforeCreating(program, source, pull);
      const repo = await openRepoFromCli(program);
      try {
        const { pullImage } = await import('../oci/pull.js');
        const r = await pullImage(repo, source, { ...pull, name });
        retagNote(r);
        if (opts.json) {
          const { manifestDigest, configDigest, imageId, tag, replacedManifest, layersImported, layersSkipped, objects } = r;
          return void (await writeOut(`${JSON.stringify({ manifestDigest, configDigest, imageId, tag, replacedManifest, layersImported, layersSkipped, objects }, null, 2)}\n`));
        }
        let out = `manifest ${r.manifestDigest}\nconfig ${r.configDigest}\n`;
        if (r.imageId) out += `image ${r.imageId}\n`;
        out += `tagged ${r.tag}\n`;
        await writeOut(out);
        if (!opts.quiet) process.stderr.write(objectsLine(r.objects));
      } finally {
        repo.close();
      }
    });

  oci
    .command('images')
    .description('list tagged images')
    .option('--json', 'JSON output')
    .option('-q, --quiet', 'print only the short manifest ids (one per image)')
    .option('-n, --noheading', 'no header line')
    .action(async (opts: { json?: boolean; quiet?: boolean; noheading?: boolean }) => {
      // Listing never creates a repository (a mistyped --repo would leave one behind): a
      // missing one lists nothing and says so. Messages for people go to stderr: stdout has
      // only rows, for scripts.
      const { existsSync } = await import('node:fs');
      const { resolveRepositoryPath } = await import('../repository/location.js');
      const where = resolveRepositoryPath(program.opts());
      if (!existsSync(where)) {
        if (!opts.json) process.stderr.write(`cfs: note: repository ${where} does not exist\n`);
        if (opts.json) await writeOut(`${JSON.stringify({ images: [] }, null, 2)}\n`);
        return;
      }
      const repo = await openRepoFromCli(program, { create: false });
      try {
        const rows = await imageRows(repo);
        if (opts.json) return void (await writeOut(`${JSON.stringify({ images: rows }, null, 2)}\n`));
        if (opts.quiet) return void (await writeOut([...new Set(rows.map((r) => r.manifestDigest.slice(7, 19)))].map((id) => `${id}\n`).join('')));
        if (rows.length === 0) return void process.stderr.write('No images found\n');
        const table = opts.noheading ? [] : [['NAME', 'MANIFEST', 'IMAGE ID', 'ARCH', 'LAYERS']];
        for (const r of rows) {
          const arch = r.error !== undefined ? 'damaged' : r.variant ? `${r.architecture}/${r.variant}` : String(r.architecture);
          table.push([r.name, r.manifestDigest.slice(7, 19), (r.imageId ?? '-').slice(0, 12), arch, String(r.layers ?? '-')]);
        }
        const widths = table[0]!.map((_, i) => Math.max(...table.map((row) => row[i]!.length)));
        await writeOut(table.map((row) => row.map((c, i) => c.padEnd(widths[i]!)).join('  ').trimEnd()).join('\n') + '\n');
      } finally {
        repo.close();
      }
    });

  oci
    .command('inspect')
    .description('show an image: manifest, config and composefs image id (or the raw manifest/config)')
    .argument('<image>', 'tag, @sha256:<manifest digest>, or a short id as `cfs oci images` shows it')
    .option('--manifest', 'print the raw manifest, byte for byte (its sha256 is the manifest digest)')
    .option('--config', 'print the raw config, byte for byte')
    .option('--json', 'JSON output (the default)')
    .action(async (name: string, opts: { manifest?: boolean; config?: boolean; json?: boolean }) => {
      if (opts.manifest && opts.config) throw new CfsError('EINVAL', '--manifest and --config: choose one');
      if (opts.json && (opts.manifest || opts.config)) throw new CfsError('EINVAL', '--json prints the summary; --manifest/--config print raw bytes: choose one');
      const repo = await openRepoFromCli(program, { create: false });
      try {
        const { openStoredImage } = await import('../oci/stored.js');
        const img = await openStoredImage(repo, name, repo.erofsFormats.default);
        if (opts.manifest) return void (await writeOut(img.manifestBytes));
        if (opts.config) return void (await writeOut(img.configBytes));
        const out = {
          manifestDigest: img.manifestDigest,
          configDigest: img.configDigest,
          imageId: img.imageId,
          bootImages: img.bootImages,
          manifest: JSON.parse(img.manifestBytes.toString('utf8')) as unknown,
          config: JSON.parse(img.configBytes.toString('utf8')) as unknown,
          referrers: [],
        };
        await writeOut(`${JSON.stringify(out, null, 2)}\n`);
      } finally {
        repo.close();
      }
    });

  oci
    .command('tag')
    .description('tag a stored image, named by its manifest digest, a tag it has (as podman tag) or a short id')
    .argument('<image>', 'manifest digest (sha256:…), an existing tag, or a short id as `cfs oci images` shows it')
    .argument('<name>')
    .action(async (image: string, name: string) => {
      const repo = await openRepoFromCli(program, { create: false });
      try {
        const { resolveImageName, tagImage } = await import('../oci/stored.js');
        const { manifestDigest: manifest } = await resolveImageName(repo, image, repo.erofsFormats.default);
        await tagImage(repo, name, manifest);
        await writeOut(`Tagged ${manifest} as ${name}\n`);
      } finally {
        repo.close();
      }
    });

  oci
    .command('untag')
    .description('remove a tag (data stays until gc)')
    .argument('<name>')
    .action(async (name: string) => {
      const repo = await openRepoFromCli(program, { create: false });
      try {
        const { untagImage } = await import('../oci/stored.js');
        await untagImage(repo, name);
        await writeOut(`Removed tag ${name}\n`);
      } finally {
        repo.close();
      }
    });

  oci
    .command('dump')
    .description('composefs dumpfile of the merged root filesystem')
    .argument('<image>', 'tag, @sha256:<manifest digest>, or a short id as `cfs oci images` shows it')
    .action(async (name: string) => {
      const repo = await openRepoFromCli(program, { create: false });
      try {
        const { openStoredImage } = await import('../oci/stored.js');
        const { printDumpfile } = await import('../dumpfile/print.js');
        const img = await openStoredImage(repo, name, repo.erofsFormats.default);
        await writeOut(printDumpfile(await storedTree(repo, img)));
      } finally {
        repo.close();
      }
    });

  oci
    .command('compute-id')
    .description('compute the composefs image id of a stored image from its layers')
    .argument('<image>', 'tag, @sha256:<manifest digest>, or a short id as `cfs oci images` shows it')
    .action(async (name: string) => {
      const repo = await openRepoFromCli(program, { create: false });
      try {
        const { openStoredImage } = await import('../oci/stored.js');
        const { erofsForFormat } = await import('../oci/image-build.js');
        const { fsverityDigest } = await import('../fsverity/digest.js');
        const img = await openStoredImage(repo, name, repo.erofsFormats.default);
        const erofs = erofsForFormat(await storedTree(repo, img), repo.erofsFormats.default);
        const id = fsverityDigest(erofs, repo.alg).toString('hex');
        await writeOut(`${id}\n`);
        // The layers as stored no longer give the image they gave at the pull: something changed.
        if (img.imageId !== null && img.imageId !== id) {
          throw new CfsError('ECORRUPT', `${name}: the layers give image ${id.slice(0, 12)}, but the image stored at the pull is ${img.imageId.slice(0, 12)}; the repository may be damaged (run 'cfs fsck'), or an older cfs built that image (pull it again)`);
        }
      } finally {
        repo.close();
      }
    });
}
