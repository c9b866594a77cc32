/**
 * Boot Loader Specification Type 1 entries for the kernels of an image, laid out as
 * composefs-rs `prepare-boot` writes them (composefs-boot `bootloader.rs`, `write_boot.rs`):
 *
 *   <bootdir>/<id>/vmlinuz                    copy of /usr/lib/modules/<kver>/vmlinuz
 *   <bootdir>/<id>/initramfs.img              copy of /usr/lib/modules/<kver>/initramfs.img
 *   <bootdir>/loader/entries/<id>.conf
 *
 *   # File created by composefs
 *   title <title>
 *   version <version>
 *   linux /<id>/vmlinuz
 *   initrd /<id>/initramfs.img
 *   options <composefs karg> <extra args…>
 *
 * <id> is the --entry-id, else the kernel version directory name. Each extra argument replaces
 * an earlier one with the same key (`key=` prefix, or the whole word), else it is appended.
 * A kernel without initramfs.img is an error.
 *
 * Differences from composefs-rs: it writes only the first boot entry it finds and uses the
 * placeholder title "todoOS" / version "0-todo"; here every kernel gets an entry (with several
 * kernels and an --entry-id, the ids are `<entry-id>-<kver>`), the title is PRETTY_NAME (else
 * NAME) from /usr/lib/os-release, else "Linux", and the version is the kernel version.
 * Files are copied (reflinked where possible) to a temporary name and renamed, the entry file last.
 */
import { constants as FS, copyFile, mkdir, readFile, rename, rm, writeFile } from 'node:fs/promises';
import { randomBytes } from 'node:crypto';
import path from 'node:path';
import { CfsError } from '../errors.js';
import { isDir, isReg, sortedEntries, type Inode } from '../tree/inode.js';
import { splitCmdline } from './karg.js';
import type { TreeFiles } from './tree-files.js';

export interface KernelFiles {
  kver: string;
  vmlinuz: Inode;
  initramfs: Inode | null;
}

export interface BootEntrySource {
  kernels: KernelFiles[];
  /** /usr/lib/os-release, if the image has one. */
  osRelease: Inode | null;
}

function lookup(root: Inode, p: string): Inode | undefined {
  let n: Inode | undefined = root;
  for (const comp of p.split('/').filter(Boolean)) n = n && isDir(n) ? n.children!.get(comp) : undefined;
  return n;
}

/** Kernels under /usr/lib/modules/<kver>/vmlinuz, in byte order of <kver>. Call before bootTransform. */
export function findBootEntries(root: Inode): BootEntrySource {
  const kernels: KernelFiles[] = [];
  const modules = lookup(root, '/usr/lib/modules');
  if (modules && isDir(modules)) {
    for (const [kver, dir] of sortedEntries(modules)) {
      if (!isDir(dir)) continue;
      const vmlinuz = dir.children!.get('vmlinuz');
      if (!vmlinuz || !isReg(vmlinuz)) continue;
      const initramfs = dir.children!.get('initramfs.img');
      kernels.push({ kver, vmlinuz, initramfs: initramfs && isReg(initramfs) ? initramfs : null });
    }
  }
  const osRelease = lookup(root, '/usr/lib/os-release');
  return { kernels, osRelease: osRelease && isReg(osRelease) ? osRelease : null };
}

/** Value of KEY in os-release text (quotes removed), or null. */
export function osReleaseValue(text: string, key: string): string | null {
  for (const line of text.split('\n')) {
    const m = /^\s*([A-Z0-9_]+)=(.*)$/.exec(line);
    if (!m || m[1] !== key) continue;
    let v = m[2].trim();
    if ((v.startsWith('"') && v.endsWith('"')) || (v.startsWith("'") && v.endsWith("'"))) v = v.slice(1, -1);
    return v.replace(/\\(.)/g, '$1');
  }
  return null;
}

/** Kernel argument names the composefs argument uses: prepare-boot writes that one itself. */
const COMPOSEFS_KARG_KEYS = new Set(['composefs', 'composefs.digest']);

/**
 * An extra kernel argument for a boot entry: one word (spaces only inside quotes), no control
 * characters (a newline would start another line of the entry), not the composefs argument.
 */
export function checkCmdlineArg(arg: string): void {
  const bad = (why: string): CfsError => new CfsError('EINVAL', `kernel argument ${JSON.stringify(arg)}: ${why}`);
  if (arg.trim() === '') throw bad('empty');
  if (/[\u0000-\u001f\u007f]/.test(arg)) throw bad('has a control character (a newline would end the entry\'s options line)');
  if (splitCmdline(arg).length !== 1) throw bad('is more than one argument (quote a value with spaces: key="a b")');
  if (COMPOSEFS_KARG_KEYS.has(arg.split('=')[0]!)) throw bad("the composefs argument is the entry's own (written by prepare-boot)");
}

export interface BlsEntryOptions {
  id: string;
  title: string;
  version: string;
  karg: string;
  cmdline?: string[];
}

export function blsEntryText(o: BlsEntryOptions): string {
  // The composefs argument first, then the extra ones in order; each given once (a kernel takes
  // several console=, so a repeated key is not a replacement).
  // (Arguments are checked where entries are written: checkEntryOptions.)
  const words = [o.karg];
  for (const a of o.cmdline ?? []) if (!words.includes(a)) words.push(a);
  const options = words.join(' ');
  return [
    '# File created by composefs',
    `title ${o.title}`,
    `version ${o.version}`,
    `linux /${o.id}/vmlinuz`,
    `initrd /${o.id}/initramfs.img`,
    `options ${options}`,
  ].join('\n') + '\n';
}

/** The entry id as given and every extra argument, checked before anything is written. */
export function checkEntryOptions(entryId: string | undefined, cmdline: readonly string[] | undefined): void {
  if (entryId !== undefined) checkEntryId(entryId);
  for (const a of cmdline ?? []) checkCmdlineArg(a);
}

function checkEntryId(id: string): void {
  if (!id || id === '.' || id === '..' || id.includes('/') || /[\s\u0000-\u001f\u007f]/.test(id)) {
    throw new CfsError('EINVAL', `invalid boot entry id '${id}' (one path component, no whitespace)`);
  }
}

/** Write bytes, or copy the file at `from.path`, to `dest` atomically. */
async function writeAtomic(dest: string, from: { data: Buffer | string } | { path: string }): Promise<void> {
  await mkdir(path.dirname(dest), { recursive: true, mode: 0o755 });
  const tmp = path.join(path.dirname(dest), `.${path.basename(dest)}.tmp-${randomBytes(6).toString('hex')}`);
  try {
    if ('path' in from) await copyFile(from.path, tmp, FS.COPYFILE_FICLONE);
    else await writeFile(tmp, from.data, { mode: 0o644 });
    await rename(tmp, dest);
  } catch (e) {
    await rm(tmp, { force: true });
    throw e;
  }
}

export interface WriteBootEntriesOptions {
  bootdir: string;
  entryId?: string;
  karg: string;
  cmdline?: string[];
  files: TreeFiles;
}

async function copyOut(files: TreeFiles, file: Inode, treePath: string, dest: string): Promise<void> {
  const backing = files.backingPath(file, treePath);
  await writeAtomic(dest, backing === null ? { data: await files.read(file, treePath) } : { path: backing });
}

/** The composefs argument of an existing entry; '' for an entry without one (not composefs's); null when there is none. */
async function entryKarg(entry: string): Promise<string | null> {
  let text: string;
  try {
    text = await readFile(entry, 'utf8');
  } catch {
    return null;
  }
  const options = /^options\s+(.*)$/m.exec(text)?.[1] ?? '';
  return options.split(/\s+/).find((t) => t.startsWith('composefs=') || t.startsWith('composefs.digest=')) ?? '';
}

export interface WrittenBootEntries {
  entries: string[];
  /** Entries that booted something else before and now boot this one (another deployment loses its entry); previousKarg '' for an entry that was not composefs's. */
  replaced: Array<{ entry: string; previousKarg: string }>;
}

/** Write one Type 1 entry per kernel. */
export async function writeBootEntries(src: BootEntrySource, o: WriteBootEntriesOptions): Promise<WrittenBootEntries> {
  if (src.kernels.length === 0) throw new CfsError('ENOENT', 'no boot entries: the image has no /usr/lib/modules/<kver>/vmlinuz');
  for (const k of src.kernels) {
    if (!k.initramfs) throw new CfsError('ENOENT', `kernel ${k.kver} has no initramfs.img in /usr/lib/modules/${k.kver}`);
  }
  let title = 'Linux';
  if (src.osRelease) {
    const text = (await o.files.read(src.osRelease, '/usr/lib/os-release')).toString('utf8');
    title = osReleaseValue(text, 'PRETTY_NAME') || osReleaseValue(text, 'NAME') || title;
  }
  checkEntryOptions(o.entryId, o.cmdline);
  const written: string[] = [];
  const replaced: WrittenBootEntries['replaced'] = [];
  for (const k of src.kernels) {
    const id = o.entryId === undefined ? k.kver : src.kernels.length === 1 ? o.entryId : `${o.entryId}-${k.kver}`;
    checkEntryId(id);
    const mod = `/usr/lib/modules/${k.kver}`;
    await copyOut(o.files, k.vmlinuz, `${mod}/vmlinuz`, path.join(o.bootdir, id, 'vmlinuz'));
    await copyOut(o.files, k.initramfs!, `${mod}/initramfs.img`, path.join(o.bootdir, id, 'initramfs.img'));
    const entry = path.join(o.bootdir, 'loader', 'entries', `${id}.conf`);
    const previousKarg = await entryKarg(entry);
    await writeAtomic(entry, { data: blsEntryText({ id, title, version: k.kver, karg: o.karg, cmdline: o.cmdline }) });
    written.push(entry);
    if (previousKarg !== null && previousKarg !== o.karg) replaced.push({ entry, previousKarg });
  }
  return { entries: written, replaced };
}
