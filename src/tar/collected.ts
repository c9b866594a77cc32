/**
 * The entries of a layer as its import parsed them, for building the image right after the
 * import without reading the split stream just written back (decompressing and parsing it
 * again cost about as much as the tree merge). They are what readLayerEntries gives for that
 * stream: the same parser's entries, file contents of at most INLINE_CONTENT_MAX bytes inline,
 * larger ones by object id, known once the layer's objects are all stored.
 */
import type { TarContent, TarEntry } from './entry.js';
import type { ParsedEntry } from './parser.js';

/**
 * Entries kept per layer at most: beyond that the image build reads the stream back, so that a
 * huge layer's entries do not sit in memory next to the merged tree.
 */
export const COLLECTED_ENTRIES_MAX = 1 << 18;

/** The entry with its content (field by field: a rest/spread copy costs more, per entry). */
export function withContent(e: ParsedEntry, content: TarContent | null): TarEntry {
  return {
    path: e.path, type: e.type, mode: e.mode, uid: e.uid, gid: e.gid, mtimeSec: e.mtimeSec, mtimeNsec: e.mtimeNsec,
    linkTarget: e.linkTarget, rdev: e.rdev, size: e.size, xattrs: e.xattrs, content,
  };
}

/** An object id, or one still being computed (a zero-copy placement). */
type IdRef = Buffer | { readonly pending: Promise<Buffer> };

const NO_ID = Buffer.alloc(0);

export class EntryCollector {
  private list: TarEntry[] | null = [];
  /** External contents whose id is still being computed, and the promise of it (awaited once, at the end: a reaction per file costs). */
  private readonly unnamed: Array<TarContent & { kind: 'external' }> = [];
  private readonly ids: Array<Promise<Buffer>> = [];

  /** A non-file entry (content null) or a file with inline content. */
  entry(e: ParsedEntry, content: TarContent | null): void {
    if (this.list === null) return;
    if (this.list.length >= COLLECTED_ENTRIES_MAX) {
      this.list = null;
      return;
    }
    this.list.push(withContent(e, content));
  }

  /** A file stored as an object. */
  external(e: ParsedEntry, ref: IdRef): void {
    if (this.list === null) return;
    const content: TarContent & { kind: 'external' } = { kind: 'external', id: NO_ID, size: e.dataSize };
    if (Buffer.isBuffer(ref)) content.id = ref;
    else {
      this.unnamed.push(content);
      this.ids.push(ref.pending);
    }
    this.entry(e, content);
  }

  /**
   * The entries, every id known; null when there were too many to keep. Call once the layer is
   * stored (every placement settled: a failed one failed the import before this).
   */
  async entries(): Promise<TarEntry[] | null> {
    if (this.list === null) return null;
    const ids = await Promise.all(this.ids);
    ids.forEach((id, i) => (this.unnamed[i]!.id = id));
    return this.list;
  }
}
