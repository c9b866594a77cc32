/**
 * Renders ProgressSink events: per-layer bars (bytes, rate, ETA) on a TTY, one line per finished
 * layer otherwise, nothing with --quiet. Output goes to stderr so stdout stays machine-readable.
 */
import cliProgress from 'cli-progress';
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
    const ms = Date.now() - (this.startedAt.get(id) ?? Date.now());
    process.stderr.write(`${shortId(id)}: ${humanBytes(transferred)} in ${(ms / 1000).toFixed(2)} s\n`);
  }
  message(text: string): void {
    process.stderr.write(`${text}\n`);
  }
}

/**
 * Bars on screen hide the cursor and turn off line wrapping: whatever ends the process (an
 * error, Ctrl-C, SIGTERM) stops them first so the terminal is left as it was.
 */
const onScreen = new Set<cliProgress.MultiBar>();
const SIGNALS = ['SIGINT', 'SIGTERM'] as const;

export function restoreTerminal(): void {
  for (const m of onScreen) m.stop();
  onScreen.clear();
}

function interrupted(signal: (typeof SIGNALS)[number]): void {
  restoreTerminal();
  process.stderr.write(`cfs: interrupted (${signal})\n`);
  process.exit(128 + osConstants.signals[signal]);
}

function showing(m: cliProgress.MultiBar, on: boolean): void {
  if (on && onScreen.size === 0) {
    process.on('exit', restoreTerminal);
    for (const s of SIGNALS) process.on(s, interrupted);
  }
  if (on) onScreen.add(m);
  else onScreen.delete(m);
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

class BarProgress implements ProgressSink {
  private readonly multi = new cliProgress.MultiBar(
    {
      format: '{id} [{bar}] {percentage}% | {value_h}/{total_h} | {rate} | ETA {eta}',
      hideCursor: true,
      clearOnComplete: false,
      stopOnComplete: false,
    },
    cliProgress.Presets.shades_classic,
  );
  private readonly bars = new Map<string, { bar: cliProgress.SingleBar; start: number; total: number }>();
  private active = 0;

  private payload(id: string, value: number, total: number, start: number): Record<string, string> {
    const secs = Math.max((Date.now() - start) / 1000, 0.001);
    // From the average rate since the layer started: cli-progress's ETA, over its last few
    // updates, jumps about with chunk-sized updates arriving in bursts.
    const eta = total && value > 0 ? formatEta(((total - value) * secs) / value) : '?';
    return { id: shortId(id), value_h: humanBytes(value), total_h: total ? humanBytes(total) : '?', rate: `${humanBytes(value / secs)}/s`, eta };
  }
  started(id: string, total: number | null): void {
    const t = total ?? 0;
    const start = Date.now();
    const bar = this.multi.create(t || 1, 0, this.payload(id, 0, t, start));
    this.bars.set(id, { bar, start, total: t });
    if (this.active++ === 0) showing(this.multi, true);
  }
  progress(id: string, fetched: number): void {
    const b = this.bars.get(id);
    if (b) b.bar.update(fetched, this.payload(id, fetched, b.total, b.start));
  }
  skipped(id: string): void {
    this.multi.log(`${shortId(id)}: already present\n`);
  }
  done(id: string, transferred: number): void {
    const b = this.bars.get(id);
    if (!b) return;
    b.bar.update(b.total || 1, this.payload(id, transferred, b.total || transferred, b.start));
    b.bar.stop();
    if (--this.active === 0) {
      this.multi.stop();
      showing(this.multi, false);
    }
  }
  message(text: string): void {
    if (this.active > 0) this.multi.log(`${text}\n`);
    else process.stderr.write(`${text}\n`);
  }
}

export function progressFor(opts: { quiet?: boolean }): ProgressSink {
  if (opts.quiet) return NO_PROGRESS;
  return process.stderr.isTTY ? new BarProgress() : new LineProgress();
}
