/**
 * Backing objects of external files: one read-only fd per object while it is in use, kept
 * open afterwards in a small LRU (reads may come without open/release around them); the
 * fs-verity check on first use (kernel measurement when the object has fs-verity, else a
 * userspace digest), with the verdict remembered so a bad object fails fast.
 */
import { closeSync, fstatSync, openSync, constants as fsc } from 'node:fs';
import path from 'node:path';
import type { HashAlg } from '../../fsverity/digest.js';
import { objectProblem } from '../object-check.js';
import type { ByteString } from '../../tree/inode.js';

/** Unused objects whose fd stays open. */
const IDLE_FDS = 128;

export interface BackingObject {
  readonly payload: ByteString;
  readonly fd: number;
  refs: number;
  /** Passthrough backing id registered with the FUSE connection, or 0. */
  backingId: number;
}

/** Open an object file for reading: a regular file, or an error (a FIFO or device is not an object). */
export function openRegularObject(file: string): number {
  const fd = openSync(file, fsc.O_RDONLY | fsc.O_NOFOLLOW | fsc.O_NONBLOCK);
  if (!fstatSync(fd).isFile()) {
    closeSync(fd);
    throw new Error('not a regular file');
  }
  return fd;
}

export class ObjectCache {
  private readonly open = new Map<ByteString, BackingObject>();
  /** Open objects without references, oldest first. */
  private readonly idle = new Map<ByteString, BackingObject>();
  /** Per object: verified ok (true) or failed (false); absent = not checked yet. */
  private readonly verified = new Map<ByteString, boolean>();
  /** Objects whose open failure was logged (retried silently: the repository may be repaired). */
  private readonly reported = new Set<ByteString>();

  constructor(
    private readonly objectsDir: string,
    private readonly verify: { alg: HashAlg } | undefined,
    private readonly log: (line: string) => void,
    /** Called when an object's last reference goes, before its fd is closed. */
    private readonly onDrop: (obj: BackingObject) => void,
  ) {}

  /**
   * A referenced object, or null (missing, unreadable or failed verification: logged, naming
   * the file by `where`, called only then).
   */
  acquire(payload: ByteString, digest: Buffer | null, where: () => string): BackingObject | null {
    const cached = this.open.get(payload);
    if (cached) {
      if (cached.refs++ === 0) this.idle.delete(payload);
      return cached;
    }
    if (this.verified.get(payload) === false) return null;
    const file = path.join(this.objectsDir, payload);
    let fd: number;
    try {
      // Non-blocking and checked: a FIFO put in objects/ must not stall the whole server.
      fd = openRegularObject(file);
    } catch (e) {
      if (!this.reported.has(payload)) this.log(`cfs fuse: ${where()}: cannot open object ${payload}: ${(e as Error).message}`);
      this.reported.add(payload);
      return null;
    }
    if (this.verify && !this.verified.has(payload)) {
      const problem = objectProblem(fd, file, payload, digest, this.verify.alg);
      this.verified.set(payload, problem === null);
      if (problem !== null) {
        this.log(`cfs fuse: ${where()}: ${problem}`);
        closeSync(fd);
        return null;
      }
    }
    const obj: BackingObject = { payload, fd, refs: 1, backingId: 0 };
    this.open.set(payload, obj);
    return obj;
  }

  release(obj: BackingObject): void {
    if (--obj.refs > 0) return;
    this.idle.set(obj.payload, obj);
    if (this.idle.size > IDLE_FDS) this.close(this.idle.values().next().value!);
  }

  /** Close every unused object (at the end of the connection). */
  clear(): void {
    for (const obj of [...this.idle.values()]) this.close(obj);
  }

  private close(obj: BackingObject): void {
    this.idle.delete(obj.payload);
    this.open.delete(obj.payload);
    this.onDrop(obj);
    closeSync(obj.fd);
  }
}
