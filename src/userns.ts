/**
 * Whose ids a user namespace's ids are. Inside `podman unshare` we are uid 0 of a namespace
 * whose other ids map onto the invoking user's subordinate ids (/etc/subuid): only that user can
 * act as them, so files they own are as good as ours. A namespace root made (an identity map,
 * `systemd-nspawn --private-users=identity`) maps real users' ids: theirs stay theirs. So does
 * the initial namespace, whose map is the identity over every id.
 */
import { readFileSync, readlinkSync } from 'node:fs';

export interface IdRange {
  inside: number;
  outside: number;
  count: number;
}

/** /proc/PID/uid_map text → ranges. */
export function parseIdMap(text: string): IdRange[] {
  return text
    .split('\n')
    .map((l) => l.trim().split(/\s+/).map(Number))
    .filter((f) => f.length === 3 && f.every(Number.isInteger))
    .map(([inside, outside, count]) => ({ inside: inside!, outside: outside!, count: count! }));
}

/** The parent namespace's id of `id`, or null when it is not mapped. */
export function outsideId(map: IdRange[], id: number): number | null {
  const r = map.find((m) => id >= m.inside && id < m.inside + m.count);
  return r ? r.outside + (id - r.inside) : null;
}

/** /etc/subuid text → the ranges granted to a user (named by login name or uid). */
export function subordinateRanges(text: string, name: string | null, uid: number): Array<{ start: number; count: number }> {
  const out: Array<{ start: number; count: number }> = [];
  for (const line of text.split('\n')) {
    const [who, start, count] = line.trim().split(':');
    if (start === undefined || count === undefined || !(who === name || who === String(uid))) continue;
    if (/^\d+$/.test(start) && /^\d+$/.test(count)) out.push({ start: Number(start), count: Number(count) });
  }
  return out;
}

/**
 * Whether `uid` (of our namespace) belongs to the namespace's owner, given our uid in it: the
 * owner's own id, or one of its subordinate ids. Never for a namespace root owns (other users' ids).
 */
export function ownerControls(uid: number, ourUid: number, map: IdRange[], subRanges: Array<{ start: number; count: number }>): boolean {
  const me = outsideId(map, ourUid);
  const it = outsideId(map, uid);
  if (me === null || it === null) return false;
  if (it === me) return true;
  if (me === 0) return false;
  return subRanges.some((r) => it >= r.start && it < r.start + r.count);
}

function loginName(uid: number): string | null {
  try {
    for (const line of readFileSync('/etc/passwd', 'utf8').split('\n')) {
      const f = line.split(':');
      if (f[2] === String(uid)) return f[0] ?? null;
    }
  } catch {
    // no passwd: ranges keyed by uid still match
  }
  return null;
}

/** Per uid of ours: its test (the namespace is read once per process; it does not change). */
const cached = new Map<number, (uid: number) => boolean>();

/** ownerControls for this process's namespace. */
export function namespaceOwnerControls(uid: number, ourUid: number): boolean {
  let test = cached.get(ourUid);
  if (!test) {
    let map: IdRange[] = [];
    try {
      map = parseIdMap(readFileSync('/proc/self/uid_map', 'utf8'));
    } catch {
      // no map: nothing is the owner's
    }
    const me = outsideId(map, ourUid);
    let ranges: Array<{ start: number; count: number }> = [];
    if (me !== null && me !== 0) {
      try {
        ranges = subordinateRanges(readFileSync('/etc/subuid', 'utf8'), loginName(me), me);
      } catch {
        // no subordinate ids
      }
    }
    const found = (u: number): boolean => ownerControls(u, ourUid, map, ranges);
    cached.set(ourUid, found);
    test = found;
  }
  return test(uid);
}

/**
 * Whether we run in the initial user namespace: our /proc/self/ns/user link names the same
 * namespace as pid 1's. When pid 1's link is unreadable (hidden /proc, foreign pid 1), fall back
 * to /proc/self/uid_map: only the initial namespace maps the whole uid range onto itself.
 */
export function inInitialUserNamespace(): boolean {
  try {
    return readlinkSync('/proc/self/ns/user') === readlinkSync('/proc/1/ns/user');
  } catch {
    try {
      const lines = readFileSync('/proc/self/uid_map', 'latin1').trim().split('\n');
      return lines.length === 1 && /^\s*0\s+0\s+4294967295\s*$/.test(lines[0]);
    } catch {
      return false;
    }
  }
}

/** Permission bits (of one class: the other class's position) that mayAccessWithoutCaps asks for. */
export const ACCESS = { read: 4, search: 1 } as const;
const OWNER_SHIFT = 6;
const GROUP_SHIFT = 3;

/**
 * Whether our euid/egid, without capabilities, may `bit` a file of this owner and mode, as the
 * kernel decides it from the mode bits: the owner's class for its owner, else the group's for
 * its group, else the others'. (ACLs are the caller's business.) What the store's owner may do
 * outside the user namespace we are root of, when we run inside `podman unshare`.
 */
export function mayAccessWithoutCaps(st: { uid: number; gid: number; mode: number }, bit: number): boolean {
  if (st.uid === process.geteuid?.()) return (st.mode & (bit << OWNER_SHIFT)) !== 0;
  if (st.gid === process.getegid?.()) return (st.mode & (bit << GROUP_SHIFT)) !== 0;
  return (st.mode & bit) !== 0;
}
