/**
 * Backing objects of external files: one read-only fd per object while it is in use, kept
 * open afterwards in a small LRU (reads may come without open/release around them); the
 * fs-verity check on first use (kernel measurement when the object has fs-verity, else a
 * userspace digest), with the verdict remembered so a bad object fails fast.
 */
import { closeSync, openSync, readSync, constants as fsc } from 'node:fs';
import path from 'node:path';
import { FsVerityHasher, type HashAlg } from '../../fsverity/digest.js';
import { measureVerityFd } from '../../fsverity/kernel.js';
import type { ByteString } from '../../tree/inode.js';

const HASH_CHUNK = 1 << 20;
/** Unused objects whose fd stays open. */
const IDLE_FDS = 128;

export interface BackingObject {
  readonly payload: ByteString;
  readonly fd: number;
  refs: number;
  /** Passthrough backing id registered with the FUSE connection, or 0. */
  backingId: number;
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

  /** A referenced object, or null (missing, unreadable or failed verification: logged). */
  acquire(payload: ByteString, digest: Buffer | null, what: string): BackingObject | null {
    const cached = this.open.get(payload);
    if (cached) {
      if (cached.refs++ === 0) this.idle.delete(payload);
      return cached;
    }
    if (this.verified.get(payload) === false) return null;
    const file = path.join(this.objectsDir, payload);
    let fd: number;
    try {
      fd = openSync(file, fsc.O_RDONLY | fsc.O_NOFOLLOW);
    } catch (e) {
      if (!this.reported.has(payload)) this.log(`cfs fuse: ${what}: cannot open object ${payload}: ${(e as Error).message}`);
      this.reported.add(payload);
      return null;
    }
    if (this.verify && !this.verified.has(payload)) {
      const ok = this.check(fd, file, payload, digest, what, this.verify.alg);
      this.verified.set(payload, ok);
      if (!ok) {
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

  private check(fd: number, file: string, payload: ByteString, want: Buffer | null, what: string, alg: HashAlg): boolean {
    if (!want) {
      this.log(`cfs fuse: ${what}: no fs-verity digest recorded for object ${payload}`);
      return false;
    }
    let digest: Buffer | null = null;
    try {
      const m = measureVerityFd(fd, file);
      if (m.alg === alg) digest = m.digest;
    } catch {
      // No kernel fs-verity on this file, filesystem or kernel: hash it ourselves below.
    }
    try {
      digest ??= hashFd(fd, alg);
    } catch (e) {
      this.log(`cfs fuse: ${what}: cannot read object ${payload}: ${(e as Error).message}`);
      return false;
    }
    if (digest.equals(want)) return true;
    this.log(`cfs fuse: ${what}: object ${payload} has fs-verity digest ${digest.toString('hex')}, expected ${want.toString('hex')}`);
    return false;
  }
}

function hashFd(fd: number, alg: HashAlg): Buffer {
  const h = new FsVerityHasher(alg);
  const buf = Buffer.allocUnsafe(HASH_CHUNK);
  for (let pos = 0; ; ) {
    const got = readSync(fd, buf, 0, HASH_CHUNK, pos);
    if (got === 0) break;
    h.update(buf.subarray(0, got));
    pos += got;
  }
  return h.digest();
}
