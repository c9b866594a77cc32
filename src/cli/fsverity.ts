import type { Command } from 'commander';
import { CfsError } from '../errors.js';
import { FSVERITY_BLOCK_SIZE } from '../fsverity/digest.js';
import { parseHash } from './repo.js';

/** fsverity(1)'s --block-size: composefs digests are of 4096-byte blocks, the only size cfs computes. */
function checkBlockSize(text: string): void {
  if (Number(text) !== FSVERITY_BLOCK_SIZE) throw new CfsError('ENOTSUP', `--block-size ${text}: only ${FSVERITY_BLOCK_SIZE} is supported (the block size composefs uses)`);
}

export function register(program: Command): void {
  const fsv = program.command('fsverity').description('fs-verity digests (userspace) and kernel fs-verity');
  fsv
    .command('digest')
    .description('compute fs-verity digests in userspace (same output as `fsverity digest`)')
    .option('--hash-alg <alg>', 'sha256 or sha512', 'sha256')
    .option('--block-size <n>', 'Merkle tree block size (only 4096, the one composefs uses)', '4096')
    .option('--compact', 'print only the hex digest')
    .argument('<files...>')
    .action(async (files: string[], opts: { hashAlg: string; blockSize: string; compact?: boolean }) => {
      const { fsverityDigestFile } = await import('../fsverity/index.js');
      const alg = parseHash(opts.hashAlg);
      checkBlockSize(opts.blockSize);
      for (const f of files) {
        const d = await fsverityDigestFile(f, alg);
        process.stdout.write(opts.compact ? `${d.toString('hex')}\n` : `${alg}:${d.toString('hex')} ${f}\n`);
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
    .option('--block-size <n>', 'Merkle tree block size (only 4096, the one composefs uses)', '4096')
    .argument('<files...>')
    .action(async (files: string[], opts: { hashAlg: string; blockSize: string }) => {
      const { enableVerity } = await import('../fsverity/kernel.js');
      const alg = parseHash(opts.hashAlg);
      checkBlockSize(opts.blockSize);
      for (const f of files) await enableVerity(f, alg);
    });
}
