/**
 * The fd array of a GetLayer reply (brief 5.2): [data pipe, dirfd region, keepalive, lifetime
 * dummies]. The dirfd region is sparse: real directory slots are mixed with dummy fds at
 * positions derived from the layer id, so a consumer that guesses indexes instead of reading
 * them from the stream fails at once. The consumer never recomputes this layout.
 * The shuffle uses splitmix64 (not composefs-rs's PCG64: only the property matters).
 */
import { createHash } from 'node:crypto';
import { openSync, constants as C } from 'node:fs';
import os from 'node:os';
import { native } from '../native.js';

/** Most fds one reply frame carries (the kernel allows 253 per sendmsg). */
export const FDS_PER_FRAME = 240;
const MASK64 = (1n << 64n) - 1n;

export function layoutSeed(id: string): bigint {
  return createHash('sha256').update(id).digest().readBigUInt64LE(0);
}

function splitmix64(state: { s: bigint }): bigint {
  state.s = (state.s + 0x9e3779b97f4a7c15n) & MASK64;
  let z = state.s;
  z = ((z ^ (z >> 30n)) * 0xbf58476d1ce4e5b9n) & MASK64;
  z = ((z ^ (z >> 27n)) * 0x94d049bb133111ebn) & MASK64;
  return z ^ (z >> 31n);
}

export interface DirRegion {
  /** Slot of each real directory, in order. */
  realSlots: number[];
  /** Total slots (real + dummy): the reply's dir_count. */
  total: number;
}

export function dirRegion(seed: bigint, nReal: number): DirRegion {
  const nDummy = Number((seed >> 8n) % BigInt(nReal + 1)) + 1;
  const total = nReal + nDummy;
  const order = Array.from({ length: total }, (_, i) => i);
  const st = { s: seed };
  for (let i = total - 1; i > 0; i--) {
    const j = Number(splitmix64(st) % BigInt(i + 1));
    [order[i], order[j]] = [order[j], order[i]];
  }
  return { realSlots: order.slice(0, nReal).sort((a, b) => a - b), total };
}

/** Extra lifetime dummies after the keepalive fd. */
export function lifetimeDummies(seed: bigint): number {
  return Number((seed >> 16n) % 3n);
}

/** A dummy fd: /dev/null and an anonymous temporary file, alternating by ordinal. */
export function openDummy(ordinal: number): number {
  if (ordinal % 2 === 0) return openSync('/dev/null', C.O_RDONLY);
  return native().openTmpfile(os.tmpdir(), C.O_RDWR, 0o600);
}

/** Sizes of the reply frames for `fds` fds (brief 5.2); with more=false one frame. */
export function frameSizes(seed: bigint, fds: number, more: boolean): number[] {
  if (!more || fds === 0) return [fds];
  const hashMin = fds >= 3 ? Math.min(Math.max(3, Number(seed % BigInt(fds + 1))), fds) : 1;
  const n = Math.min(Math.max(hashMin, Math.ceil(fds / FDS_PER_FRAME), 1), fds);
  const base = Math.floor(fds / n);
  return Array.from({ length: n }, (_, i) => base + (i < fds % n ? 1 : 0));
}
