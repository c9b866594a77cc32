/** varlink message shapes, errors, and typed access to call parameters. */

export const SERVICE_INTERFACE = 'org.varlink.service';

/** A varlink error reply: `{"error": name, "parameters": {...}}`. */
export class VarlinkError extends Error {
  constructor(readonly errorName: string, readonly parameters: Record<string, unknown> = {}) {
    super(`${errorName}${Object.keys(parameters).length ? ` ${JSON.stringify(parameters)}` : ''}`);
  }
}

export function invalidParameter(parameter: string): VarlinkError {
  return new VarlinkError(`${SERVICE_INTERFACE}.InvalidParameter`, { parameter });
}

export interface Call {
  method: string;
  parameters: Record<string, unknown>;
  more: boolean;
  oneway: boolean;
  /** The client asks to switch the connection to another protocol after the reply. */
  upgrade: boolean;
  /** `parameters` was sent but is not an object: the call is answered InvalidParameter 'parameters'. */
  badParameters: boolean;
}

const UTF8 = new TextDecoder('utf-8', { fatal: true });

/** Parse one message; null when it is not a varlink call object. */
export function parseCall(text: Buffer): Call | null {
  let v: unknown;
  try {
    // JSON is UTF-8: invalid sequences are refused, not replaced with U+FFFD.
    v = JSON.parse(UTF8.decode(text));
  } catch {
    return null;
  }
  if (typeof v !== 'object' || v === null || Array.isArray(v)) return null;
  const o = v as Record<string, unknown>;
  if (typeof o.method !== 'string') return null;
  const p = o.parameters ?? {};
  const badParameters = typeof p !== 'object' || p === null || Array.isArray(p);
  return {
    method: o.method, parameters: badParameters ? {} : (p as Record<string, unknown>), more: o.more === true, oneway: o.oneway === true, upgrade: o.upgrade === true, badParameters,
  };
}

/**
 * Typed getters over a call's parameters, as the IDL declares them: a wrong type, or a missing
 * required (non-nullable) field, is InvalidParameter. Null = absent.
 */
export class Params {
  constructor(private readonly p: Record<string, unknown>) {}

  /** The parameter as sent (undefined when absent or null), unchecked. */
  raw(name: string): unknown {
    return this.get(name);
  }

  private get(name: string): unknown {
    const v = this.p[name];
    return v === null ? undefined : v;
  }

  str(name: string): string {
    const v = this.optStr(name);
    if (v === undefined) throw invalidParameter(name);
    return v;
  }

  optStr(name: string): string | undefined {
    const v = this.get(name);
    if (v !== undefined && typeof v !== 'string') throw invalidParameter(name);
    return v;
  }

  /** A required (non-nullable) bool: absent is InvalidParameter, as for every required field. */
  bool(name: string): boolean {
    const v = this.optBool(name);
    if (v === undefined) throw invalidParameter(name);
    return v;
  }

  optBool(name: string): boolean | undefined {
    const v = this.get(name);
    if (v !== undefined && typeof v !== 'boolean') throw invalidParameter(name);
    return v;
  }

  /** A non-negative integer. */
  int(name: string): number {
    const v = this.get(name);
    if (typeof v !== 'number' || !Number.isSafeInteger(v) || v < 0) throw invalidParameter(name);
    return v;
  }

  strArray(name: string): string[] {
    const v = this.get(name);
    if (!Array.isArray(v) || v.some((x) => typeof x !== 'string')) throw invalidParameter(name);
    return v as string[];
  }

  obj(name: string): Params {
    const v = this.optObj(name);
    if (v === undefined) throw invalidParameter(name);
    return v;
  }

  optObj(name: string): Params | undefined {
    const v = this.get(name);
    if (v === undefined) return undefined;
    if (typeof v !== 'object' || Array.isArray(v)) throw invalidParameter(name);
    return new Params(v as Record<string, unknown>);
  }

  objArray(name: string): Params[] {
    const v = this.get(name);
    if (!Array.isArray(v) || v.some((x) => typeof x !== 'object' || x === null || Array.isArray(x))) throw invalidParameter(name);
    return (v as Array<Record<string, unknown>>).map((x) => new Params(x));
  }
}
