/**
 * Dumpfile (composefs-dump(5)) escaping. Strings are latin1 byte strings.
 */

/** Thrown by unescape; the parser turns it into a line-numbered CfsError. */
export class EscapeError extends Error {}

function hexVal(c: number): number {
  if (c >= 0x30 && c <= 0x39) return c - 0x30;
  if (c >= 0x61 && c <= 0x66) return c - 0x57;
  if (c >= 0x41 && c <= 0x46) return c - 0x37;
  return -1;
}

/** Undo `\\ \n \r \t \xHH`; any other escape is an error. */
export function unescape(s: string): string {
  let i = s.indexOf('\\');
  if (i < 0) return s;
  let out = s.slice(0, i);
  const n = s.length;
  while (i < n) {
    const c = s.charCodeAt(i);
    if (c !== 0x5c) {
      const next = s.indexOf('\\', i);
      const end = next < 0 ? n : next;
      out += s.slice(i, end);
      i = end;
      continue;
    }
    if (i + 1 >= n) throw new EscapeError('No character after escape');
    const e = s[i + 1]!;
    i += 2;
    switch (e) {
      case '\\':
        out += '\\';
        break;
      case 'n':
        out += '\n';
        break;
      case 'r':
        out += '\r';
        break;
      case 't':
        out += '\t';
        break;
      case 'x': {
        if (i + 1 >= n) throw new EscapeError('No hex characters after hex escape');
        const h1 = hexVal(s.charCodeAt(i));
        const h2 = hexVal(s.charCodeAt(i + 1));
        if (h1 < 0 || h2 < 0) throw new EscapeError('Invalid hex characters after hex escape');
        out += String.fromCharCode((h1 << 4) | h2);
        i += 2;
        break;
      }
      default:
        throw new EscapeError(`Unsupported escape type ${e}`);
    }
  }
  return out;
}

const HEX = '0123456789abcdef';
// Bytes printed literally by the standard escaping: graphic ASCII except backslash.
const PLAIN = /^[\x21-\x5b\x5d-\x7e]*$/;
const PLAIN_NO_EQ = /^[\x21-\x3c\x3e-\x5b\x5d-\x7e]*$/;

export interface EscapeOpts {
  /** Escape `=` as \x3d (xattr keys and values). */
  equal?: boolean;
  /** Print a value that is exactly `-` as \x2d (optional fields). */
  loneDash?: boolean;
  /** Leave spaces literal (composefs-info ls). */
  keepSpace?: boolean;
}

/** composefs-info's output escaping (C locale). */
export function escape(s: string, opts: EscapeOpts = {}): string {
  if (opts.loneDash && s === '-') return '\\x2d';
  if (!opts.keepSpace && (opts.equal ? PLAIN_NO_EQ : PLAIN).test(s)) return s;
  let out = '';
  for (let i = 0; i < s.length; i++) {
    const c = s.charCodeAt(i);
    if (c === 0x5c) out += '\\\\';
    else if (c === 0x0a) out += '\\n';
    else if (c === 0x0d) out += '\\r';
    else if (c === 0x09) out += '\\t';
    else if ((c === 0x3d && opts.equal) || c > 0x7e || c < 0x20 || (c === 0x20 && !opts.keepSpace))
      out += '\\x' + HEX[c >> 4]! + HEX[c & 15]!;
    else out += s[i]!;
  }
  return out;
}
