/**
 * Can this process mount filesystems? The kernel composefs path needs CAP_SYS_ADMIN in the
 * initial user namespace: EROFS refuses to mount inside a user namespace.
 */
import { readFileSync } from 'node:fs';
import { inInitialUserNamespace } from '../userns.js';

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

/** CAP_SYS_ADMIN in the effective set, in the initial user namespace. */
export function hasMountPrivilege(): boolean {
  const caps = effectiveCaps();
  return caps !== null && ((caps >> CAP_SYS_ADMIN) & 1n) === 1n && inInitialUserNamespace();
}
