/**
 * Typed errors. Every failure the user can cause maps to a CfsError with a stable code and
 * a one-line message naming the thing (layer, path, object) and the reason.
 */
export type CfsErrorCode =
  | 'EINVAL' // malformed input (dumpfile line, manifest, tar entry, image)
  | 'ENOENT' // a named thing does not exist
  | 'EEXIST'
  | 'ENOTSUP' // the kernel or filesystem lacks a feature (fs-verity, mount API)
  | 'EPERM' // privileges missing
  | 'EIO' // data does not match (digest mismatch, truncated stream)
  | 'EFBIG' // format limits
  | 'ERANGE'
  | 'ELOOP'
  | 'EBUSY'
  | 'EDIGEST' // content digest mismatch
  | 'EPLATFORM' // no manifest for this platform
  | 'ECANCELED' // stopped because whoever asked for it went away
  | 'ENOSPC' // the filesystem (or the user's quota) is full
  | 'EWRITE' // the repository could not be written (I/O error, read-only filesystem)
  | 'EMFILE' // out of file descriptors (this process's limit)
  | 'ENFILE' // out of file descriptors (the system's)
  | 'ECORRUPT'; // repository or image structure is damaged

export class CfsError extends Error {
  readonly code: CfsErrorCode;
  readonly context: Record<string, string | number>;
  constructor(code: CfsErrorCode, message: string, context: Record<string, string | number> = {}) {
    super(message);
    this.name = 'CfsError';
    this.code = code;
    this.context = context;
  }
}

export function isCfsError(e: unknown): e is CfsError {
  return e instanceof CfsError;
}

/** errno-style code of a Node system error, or undefined. */
export function errnoCode(e: unknown): string | undefined {
  if (e && typeof e === 'object' && 'code' in e && typeof (e as { code: unknown }).code === 'string') {
    return (e as { code: string }).code;
  }
  return undefined;
}

/**
 * What a Node system error says, without its code and call: "ENOENT: no such file or directory,
 * open '/x'" is "no such file or directory" (the caller names the path). Other errors: their message.
 */
export function systemErrorText(e: unknown): string {
  const message = e instanceof Error ? e.message : String(e);
  return /^[A-Z0-9_]+: (.*?), \w+(?: '.*')?$/s.exec(message)?.[1] ?? message;
}

/**
 * `text` as one line of a terminal: control characters (a name in a layer may carry newlines or
 * escape sequences) shown as the escapes `\n`, `\t`, `\r` and `\xNN`.
 */
export function oneLine(text: string): string {
  return text.replace(/[\u0000-\u001f\u007f-\u009f]/g, (c) => {
    if (c === '\n') return '\\n';
    if (c === '\t') return '\\t';
    if (c === '\r') return '\\r';
    return `\\x${c.charCodeAt(0).toString(16).padStart(2, '0')}`;
  });
}
