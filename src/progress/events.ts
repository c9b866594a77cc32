/**
 * Progress events of long operations (pull, copy). The import engine emits them; front ends
 * (TTY bars, plain lines, varlink frames) render them. Mirrors composefs-rs's event set.
 */
export interface ProgressSink {
  /** A component (layer) starts; `total` in bytes when known. */
  started(id: string, total: number | null): void;
  progress(id: string, fetched: number): void;
  /** Already present, no work done. */
  skipped(id: string): void;
  done(id: string, transferred: number): void;
  message(text: string): void;
}

export const NO_PROGRESS: ProgressSink = {
  started: () => undefined,
  progress: () => undefined,
  skipped: () => undefined,
  done: () => undefined,
  message: () => undefined,
};
