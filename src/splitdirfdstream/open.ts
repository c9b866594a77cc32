/** Opening a FileBackedData chunk's file beneath its directory fd (brief 5.1). */
import { closeSync, fstatSync, openSync, constants as C, type Stats } from 'node:fs';
import { native } from '../native.js';
import { CfsError, errnoCode } from '../errors.js';
import { checkFileName } from './format.js';

/** What the importer needs of an opened file's stat, read with the open in one native call. */
export interface FileStat {
  dev: number;
  mode: number;
  uid: number;
  gid: number;
  size: number;
  mtimeSec: number;
  mtimeNsec: number;
}

export interface OpenedFile {
  fd: number;
  /** The directory fd it was opened beneath. */
  dirfd: number;
  /** Name relative to its directory, as the stream gave it. */
  name: string;
  stat: FileStat;
}

/** Reused by every call: the native calls fill it, fileStat copies it out. */
const statOut = new Float64Array(7);

function fileStat(o: Float64Array): FileStat {
  return { dev: o[0]!, mode: o[1]!, uid: o[2]!, gid: o[3]!, size: o[4]!, mtimeSec: o[5]!, mtimeNsec: o[6]! };
}

/** fstat of an fd as a FileStat (without the Stats object fs.fstatSync builds). */
export function fstatFile(fd: number): FileStat {
  native().fstatFields(fd, statOut);
  return fileStat(statOut);
}

let openat2Missing = false;

/** A directory fd's stat, or an error naming the slot (dummies in slots are a client bug). */
export function checkDirSlot(dirfds: readonly number[], index: number, where: string): number {
  if (index >= dirfds.length) throw new CfsError('EINVAL', `${where}: dirfd index ${index} out of range (${dirfds.length} directory fds)`);
  const fd = dirfds[index];
  let st: Stats;
  try {
    st = fstatSync(fd);
  } catch (e) {
    throw new CfsError('EINVAL', `${where}: dirfd slot ${index} is unusable: ${(e as Error).message}`);
  }
  if (!st.isDirectory()) {
    throw new CfsError('EINVAL', `${where}: dirfd slot ${index} is not a directory (likely a bug where a dummy fd was named)`);
  }
  return fd;
}

/**
 * Open `name` read-only beneath `dirfd`: openat2 with RESOLVE_BENEATH | RESOLVE_NO_MAGICLINKS |
 * RESOLVE_NO_XDEV; a plain open through /proc/self/fd on kernels without openat2 (the name was
 * checked first). The target must be a regular file; O_NONBLOCK keeps a FIFO from blocking
 * the open (it has no effect on reads of regular files).
 */
export function openBeneath(dirfd: number, rawName: Buffer, where: string): OpenedFile {
  const name = checkFileName(rawName, where);
  const c = native().constants;
  let fd = -1;
  try {
    if (!openat2Missing) {
      try {
        fd = native().openat2(dirfd, name, c.O_RDONLY | C.O_NONBLOCK, 0, c.RESOLVE_BENEATH | c.RESOLVE_NO_MAGICLINKS | c.RESOLVE_NO_XDEV, statOut);
      } catch (e) {
        if (errnoCode(e) !== 'ENOSYS') throw e;
        openat2Missing = true;
      }
    }
    if (fd < 0) {
      fd = openSync(`/proc/self/fd/${dirfd}/${name}`, C.O_RDONLY | C.O_NOFOLLOW | C.O_NONBLOCK);
      try {
        native().fstatFields(fd, statOut);
      } catch (e) {
        closeSync(fd);
        throw e;
      }
    }
  } catch (e) {
    const code = errnoCode(e);
    // RESOLVE_BENEATH/NO_XDEV/NO_MAGICLINKS refusals: the name leads out of its directory.
    if (code === 'EXDEV' || code === 'ELOOP') {
      throw new CfsError('EINVAL', `${where}: ${JSON.stringify(name)} leads outside its directory (through a symlink or a mount point); refused`, { name });
    }
    if (code === 'EMFILE' || code === 'ENFILE') {
      throw new CfsError(code, `${where}: cannot open ${JSON.stringify(name)}: too many open files (${code === 'EMFILE' ? 'raise this process\'s limit, ulimit -n' : 'the system\'s file table is full'})`, { name });
    }
    const cfsCode = code === 'ENOENT' ? 'ENOENT' : code === 'EACCES' || code === 'EPERM' ? 'EPERM' : 'EINVAL';
    throw new CfsError(cfsCode, `${where}: cannot open ${JSON.stringify(name)}: ${(e as Error).message}`, { name });
  }
  const stat = fileStat(statOut);
  if ((stat.mode & C.S_IFMT) !== C.S_IFREG) {
    closeSync(fd);
    throw new CfsError('EINVAL', `${where}: ${JSON.stringify(name)} is not a regular file`);
  }
  return { fd, dirfd, name, stat };
}
