/**
 * The varlink interfaces cfs serves: their names, their descriptions (the `.varlink` files, served
 * by GetInterfaceDescription) and how a failure a handler did not map becomes their error.
 * Shared by the repository service and the containers-storage helper's service.
 */
import { readFileSync } from 'node:fs';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { isCfsError } from '../errors.js';
import { VarlinkError } from './protocol.js';

export const REPO = 'org.composefs.Repository';
export const OCI = 'org.composefs.Oci';

export function interfaceText(name: string): string {
  const here = path.dirname(fileURLToPath(import.meta.url));
  // Sources: next to this file; compiled: dist/src/varlink → ../../../src/varlink.
  for (const dir of [path.join(here, 'interfaces'), path.resolve(here, '../../../src/varlink/interfaces')]) {
    try {
      return readFileSync(path.join(dir, `${name}.varlink`), 'utf8');
    } catch {
      // try the next layout
    }
  }
  throw new Error(`varlink interface description ${name}.varlink not found`);
}

/** Errors a handler did not map: a bad argument (CfsError EINVAL) is the interface's `invalid` error, the rest InternalError. */
export const errorFor = (iface: string, invalid: string) => (e: unknown): VarlinkError => {
  if (e instanceof VarlinkError) return e;
  if (isCfsError(e) && e.code === 'EINVAL') return new VarlinkError(`${iface}.${invalid}`, { message: e.message });
  return new VarlinkError(`${iface}.InternalError`, { message: e instanceof Error ? e.message : String(e) });
};
