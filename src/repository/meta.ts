/**
 * `meta.json`: repository format version, fs-verity algorithm, feature flags and EROFS format
 * config, in the exact shape composefs-rs writes (serde pretty JSON, 2-space indent, trailing
 * newline, fields in this order).
 */
import { CfsError } from '../errors.js';
import type { HashAlg } from '../fsverity/digest.js';

export const META_FILE = 'meta.json';
export const REPO_FORMAT_VERSION = 1;
const LG_BLOCKSIZE = 12;
/** The only known feature flag (read-only-compatible): the repo's default EROFS format is V1. */
export const FEATURE_V1_EROFS = 'v1_erofs';

export type ErofsFormat = 0 | 1 | 2;

export interface ErofsFormats {
  default: ErofsFormat;
  /** Sorted, unique; omitted from the JSON when empty. */
  extra: ErofsFormat[];
}

export interface RepoMeta {
  version: number;
  alg: HashAlg;
  features: { compatible: string[]; readOnlyCompatible: string[]; incompatible: string[] };
  /** As stored; null when the field is absent (legacy repos: means {"default":2}). */
  erofsFormats: ErofsFormats | null;
}

const KNOWN_INCOMPATIBLE = new Set<string>();
const KNOWN_READ_ONLY_COMPATIBLE = new Set([FEATURE_V1_EROFS]);

export function algorithmString(alg: HashAlg): string {
  return `fsverity-${alg}-${LG_BLOCKSIZE}`;
}

export function parseAlgorithm(s: string): HashAlg {
  if (!s.startsWith('fsverity-')) throw new CfsError('EINVAL', `invalid repository algorithm '${s}': missing 'fsverity-' prefix`);
  const rest = s.slice('fsverity-'.length);
  const dash = rest.lastIndexOf('-');
  if (dash < 0) throw new CfsError('EINVAL', `invalid repository algorithm '${s}': missing '-' before the block size`);
  const hash = rest.slice(0, dash);
  const bs = rest.slice(dash + 1);
  if (!/^[0-9]+$/.test(bs)) throw new CfsError('EINVAL', `invalid repository algorithm '${s}': block size is not a number`);
  if (Number(bs) !== LG_BLOCKSIZE) throw new CfsError('EINVAL', `invalid repository algorithm '${s}': unsupported block size 2^${bs}`);
  if (hash !== 'sha256' && hash !== 'sha512') throw new CfsError('EINVAL', `invalid repository algorithm '${s}': unknown hash '${hash}'`);
  return hash;
}

/** Metadata of a new repository: format V1 by default (plus the v1_erofs flag). */
export function newMeta(alg: HashAlg, erofsDefault: ErofsFormat = 1): RepoMeta {
  return {
    version: REPO_FORMAT_VERSION,
    alg,
    features: { compatible: [], readOnlyCompatible: erofsDefault === 1 ? [FEATURE_V1_EROFS] : [], incompatible: [] },
    erofsFormats: { default: erofsDefault, extra: [] },
  };
}

export function serializeMeta(m: RepoMeta): string {
  const erofs: Record<string, unknown> | undefined = m.erofsFormats
    ? m.erofsFormats.extra.length > 0
      ? { default: m.erofsFormats.default, extra: m.erofsFormats.extra }
      : { default: m.erofsFormats.default }
    : undefined;
  const obj: Record<string, unknown> = {
    version: m.version,
    algorithm: algorithmString(m.alg),
    features: {
      compatible: m.features.compatible,
      'read-only-compatible': m.features.readOnlyCompatible,
      incompatible: m.features.incompatible,
    },
  };
  if (erofs) obj.erofs_formats = erofs;
  return `${JSON.stringify(obj, null, 2)}\n`;
}

function stringArray(v: unknown, what: string, file: string): string[] {
  if (v === undefined) return [];
  if (!Array.isArray(v) || !v.every((x) => typeof x === 'string')) {
    throw new CfsError('ECORRUPT', `${file}: '${what}' must be an array of strings`);
  }
  return v as string[];
}

function erofsFormat(v: unknown, file: string): ErofsFormat {
  if (v !== 0 && v !== 1 && v !== 2) throw new CfsError('ECORRUPT', `${file}: unknown EROFS format ${JSON.stringify(v)}`);
  return v;
}

/** Parse and validate meta.json text; refuses newer versions and unknown incompatible features. */
export function parseMeta(text: string, file: string): RepoMeta {
  let raw: unknown;
  try {
    raw = JSON.parse(text);
  } catch (e) {
    throw new CfsError('ECORRUPT', `${file}: invalid JSON: ${(e as Error).message}`);
  }
  if (!raw || typeof raw !== 'object' || Array.isArray(raw)) throw new CfsError('ECORRUPT', `${file}: not a JSON object`);
  const o = raw as Record<string, unknown>;
  if (typeof o.version !== 'number' || !Number.isInteger(o.version) || o.version < 0) {
    throw new CfsError('ECORRUPT', `${file}: missing or invalid 'version'`);
  }
  if (o.version > REPO_FORMAT_VERSION) {
    throw new CfsError('ENOTSUP', `${file}: unsupported repository format version ${o.version} (this tool supports up to ${REPO_FORMAT_VERSION})`);
  }
  if (typeof o.algorithm !== 'string') throw new CfsError('ECORRUPT', `${file}: missing 'algorithm'`);
  const alg = parseAlgorithm(o.algorithm);
  const f = (o.features ?? {}) as Record<string, unknown>;
  if (typeof f !== 'object' || Array.isArray(f)) throw new CfsError('ECORRUPT', `${file}: 'features' must be an object`);
  const features = {
    compatible: stringArray(f.compatible, 'features.compatible', file),
    readOnlyCompatible: stringArray(f['read-only-compatible'], 'features.read-only-compatible', file),
    incompatible: stringArray(f.incompatible, 'features.incompatible', file),
  };
  const unknown = features.incompatible.filter((x) => !KNOWN_INCOMPATIBLE.has(x));
  if (unknown.length > 0) {
    throw new CfsError('ENOTSUP', `${file}: repository uses unsupported incompatible features: ${unknown.join(', ')}`);
  }
  let erofsFormats: ErofsFormats | null = null;
  if (o.erofs_formats !== undefined) {
    const e = o.erofs_formats as Record<string, unknown>;
    if (!e || typeof e !== 'object' || Array.isArray(e)) throw new CfsError('ECORRUPT', `${file}: 'erofs_formats' must be an object`);
    const extra = e.extra === undefined ? [] : Array.isArray(e.extra) ? e.extra.map((x) => erofsFormat(x, file)) : null;
    if (!extra) throw new CfsError('ECORRUPT', `${file}: 'erofs_formats.extra' must be an array`);
    erofsFormats = { default: erofsFormat(e.default, file), extra: [...new Set(extra)].sort() };
  }
  return { version: o.version, alg, features, erofsFormats };
}

/** Unknown read-only-compatible flags: the repository may be read, not written (Repository.ensureWritable). */
export function unknownReadOnlyFeatures(m: RepoMeta): string[] {
  return m.features.readOnlyCompatible.filter((x) => !KNOWN_READ_ONLY_COMPATIBLE.has(x));
}

/** The EROFS format config in effect (brief 1.3): stored value, else V1 flag, else legacy V2. */
export function effectiveErofsFormats(m: RepoMeta): ErofsFormats {
  const e = m.erofsFormats;
  if (e && !(e.default === 2 && e.extra.length === 0)) return e;
  if (m.features.readOnlyCompatible.includes(FEATURE_V1_EROFS)) return { default: 1, extra: [] };
  return { default: 2, extra: [] };
}

