/**
 * Tar entry resolution shared by the layer splitter (import) and the layer reader: collects
 * metadata entries (GNU 'L'/'K', PAX 'x', global 'g') and applies them to the next real entry
 * with tar-core's precedence and limits (brief 3.5):
 *   path: PAX path > GNU long name > ustar prefix + '/' + name
 *   link: PAX linkpath > GNU long link > linkname
 *   PAX size/uid/gid/mtime override the header; SCHILY.xattr.* become xattrs.
 * Global 'g' headers are validated but not applied (as composefs-rs).
 * The parser does no I/O: callers feed header blocks and metadata contents.
 */
import { CfsError } from '../errors.js';
import type { TarEntry, TarEntryType } from './entry.js';
import { decodeHeader, makedev, type RawHeader } from './header.js';
import { paxInteger, parsePaxRecords, paxTime, type PaxRecord } from './pax.js';

export const LIMITS = {
  maxPath: 4096,
  maxPaxData: 1024 * 1024,
  maxGnuLong: 4096,
  maxMetadataEntries: 16,
} as const;

const XATTR_PREFIX = 'SCHILY.xattr.';

/** Type flags (ASCII). */
const T = {
  file: 0x30, oldFile: 0x00, hardlink: 0x31, symlink: 0x32, char: 0x33, block: 0x34, dir: 0x35, fifo: 0x36, contiguous: 0x37,
  paxLocal: 0x78, paxGlobal: 0x67, gnuLongName: 0x4c, gnuLongLink: 0x4b, gnuSparse: 0x53,
} as const;

const ENTRY_TYPES = new Map<number, TarEntryType>([
  [T.file, 'file'], [T.oldFile, 'file'], [T.contiguous, 'file'], [T.hardlink, 'hardlink'], [T.symlink, 'symlink'],
  [T.char, 'char'], [T.block, 'block'], [T.dir, 'directory'], [T.fifo, 'fifo'],
]);

/** An entry's metadata plus how many data bytes follow its header in the archive. */
export interface ParsedEntry extends Omit<TarEntry, 'content'> {
  dataSize: number;
}

export type HeaderResult =
  | { kind: 'meta'; dataSize: number }
  | { kind: 'entry'; entry: ParsedEntry };

function typeName(t: number): string {
  return t >= 0x20 && t < 0x7f ? `'${String.fromCharCode(t)}'` : `0x${t.toString(16)}`;
}

export class TarEntryParser {
  private readonly layer: string;
  private pax: PaxRecord[] | null = null;
  private longName: Buffer | null = null;
  private longLink: Buffer | null = null;
  private metaCount = 0;
  /** Type of the metadata entry whose contents are expected next. */
  private awaiting: number | null = null;

  constructor(layerName: string) {
    this.layer = layerName;
  }

  error(what: string, path?: string): CfsError {
    return new CfsError('EINVAL', `layer ${this.layer}: ${path !== undefined ? `${path}: ` : ''}${what}`);
  }

  /** Feed a non-zero header block. Metadata headers must be followed by metaData(). */
  header(block: Buffer): HeaderResult {
    let h: RawHeader;
    try {
      h = decodeHeader(block);
    } catch (e) {
      throw this.error((e as Error).message);
    }
    const t = h.typeflag;
    if (t === T.paxLocal || t === T.paxGlobal || t === T.gnuLongName || t === T.gnuLongLink) {
      if (++this.metaCount > LIMITS.maxMetadataEntries) throw this.error(`more than ${LIMITS.maxMetadataEntries} consecutive metadata entries`);
      const limit = t === T.paxLocal || t === T.paxGlobal ? LIMITS.maxPaxData : LIMITS.maxGnuLong;
      if (h.size > limit) throw this.error(`${typeName(t)} metadata entry of ${h.size} bytes exceeds the limit of ${limit}`);
      if ((t === T.paxLocal && this.pax) || (t === T.gnuLongName && this.longName) || (t === T.gnuLongLink && this.longLink)) {
        throw this.error(`duplicate ${typeName(t)} metadata entry before one entry`);
      }
      this.awaiting = t;
      return { kind: 'meta', dataSize: h.size };
    }
    return { kind: 'entry', entry: this.resolve(h) };
  }

  /** Contents (without padding) of the metadata entry announced by header(). */
  metaData(data: Buffer): void {
    const t = this.awaiting;
    this.awaiting = null;
    if (t === T.gnuLongName || t === T.gnuLongLink) {
      const nul = data.indexOf(0);
      const value = Buffer.from(nul < 0 ? data : data.subarray(0, nul));
      if (t === T.gnuLongName) this.longName = value;
      else this.longLink = value;
      return;
    }
    let records: PaxRecord[];
    try {
      records = parsePaxRecords(data);
    } catch (e) {
      throw this.error((e as Error).message);
    }
    if (t === T.paxLocal) this.pax = records.map((r) => ({ key: r.key, value: Buffer.from(r.value) }));
  }

  /** The archive ended: pending metadata without an entry is an error. */
  end(): void {
    if (this.pax || this.longName || this.longLink) throw this.error('orphaned metadata entries at the end of the archive');
  }

  private resolve(h: RawHeader): ParsedEntry {
    const pax = new Map<string, Buffer>();
    const xattrs = new Map<string, Buffer>();
    for (const r of this.pax ?? []) {
      if (r.key.startsWith(XATTR_PREFIX)) xattrs.set(r.key.slice(XATTR_PREFIX.length), r.value);
      // POSIX: a keyword with an empty value leaves the header's field in effect.
      else if (r.value.length > 0) pax.set(r.key, r.value);
      else pax.delete(r.key);
    }
    const nameBytes = pax.get('path') ?? this.longName ?? (h.prefix ? Buffer.concat([h.prefix, Buffer.from('/'), h.name]) : h.name);
    const linkBytes = pax.get('linkpath') ?? this.longLink ?? h.linkname;
    this.pax = null;
    this.longName = null;
    this.longLink = null;
    this.metaCount = 0;

    const path = nameBytes.toString('latin1');
    if (nameBytes.length === 0) throw this.error('entry with an empty path');
    if (nameBytes.length > LIMITS.maxPath) throw this.error(`path longer than ${LIMITS.maxPath} bytes`, path.slice(0, 100) + '…');
    if (linkBytes.length > LIMITS.maxPath) throw this.error(`link target longer than ${LIMITS.maxPath} bytes`, path);
    if (h.typeflag === T.gnuSparse || (pax.size > 0 && [...pax.keys()].some((k) => k.startsWith('GNU.sparse.')))) {
      throw this.error('sparse tar entries are not supported', path);
    }
    const type = ENTRY_TYPES.get(h.typeflag);
    if (!type) throw this.error(`unsupported tar entry type ${typeName(h.typeflag)}`, path);

    let size = h.size;
    let uid = h.uid;
    let gid = h.gid;
    let mtimeSec = h.mtime;
    let mtimeNsec = 0;
    try {
      const s = pax.get('size');
      if (s) size = paxInteger(s, 'size');
      const u = pax.get('uid');
      if (u) uid = paxInteger(u, 'uid');
      const g = pax.get('gid');
      if (g) gid = paxInteger(g, 'gid');
      const m = pax.get('mtime');
      if (m) ({ sec: mtimeSec, nsec: mtimeNsec } = paxTime(m, 'mtime'));
    } catch (e) {
      throw this.error((e as Error).message, path);
    }
    if (size < 0 || uid < 0 || gid < 0) throw this.error('negative size, uid or gid', path);

    let rdev = 0;
    if (type === 'char' || type === 'block') {
      if (h.devmajor === null || h.devminor === null) throw this.error('device entry without device numbers', path);
      rdev = makedev(h.devmajor, h.devminor);
    }
    const hasLink = type === 'symlink' || type === 'hardlink';
    return {
      path,
      type,
      mode: h.mode % 0o10000,
      uid: uid % 2 ** 32,
      gid: gid % 2 ** 32,
      mtimeSec,
      mtimeNsec,
      linkTarget: hasLink ? linkBytes.toString('latin1') : null,
      rdev,
      size: type === 'file' ? size : 0,
      xattrs,
      dataSize: size,
    };
  }
}
