/** `cfs info dump|ls|objects|missing-objects IMAGE…`, like composefs-info. */
import type { Command } from 'commander';
import { CfsError, isCfsError } from '../errors.js';
import { S_IFDIR, S_IFLNK, S_IFMT, S_IFREG } from '../tree/inode.js';

const COMMANDS = ['dump', 'ls', 'objects', 'missing-objects', 'measure-file'] as const;
type InfoCommand = (typeof COMMANDS)[number];

function writeStdout(data: Buffer | string): Promise<void> {
  return new Promise((resolve, reject) => process.stdout.write(data, (e) => (e ? reject(e) : resolve())));
}

export function register(program: Command): void {
  program
    .command('info')
    .description('inspect composefs images: dump (dumpfile), ls (paths), objects (backing files), missing-objects (not under --basedir); measure-file FILE…: kernel fs-verity digests')
    .argument('<command>', COMMANDS.join('|'))
    .argument('<images...>')
    .option('--basedir <dir>', 'object store for missing-objects')
    .option('--filter <name>', 'only this top-level entry of the image (repeatable)', (v: string, acc: string[]) => [...acc, v], [] as string[])
    .action(async (cmd: string, images: string[], o: { basedir?: string; filter: string[] }) => {
      if (!(COMMANDS as readonly string[]).includes(cmd)) throw new CfsError('EINVAL', `unknown info command '${cmd}' (${COMMANDS.join(', ')})`);
      const command = cmd as InfoCommand;
      if (command === 'measure-file') return measureFiles(images);
      if (command === 'missing-objects' && o.basedir === undefined) throw new CfsError('EINVAL', 'missing-objects needs --basedir');
      if (o.basedir !== undefined) {
        const { statSync } = await import('node:fs');
        if (!statSync(o.basedir, { throwIfNoEntry: false })?.isDirectory()) throw new CfsError('ENOENT', `can't open basedir ${o.basedir}: not a directory`, { path: o.basedir });
      }
      const { readFile } = await import('node:fs/promises');
      const { readErofs } = await import('../erofs/reader.js');
      const { printDumpfile, walkTree } = await import('../dumpfile/print.js');
      const { escape } = await import('../dumpfile/escape.js');
      const objects = new Set<string>();
      for (const image of images) {
        let root;
        try {
          root = readErofs(await readFile(image));
        } catch (e) {
          // With several images, which one (as C composefs-info says "Failed to load").
          if (isCfsError(e)) throw new CfsError(e.code, `${image}: ${e.message}`, { ...e.context, path: image });
          throw e;
        }
        // As composefs-info --filter: only the named top-level entries.
        if (o.filter.length > 0 && root.children) {
          const keep = new Set(o.filter.map((f) => Buffer.from(f).toString('latin1')));
          for (const name of [...root.children.keys()]) if (!keep.has(name)) root.children.delete(name);
        }
        if (command === 'dump') {
          await writeStdout(printDumpfile(root));
          continue;
        }
        if (command === 'ls') {
          const out: string[] = [];
          walkTree(root, (path, n, first) => {
            if (n === root) return;
            let l = escape(path, { keepSpace: true });
            const type = n.mode & S_IFMT;
            // Later names of a hardlinked inode carry no type in composefs-info's tree.
            if (first === null) {
              if (type === S_IFDIR) l += '/\t';
              else if (type === S_IFLNK) l += `\t-> ${escape(n.payload ?? '')}`;
              else if (type === S_IFREG && n.payload !== null) l += `\t@ ${escape(n.payload)}`;
            }
            out.push(l + '\n');
          });
          await writeStdout(Buffer.from(out.join(''), 'latin1'));
          continue;
        }
        walkTree(root, (_path, n, first) => {
          if (first === null && (n.mode & S_IFMT) === S_IFREG && n.payload !== null) objects.add(n.payload);
        });
      }
      if (command !== 'objects' && command !== 'missing-objects') return;
      let list = [...objects].sort();
      if (command === 'missing-objects') {
        const { access } = await import('node:fs/promises');
        const path = await import('node:path');
        const missing: string[] = [];
        for (const p of list) {
          const rel = Buffer.from(p.replace(/^\/+/, ''), 'latin1').toString();
          try {
            await access(path.join(o.basedir!, rel));
          } catch {
            missing.push(p);
          }
        }
        list = missing;
      }
      await writeStdout(Buffer.from(list.map((p) => p + '\n').join(''), 'latin1'));
    });
}

/** composefs-info measure-file: the kernel's fs-verity digest of each file (fs-verity must be enabled on it). */
async function measureFiles(files: string[]): Promise<void> {
  const { closeSync, openSync } = await import('node:fs');
  const { measureVerityFd } = await import('../fsverity/kernel.js');
  for (const file of files) {
    const fd = openSync(file, 'r');
    try {
      // Its errors name the file and the reason (no fs-verity here, not enabled on the file).
      await writeStdout(`${measureVerityFd(fd, file).digest.toString('hex')}\n`);
    } finally {
      closeSync(fd);
    }
  }
}
