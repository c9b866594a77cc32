/**
 * C libcomposefs's per-inode xattr accounting (lcfs_node_set_xattr), reproduced so we accept and
 * reject exactly the same inputs. The counter is an unsigned 64-bit value in C; here it is a
 * signed number and "wrapped below zero" is detected as negative.
 */
import { XATTR_BUDGET_EXTERNAL, XATTR_HDR_SIZE, XATTR_NAME_MAX, XATTR_VALUE_MAX, XATTR_ENTRY_SIZE } from './format.js';

/** Worst-case bytes C charges per entry besides key and value (2 * entry header - 1). */
const ENTRY_OVERHEAD = 2 * XATTR_ENTRY_SIZE - 1;

/** The part of Map the accounting needs (the writer uses a lighter store). */
export interface XattrStore<V extends { length: number }> {
  readonly size: number;
  get(key: string): V | undefined;
  delete(key: string): boolean;
  set(key: string, value: V): unknown;
}

/**
 * Set `key` = `value` in `xattrs` with C's accounting. Returns the new counter, or null when C
 * would refuse (bad key length, value too long, or over budget); `xattrs` is then unchanged.
 * Values are Buffers or latin1 byte strings (length = bytes either way).
 */
export function setXattrCounted<V extends { length: number }>(xattrs: XattrStore<V>, acct: number, key: string, value: V): number | null {
  if (key.length === 0 || key.length > XATTR_NAME_MAX || value.length > XATTR_VALUE_MAX) return null;
  const old = xattrs.get(key);
  let a = acct;
  let n = xattrs.size;
  if (old !== undefined) {
    n--;
    a = n > 0 ? a - (ENTRY_OVERHEAD + key.length + old.length) : 0;
  }
  let entry = ENTRY_OVERHEAD + key.length + value.length;
  if (n === 0) entry += XATTR_HDR_SIZE;
  const sum = a + entry;
  if (sum < 0 || sum > XATTR_BUDGET_EXTERNAL) return null;
  if (old !== undefined) xattrs.delete(key);
  xattrs.set(key, value);
  return sum;
}
