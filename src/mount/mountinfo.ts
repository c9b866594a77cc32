/**
 * /proc/self/mountinfo parser (proc(5)): one line per mount,
 *   ID PARENT MAJ:MIN ROOT MOUNTPOINT OPTIONS [OPTIONAL…] - FSTYPE SOURCE SUPEROPTIONS
 * where space, tab, newline and backslash inside fields are written as octal escapes (\040…).
 */
import { readFileSync, readlinkSync, realpathSync } from 'node:fs';
import path from 'node:path';

export interface MountInfo {
  mountId: number;
  parentId: number;
  device: string; // major:minor
  root: string;
  mountpoint: string;
  options: string; // per-mount options
  optional: string[]; // shared:N, master:N, …
  fsType: string;
  source: string;
  superOptions: string;
}

const MOUNTINFO = '/proc/self/mountinfo';

/** A field's bytes (read as latin1, octal escapes undone) as the UTF-8 text paths are in Node. */
function unescape(field: string): string {
  const bytes = field.replace(/\\([0-7]{3})/g, (_, oct: string) => String.fromCharCode(parseInt(oct, 8)));
  return Buffer.from(bytes, 'latin1').toString('utf8');
}

/** Parse mountinfo text; lines that do not have the documented shape are skipped. */
export function parseMountinfo(text: string): MountInfo[] {
  const out: MountInfo[] = [];
  for (const line of text.split('\n')) {
    if (!line) continue;
    const f = line.split(' ');
    const sep = f.indexOf('-', 6);
    if (sep < 0 || f.length < sep + 4) continue;
    out.push({
      mountId: Number(f[0]),
      parentId: Number(f[1]),
      device: f[2],
      root: unescape(f[3]),
      mountpoint: unescape(f[4]),
      options: f[5],
      optional: f.slice(6, sep),
      fsType: unescape(f[sep + 1]),
      source: unescape(f[sep + 2]),
      superOptions: unescape(f.slice(sep + 3).join(' ')),
    });
  }
  return out;
}

export function readMountinfo(): MountInfo[] {
  return parseMountinfo(readFileSync(MOUNTINFO, 'latin1'));
}

/**
 * The path with symlinks resolved; as given (absolute) when it does not resolve. The path itself
 * is never stat'ed, only its parent (and read as a link): a mount point whose FUSE server hangs
 * would hang a stat, and unmounting it must still work.
 */
export function canonical(p: string, depth = 0): string {
  const abs = path.resolve(p);
  if (abs === '/') return abs;
  let link: string | null = null;
  try {
    link = readlinkSync(abs);
  } catch {
    // not a symlink (or not there)
  }
  if (link !== null && depth < 40) return canonical(path.resolve(path.dirname(abs), link), depth + 1);
  try {
    return path.join(realpathSync(path.dirname(abs)), path.basename(abs));
  } catch {
    return abs;
  }
}

/** The topmost mount at `mountpoint` (the last one listed), or undefined. */
export function findMount(mountpoint: string, mounts: MountInfo[] = readMountinfo()): MountInfo | undefined {
  const want = canonical(mountpoint);
  for (let i = mounts.length - 1; i >= 0; i--) if (mounts[i].mountpoint === want) return mounts[i];
  return undefined;
}

export function isComposefsMount(m: MountInfo): boolean {
  if (m.fsType === 'overlay') return m.source.startsWith('composefs:');
  return m.fsType === 'fuse.cfs' || (m.fsType.startsWith('fuse') && m.source.startsWith('cfs:'));
}

/** Kernel composefs overlays (source composefs:…) and cfs FUSE mounts (fuse.cfs or source cfs:…). */
export function listComposefsMounts(mounts: MountInfo[] = readMountinfo()): MountInfo[] {
  return mounts.filter(isComposefsMount);
}

/** The uid a FUSE mount was made by (its `user_id=` super option); null for other mounts. */
export function fuseMountUid(m: MountInfo): number | null {
  const uid = /(?:^|,)user_id=(\d+)(?:,|$)/.exec(m.superOptions)?.[1];
  return uid === undefined ? null : Number(uid);
}
