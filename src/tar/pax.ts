/** PAX extended header records: `<len> <key>=<value>\n`, len counting the whole record. */

export interface PaxRecord {
  /** Key bytes as a latin1 byte string. */
  key: string;
  value: Buffer;
}

/** Parse a PAX data block. Throws a message string on malformed records. */
export function parsePaxRecords(data: Buffer): PaxRecord[] {
  const out: PaxRecord[] = [];
  let off = 0;
  while (off < data.length) {
    // Some writers pad the data with NULs.
    if (data[off] === 0) {
      for (let i = off; i < data.length; i++) if (data[i] !== 0) throw new Error('PAX header: garbage after NUL padding');
      break;
    }
    const sp = data.indexOf(0x20, off);
    if (sp < 0 || sp - off > 20) throw new Error('PAX header: record without length');
    const lenText = data.subarray(off, sp).toString('latin1');
    if (!/^[0-9]+$/.test(lenText)) throw new Error(`PAX header: invalid record length '${lenText}'`);
    const len = Number(lenText);
    const end = off + len;
    if (len <= sp - off + 1 || end > data.length) throw new Error(`PAX header: record length ${len} out of range`);
    if (data[end - 1] !== 0x0a) throw new Error('PAX header: record not terminated by newline');
    const rec = data.subarray(sp + 1, end - 1);
    const eq = rec.indexOf(0x3d);
    if (eq <= 0) throw new Error('PAX header: record without key');
    out.push({ key: rec.subarray(0, eq).toString('latin1'), value: rec.subarray(eq + 1) });
    off = end;
  }
  return out;
}

/** Decimal integer value (strict). */
export function paxInteger(v: Buffer, key: string): number {
  const s = v.toString('latin1');
  if (!/^[0-9]+$/.test(s) || !Number.isSafeInteger(Number(s))) throw new Error(`PAX header: invalid ${key} '${s}'`);
  return Number(s);
}

/**
 * PAX time `[-]SECONDS[.FRACTION]`: integer seconds (strict); nanoseconds from the fraction
 * truncated to 9 digits (".5" = 500000000), 0 when the fraction does not parse. The fraction has
 * the sign of the whole: -1.5 is 1.5 s before the epoch, seconds -2 plus 500000000 ns (as Go's
 * archive/tar reads it).
 */
export function paxTime(v: Buffer, key: string): { sec: number; nsec: number } {
  const s = v.toString('latin1');
  const m = /^(-?)([0-9]+)(?:\.(.*))?$/.exec(s);
  if (!m || !Number.isSafeInteger(Number(m[2]))) throw new Error(`PAX header: invalid ${key} '${s}'`);
  const frac = m[3] ?? '';
  const nsec = /^[0-9]+$/.test(frac) ? Number(frac.slice(0, 9).padEnd(9, '0')) : 0;
  const sec = Number(m[2]);
  if (m[1] === '') return { sec, nsec };
  return nsec === 0 ? { sec: sec === 0 ? 0 : -sec, nsec } : { sec: -sec - 1, nsec: 1e9 - nsec };
}
