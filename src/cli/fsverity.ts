import type { Command } from 'commander';
import { parseHash } from './repo.js';


export function register(program: Command): void {
  const fsv = program.command('fsverity').description('fs-verity digests (userspace) and kernel fs-verity');
  fsv
    .command('digest')
    .description('compute fs-verity digests in userspace (same output as `fsverity digest`)')
    .option('--hash-alg <alg>', 'sha256 or sha512', 'sha256')
    .argument('<files...>')
    .action(async (files: string[], opts: { hashAlg: string }) => {
      const { fsverityDigestFile } = await import('../fsverity/index.js');
      const alg = parseHash(opts.hashAlg);
      for (const f of files) {
        const d = await fsverityDigestFile(f, alg);
        process.stdout.write(`${alg}:${d.toString('hex')} ${f}\n`);
      }
    });
  fsv
    .command('measure')
    .description('print the kernel-measured fs-verity digest of files')
    .argument('<files...>')
    .action(async (files: string[]) => {
      const { measureVerity } = await import('../fsverity/kernel.js');
      for (const f of files) {
        const m = await measureVerity(f);
        process.stdout.write(`${m.alg}:${m.digest.toString('hex')} ${f}\n`);
      }
    });
  fsv
    .command('enable')
    .description('enable fs-verity on files through the kernel')
    .option('--hash-alg <alg>', 'sha256 or sha512', 'sha256')
    .argument('<files...>')
    .action(async (files: string[], opts: { hashAlg: string }) => {
      const { enableVerity } = await import('../fsverity/kernel.js');
      const alg = parseHash(opts.hashAlg);
      for (const f of files) await enableVerity(f, alg);
    });
}
