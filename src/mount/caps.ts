/**
 * Can this process mount filesystems? The kernel composefs path needs CAP_SYS_ADMIN in the
 * initial user namespace: EROFS refuses to mount inside a user namespace.
 */
import { readFileSync, readlinkSync } from 'node:fs';

const CAP_SYS_ADMIN = 21n;

/** CapEff from /proc/self/status, or null when it cannot be read. */
function effectiveCaps(): bigint | null {
  try {
    const m = /^CapEff:\s*([0-9a-f]+)$/m.exec(readFileSync('/proc/self/status', 'latin1'));
    return m ? BigInt(`0x${m[1]}`) : null;
  } catch {
    return null;
  }
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

/** CAP_SYS_ADMIN in the effective set, in the initial user namespace. */
export function hasMountPrivilege(): boolean {
  const caps = effectiveCaps();
  return caps !== null && ((caps >> CAP_SYS_ADMIN) & 1n) === 1n && inInitialUserNamespace();
}
