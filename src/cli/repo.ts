/** Repository commands (`cfs init`, `cfs cat`) and the repository opener other CLI modules share. */
import type { Command } from 'commander';
import { CfsError, errnoCode } from '../errors.js';
import type { Repository } from '../repository/repository.js';
import type { HashAlg } from '../fsverity/digest.js';
import type { PullOptions } from '../oci/pull.js';

/** The global options (repository selection). */
export interface GlobalOptions {
  repo?: string;
  user?: boolean;
  system?: boolean;
  insecure?: boolean;
}

export function parseHash(v: string): HashAlg {
  if (v !== 'sha256' && v !== 'sha512') throw new CfsError('EINVAL', `unsupported hash algorithm '${v}' (sha256 or sha512)`);
  return v;
}

/**
 * The hash of commands that compute an image id without storing it (cfsctl rule): the selected
 * repository's algorithm when it exists (a conflicting --hash is an error), else --hash, else
 * `fallback`.
 */
export async function hashForRepository(program: Command, hash: string | undefined, fallback: HashAlg): Promise<HashAlg> {
  const requested = hash === undefined ? undefined : parseHash(hash);
  const { readFileSync } = await import('node:fs');
  const path = await import('node:path');
  const { resolveRepositoryPath } = await import('../repository/location.js');
  const { parseMeta, algorithmString } = await import('../repository/meta.js');
  let metaPath: string;
  let text: string;
  try {
    metaPath = path.join(resolveRepositoryPath(program.opts<GlobalOptions>()), 'meta.json');
    text = readFileSync(metaPath, 'utf8');
  } catch (e) {
    // No repository: nothing to follow. One we cannot read: say so, not guess.
    if (errnoCode(e) !== 'ENOENT' && errnoCode(e) !== 'ENOTDIR') throw new CfsError('EPERM', `cannot read the repository's algorithm: ${(e as Error).message} (give --hash, or --repo a repository you can read)`);
    return requested ?? fallback;
  }
  const alg = parseMeta(text, metaPath).alg;
  if (requested && requested !== alg) throw new CfsError('EINVAL', `repository is configured for ${algorithmString(alg)} (from meta.json) but --hash ${requested} was specified`);
  return alg;
}

/**
 * Before a pull from `reference` creates the selected repository (it does not exist yet),
 * check that the source has the image: a mistyped reference must not leave a new repository.
 */
export async function probeBeforeCreating(program: Command, reference: string, opts: Omit<PullOptions, 'name'>): Promise<void> {
  const { existsSync } = await import('node:fs');
  const { resolveRepositoryPath } = await import('../repository/location.js');
  const { isTransportReference } = await import('../oci/sources.js');
  if (!isTransportReference(reference) || existsSync(resolveRepositoryPath(program.opts<GlobalOptions>()))) return;
  const { probeSource } = await import('../oci/pull.js');
  await probeSource(reference, opts);
}

/**
 * Open the repository selected by the global options (--repo/--user/--system/--insecure),
 * creating it with defaults (sha256, EROFS V1) on first use unless `create` is false.
 */
export async function openRepoFromCli(program: Command, opts: { create?: boolean } = {}): Promise<Repository> {
  const g = program.opts<GlobalOptions>();
  const { resolveRepositoryPath } = await import('../repository/location.js');
  const { Repository } = await import('../repository/repository.js');
  return Repository.open(resolveRepositoryPath(g), {
    create: opts.create ?? true,
    insecure: !!g.insecure,
    fallbackInsecure: true,
    onNotice: (text) => process.stderr.write(`cfs: note: ${text}\n`),
  });
}

/** Write chunks to stdout with backpressure; a closed pipe (EPIPE) ends the output quietly. */
async function writeToStdout(chunks: AsyncIterable<Buffer>): Promise<void> {
  const out = process.stdout;
  let failure: Error | null = null;
  let closed = false;
  const onError = (e: Error): void => {
    if (errnoCode(e) === 'EPIPE') closed = true;
    else failure = e;
  };
  out.on('error', onError);
  try {
    for await (const b of chunks) {
      if (closed || failure) break;
      if (!out.write(b)) {
        await new Promise<void>((resolve) => {
          const done = (): void => {
            out.off('drain', done);
            out.off('error', done);
            out.off('close', done);
            resolve();
          };
          out.on('drain', done);
          out.on('error', done);
          out.on('close', done);
        });
      }
    }
    if (failure) throw failure;
  } finally {
    out.off('error', onError);
    if (closed) out.on('error', () => undefined);
  }
}

export function register(program: Command): void {
  program
    .command('init')
    .description('create a composefs repository (meta.json; fs-verity required unless --insecure)')
    .option('--insecure', 'do not require fs-verity (needed on filesystems without fs-verity)')
    .option('--hash <alg>', 'fs-verity hash algorithm of a new repository: sha256 (default) or sha512')
    .argument('[path]', 'repository path (default: the repository selected by the global options)')
    .action(async (repoPath: string | undefined, opts: { insecure?: boolean; hash?: string }) => {
      const g = program.opts<GlobalOptions>();
      const { resolveRepositoryPath } = await import('../repository/location.js');
      const { initRepository } = await import('../repository/repository.js');
      const { algorithmString } = await import('../repository/meta.js');
      const target = resolveRepositoryPath(repoPath !== undefined ? { repo: repoPath } : g);
      const hashAlg = opts.hash === undefined ? undefined : parseHash(opts.hash);
      const insecure = !!(opts.insecure || g.insecure);
      const { created } = await initRepository(target, { hashAlg, insecure });
      if (!created) {
        // What it is, which may not be what was asked (a secure init of an insecure repository).
        const { Repository } = await import('../repository/repository.js');
        const repo = await Repository.open(target);
        try {
          process.stdout.write(`Repository already initialized at ${target}\nalgorithm: ${algorithmString(repo.alg)}\nverity: ${repo.secure ? 'required' : 'not required (insecure)'}\n`);
        } finally {
          repo.close();
        }
        if (!insecure && !repo.secure) process.stderr.write(`cfs: note: ${target} is an insecure repository (fs-verity not required); it stays so\n`);
        return;
      }
      process.stdout.write(`Initialized composefs repository at ${target}\n`);
      process.stdout.write(`algorithm: ${algorithmString(hashAlg ?? 'sha256')}\n`);
      process.stdout.write(`verity: ${insecure ? 'not required (insecure)' : 'required'}\n`);
    });

  program
    .command('cat')
    .description('write the reassembled contents of a split stream to stdout')
    .argument('<stream>', 'stream content id (e.g. oci-layer-sha256:…) or refs/NAME')
    .action(async (stream: string) => {
      const { catStream } = await import('../splitstream/cat.js');
      const repo = await openRepoFromCli(program, { create: false });
      try {
        await writeToStdout(catStream(repo, stream));
      } finally {
        repo.close();
      }
    });
}
