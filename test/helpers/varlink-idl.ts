/**
 * A strict parser of varlink interface descriptions (the grammar of varlink.org's IDL), written
 * for the tests independently of the server, which only serves the files as text. It checks
 * what a validating client would: member syntax, field and type names, that a method's input and
 * output are field lists, and that every named type is defined in the same interface.
 */

export type IdlType =
  | { kind: 'bool' | 'int' | 'float' | 'string' | 'object' }
  | { kind: 'named'; name: string }
  | { kind: 'struct'; fields: IdlField[] }
  | { kind: 'enum'; values: string[] }
  | { kind: 'array' | 'map' | 'maybe'; of: IdlType };

export interface IdlField {
  name: string;
  type: IdlType;
}

export interface IdlInterface {
  name: string;
  types: Map<string, IdlType>;
  methods: Map<string, { input: IdlField[]; output: IdlField[] }>;
  errors: Map<string, IdlField[]>;
}

const INTERFACE_NAME = /^[A-Za-z](?:-*[A-Za-z0-9])*(?:\.[A-Za-z0-9](?:-*[A-Za-z0-9])*)+$/;
const MEMBER_NAME = /^[A-Z][A-Za-z0-9]*$/;
const FIELD_NAME = /^[A-Za-z](?:_?[A-Za-z0-9])*$/;
const PRIMITIVES = new Set(['bool', 'int', 'float', 'string', 'object']);

/** Tokens: words, `->`, `[]`, `[string]`, and single punctuation; comments dropped. */
function tokenize(text: string): string[] {
  const tokens: string[] = [];
  for (const m of text.matchAll(/\s+|#[^\n]*|->|\[\]|\[string\]|[A-Za-z0-9_.-]+|[():,?]|(.)/g)) {
    if (m[1] !== undefined) throw new Error(`unexpected character '${m[1]}' at offset ${m.index}`);
    if (!/^\s/.test(m[0]) && !m[0].startsWith('#')) tokens.push(m[0]);
  }
  return tokens;
}

export function parseVarlinkInterface(text: string): IdlInterface {
  const tokens = tokenize(text);
  let i = 0;
  const peek = (): string | undefined => tokens[i];
  const next = (what: string): string => {
    const t = tokens[i++];
    if (t === undefined) throw new Error(`expected ${what}, found the end`);
    return t;
  };
  const expect = (t: string): void => {
    const got = next(`'${t}'`);
    if (got !== t) throw new Error(`expected '${t}', found '${got}' (token ${i - 1})`);
  };

  /** After '(': a struct (name: type, …) or an enum (name, …). */
  const parenthesised = (): IdlType => {
    const fields: IdlField[] = [];
    const values: string[] = [];
    while (peek() !== ')') {
      if (fields.length + values.length > 0) expect(',');
      const name = next('a field name');
      if (!FIELD_NAME.test(name)) throw new Error(`bad field name '${name}'`);
      if (peek() === ':') {
        i++;
        fields.push({ name, type: type() });
      } else {
        values.push(name);
      }
      if (fields.length > 0 && values.length > 0) throw new Error(`'${name}': a struct and an enum mixed`);
    }
    expect(')');
    const names = fields.length > 0 ? fields.map((f) => f.name) : values;
    if (new Set(names).size !== names.length) throw new Error(`duplicate field in (${names.join(', ')})`);
    return values.length > 0 ? { kind: 'enum', values } : { kind: 'struct', fields };
  };
  const type = (): IdlType => {
    const t = next('a type');
    if (t === '?') {
      if (peek() === '?') throw new Error('?? is not a type');
      return { kind: 'maybe', of: type() };
    }
    if (t === '[]') return { kind: 'array', of: type() };
    if (t === '[string]') return { kind: 'map', of: type() };
    if (t === '(') return parenthesised();
    if (PRIMITIVES.has(t)) return { kind: t as 'bool' };
    if (MEMBER_NAME.test(t)) return { kind: 'named', name: t };
    throw new Error(`'${t}' is not a type`);
  };
  const fieldList = (what: string): IdlField[] => {
    expect('(');
    const t = parenthesised();
    if (t.kind === 'enum') throw new Error(`${what}: expected (name: type, …), found an enum or a bare type name`);
    return t.kind === 'struct' ? t.fields : [];
  };

  expect('interface');
  const name = next('the interface name');
  if (!INTERFACE_NAME.test(name)) throw new Error(`bad interface name '${name}'`);
  const iface: IdlInterface = { name, types: new Map(), methods: new Map(), errors: new Map() };
  const seen = new Set<string>();
  while (peek() !== undefined) {
    const keyword = next('a member');
    const member = next('a member name');
    if (!MEMBER_NAME.test(member)) throw new Error(`bad member name '${member}'`);
    if (seen.has(member)) throw new Error(`${member} defined twice`);
    seen.add(member);
    if (keyword === 'type') {
      expect('(');
      iface.types.set(member, parenthesised());
    } else if (keyword === 'method') {
      const input = fieldList(`method ${member} input`);
      expect('->');
      iface.methods.set(member, { input, output: fieldList(`method ${member} output`) });
    } else if (keyword === 'error') {
      iface.errors.set(member, fieldList(`error ${member}`));
    } else {
      throw new Error(`'${keyword}' is not type, method or error`);
    }
  }
  const check = (t: IdlType, where: string): void => {
    if (t.kind === 'named' && !iface.types.has(t.name)) throw new Error(`${where}: type ${t.name} is not defined in ${name}`);
    if (t.kind === 'struct') for (const f of t.fields) check(f.type, `${where}.${f.name}`);
    if (t.kind === 'array' || t.kind === 'map' || t.kind === 'maybe') check(t.of, where);
  };
  for (const [n, t] of iface.types) check(t, n);
  for (const [n, m] of iface.methods) for (const f of [...m.input, ...m.output]) check(f.type, `${n}.${f.name}`);
  for (const [n, fields] of iface.errors) for (const f of fields) check(f.type, `${n}.${f.name}`);
  return iface;
}

function isRecord(v: unknown): v is Record<string, unknown> {
  return typeof v === 'object' && v !== null && !Array.isArray(v);
}

/** Problems of a value against its declared type (named types resolved in `iface`). */
function valueMismatches(iface: IdlInterface, t: IdlType, v: unknown, where: string): string[] {
  const bad = (what: string): string[] => [`${where}: expected ${what}, got ${JSON.stringify(v)?.slice(0, 60)}`];
  switch (t.kind) {
    case 'maybe':
      return v === undefined || v === null ? [] : valueMismatches(iface, t.of, v, where);
    case 'bool':
      return typeof v === 'boolean' ? [] : bad('bool');
    case 'int':
      return Number.isInteger(v) ? [] : bad('int');
    case 'float':
      return typeof v === 'number' ? [] : bad('float');
    case 'string':
      return typeof v === 'string' ? [] : bad('string');
    case 'object':
      return v !== undefined && v !== null ? [] : bad('object');
    case 'enum':
      return typeof v === 'string' && t.values.includes(v) ? [] : bad(`one of ${t.values.join(', ')}`);
    case 'array':
      return Array.isArray(v) ? v.flatMap((x, i) => valueMismatches(iface, t.of, x, `${where}[${i}]`)) : bad('an array');
    case 'map':
      return isRecord(v) ? Object.entries(v).flatMap(([k, x]) => valueMismatches(iface, t.of, x, `${where}[${k}]`)) : bad('a map');
    case 'named':
      return valueMismatches(iface, iface.types.get(t.name)!, v, where);
    case 'struct':
      return isRecord(v) ? replyMismatches(iface, t.fields, v, `${where}.`) : bad('a struct');
  }
}

/** Problems of a reply (or struct) against its declared fields: unknown keys, missing required ones, wrong types at any depth. */
export function replyMismatches(iface: IdlInterface, fields: IdlField[], reply: Record<string, unknown>, prefix = ''): string[] {
  const declared = new Map(fields.map((f) => [f.name, f]));
  const out: string[] = [];
  for (const k of Object.keys(reply)) if (!declared.has(k)) out.push(`undeclared field ${prefix}${k}`);
  for (const f of fields) {
    if (f.type.kind !== 'maybe' && reply[f.name] === undefined) out.push(`missing field ${prefix}${f.name}`);
    else if (reply[f.name] !== undefined) out.push(...valueMismatches(iface, f.type, reply[f.name], `${prefix}${f.name}`));
  }
  return out;
}
