/**
 * Translation of SELinux file_contexts regular expressions into JS RegExp source.
 *
 * composefs-rs matches file_contexts patterns with the Rust regex engine (byte mode: no
 * Unicode, `.` = any byte but `\n`) and falls back to PCRE2 for what that engine lacks
 * (lookaround). We match byte strings held as latin1 JS strings, so a pattern is translated
 * token by token into an equivalent JS pattern without the `u` flag. Supported subset:
 *
 * - literals; any ASCII punctuation escaped with `\`; bytes ≥ 0x80 as literal bytes
 * - `.`  (→ any byte except `\n`)
 * - `^`, `$` (start / end of the key)
 * - alternation `|`, groups `( … )` and `(?: … )`, lookaround `(?= (?! (?<= (?<!`
 * - quantifiers `* + ? {n} {n,} {n,m}`, each optionally lazy (`?` suffix)
 * - `\d \D \w \W \s \S` (ASCII classes), `\t \n \r \f \v`, `\xHH`
 * - bracket classes `[…]`, `[^…]`, with ranges, escapes, `\d \w \s` and the POSIX classes
 *   `[:alpha:] [:digit:] [:alnum:] [:upper:] [:lower:] [:space:] [:xdigit:] [:punct:]`
 * - a `{` that does not start a valid `{n}`, `{n,}`, `{n,m}` is a literal (PCRE2 rule)
 *
 * Everything else (back-references, `\b`, `\A`, `\z`, `\Q…\E`, `\p{…}`, named groups, inline
 * flags, possessive quantifiers, `{,n}`, non-ASCII bytes inside classes, …) is rejected with
 * an error rather than risk a wrong label.
 */

export class RegexSyntaxError extends Error {}

const ANY_BUT_NL = '[^\\n]';
const CLASS_ESC: Record<string, string> = { d: '0-9', w: '0-9A-Za-z_', s: '\\t\\n\\v\\f\\r ' };
const POSIX: Record<string, string> = {
  alpha: 'A-Za-z',
  digit: '0-9',
  alnum: '0-9A-Za-z',
  upper: 'A-Z',
  lower: 'a-z',
  space: '\\t\\n\\v\\f\\r ',
  xdigit: '0-9A-Fa-f',
  punct: '!-\\/:-@\\[-`{-~',
};
const CONTROL: Record<string, number> = { t: 9, n: 10, v: 11, f: 12, r: 13 };

function hexByte(code: number): string {
  return `\\x${code.toString(16).padStart(2, '0')}`;
}

/** One byte as a literal inside or outside a class: alphanumerics as they are, the rest as \xHH. */
function lit(code: number): string {
  const c = String.fromCharCode(code);
  return /[0-9A-Za-z_/]/.test(c) ? c : hexByte(code);
}

function isAsciiPunct(c: string): boolean {
  return /^[!-/:-@[-`{-~]$/.test(c);
}

export interface TranslatedRegex {
  /** JS RegExp source equivalent to the input (no flags needed). */
  source: string;
  /** Bytes every match must start with (a cheap prefilter); '' if unknown. */
  literalPrefix: string;
}

class Translator {
  private i = 0;
  private out = '';
  /** Literal bytes at the start of the pattern, before any other construct. */
  private prefix = '';
  private prefixOpen = true;
  private hasTopLevelAlt = false;
  private depth = 0;
  /** Whether the last emitted thing can take a quantifier. */
  private quantifiable = false;
  /** Source offset where the last atom started in `out`, and whether it was a prefix literal. */
  private lastAtomPrefixChar = false;

  constructor(private readonly src: string) {}

  run(): TranslatedRegex {
    while (this.i < this.src.length) this.token();
    if (this.depth !== 0) this.fail('missing )');
    return { source: this.out, literalPrefix: this.hasTopLevelAlt ? '' : this.prefix };
  }

  private fail(why: string): never {
    throw new RegexSyntaxError(`${why} at offset ${this.i}`);
  }

  private atom(js: string, literalByte?: number): void {
    this.out += js;
    this.quantifiable = true;
    if (this.prefixOpen && this.depth === 0 && literalByte !== undefined) {
      this.prefix += String.fromCharCode(literalByte);
      this.lastAtomPrefixChar = true;
    } else {
      this.prefixOpen = false;
      this.lastAtomPrefixChar = false;
    }
  }

  private nonAtom(js: string): void {
    this.out += js;
    this.quantifiable = false;
    this.prefixOpen = false;
    this.lastAtomPrefixChar = false;
  }

  private token(): void {
    const c = this.src[this.i];
    switch (c) {
      case '\\':
        return this.escape();
      case '.':
        this.i++;
        return this.atom(ANY_BUT_NL);
      case '^':
      case '$':
        this.i++;
        return this.nonAtom(c);
      case '|':
        this.i++;
        if (this.depth === 0) this.hasTopLevelAlt = true;
        return this.nonAtom('|');
      case '(':
        return this.group();
      case ')':
        if (this.depth === 0) this.fail('unmatched )');
        this.i++;
        this.depth--;
        this.out += ')';
        this.quantifiable = true;
        this.prefixOpen = false;
        this.lastAtomPrefixChar = false;
        return;
      case '[':
        return this.klass();
      case '*':
      case '+':
      case '?':
        return this.quantifier(c, 1);
      case '{': {
        const m = /^\{(\d+)(,(\d*))?\}/.exec(this.src.slice(this.i));
        if (m) return this.quantifier(m[0], m[0].length);
        if (this.src.startsWith('{,', this.i)) this.fail("'{,n}' quantifier is not supported");
        this.i++;
        return this.atom(lit(0x7b), 0x7b);
      }
      default: {
        this.i++;
        const code = c.charCodeAt(0);
        if (code > 0xff) this.fail('character outside the byte range');
        return this.atom(lit(code), code);
      }
    }
  }

  private quantifier(q: string, len: number): void {
    if (!this.quantifiable) this.fail(`quantifier '${q}' without something to repeat`);
    this.i += len;
    let js = q;
    if (this.src[this.i] === '?') {
      js += '?';
      this.i++;
    } else if (this.src[this.i] === '+') {
      this.fail('possessive quantifiers are not supported');
    }
    const next = this.src[this.i];
    if (next === '*' || next === '+' || (next === '{' && /^\{\d+(,\d*)?\}/.test(this.src.slice(this.i)))) {
      this.fail('nested quantifier');
    }
    if (this.lastAtomPrefixChar) {
      // The repeated byte may occur zero or several times: it is no longer a fixed prefix byte.
      this.prefix = this.prefix.slice(0, -1);
    }
    this.out += js;
    this.quantifiable = false;
    this.prefixOpen = false;
    this.lastAtomPrefixChar = false;
  }

  private group(): void {
    const rest = this.src.slice(this.i);
    let open: string;
    if (rest.startsWith('(?:')) open = '(?:';
    else if (rest.startsWith('(?=')) open = '(?=';
    else if (rest.startsWith('(?!')) open = '(?!';
    else if (rest.startsWith('(?<=')) open = '(?<=';
    else if (rest.startsWith('(?<!')) open = '(?<!';
    else if (rest.startsWith('(?')) this.fail('unsupported group syntax (named group or inline flags)');
    else open = '(';
    this.i += open.length;
    this.depth++;
    // Capturing groups become non-capturing: nothing refers to them (back-references are rejected).
    this.nonAtom(open === '(' ? '(?:' : open);
  }

  private escape(): void {
    const c = this.src[this.i + 1];
    if (c === undefined) this.fail('trailing backslash');
    this.i += 2;
    if (c in CLASS_ESC) return this.atom(`[${CLASS_ESC[c]}]`);
    const lower = c.toLowerCase();
    if (lower in CLASS_ESC && c !== lower) return this.atom(`[^${CLASS_ESC[lower]}]`);
    if (c in CONTROL) return this.atom(hexByte(CONTROL[c]), CONTROL[c]);
    if (c === 'x') {
      const code = this.hexEscape();
      return this.atom(hexByte(code), code);
    }
    if (isAsciiPunct(c)) return this.atom(hexByte(c.charCodeAt(0)), c.charCodeAt(0));
    this.i -= 2;
    this.fail(`unsupported escape '\\${c}'`);
  }

  private hexEscape(): number {
    const m = /^[0-9A-Fa-f]{2}/.exec(this.src.slice(this.i));
    if (!m) this.fail("'\\x' needs exactly two hex digits");
    this.i += 2;
    return parseInt(m[0], 16);
  }

  /** A bracket class, emitted with every member byte written as \xHH or alphanumeric. */
  private klass(): void {
    this.i++;
    let js = '[';
    if (this.src[this.i] === '^') {
      js += '^';
      this.i++;
    }
    let first = true;
    for (;;) {
      const c = this.src[this.i];
      if (c === undefined) this.fail('missing ]');
      if (c === ']' && !first) {
        this.i++;
        break;
      }
      first = false;
      if (c === '[' && this.src[this.i + 1] === ':') {
        const m = /^\[:([a-z]+):\]/.exec(this.src.slice(this.i));
        if (!m || !(m[1] in POSIX)) this.fail('unsupported POSIX class');
        js += POSIX[m[1]];
        this.i += m[0].length;
        continue;
      }
      if (c === '[' && (this.src[this.i + 1] === '=' || this.src[this.i + 1] === '.')) this.fail('collating elements are not supported');
      const lo = this.classMember();
      if (typeof lo === 'string') {
        js += lo;
        continue;
      }
      if (this.src[this.i] === '-' && this.src[this.i + 1] !== undefined && this.src[this.i + 1] !== ']') {
        this.i++;
        const hi = this.classMember();
        if (typeof hi === 'string') this.fail('class escape as a range end');
        if (hi < lo) this.fail('range out of order');
        js += `${lit(lo)}-${lit(hi)}`;
      } else {
        js += lit(lo);
      }
    }
    this.atom(js + ']');
  }

  /** One class member: a byte code, or a ready-made range list for \d \w \s. */
  private classMember(): number | string {
    const c = this.src[this.i];
    if (c !== '\\') {
      this.i++;
      const code = c.charCodeAt(0);
      if (code >= 0x80) this.fail('non-ASCII byte in a bracket class');
      return code;
    }
    const e = this.src[this.i + 1];
    if (e === undefined) this.fail('trailing backslash');
    this.i += 2;
    if (e in CLASS_ESC) return CLASS_ESC[e];
    if (e in CONTROL) return CONTROL[e];
    if (e === 'x') return this.hexEscape();
    if (isAsciiPunct(e)) return e.charCodeAt(0);
    this.i -= 2;
    this.fail(`unsupported escape '\\${e}' in a bracket class`);
  }
}

/** Translate one file_contexts pattern (see the module comment). Throws RegexSyntaxError. */
export function translateRegex(pattern: string): TranslatedRegex {
  return new Translator(pattern).run();
}
