/**
 * Renders ProgressSink events: per-layer bars (bytes, rate, ETA) on a TTY, one line per finished
 * layer otherwise, nothing with --quiet. Output goes to stderr so stdout stays machine-readable.
 */
import { constants as osConstants } from 'node:os';
import { NO_PROGRESS, type ProgressSink } from '../progress/events.js';

function shortId(id: string): string {
  const hex = id.includes(':') ? id.slice(id.indexOf(':') + 1) : id;
  return hex.slice(0, 12);
}

function humanBytes(n: number): string {
  const units = ['B', 'KiB', 'MiB', 'GiB', 'TiB'];
  let v = n;
  let u = 0;
  while (v >= 1024 && u < units.length - 1) {
    v /= 1024;
    u++;
  }
  return `${v.toFixed(u === 0 ? 0 : 1)} ${units[u]}`;
}

class LineProgress implements ProgressSink {
  private readonly startedAt = new Map<string, number>();
  started(id: string): void {
    this.startedAt.set(id, Date.now());
  }
  progress(): void {}
  skipped(id: string): void {
    process.stderr.write(`${shortId(id)}: already present\n`);
  }
  done(id: string, transferred: number): void {
    process.stderr.write(`${doneLine(id, transferred, this.startedAt.get(id) ?? Date.now())}\n`);
  }
  message(text: string): void {
    process.stderr.write(`${text}\n`);
  }
}

/**
 * Bars on screen hide the cursor: whatever ends the process (an error, Ctrl-C, SIGTERM) stops
 * them first so the terminal is left as it was.
 */
const onScreen = new Set<BarProgress>();
const SIGNALS = ['SIGINT', 'SIGTERM'] as const;

export function restoreTerminal(): void {
  for (const b of onScreen) b.stop();
  onScreen.clear();
}

function interrupted(signal: (typeof SIGNALS)[number]): void {
  restoreTerminal();
  process.stderr.write(`cfs: interrupted (${signal})\n`);
  process.exit(128 + osConstants.signals[signal]);
}

function showing(b: BarProgress, on: boolean): void {
  if (on && onScreen.size === 0) {
    process.on('exit', restoreTerminal);
    for (const s of SIGNALS) process.on(s, interrupted);
  }
  if (on) onScreen.add(b);
  else onScreen.delete(b);
  if (!on && onScreen.size === 0) {
    process.off('exit', restoreTerminal);
    for (const s of SIGNALS) process.off(s, interrupted);
  }
}

export function formatEta(seconds: number): string {
  const s = Math.max(0, Math.ceil(seconds));
  if (s < 60) return `${s}s`;
  if (s < 3600) return `${Math.floor(s / 60)}m${String(s % 60).padStart(2, '0')}s`;
  return `${Math.floor(s / 3600)}h${String(Math.floor((s % 3600) / 60)).padStart(2, '0')}m`;
}

/** Finished layers as LineProgress says them. */
function doneLine(id: string, transferred: number, startedAt: number): string {
  return `${shortId(id)}: ${humanBytes(transferred)} in ${((Date.now() - startedAt) / 1000).toFixed(2)} s`;
}

/** ANSI sequences the bars need. */
const ESC = {
  up: (n: number) => `\x1b[${n}F`, // to the start of the line n above
  clearDown: '\x1b[J',
  hideCursor: '\x1b[?25l',
  showCursor: '\x1b[?25h',
};
const REDRAW_MS = 100;
const BAR_WIDTH = 30;

interface Layer {
  start: number;
  total: number;
  value: number;
}

/**
 * The layers in progress as bars at the bottom of the terminal; messages and each finished
 * layer's line are written above them, so the bars never outgrow the screen (a redraw cannot
 * reach lines scrolled off it). Layers beyond what fits get no bar, only their line when done; a
 * layer of unknown size shows bytes and rate. Every line is cut to the terminal's width, so the
 * count of lines to redraw is exact.
 */
class BarProgress implements ProgressSink {
  private readonly layers = new Map<string, Layer>();
  private readonly above: string[] = [];
  private drawn = 0;
  private timer: NodeJS.Timeout | null = null;

  started(id: string, total: number | null): void {
    this.layers.set(id, { start: Date.now(), total: total ?? 0, value: 0 });
    if (!this.timer) {
      showing(this, true);
      process.stderr.write(ESC.hideCursor);
      // unref: a failed import must not be kept alive by its bars (restoreTerminal runs at exit).
      this.timer = setInterval(() => this.draw(), REDRAW_MS).unref();
    }
  }
  progress(id: string, fetched: number): void {
    const l = this.layers.get(id);
    if (l) l.value = fetched;
  }
  skipped(id: string): void {
    this.message(`${shortId(id)}: already present`);
  }
  done(id: string, transferred: number): void {
    const l = this.layers.get(id);
    if (!l) return;
    this.layers.delete(id);
    this.above.push(doneLine(id, transferred, l.start));
    if (this.layers.size === 0) this.stop();
    else this.draw();
  }
  message(text: string): void {
    if (this.timer) this.above.push(text);
    else process.stderr.write(`${text}\n`);
  }

  /** Write what is pending above the bars and take the bars away. */
  stop(): void {
    if (!this.timer) return;
    clearInterval(this.timer);
    this.timer = null;
    this.layers.clear();
    this.draw();
    process.stderr.write(ESC.showCursor);
    showing(this, false);
  }

  private draw(): void {
    const width = Math.max(1, (process.stderr.columns || 80) - 1);
    const room = Math.max(1, (process.stderr.rows || 24) - 2);
    let out = this.drawn > 0 ? ESC.up(this.drawn) + ESC.clearDown : '';
    for (const line of this.above.splice(0)) out += `${line}\n`;
    const bars = [...this.layers].slice(0, room).map(([id, l]) => this.bar(id, l).slice(0, width));
    for (const b of bars) out += `${b}\n`;
    this.drawn = bars.length;
    process.stderr.write(out);
  }

  private bar(id: string, l: Layer): string {
    const secs = Math.max((Date.now() - l.start) / 1000, 0.001);
    const rate = `${humanBytes(l.value / secs)}/s`;
    if (!l.total) return `${shortId(id)} ${humanBytes(l.value)} | ${rate}`;
    const frac = Math.min(1, l.value / l.total);
    const filled = Math.round(frac * BAR_WIDTH);
    // From the average rate since the layer started: steadier than one over the last updates,
    // which arrive in chunk-sized bursts.
    const eta = l.value > 0 ? formatEta(((l.total - l.value) * secs) / l.value) : '?';
    return `${shortId(id)} [${'█'.repeat(filled)}${'░'.repeat(BAR_WIDTH - filled)}] ${Math.floor(frac * 100)}% | ${humanBytes(l.value)}/${humanBytes(l.total)} | ${rate} | ETA ${eta}`;
  }
}

export function progressFor(opts: { quiet?: boolean }): ProgressSink {
  if (opts.quiet) return NO_PROGRESS;
  // A dumb terminal cannot move the cursor: lines, as for a pipe.
  return process.stderr.isTTY && process.env['TERM'] !== 'dumb' ? new BarProgress() : new LineProgress();
}
