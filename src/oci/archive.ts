/**
 * `oci-archive:` reader: an OCI layout inside an uncompressed tar file. The tar is indexed once
 * (member name → data offset and size) and blobs are served as positioned reads of the archive
 * file; nothing is extracted.
 */
import { constants as fsc } from 'node:fs';
import { open, type FileHandle } from 'node:fs/promises';
import type { Readable } from 'node:stream';
import { CfsError, errnoCode } from '../errors.js';
import {
  MAX_JSON_BLOB,
  blobPath,
  fileRangeStream,
  parseIndex,
  readAll,
  type ImageIndex,
  type OciRead,
} from './source.js';

/** ustar header fields: [offset, length]. */
const H = {
  name: [0, 100],
  size: [124, 12],
  chksum: [148, 8],
  typeflag: [156, 1],
  linkname: [157, 100],
  magic: [257, 6],
  prefix: [345, 155],
} as const;
const BLOCK = 512;
/** Same limits as the layer tar parser: PAX data 1 MiB, GNU long names 4 KiB. */
const MAX_PAX = 1024 * 1024;
const MAX_LONGNAME = 4096;

interface Member {
  offset: number;
  size: number;
}

function field(h: Buffer, f: readonly [number, number]): Buffer {
  return h.subarray(f[0], f[0] + f[1]);
}

function cstr(b: Buffer): string {
  const nul = b.indexOf(0);
  return (nul < 0 ? b : b.subarray(0, nul)).toString('utf8');
}

/** Octal (NUL/space padded) or GNU base-256 number field. */
function number(b: Buffer): number {
  if (b[0]! & 0x80) {
    let n = b[0]! & 0x7f;
    for (let i = 1; i < b.length; i++) n = n * 256 + b[i]!;
    return n;
  }
  const s = b.toString('latin1').replace(/[\0 ]+$/, '').replace(/^[\0 ]+/, '');
  return s === '' ? 0 : parseInt(s, 8);
}

function checksumOk(h: Buffer): boolean {
  const stored = number(field(h, H.chksum));
  let unsigned = 0;
  let signed = 0;
  for (let i = 0; i < BLOCK; i++) {
    const b = i >= H.chksum[0] && i < H.chksum[0] + H.chksum[1] ? 0x20 : h[i]!;
    unsigned += b;
    signed += b > 127 ? b - 256 : b;
  }
  return stored === unsigned || stored === signed;
}

/** `./a//b/` → `a/b`; null for names that leave the archive root. */
function normalize(name: string): string | null {
  const parts = name.split('/').filter((p) => p !== '' && p !== '.');
  return parts.includes('..') ? null : parts.join('/');
}

function parsePax(data: Buffer, where: string): Map<string, string> {
  const out = new Map<string, string>();
  let pos = 0;
  while (pos < data.length) {
    const sp = data.indexOf(0x20, pos);
    const len = sp < 0 ? NaN : parseInt(data.toString('latin1', pos, sp), 10);
    if (!Number.isSafeInteger(len) || len <= 0 || pos + len > data.length) throw new CfsError('ECORRUPT', `${where}: malformed PAX record`);
    const rec = data.toString('utf8', sp + 1, pos + len - 1);
    const eq = rec.indexOf('=');
    if (eq > 0) out.set(rec.slice(0, eq), rec.slice(eq + 1));
    pos += len;
  }
  return out;
}

export class OciArchive implements OciRead {
  readonly description: string;
  private readonly members = new Map<string, Member>();
  /** Non-regular members by name, to explain why a blob cannot be served. */
  private readonly special = new Map<string, string>();

  private constructor(
    readonly path: string,
    private readonly fh: FileHandle,
    private readonly fileSize: number,
  ) {
    this.description = `oci archive ${path}`;
  }

  static async open(path: string): Promise<OciArchive> {
    let fh: FileHandle;
    try {
      // Non-blocking: a FIFO must not hang us (refused below).
      fh = await open(path, fsc.O_RDONLY | fsc.O_NONBLOCK);
    } catch (e) {
      if (errnoCode(e) === 'ENOENT') throw new CfsError('ENOENT', `oci archive ${path}: no such file`, { missingImage: path });
      throw e;
    }
    try {
      const s = await fh.stat();
      if (s.isDirectory()) throw new CfsError('EINVAL', `oci archive ${path}: a directory, not an archive (an OCI layout directory is read with oci:${path})`);
      if (!s.isFile()) throw new CfsError('EINVAL', `oci archive ${path}: not a regular file`);
      const archive = new OciArchive(path, fh, s.size);
      const ended = (archive.ended = await archive.index());
      if (!archive.members.has('oci-layout')) {
        const nested = archive.memberNames().find((n) => n.endsWith('/oci-layout'));
        let why = 'no oci-layout member';
        if (nested) why += `; the layout is under ${nested.slice(0, -'/oci-layout'.length)}/ in the archive, it must be at the top`;
        else if (!ended) why += '; the archive has no end-of-archive marker: it may be truncated';
        throw new CfsError('ECORRUPT', `${archive.description}: not an OCI layout archive (${why})`);
      }
      return archive;
    } catch (e) {
      await fh.close();
      throw e;
    }
  }

  /** Normalised names of the regular members (a later duplicate replaces an earlier one). */
  memberNames(): string[] {
    return [...this.members.keys()];
  }

  private async pread(offset: number, length: number): Promise<Buffer> {
    const buf = Buffer.alloc(length);
    const { bytesRead } = await this.fh.read(buf, 0, length, offset);
    if (bytesRead !== length) throw new CfsError('EIO', `${this.description}: short read at offset ${offset}`);
    return buf;
  }

  /** Whether the archive ends with its end-of-archive marker (else it may be cut short). */
  private ended = true;

  /** One pass over the tar headers; whether the archive ended with its end-of-archive marker. */
  private async index(): Promise<boolean> {
    const d = this.description;
    let pos = 0;
    let longName: string | null = null;
    let longLink: string | null = null;
    let pax: Map<string, string> | null = null;
    while (pos < this.fileSize) {
      if (this.fileSize - pos < BLOCK) throw new CfsError('EIO', `${d}: truncated tar header at offset ${pos}`);
      const h = await this.pread(pos, BLOCK);
      if (pos === 0) this.rejectCompressed(h);
      if (h.every((b) => b === 0)) return true; // end marker; anything after it is padding
      if (!checksumOk(h)) throw new CfsError('ECORRUPT', `${d}: bad tar header checksum at offset ${pos}`);
      const type = String.fromCharCode(h[H.typeflag[0]]!);
      const prefix = cstr(field(h, H.prefix));
      const isUstar = field(h, H.magic).toString('latin1', 0, 5) === 'ustar';
      const headerName = isUstar && prefix !== '' ? `${prefix}/${cstr(field(h, H.name))}` : cstr(field(h, H.name));
      const name = pax?.get('path') ?? longName ?? headerName;
      const paxSize = pax?.get('size');
      const size = paxSize !== undefined ? Number(paxSize) : number(field(h, H.size));
      if (!Number.isSafeInteger(size) || size < 0) throw new CfsError('ECORRUPT', `${d}: member ${name}: invalid size`);
      const start = pos + BLOCK;
      if (start + size > this.fileSize) {
        throw new CfsError('EIO', `${d}: member ${name} is truncated (${size} bytes at offset ${start}, archive ends at ${this.fileSize})`);
      }
      const next = start + Math.ceil(size / BLOCK) * BLOCK;
      switch (type) {
        case 'x':
          if (size > MAX_PAX) throw new CfsError('EFBIG', `${d}: PAX header at offset ${pos} too large`);
          pax = parsePax(await this.pread(start, size), `${d}: PAX header at offset ${pos}`);
          pos = next;
          continue;
        case 'L':
        case 'K': {
          if (size > MAX_LONGNAME) throw new CfsError('EFBIG', `${d}: GNU long name at offset ${pos} too long`);
          const s = cstr(await this.pread(start, size));
          if (type === 'L') longName = s;
          else longLink = s;
          pos = next;
          continue;
        }
        case 'g':
          pos = next;
          continue;
      }
      const norm = normalize(name);
      if (norm !== null) {
        if (type === '0' || type === '\0' || type === '7') {
          this.members.delete(norm); // a later duplicate wins, as when extracting
          this.members.set(norm, { offset: start, size });
          this.special.delete(norm);
        } else if (type === '1') {
          const target = normalize(pax?.get('linkpath') ?? longLink ?? cstr(field(h, H.linkname)));
          const m = target === null ? undefined : this.members.get(target);
          if (m) this.members.set(norm, m);
          else this.special.set(norm, `a hard link to missing member ${target ?? '(outside the archive)'}`);
        } else if (type !== '5') {
          this.members.delete(norm);
          this.special.set(norm, type === '2' ? 'a symbolic link' : `a tar entry of type '${type}'`);
        }
      }
      longName = longLink = null;
      pax = null;
      pos = next;
    }
    return false;
  }

  private rejectCompressed(h: Buffer): void {
    const gzip = h[0] === 0x1f && h[1] === 0x8b;
    const zstd = h.readUInt32LE(0) === 0xfd2fb528;
    if (gzip || zstd) {
      throw new CfsError('ENOTSUP', `${this.description}: compressed archives are not supported; decompress it first`);
    }
  }

  private member(name: string, what: string): Member {
    const m = this.members.get(name);
    if (m) return m;
    const why = this.special.get(name);
    if (why) throw new CfsError('EINVAL', `${this.description}: ${name} is ${why}`);
    throw new CfsError('ENOENT', `${this.description}: ${what} not found${this.ended ? '' : ' (the archive has no end-of-archive marker: it may be truncated)'}`);
  }

  private blob(digest: string): Member {
    return this.member(blobPath(digest, this.description), `blob ${digest}`);
  }

  async readIndex(): Promise<ImageIndex> {
    const m = this.member('index.json', 'index.json');
    const where = `${this.description}: index.json`;
    if (m.size > MAX_JSON_BLOB) throw new CfsError('EFBIG', `${where}: larger than ${MAX_JSON_BLOB} bytes`);
    return parseIndex(await this.pread(m.offset, m.size), where);
  }

  async blobSize(digest: string): Promise<number> {
    return this.blob(digest).size;
  }

  async hasBlob(digest: string): Promise<boolean> {
    return this.members.has(blobPath(digest, this.description));
  }

  async readBlob(digest: string): Promise<Buffer> {
    return readAll(this.openBlob(digest), MAX_JSON_BLOB, `${this.description}: blob ${digest}`);
  }

  openBlob(digest: string): Readable {
    return fileRangeStream(async () => {
      const m = this.blob(digest);
      return { fh: this.fh, start: m.offset, end: m.offset + m.size, release: async () => {} };
    }, `${this.description}: blob ${digest}`);
  }

  async close(): Promise<void> {
    await this.fh.close();
  }
}
