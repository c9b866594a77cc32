/**
 * Feeding a SplitStreamWriter in stream order while some object ids are still being computed
 * (file contents hashed in parallel on the threadpool): whatever follows a pending reference
 * waits in memory until the id is known. The writer's output is the same as when every id was
 * known at once.
 */
import type { SplitStreamWriter } from './writer.js';

/** An object id, or one still being computed. */
export type ObjectRef = Buffer | { readonly pending: Promise<Buffer> };

interface Slot {
  id: Buffer | null;
  size: number;
}

export class OrderedSplitWriter {
  /** Inline bytes (Buffer) and references waiting behind a pending one. */
  private queue: Array<Buffer | Slot> = [];
  private head = 0;
  private failure: unknown = null;
  private readonly pending = new Set<Promise<void>>();

  constructor(readonly writer: SplitStreamWriter) {}

  /** The first failure of a pending reference, thrown early (settle() throws it too). */
  throwIfFailed(): void {
    if (this.failure !== null) throw this.failure;
  }

  writeInline(data: Uint8Array): void {
    if (this.head === this.queue.length) this.writer.writeInline(data);
    else this.queue.push(Buffer.from(data));
  }

  addExternal(ref: ObjectRef, size: number): void {
    if (Buffer.isBuffer(ref)) {
      if (this.head === this.queue.length) this.writer.addExternal(ref, size);
      else this.queue.push({ id: ref, size });
      return;
    }
    const slot: Slot = { id: null, size };
    this.queue.push(slot);
    const p: Promise<void> = ref.pending
      .then((id) => {
        slot.id = id;
        this.pump();
      })
      .catch((e: unknown) => {
        this.failure ??= e;
      })
      .finally(() => this.pending.delete(p));
    this.pending.add(p);
  }

  /** Wait for every pending reference; throws the first failure. */
  async settle(): Promise<void> {
    while (this.pending.size > 0) await Promise.all([...this.pending]);
    if (this.failure !== null) throw this.failure;
    this.pump();
  }

  private pump(): void {
    for (; this.head < this.queue.length; this.head++) {
      const item = this.queue[this.head];
      if (Buffer.isBuffer(item)) this.writer.writeInline(item);
      else if (item.id === null) break;
      else this.writer.addExternal(item.id, item.size);
    }
    if (this.head === this.queue.length) {
      this.queue = [];
      this.head = 0;
    } else if (this.head >= 1024 && 2 * this.head >= this.queue.length) {
      // Drop what was written while a pending tail keeps the queue from emptying.
      this.queue = this.queue.slice(this.head);
      this.head = 0;
    }
  }
}
