/**
 * A layer given as segments -- raw tar bytes, and references to files holding member contents,
 * as containers-storage's tar-split metadata describes it -> the same split stream importTarLayer
 * makes from the same tar bytes (the shared splitTar state machine decides everything).
 *
 * A file segment that lines up with a regular-file entry stored as an object is handed to a
 * FileImporter (reflink / hardlink / copy, brief 1.7c); its content is read once and that read
 * feeds the object's fs-verity digest, the tar sha256 (diff_id, verified at the end) and the
 * segment's own check (CRC-64). Any other file segment (small files, which stay inline) is read
 * into the byte stream like raw bytes.
 */
import { createHash, type Hash } from 'node:crypto';
import { open, stat } from 'node:fs/promises';
import { CfsError, errnoCode, isCfsError } from '../errors.js';
import { FileImporter, type ContentObserver, type FileImportMode } from '../repository/import-file.js';
import type { Repository } from '../repository/repository.js';
import { SplitStreamWriter } from '../splitstream/writer.js';
import { CONTENT_TYPES } from '../splitstream/format.js';
import { TarEntryParser } from './parser.js';
import { copyContent, existingLayer, noObjects, parseDigest, publishLayer, splitTar, type ImportTarOptions, type ImportTarResult, type TarInput } from './split.js';

/** Checks a file's content against what was recorded for it; `end` throws on a mismatch. */
export interface ContentCheck {
  update(chunk: Uint8Array): void;
  end(): void;
}

export type FileSegment = {
  kind: 'file';
  /** Where the member's content is (a Buffer for names that are not UTF-8). */
  path: string | Buffer;
  /** Member name, for messages. */
  name: string;
  size: number;
  /** A fresh check for one read of the content. */
  check?: () => ContentCheck;
  /** Appended to the message when the file cannot be read (permission denied). */
  unreadableHint?: string;
};

export type TarSegment = { kind: 'raw'; data: Buffer } | FileSegment;

export interface ImportSegmentsOptions extends ImportTarOptions {
  /** How file contents reach objects/ (default 'auto': reflink, hardlink, copy). */
  mode?: FileImportMode;
}

const READ_CHUNK = 1024 * 1024;

/** The segments as a tar byte stream, able to hand over a whole file segment instead of bytes. */
class SegmentInput implements TarInput {
  private readonly it: AsyncIterator<TarSegment>;
  private readonly readFile: (seg: FileSegment) => AsyncGenerator<Buffer>;
  private readonly hash: Hash;
  private peeked: TarSegment | 'eof' | null = null;
  private content: AsyncGenerator<Buffer> | null = null;
  private cur: Buffer = Buffer.alloc(0);
  private pos = 0;
  /** Tar bytes taken in so far, including file contents imported from their paths. */
  total = 0;

  constructor(segments: AsyncIterable<TarSegment>, alg: string, readFile: (seg: FileSegment) => AsyncGenerator<Buffer>) {
    this.it = segments[Symbol.asyncIterator]();
    this.hash = createHash(alg);
    this.readFile = readFile;
  }

  get position(): number {
    return this.total - (this.cur.length - this.pos);
  }

  async readUpTo(max: number): Promise<Buffer> {
    if (this.pos >= this.cur.length && !(await this.pull())) return Buffer.alloc(0);
    const n = Math.min(max, this.cur.length - this.pos);
    const r = this.cur.subarray(this.pos, this.pos + n);
    this.pos += n;
    return r;
  }

  async readExact(n: number): Promise<Buffer> {
    const parts: Buffer[] = [];
    let got = 0;
    while (got < n) {
      const b = await this.readUpTo(n - got);
      if (b.length === 0) break;
      parts.push(b);
      got += b.length;
    }
    return parts.length === 1 ? parts[0] : Buffer.concat(parts, got);
  }

  /** The next segment, consumed, if it is a file of `size` bytes and no bytes are pending. */
  async takeFile(size: number): Promise<FileSegment | null> {
    if (this.pos < this.cur.length || this.content) return null;
    const next = await this.peek();
    if (next === 'eof' || next.kind !== 'file' || next.size !== size) return null;
    this.peeked = null;
    return next;
  }

  /** Tar bytes consumed outside readUpTo (a taken file's content, as it is read). */
  absorb(chunk: Uint8Array): void {
    this.hash.update(chunk);
    this.total += chunk.length;
  }

  digestHex(): string {
    return this.hash.digest('hex');
  }

  /** Stop early: lets the producer release what it holds (the store's layer lock). */
  async close(): Promise<void> {
    await this.content?.return(undefined);
    await this.it.return?.();
  }

  private async peek(): Promise<TarSegment | 'eof'> {
    if (this.peeked === null) {
      const r = await this.it.next();
      this.peeked = r.done ? 'eof' : r.value;
    }
    return this.peeked;
  }

  private async pull(): Promise<boolean> {
    for (;;) {
      let b: Buffer | null = null;
      if (this.content) {
        const r = await this.content.next();
        if (r.done) this.content = null;
        else b = r.value;
      } else {
        const seg = await this.peek();
        this.peeked = null;
        if (seg === 'eof') {
          this.peeked = 'eof';
          return false;
        }
        if (seg.kind === 'raw') b = seg.data;
        else this.content = this.readFile(seg);
      }
      if (b && b.length > 0) {
        this.absorb(b);
        this.cur = b;
        this.pos = 0;
        return true;
      }
    }
  }
}

/**
 * Import a layer given as segments as `streams/oci-layer-<diff_id>`; same result and checks as
 * importTarLayer on the concatenated bytes. `opts.counts` receives how each stored file got in.
 */
export async function importTarSegments(repo: Repository, segments: AsyncIterable<TarSegment>, opts: ImportSegmentsOptions = {}): Promise<ImportTarResult> {
  const expected = opts.expectedDiffId !== undefined ? parseDigest(opts.expectedDiffId) : null;
  const name = opts.layerName ?? opts.expectedDiffId ?? 'tar';
  const existing = await existingLayer(repo, opts.expectedDiffId);
  if (existing) return existing;
  await repo.ensureWritable();
  const counts = opts.counts ?? noObjects();
  const unreadable = (seg: FileSegment, e: unknown): Promise<never> => unreadableError(seg, e, name);
  const input = new SegmentInput(segments, expected?.alg ?? 'sha256', (seg) => readSegment(seg, name, unreadable));
  const importer = new FileImporter(repo, opts.mode ?? 'auto');
  const w = new SplitStreamWriter(repo, { contentType: CONTENT_TYPES.layer });
  try {
    await splitTar(input, w, new TarEntryParser(name), name, async (e) => {
      const seg = await input.takeFile(e.dataSize);
      if (!seg) {
        counts.copied++;
        return copyContent(repo, input, e, name);
      }
      const check = seg.check?.();
      const obs: ContentObserver = {
        data: (chunk) => {
          input.absorb(chunk);
          check?.update(chunk);
        },
        end: () => check?.end(),
      };
      const r = await importer.importFile(seg.path, seg.size, `layer ${name}: ${seg.name}`, obs).catch((err: unknown) => unreadable(seg, err));
      counts[r.method]++;
      return r.id;
    });
  } catch (e) {
    await input.close();
    throw e;
  } finally {
    importer.close();
  }
  return publishLayer(repo, w, `${expected?.alg ?? 'sha256'}:${input.digestHex()}`, { name, expectedDiffId: opts.expectedDiffId, size: input.total });
}

/** A file segment's content as bytes, checked for its recorded size and by its own check. */
async function* readSegment(seg: FileSegment, layer: string, unreadable: (seg: FileSegment, e: unknown) => Promise<never>): AsyncGenerator<Buffer> {
  const changed = (why: string): CfsError => new CfsError('EDIGEST', `layer ${layer}: ${seg.name} changed since import (${why})`);
  const fh = await open(seg.path, 'r').catch((e: unknown) => unreadable(seg, e));
  try {
    const check = seg.check?.();
    if ((await fh.stat()).size !== seg.size) throw changed(`size is no longer the recorded ${seg.size} bytes`);
    for (let done = 0; done < seg.size;) {
      const buf = Buffer.allocUnsafe(Math.min(READ_CHUNK, seg.size - done));
      const { bytesRead } = await fh.read(buf, 0, buf.length, done);
      if (bytesRead === 0) throw changed(`shorter than the recorded ${seg.size} bytes`);
      const chunk = buf.subarray(0, bytesRead);
      check?.update(chunk);
      done += bytesRead;
      yield chunk;
    }
    check?.end();
  } finally {
    await fh.close();
  }
}

/** Permission errors become a message naming the file, its owner and mode; others pass. */
async function unreadableError(seg: FileSegment, e: unknown, layer: string): Promise<never> {
  const code = errnoCode(e);
  if (isCfsError(e) || (code !== 'EACCES' && code !== 'EPERM')) throw e;
  const hint = seg.unreadableHint;
  const st = await stat(seg.path).catch(() => null);
  const owner = st ? `owned by uid ${st.uid} gid ${st.gid}, mode ${(st.mode & 0o7777).toString(8).padStart(4, '0')}` : 'not accessible';
  throw new CfsError('EPERM', `layer ${layer}: cannot read ${seg.name} (${seg.path.toString()}, ${owner}): permission denied${hint ? `; ${hint}` : ''}`);
}
