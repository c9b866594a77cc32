/** Repository integrity commands: `cfs fsck`, `cfs gc`, `cfs transaction`. */
import type { Command } from 'commander';
import { openRepoFromCli } from './repo.js';

async function writeOut(data: string): Promise<void> {
  await new Promise<void>((resolve, reject) => process.stdout.write(data, (e) => (e ? reject(e) : resolve())));
}

const lockWait = (what: string) => (): void => {
  process.stderr.write(`cfs: waiting for other users of the repository to finish (${what} needs exclusive access)\n`);
};

export function register(program: Command): void {
  program
    .command('fsck')
    .description('check objects, streams, images, refs and OCI images; exit status 0 only when clean')
    .argument('[image]', 'check only what this OCI image (tag) reaches')
    .option('--json', 'JSON output')
    .option('--repair', 'remove leftover temporary files, corrupt objects (pulling or copying their image again restores them) and dangling stream/image links (never tags)')
    .option('--metadata-only', 'skip reading and hashing objects (streams and images must still find theirs)')
    .action(async (image: string | undefined, opts: { json?: boolean; repair?: boolean; metadataOnly?: boolean }) => {
      const { fsck, formatFsckReport, fsckReportJson, isMetadataError, metadataFailureReport } = await import('../repository/fsck.js');
      let report;
      try {
        const repo = await openRepoFromCli(program, { create: false });
        try {
          report = await fsck(repo, { image, repair: opts.repair, metadataOnly: opts.metadataOnly, onWait: lockWait('fsck --repair') });
        } finally {
          repo.close();
        }
      } catch (e) {
        if (!isMetadataError(e)) throw e;
        const { resolveRepositoryPath } = await import('../repository/location.js');
        report = metadataFailureReport(resolveRepositoryPath(program.opts()), e);
      }
      await writeOut(opts.json ? `${JSON.stringify(fsckReportJson(report), null, 2)}\n` : formatFsckReport(report));
      if (!report.ok) process.exitCode = 1;
    });

  program
    .command('gc')
    .description('delete objects, streams and images no ref (or --root) reaches')
    .option('-n, --dry-run', 'only report what would be deleted')
    .option('-r, --root <name>', 'also keep this stream or image (first-level name); repeatable', (v: string, acc: string[]) => [...acc, v], [] as string[])
    .option('--json', 'JSON output: the counts and every path removed (or, with --dry-run, that would be)')
    .action(async (opts: { dryRun?: boolean; root: string[]; json?: boolean }) => {
      const { collectGarbage, formatGcResult } = await import('../repository/gc.js');
      const repo = await openRepoFromCli(program, { create: false });
      try {
        const r = await collectGarbage(repo, { dryRun: opts.dryRun, roots: opts.root, onWait: lockWait('gc') });
        await writeOut(opts.json ? `${JSON.stringify(r, null, 2)}\n` : formatGcResult(r));
      } finally {
        repo.close();
      }
    });

  program
    .command('transaction')
    .description('hold the shared repository lock until killed (blocks gc meanwhile)')
    .action(async () => {
      const repo = await openRepoFromCli(program, { create: false });
      await writeOut(`Holding the shared lock on ${repo.path}\n`);
      await new Promise<void>((resolve) => {
        const keepAlive = setInterval(() => undefined, 1 << 30);
        const stop = (): void => {
          clearInterval(keepAlive);
          resolve();
        };
        process.once('SIGTERM', stop);
        process.once('SIGINT', stop);
      });
      repo.close();
    });
}
