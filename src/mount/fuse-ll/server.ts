/**
 * Answers kernel FUSE requests for a read-only composefs tree: one request buffer in, one reply
 * (in `out`) back. Node ids are the table's inode numbers and never go away, so lookup counts
 * (FORGET) need no bookkeeping. Everything the kernel may cache is handed out with a day-long
 * validity: the image is immutable. Writes of any kind fail with EROFS, unknown requests ENOSYS.
 *
 * Opens are stateless. OPENDIR always, and OPEN unless passthrough is on, answer ENOSYS: the
 * kernel then stops sending them (and their RELEASEs) and keeps page and directory caches
 * across opens, so a warm tree costs no requests at all. Objects are then checked (exists,
 * fs-verity) on their first READ, which fails with EIO instead of the open. With passthrough
 * (root), OPEN registers the object as backing file and the kernel reads it directly.
 */
import { readSync } from 'node:fs';
import { type HashAlg } from '../../fsverity/digest.js';
import { isDir, isReg, isSymlink, type Inode } from '../../tree/inode.js';
import { ObjectCache, type BackingObject } from './objects.js';
import {
  AccessIn, AttrOut, Dirent, EntryOut, FOPEN_KEEP_CACHE, FOPEN_NOFLUSH, FOPEN_PASSTHROUGH,
  FUSE_KERNEL_MINOR_VERSION, FUSE_KERNEL_VERSION, GetxattrIn, InHeader, Init, Init2, InitIn, InitOut, Kstatfs,
  Op, OpenIn, OpenOut, OutHeader, ReadIn, Size, WRITE_OPS, direntSize, readU64, writeU64,
} from './protocol.js';
import { NodeTable } from './table.js';

// errno values (replies carry them negated)
const ENOENT = 2;
const EIO = 5;
const ENOTDIR = 20;
const EISDIR = 21;
const EINVAL = 22;
const EROFS = 30;
const ERANGE = 34;
const ENAMETOOLONG = 36;
const ENOSYS = 38;
const ENODATA = 61;
const EPROTO = 71;

const O_ACCMODE = 3;
const O_TRUNC = 0o1000;
const W_OK = 2;
const TTL_SECONDS = 86400;
const NAME_MAX = 255;
const BLOCK_SIZE = 4096;
/** Largest READ the kernel may send: max_pages pages (FUSE_MAX_PAGES). */
const MAX_PAGES = 256;
export const MAX_READ = MAX_PAGES * 4096;
/** Requests are small (no writes reach a read-only mount), but the kernel refuses a read
 *  buffer smaller than max(8 KiB, header + fuse_write_in + max_write). */
const MAX_WRITE = 4096;
export const REQUEST_BUFFER_SIZE = 64 * 1024 + MAX_WRITE;

/** Registration of backing files for FUSE passthrough (kernel 6.9+, CAP_SYS_ADMIN). */
export interface PassthroughOps {
  open(fd: number): number;
  close(id: number): void;
}

export interface ServerOptions {
  objectsDir: string;
  verify?: { alg: HashAlg };
  log: (line: string) => void;
}

/** Requests that get no reply. */
const NO_REPLY: ReadonlySet<number> = new Set([Op.FORGET, Op.BATCH_FORGET, Op.INTERRUPT]);

export class FuseLlServer {
  readonly table: NodeTable;
  /** The reply being built: out header, then payload. */
  readonly out = Buffer.alloc(Size.OUT_HEADER + MAX_READ);
  /** Set once INIT has been answered. */
  initialized = false;
  /** Passthrough agreed with the kernel at INIT. */
  passthrough = false;
  private readonly objects: ObjectCache;
  private passthroughOps: PassthroughOps | undefined;

  constructor(root: Inode, private readonly opts: ServerOptions) {
    this.table = new NodeTable(root);
    this.objects = new ObjectCache(opts.objectsDir, opts.verify, opts.log, (obj) => {
      if (obj.backingId !== 0) this.closeBacking(obj);
    });
  }

  /** Offer FUSE passthrough to the kernel at INIT; used when it agrees. */
  offerPassthrough(ops: PassthroughOps | undefined): void {
    this.passthroughOps = ops;
  }

  /** Answer one request of `len` bytes in `req`; returns the reply length in `out` (0: none). */
  dispatch(req: Buffer, len: number): number {
    const opcode = req.readUInt32LE(InHeader.opcode);
    if (NO_REPLY.has(opcode)) return 0;
    req.copy(this.out, OutHeader.unique, InHeader.unique, InHeader.unique + 8);
    const id = readU64(req, InHeader.nodeid);
    const body = Size.IN_HEADER;
    if (opcode === Op.INIT) return this.init(req, body);
    if (!this.initialized) return this.error(EPROTO);
    if (WRITE_OPS.has(opcode)) return this.error(EROFS);
    if (opcode === Op.DESTROY || opcode === Op.RELEASE || opcode === Op.RELEASEDIR) return this.reply(0);
    // FLUSH/FSYNC: ENOSYS tells the kernel to never send them again (and counts as success).
    if (opcode === Op.FLUSH || opcode === Op.FSYNC || opcode === Op.FSYNCDIR) return this.error(ENOSYS);
    if (opcode === Op.STATFS) return this.statfs();
    const node = id >= 1 && id < this.table.nodes.length ? this.table.nodes[id] : undefined;
    if (!node) return this.error(ENOENT);
    switch (opcode) {
      case Op.LOOKUP:
        return this.lookup(node, req, body, len);
      case Op.GETATTR:
        return this.getattr(id);
      case Op.READLINK:
        return this.readlink(node);
      case Op.OPEN:
        return this.openFile(id, node, req.readUInt32LE(body + OpenIn.flags));
      case Op.READ:
        return this.read(id, node, req, body);
      case Op.OPENDIR:
        return this.error(ENOSYS);
      case Op.READDIR:
        return this.readdir(id, req, body, false);
      case Op.READDIRPLUS:
        return this.readdir(id, req, body, true);
      case Op.GETXATTR:
        return this.getxattr(node, req, body, len);
      case Op.LISTXATTR:
        return this.listxattr(node, req.readUInt32LE(body + GetxattrIn.size));
      case Op.ACCESS:
        return req.readUInt32LE(body + AccessIn.mask) & W_OK ? this.error(EROFS) : this.reply(0);
      default:
        return this.error(ENOSYS);
    }
  }

  /** Close every object (the connection is gone). */
  shutdown(): void {
    this.objects.clear();
  }

  // ---- replies ----------------------------------------------------------------------------------

  private reply(payloadLen: number): number {
    const len = Size.OUT_HEADER + payloadLen;
    this.out.writeUInt32LE(len, OutHeader.len);
    this.out.writeInt32LE(0, OutHeader.error);
    return len;
  }

  private error(errno: number): number {
    this.out.writeUInt32LE(Size.OUT_HEADER, OutHeader.len);
    this.out.writeInt32LE(-errno, OutHeader.error);
    return Size.OUT_HEADER;
  }

  private bytes(data: Buffer): number {
    data.copy(this.out, Size.OUT_HEADER);
    return this.reply(data.length);
  }

  // ---- operations -------------------------------------------------------------------------------

  private init(req: Buffer, body: number): number {
    const major = req.readUInt32LE(body + InitIn.major);
    const minor = req.readUInt32LE(body + InitIn.minor);
    const o = Size.OUT_HEADER;
    this.out.fill(0, o, o + Size.INIT_OUT);
    this.out.writeUInt32LE(FUSE_KERNEL_VERSION, o + InitOut.major);
    this.out.writeUInt32LE(FUSE_KERNEL_MINOR_VERSION, o + InitOut.minor);
    // A newer major: answer with ours, the kernel retries or gives up.
    if (major !== FUSE_KERNEL_VERSION) return this.reply(8);
    const flags = req.readUInt32LE(body + InitIn.flags);
    const flags2 = flags & Init.INIT_EXT ? req.readUInt32LE(body + InitIn.flags2) : 0;
    const want = Init.ASYNC_READ | Init.DO_READDIRPLUS | Init.READDIRPLUS_AUTO | Init.PARALLEL_DIROPS | Init.MAX_PAGES | Init.CACHE_SYMLINKS | Init.POSIX_ACL;
    let outFlags = flags & want;
    let outFlags2 = 0;
    if (this.passthroughOps && flags & Init.INIT_EXT && flags2 & Init2.PASSTHROUGH) {
      outFlags2 |= Init2.PASSTHROUGH;
      this.passthrough = true;
    }
    if (outFlags2 !== 0) outFlags |= Init.INIT_EXT;
    this.out.writeUInt32LE(Math.min(minor, FUSE_KERNEL_MINOR_VERSION), o + InitOut.minor);
    this.out.writeUInt32LE(req.readUInt32LE(body + InitIn.maxReadahead), o + InitOut.maxReadahead);
    this.out.writeUInt32LE(outFlags >>> 0, o + InitOut.flags);
    this.out.writeUInt16LE(64, o + InitOut.maxBackground);
    this.out.writeUInt16LE(48, o + InitOut.congestionThreshold);
    this.out.writeUInt32LE(MAX_WRITE, o + InitOut.maxWrite);
    this.out.writeUInt32LE(1, o + InitOut.timeGran);
    this.out.writeUInt16LE(MAX_PAGES, o + InitOut.maxPages);
    this.out.writeUInt32LE(outFlags2 >>> 0, o + InitOut.flags2);
    // Backing objects sit on a plain filesystem: one level of stacking under us.
    if (this.passthrough) this.out.writeUInt32LE(1, o + InitOut.maxStackDepth);
    this.initialized = true;
    return this.reply(Size.INIT_OUT);
  }

  /** fuse_entry_out for node `id` (0: a negative entry) at `at`. */
  private putEntry(at: number, id: number): void {
    const b = this.out;
    writeU64(b, id, at + EntryOut.nodeid);
    writeU64(b, 0, at + EntryOut.generation);
    writeU64(b, TTL_SECONDS, at + EntryOut.entryValid);
    writeU64(b, TTL_SECONDS, at + EntryOut.attrValid);
    b.writeUInt32LE(0, at + EntryOut.entryValidNsec);
    b.writeUInt32LE(0, at + EntryOut.attrValidNsec);
    if (id === 0) b.fill(0, at + EntryOut.attr, at + EntryOut.attr + Size.ATTR);
    else this.table.attrs.copy(b, at + EntryOut.attr, id * Size.ATTR, (id + 1) * Size.ATTR);
  }

  private lookup(dir: Inode, req: Buffer, at: number, len: number): number {
    if (!dir.children) return this.error(ENOTDIR);
    const name = cString(req, at, len);
    // As EROFS (and every Linux filesystem) answers a name no directory entry can have.
    if (name.length > NAME_MAX) return this.error(ENAMETOOLONG);
    const child = dir.children.get(name);
    const id = child ? this.table.idOf(child) : undefined;
    // An absent name is answered as a cacheable negative entry (node id 0), not ENOENT.
    this.putEntry(Size.OUT_HEADER, id ?? 0);
    return this.reply(Size.ENTRY_OUT);
  }

  private getattr(id: number): number {
    const o = Size.OUT_HEADER;
    writeU64(this.out, TTL_SECONDS, o + AttrOut.attrValid);
    this.out.writeUInt32LE(0, o + AttrOut.attrValidNsec);
    this.out.writeUInt32LE(0, o + AttrOut.attrValidNsec + 4);
    this.table.attrs.copy(this.out, o + AttrOut.attr, id * Size.ATTR, (id + 1) * Size.ATTR);
    return this.reply(Size.ATTR_OUT);
  }

  private readlink(n: Inode): number {
    if (!isSymlink(n) || n.payload === null) return this.error(EINVAL);
    return this.reply(this.out.write(n.payload, Size.OUT_HEADER, 'latin1'));
  }

  private statfs(): number {
    const o = Size.OUT_HEADER;
    this.out.fill(0, o, o + Size.KSTATFS);
    writeU64(this.out, this.table.count, o + Kstatfs.files);
    this.out.writeUInt32LE(BLOCK_SIZE, o + Kstatfs.bsize);
    this.out.writeUInt32LE(NAME_MAX, o + Kstatfs.namelen);
    this.out.writeUInt32LE(BLOCK_SIZE, o + Kstatfs.frsize);
    return this.reply(Size.KSTATFS);
  }

  private opened(fh: number, openFlags: number, backingId: number): number {
    const o = Size.OUT_HEADER;
    writeU64(this.out, fh, o + OpenOut.fh);
    this.out.writeUInt32LE(openFlags, o + OpenOut.openFlags);
    this.out.writeInt32LE(backingId, o + OpenOut.backingId);
    return this.reply(Size.OPEN_OUT);
  }

  private openFile(id: number, n: Inode, flags: number): number {
    if ((flags & O_ACCMODE) !== 0 || (flags & O_TRUNC) !== 0) return this.error(EROFS);
    if (isDir(n)) return this.error(EISDIR);
    if (!this.passthrough) return this.error(ENOSYS);
    if (!isReg(n) || n.content !== null || n.payload === null) return this.opened(0, FOPEN_KEEP_CACHE | FOPEN_NOFLUSH, 0);
    const obj = this.objects.acquire(n.payload, n.digest, () => this.table.pathOf(id));
    if (!obj) return this.error(EIO);
    try {
      if (obj.backingId === 0) this.openBacking(obj);
      // The kernel holds its own reference to the backing file once the reply is in.
      if (obj.backingId > 0) return this.opened(0, FOPEN_PASSTHROUGH, obj.backingId);
      return this.opened(0, FOPEN_KEEP_CACHE | FOPEN_NOFLUSH, 0);
    } finally {
      this.objects.release(obj);
    }
  }

  private read(id: number, n: Inode, req: Buffer, at: number): number {
    const pos = readU64(req, at + ReadIn.offset);
    const want = Math.max(0, Math.min(req.readUInt32LE(at + ReadIn.size), MAX_READ, n.size - pos));
    if (want === 0) return this.reply(0);
    const o = Size.OUT_HEADER;
    if (n.content !== null) return this.reply(n.content.copy(this.out, o, pos, pos + want));
    if (!isReg(n) || n.payload === null) {
      this.out.fill(0, o, o + want); // sized, but neither inline data nor an object: a hole
      return this.reply(want);
    }
    const obj = this.objects.acquire(n.payload, n.digest, () => this.table.pathOf(id));
    if (!obj) return this.error(EIO);
    let done = 0;
    try {
      while (done < want) {
        const got = readSync(obj.fd, this.out, o + done, want - done, pos + done);
        if (got === 0) break;
        done += got;
      }
    } catch (e) {
      this.opts.log(`cfs fuse: read of object ${obj.payload} failed: ${(e as Error).message}`);
      return this.error(EIO);
    } finally {
      this.objects.release(obj);
    }
    if (done < want) {
      // The image says the file is longer: a truncated object (an insecure repository's), not
      // the end of the file. A short read would pass for the whole content.
      this.opts.log(`cfs fuse: ${this.table.pathOf(id)}: object ${obj.payload} ends at ${pos + done} of ${n.size} bytes (run cfs fsck)`);
      return this.error(EIO);
    }
    return this.reply(done);
  }

  private readdir(id: number, req: Buffer, at: number, plus: boolean): number {
    const entries = this.table.listing(id);
    if (!entries) return this.error(ENOTDIR);
    const size = Math.min(req.readUInt32LE(at + ReadIn.size), this.out.length - Size.OUT_HEADER);
    const b = this.out;
    const base = plus ? Size.DIRENTPLUS : Size.DIRENT;
    const start = Size.OUT_HEADER;
    let pos = start;
    for (let i = readU64(req, at + ReadIn.offset); i < entries.length; i++) {
      const e = entries[i];
      const rec = direntSize(base, e.name.length);
      if (pos - start + rec > size) break;
      let d = pos;
      if (plus) {
        // "." and ".." carry no entry: the kernel never makes dentries for them.
        this.putEntry(pos, i < 2 ? 0 : e.ino);
        d += Size.ENTRY_OUT;
      }
      writeU64(b, e.ino, d + Dirent.ino);
      writeU64(b, i + 1, d + Dirent.off);
      b.writeUInt32LE(e.name.length, d + Dirent.namelen);
      b.writeUInt32LE(e.type, d + Dirent.type);
      e.name.copy(b, d + Dirent.name);
      b.fill(0, d + Dirent.name + e.name.length, pos + rec);
      pos += rec;
    }
    return this.reply(pos - start);
  }

  private getxattr(n: Inode, req: Buffer, at: number, len: number): number {
    const size = req.readUInt32LE(at + GetxattrIn.size);
    const value = n.xattrs.get(cString(req, at + GetxattrIn.end, len));
    if (!value) return this.error(ENODATA);
    return this.sized(value, size);
  }

  private listxattr(n: Inode, size: number): number {
    const names = [...n.xattrs.keys()].sort();
    return this.sized(Buffer.from(names.map((k) => `${k}\0`).join(''), 'latin1'), size);
  }

  /** xattr reply: size 0 asks for the length only; a smaller buffer gets ERANGE. */
  private sized(value: Buffer, size: number): number {
    if (size === 0) {
      this.out.writeUInt32LE(value.length, Size.OUT_HEADER);
      this.out.writeUInt32LE(0, Size.OUT_HEADER + 4);
      return this.reply(Size.GETXATTR_OUT);
    }
    if (value.length > size) return this.error(ERANGE);
    return this.bytes(value);
  }

  private openBacking(obj: BackingObject): void {
    try {
      obj.backingId = this.passthroughOps!.open(obj.fd);
    } catch (e) {
      // Served through READ instead; say why once per object.
      obj.backingId = -1;
      this.opts.log(`cfs fuse: passthrough for object ${obj.payload} refused: ${(e as Error).message}`);
    }
  }

  private closeBacking(obj: BackingObject): void {
    if (obj.backingId > 0) {
      try {
        this.passthroughOps!.close(obj.backingId);
      } catch {
        // The connection is gone; the kernel dropped its backing files with it.
      }
    }
    obj.backingId = 0;
  }
}

/** The NUL-terminated name at `at` (bounded by len) as a byte string. */
function cString(req: Buffer, at: number, len: number): string {
  let end = req.indexOf(0, at);
  if (end < 0 || end > len) end = len;
  return req.toString('latin1', at, end);
}
