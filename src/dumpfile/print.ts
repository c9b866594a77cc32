/**
 * Dumpfile printer, line for line like `composefs-info dump`: depth-first pre-order, children in
 * byte order; the first occurrence of a hardlinked inode is printed in full, later ones with `@`
 * before MODE and the first occurrence's path as PAYLOAD.
 */
import { S_IFMT, S_IFBLK, S_IFCHR, sortedEntries, type Inode } from '../tree/inode.js';
import { escape } from './escape.js';

function line(path: string, n: Inode, linkTarget: string | null): string {
  const type = n.mode & S_IFMT;
  const rdev = type === S_IFCHR || type === S_IFBLK ? n.rdev : 0;
  const payload = linkTarget ?? n.payload;
  let out =
    `${escape(path)} ${n.size} ${linkTarget !== null ? '@' : ''}${n.mode.toString(8)} ${n.nlink} ${n.uid} ${n.gid} ${rdev} ` +
    `${n.mtimeSec}.${n.mtimeNsec >>> 0} ` +
    `${payload === null ? '-' : escape(payload, { loneDash: true })} ` +
    `${n.content === null ? '-' : escape(n.content.toString('latin1'), { loneDash: true })} ` +
    `${n.digest === null ? '-' : n.digest.toString('hex')}`;
  for (const [k, v] of n.xattrs) out += ` ${escape(k, { equal: true })}=${escape(v.toString('latin1'), { equal: true })}`;
  return out + '\n';
}

/** Visit every entry depth-first in name order: (path, inode, path of its first occurrence or null). */
export function walkTree(root: Inode, visit: (path: string, node: Inode, firstPath: string | null) => void): void {
  const seen = new Map<Inode, string>();
  const stack: Array<[string, Inode]> = [['/', root]];
  while (stack.length > 0) {
    const [path, node] = stack.pop()!;
    const first = seen.get(node);
    if (first !== undefined) {
      visit(path, node, first);
      continue;
    }
    seen.set(node, path);
    visit(path, node, null);
    if (node.children === null) continue;
    const entries = sortedEntries(node);
    const prefix = path === '/' ? '/' : path + '/';
    for (let i = entries.length - 1; i >= 0; i--) stack.push([prefix + entries[i]![0], entries[i]![1]]);
  }
}

/** The dumpfile text of a tree (latin1 bytes). */
export function printDumpfile(root: Inode): Buffer {
  const parts: string[] = [];
  walkTree(root, (path, node, first) => parts.push(line(path, node, first)));
  return Buffer.from(parts.join(''), 'latin1');
}
