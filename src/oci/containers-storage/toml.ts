/**
 * The TOML subset storage.conf uses: `[table]` / `[a.b]` headers, `key = value` with bare,
 * quoted and dotted keys, basic and literal strings (single- and multi-line), integers
 * (decimal, 0x, 0o, 0b, `_` separators), floats, booleans, arrays (multi-line, trailing
 * comma) and inline tables, plus `#` comments. Arrays of tables and dates are rejected
 * with a clear error: storage.conf never uses them.
 */
import { CfsError } from '../../errors.js';

export type TomlValue = string | number | boolean | TomlValue[] | TomlTable;
export interface TomlTable {
  [key: string]: TomlValue;
}

export function isTomlTable(v: TomlValue | undefined): v is TomlTable {
  return typeof v === 'object' && v !== null && !Array.isArray(v);
}

const BARE_KEY = /[A-Za-z0-9_-]/;
const ESCAPES: Readonly<Record<string, string>> = { b: '\b', t: '\t', n: '\n', f: '\f', r: '\r', '"': '"', '\\': '\\' };

class Parser {
  private pos = 0;
  /** Tables defined by a header; redefining one is an error in TOML. */
  private readonly defined = new Set<TomlTable>();

  constructor(
    private readonly src: string,
    private readonly where: string,
  ) {}

  private fail(msg: string): never {
    const line = this.src.slice(0, this.pos).split('\n').length;
    throw new CfsError('EINVAL', `${this.where}:${line}: ${msg}`);
  }

  private peek(n = 0): string {
    return this.src[this.pos + n] ?? '';
  }

  private startsWith(s: string): boolean {
    return this.src.startsWith(s, this.pos);
  }

  /** Spaces and tabs only. */
  private skipBlank(): void {
    while (this.peek() === ' ' || this.peek() === '\t') this.pos++;
  }

  private skipComment(): void {
    if (this.peek() === '#') while (this.pos < this.src.length && this.peek() !== '\n') this.pos++;
  }

  /** Blank lines, comments and newlines (inside arrays). */
  private skipWsNl(): void {
    for (;;) {
      this.skipBlank();
      this.skipComment();
      if (this.peek() === '\n') this.pos++;
      else if (this.startsWith('\r\n')) this.pos += 2;
      else return;
    }
  }

  /** After a statement: optional comment, then newline or EOF. */
  private endOfLine(): void {
    this.skipBlank();
    this.skipComment();
    if (this.pos >= this.src.length) return;
    if (this.peek() === '\n') this.pos++;
    else if (this.startsWith('\r\n')) this.pos += 2;
    else this.fail(`unexpected ${shown(this.peek())} after value`);
  }

  parse(): TomlTable {
    const root: TomlTable = {};
    let current = root;
    for (;;) {
      this.skipWsNl();
      if (this.pos >= this.src.length) return root;
      if (this.startsWith('[[')) this.fail('arrays of tables are not supported');
      if (this.peek() === '[') {
        this.pos++;
        this.skipBlank();
        const path = this.keyPath();
        if (this.peek() !== ']') this.fail('expected "]" after table name');
        this.pos++;
        current = this.descend(root, path, true);
        if (this.defined.has(current)) this.fail(`table [${path.join('.')}] defined twice`);
        this.defined.add(current);
        this.endOfLine();
        continue;
      }
      this.keyValue(current);
      this.endOfLine();
    }
  }

  private keyValue(table: TomlTable): void {
    const path = this.keyPath();
    if (this.peek() !== '=') this.fail(`expected "=" after key "${path.join('.')}"`);
    this.pos++;
    this.skipBlank();
    const value = this.value();
    const parent = this.descend(table, path.slice(0, -1), false);
    const last = path[path.length - 1]!;
    if (Object.prototype.hasOwnProperty.call(parent, last)) this.fail(`key "${path.join('.')}" defined twice`);
    parent[last] = value;
  }

  /** Walks/creates nested tables; `header` allows reopening implicitly created ones. */
  private descend(table: TomlTable, path: string[], header: boolean): TomlTable {
    let t = table;
    for (const k of path) {
      const v = t[k];
      if (v === undefined) {
        const n: TomlTable = {};
        t[k] = n;
        t = n;
      } else if (isTomlTable(v)) {
        t = v;
      } else {
        this.fail(`key "${k}" is not a table`);
      }
    }
    if (header && path.length === 0) this.fail('empty table name');
    return t;
  }

  private keyPath(): string[] {
    const parts: string[] = [];
    for (;;) {
      this.skipBlank();
      parts.push(this.key());
      this.skipBlank();
      if (this.peek() !== '.') return parts;
      this.pos++;
    }
  }

  private key(): string {
    const c = this.peek();
    if (c === '"') return this.basicString();
    if (c === "'") return this.literalString();
    const start = this.pos;
    while (BARE_KEY.test(this.peek())) this.pos++;
    if (this.pos === start) this.fail(c === '' ? 'expected a key' : `unexpected ${shown(c)} where a key was expected`);
    return this.src.slice(start, this.pos);
  }

  private value(): TomlValue {
    const c = this.peek();
    if (this.startsWith('"""')) return this.multiBasicString();
    if (this.startsWith("'''")) return this.multiLiteralString();
    if (c === '"') return this.basicString();
    if (c === "'") return this.literalString();
    if (c === '[') return this.array();
    if (c === '{') return this.inlineTable();
    if (this.startsWith('true') && !BARE_KEY.test(this.peek(4))) {
      this.pos += 4;
      return true;
    }
    if (this.startsWith('false') && !BARE_KEY.test(this.peek(5))) {
      this.pos += 5;
      return false;
    }
    return this.number();
  }

  private number(): number {
    const start = this.pos;
    while (/[0-9A-Za-z_.+:-]/.test(this.peek())) this.pos++;
    const text = this.src.slice(start, this.pos);
    if (text === '') this.fail(this.peek() === '' ? 'expected a value' : `unexpected ${shown(this.peek())} where a value was expected`);
    if (/^\d{4}-\d{2}-\d{2}/.test(text) || /^\d{2}:\d{2}/.test(text)) this.fail(`dates and times are not supported ("${text}")`);
    const ok = (re: RegExp): boolean => re.test(text) && !/__|_$|^[+-]?_|_\./.test(text);
    let n: number;
    if (ok(/^0x[0-9A-Fa-f_]+$/)) n = parseInt(text.slice(2).replace(/_/g, ''), 16);
    else if (ok(/^0o[0-7_]+$/)) n = parseInt(text.slice(2).replace(/_/g, ''), 8);
    else if (ok(/^0b[01_]+$/)) n = parseInt(text.slice(2).replace(/_/g, ''), 2);
    else if (ok(/^[+-]?(0|[1-9][0-9_]*)$/)) n = Number(text.replace(/_/g, ''));
    else if (ok(/^[+-]?(0|[1-9][0-9_]*)(\.[0-9_]+)?([eE][+-]?[0-9_]+)?$/)) n = Number(text.replace(/_/g, ''));
    else if (/^[+-]?(inf|nan)$/.test(text)) n = text.endsWith('nan') ? NaN : text.startsWith('-') ? -Infinity : Infinity;
    else this.fail(`invalid value "${text}"`);
    return n;
  }

  private escape(): string {
    const c = this.peek();
    this.pos++;
    const simple = ESCAPES[c];
    if (simple !== undefined) return simple;
    if (c === 'u' || c === 'U') {
      const len = c === 'u' ? 4 : 8;
      const hex = this.src.slice(this.pos, this.pos + len);
      if (!new RegExp(`^[0-9A-Fa-f]{${len}}$`).test(hex)) this.fail(`invalid \\${c} escape`);
      this.pos += len;
      const cp = parseInt(hex, 16);
      if (cp > 0x10ffff || (cp >= 0xd800 && cp <= 0xdfff)) this.fail(`invalid unicode scalar \\${c}${hex}`);
      return String.fromCodePoint(cp);
    }
    return this.fail(`invalid escape "\\${c}"`);
  }

  private basicString(): string {
    this.pos++; // opening quote
    let out = '';
    for (;;) {
      const c = this.peek();
      if (c === '' || c === '\n') this.fail('unterminated string');
      this.pos++;
      if (c === '"') return out;
      out += c === '\\' ? this.escape() : c;
    }
  }

  private literalString(): string {
    this.pos++;
    const end = this.src.indexOf("'", this.pos);
    const nl = this.src.indexOf('\n', this.pos);
    if (end < 0 || (nl >= 0 && nl < end)) this.fail('unterminated string');
    const s = this.src.slice(this.pos, end);
    this.pos = end + 1;
    return s;
  }

  /** A newline right after the opening delimiter is dropped, as TOML says. */
  private skipFirstNewline(): void {
    if (this.peek() === '\n') this.pos++;
    else if (this.startsWith('\r\n')) this.pos += 2;
  }

  private multiBasicString(): string {
    this.pos += 3;
    this.skipFirstNewline();
    let out = '';
    for (;;) {
      if (this.pos >= this.src.length) this.fail('unterminated multi-line string');
      if (this.startsWith('"""')) {
        // Up to two quotes may directly precede the closing delimiter.
        let extra = 0;
        while (extra < 2 && this.peek(3 + extra) === '"') extra++;
        out += '"'.repeat(extra);
        this.pos += 3 + extra;
        return out;
      }
      const c = this.peek();
      this.pos++;
      if (c !== '\\') {
        out += c;
        continue;
      }
      // Line-ending backslash: trim the newline and following whitespace.
      const rest = /^[ \t]*\r?\n[ \t\r\n]*/.exec(this.src.slice(this.pos));
      if (rest) this.pos += rest[0].length;
      else out += this.escape();
    }
  }

  private multiLiteralString(): string {
    this.pos += 3;
    this.skipFirstNewline();
    const end = this.src.indexOf("'''", this.pos);
    if (end < 0) this.fail('unterminated multi-line string');
    let close = end;
    while (close - end < 2 && this.src[close + 3] === "'") close++;
    const s = this.src.slice(this.pos, close);
    this.pos = close + 3;
    return s;
  }

  private array(): TomlValue[] {
    this.pos++;
    const out: TomlValue[] = [];
    for (;;) {
      this.skipWsNl();
      if (this.peek() === ']') {
        this.pos++;
        return out;
      }
      out.push(this.value());
      this.skipWsNl();
      if (this.peek() === ',') this.pos++;
      else if (this.peek() !== ']') this.fail('expected "," or "]" in array');
    }
  }

  private inlineTable(): TomlTable {
    this.pos++;
    const t: TomlTable = {};
    this.skipBlank();
    if (this.peek() === '}') {
      this.pos++;
      return t;
    }
    for (;;) {
      this.skipBlank();
      this.keyValue(t);
      this.skipBlank();
      if (this.peek() === '}') {
        this.pos++;
        return t;
      }
      if (this.peek() !== ',') this.fail('expected "," or "}" in inline table');
      this.pos++;
    }
  }
}

/** A character for a message: quoted when printable, as U+XXXX otherwise (a stray BOM or NBSP is invisible). */
function shown(c: string): string {
  return /^[\x21-\x7e]$|^\p{L}$|^\p{N}$/u.test(c) ? `"${c}"` : `U+${(c.codePointAt(0) ?? 0).toString(16).toUpperCase().padStart(4, '0')}`;
}

/** Parses TOML text (a leading byte-order mark, as some editors write, is skipped); errors name `where` and the line. */
export function parseToml(text: string, where: string): TomlTable {
  return new Parser(text.startsWith('\uFEFF') ? text.slice(1) : text, where).parse();
}
