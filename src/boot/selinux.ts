/**
 * SELinux labelling of an image tree from the image's own policy, as composefs-rs does it
 * (composefs-boot `selabel.rs`), so boot image IDs match `cfsctl … --bootable`:
 *
 * - No `/etc/selinux` directory, no `/etc/selinux/config`, or no `SELINUXTYPE=` line in it
 *   → no policy: every `security.selinux` xattr is removed.
 * - Otherwise the policy type T names `/etc/selinux/T/contexts/files/`, which must hold
 *   `file_contexts`; `file_contexts.local` and `file_contexts.homedirs` are appended when
 *   present. Spec lines are `REGEX [-TYPE] CONTEXT` (whitespace separated, `#` comments);
 *   TYPE is one of `--` (regular) `-d -l -c -b -p -s`; CONTEXT `<<none>>` means "no label".
 * - `file_contexts.subs` then `file_contexts.subs_dist` hold `ALIAS ORIGINAL` path pairs
 *   (later ones win). A path equal to an ALIAS is looked up as ORIGINAL, and its subtree is
 *   walked under the ORIGINAL name.
 * - Each spec matches the key `<path><type char>` with `^(REGEX)<type>$` (`.` in place of
 *   <type> when the spec has none). The LAST matching spec in file order wins. This is the
 *   composefs-rs rule; libselinux additionally prefers specs without regex metacharacters,
 *   which composefs-rs (and so this module) does not do.
 * - Every inode is labelled (`security.selinux` = the context bytes, no NUL) or unlabelled.
 *   Hardlinks stay one inode, labelled for the LAST of its paths met (depth-first, names in
 *   byte order), as composefs-rs relabels its shared leaf.
 *
 * Regex syntax: see selinux-regex.ts; anything outside the supported subset is an error naming
 * the file and line, never a silently wrong label.
 */
import { CfsError } from '../errors.js';
import { isDir, S_IFBLK, S_IFCHR, S_IFDIR, S_IFIFO, S_IFLNK, S_IFMT, S_IFREG, S_IFSOCK, sortedEntries, type Inode } from '../tree/inode.js';
import { RegexSyntaxError, translateRegex } from './selinux-regex.js';

export const XATTR_SELINUX = 'security.selinux';
const NO_LABEL = '<<none>>';
const TYPE_CODES = new Set(['b', 'c', 'd', 'p', 'l', 's', '-']);
const SPEC_FILES = ['file_contexts', 'file_contexts.local', 'file_contexts.homedirs'];
const SUBS_FILES = ['file_contexts.subs', 'file_contexts.subs_dist'];

/** Reads a regular file of the tree (inline content, or its object). */
export type TreeFileReader = (file: Inode, path: string) => Promise<Buffer>;

interface Spec {
  re: RegExp;
  prefix: string;
  /** Context bytes (latin1), or null for `<<none>>`. */
  context: string | null;
}

export interface SelinuxPolicy {
  /** In priority order: index 0 is the last spec of the files. */
  specs: Spec[];
  aliases: Map<string, string>;
}

function typeChar(mode: number): string {
  switch (mode & S_IFMT) {
    case S_IFDIR:
      return 'd';
    case S_IFREG:
      return '-';
    case S_IFLNK:
      return 'l';
    case S_IFCHR:
      return 'c';
    case S_IFBLK:
      return 'b';
    case S_IFIFO:
      return 'p';
    case S_IFSOCK:
      return 's';
    default:
      throw new CfsError('EINVAL', `inode with unknown file type ${(mode & S_IFMT).toString(8)}`);
  }
}

function lines(text: string): string[] {
  return text.split('\n');
}

function fields(line: string): string[] {
  return line.split(/[ \t\n\v\f\r]+/).filter((f) => f.length > 0);
}

/** Parse one spec file (latin1 text) and append its specs, in file order. */
export function parseSpecFile(text: string, fileName: string, out: Spec[]): void {
  lines(text).forEach((line, idx) => {
    const where = `${fileName} line ${idx + 1}`;
    const f = fields(line);
    if (f.length === 0 || f[0].startsWith('#')) return;
    let type = '.';
    let context: string;
    if (f.length < 2) throw new CfsError('EINVAL', `SELinux ${where}: missing context after the regex`);
    if (f[1].startsWith('-')) {
      const code = f[1].slice(1);
      if (!TYPE_CODES.has(code)) throw new CfsError('EINVAL', `SELinux ${where}: invalid file type '${f[1]}'`);
      if (f.length < 3) throw new CfsError('EINVAL', `SELinux ${where}: missing context after the file type`);
      type = code === '-' ? '-' : code;
      context = f[2];
      if (f.length > 3) throw new CfsError('EINVAL', `SELinux ${where}: trailing data`);
    } else {
      context = f[1];
      if (f.length > 2) throw new CfsError('EINVAL', `SELinux ${where}: trailing data`);
    }
    let translated;
    try {
      translated = translateRegex(f[0]);
    } catch (e) {
      if (e instanceof RegexSyntaxError) throw new CfsError('ENOTSUP', `SELinux ${where}: regex '${f[0]}' is not supported: ${e.message}`);
      throw e;
    }
    const typeRe = type === '.' ? '[^\\n]' : type === '-' ? '\\x2d' : type;
    let re: RegExp;
    try {
      re = new RegExp(`^(?:${translated.source})${typeRe}$`);
    } catch (e) {
      throw new CfsError('ENOTSUP', `SELinux ${where}: regex '${f[0]}' is not supported: ${(e as Error).message}`);
    }
    out.push({ re, prefix: translated.literalPrefix, context: context === NO_LABEL ? null : context });
  });
}

/** Parse one substitution file (`ALIAS ORIGINAL` per line) into `aliases`. */
export function parseSubsFile(text: string, fileName: string, aliases: Map<string, string>): void {
  lines(text).forEach((line, idx) => {
    const f = fields(line);
    if (f.length === 0 || f[0].startsWith('#')) return;
    if (f.length < 2) throw new CfsError('EINVAL', `SELinux ${fileName} line ${idx + 1}: missing original path`);
    if (f.length > 2) throw new CfsError('EINVAL', `SELinux ${fileName} line ${idx + 1}: trailing data`);
    aliases.set(f[0], f[1]);
  });
}

/** The SELINUXTYPE value of /etc/selinux/config, or null. */
export function parseSelinuxConfig(text: string): string | null {
  for (const line of lines(text)) {
    const eq = line.indexOf('=');
    if (eq < 0) continue;
    // A commented line has a key starting with '#', which never matches.
    if (line.slice(0, eq).trim().toUpperCase() === 'SELINUXTYPE') return line.slice(eq + 1).trim();
  }
  return null;
}

/** Build a policy from file contents (latin1 strings). `file_contexts` is mandatory. */
export function buildPolicy(files: Map<string, string>, dirName = 'contexts/files'): SelinuxPolicy {
  const specs: Spec[] = [];
  if (!files.has('file_contexts')) throw new CfsError('ENOENT', `SELinux policy is missing the mandatory file ${dirName}/file_contexts`);
  for (const name of SPEC_FILES) {
    const text = files.get(name);
    if (text !== undefined) parseSpecFile(text, `${dirName}/${name}`, specs);
  }
  const aliases = new Map<string, string>();
  for (const name of SUBS_FILES) {
    const text = files.get(name);
    if (text !== undefined) parseSubsFile(text, `${dirName}/${name}`, aliases);
  }
  specs.reverse();
  return { specs, aliases };
}

/** The context for a path (byte string) and type char, or null (no match, or `<<none>>`). */
export function lookupLabel(policy: SelinuxPolicy, path: string, type: string): string | null {
  const key = path + type;
  for (const s of policy.specs) {
    if (s.prefix && !key.startsWith(s.prefix)) continue;
    if (s.re.test(key)) return s.context;
  }
  return null;
}

function child(dir: Inode, name: string): Inode | undefined {
  return dir.children?.get(name);
}

function regularFile(dir: Inode, name: string, path: string): Inode | null {
  const n = child(dir, name);
  if (n === undefined) return null;
  if ((n.mode & S_IFMT) !== S_IFREG) throw new CfsError('EINVAL', `SELinux policy file ${path} is not a regular file`);
  return n;
}

/**
 * Load the image's policy (see the module comment); null when the image has none. Files are
 * read through `read` (inline content or repository/disk objects).
 */
export async function loadSelinuxPolicy(root: Inode, read: TreeFileReader): Promise<SelinuxPolicy | null> {
  const etc = child(root, 'etc');
  const selinux = etc && isDir(etc) ? child(etc, 'selinux') : undefined;
  if (!selinux || !isDir(selinux)) return null;
  const configNode = regularFile(selinux, 'config', '/etc/selinux/config');
  if (!configNode) return null;
  const type = parseSelinuxConfig((await read(configNode, '/etc/selinux/config')).toString('latin1'));
  if (type === null) return null;
  const base = `/etc/selinux/${type}/contexts/files`;
  let dir: Inode | undefined = selinux;
  for (const comp of [type, 'contexts', 'files']) {
    dir = dir && isDir(dir) && comp !== '' && !comp.includes('/') ? child(dir, comp) : undefined;
  }
  if (!dir || !isDir(dir)) throw new CfsError('ENOENT', `SELinux policy '${type}' from /etc/selinux/config has no directory ${base}`);
  const files = new Map<string, string>();
  for (const name of [...SPEC_FILES, ...SUBS_FILES]) {
    const node = regularFile(dir, name, `${base}/${name}`);
    if (node) files.set(name, (await read(node, `${base}/${name}`)).toString('latin1'));
  }
  return buildPolicy(files, base);
}

function setLabel(n: Inode, label: string | null): void {
  if (label === null) n.xattrs.delete(XATTR_SELINUX);
  else n.xattrs.set(XATTR_SELINUX, Buffer.from(label, 'latin1'));
}

/** Label every inode of the tree from `policy` (see the module comment). */
export function relabelTree(root: Inode, policy: SelinuxPolicy): void {
  const walk = (dir: Inode, path: string): void => {
    setLabel(dir, lookupLabel(policy, path, 'd'));
    for (const [name, node] of sortedEntries(dir)) {
      const childPath = path === '/' ? `/${name}` : `${path}/${name}`;
      const effective = policy.aliases.get(childPath) ?? childPath;
      if (isDir(node)) walk(node, effective);
      else setLabel(node, lookupLabel(policy, effective, typeChar(node.mode)));
    }
  };
  walk(root, '/');
}

/** Remove `security.selinux` from every inode. */
export function stripSelinuxLabels(root: Inode): void {
  const seen = new Set<Inode>();
  const walk = (n: Inode): void => {
    if (seen.has(n)) return;
    seen.add(n);
    n.xattrs.delete(XATTR_SELINUX);
    if (n.children) for (const c of n.children.values()) walk(c);
  };
  walk(root);
}
