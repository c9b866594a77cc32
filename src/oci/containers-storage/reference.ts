/**
 * `containers-storage:` references as containers/image accepts them:
 *
 *   [STORE]IMAGE, STORE = DRIVER@GRAPHROOT, GRAPHROOT, with optional `+RUNROOT` and `:OPTS`
 *   (`[overlay@/var/lib/containers/storage+/run/containers/storage:overlay.mountopt=x]`),
 *   IMAGE = NAME[:TAG][@DIGEST] | NAME@ID | @ID | ID | ID-PREFIX | sha256:ID
 *
 * Names are normalised like docker references (`x` → `docker.io/library/x:latest`); the short
 * form is also kept so lookups can try `localhost/x:latest`, which is where podman puts images
 * it builds. `sha256:<64 hex>` alone is taken as an image ID (skopeo would reject it; cfsctl
 * accepts it). A bare hex string of 3–63 characters may be an ID prefix or a name; lookup
 * decides (containers/image does the same against the store).
 */
import path from 'node:path';
import { CfsError } from '../../errors.js';

export interface StoreSpec {
  driver: string | null;
  graphRoot: string | null;
  runRoot: string | null;
  /** Driver options from `:OPTS`, e.g. `overlay.mountopt=nodev`; recorded, not interpreted. */
  options: string[];
}

export interface StorageReference {
  /** Present when the reference starts with `[...]`. */
  store: StoreSpec | null;
  /** Normalised `domain/path:tag` (tag `latest` unless a tag or digest was given), or `domain/path` with a digest only. */
  name: string | null;
  /** `domain/path` without tag or digest. */
  repository: string | null;
  /** True when the name had no registry domain (so `localhost/` is worth trying). */
  shortName: boolean;
  /** The image name as the user wrote it (after the store spec, before `@`). */
  given: string | null;
  tag: string | null;
  /** Manifest digest from `NAME@sha256:…` / `@sha256:…`. */
  digest: string | null;
  /** Full 64-hex image ID. */
  id: string | null;
  /** Hex that may be an image ID prefix (or a name when no ID matches). */
  idPrefix: string | null;
  /** `NAME@ID-PREFIX`: the prefix constrains the named image (it is not an alternative to the name). */
  idPrefixOfName?: boolean;
}

export const MIN_ID_PREFIX = 3;
const FULL_ID = /^[0-9a-f]{64}$/;
const DIGEST = /^sha256:[0-9a-f]{64}$|^sha512:[0-9a-f]{128}$/;
const PATH_COMPONENT = /^[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*$/;
const DOMAIN = /^(?:[a-zA-Z0-9](?:[a-zA-Z0-9-]*[a-zA-Z0-9])?)(?:\.(?:[a-zA-Z0-9](?:[a-zA-Z0-9-]*[a-zA-Z0-9])?))*(?::[0-9]+)?$|^\[[0-9a-fA-F:]+\](?::[0-9]+)?$/;
const TAG = /^[\w][\w.-]{0,127}$/;
const DEFAULT_DOMAIN = 'docker.io';

function invalid(ref: string, why: string): CfsError {
  return new CfsError('EINVAL', `containers-storage reference "${ref}": ${why}`);
}

function parseStoreSpec(spec: string, ref: string): StoreSpec {
  let rest = spec;
  let driver: string | null = null;
  const at = rest.indexOf('@');
  if (at >= 0) {
    driver = rest.slice(0, at);
    rest = rest.slice(at + 1);
    if (driver === '') throw invalid(ref, 'empty storage driver before "@"');
  }
  let options: string[] = [];
  const colon = rest.indexOf(':');
  if (colon >= 0) {
    options = rest.slice(colon + 1).split(',');
    rest = rest.slice(0, colon);
  }
  const plus = rest.indexOf('+');
  const graphRoot = plus >= 0 ? rest.slice(0, plus) : rest;
  const runRoot = plus >= 0 ? rest.slice(plus + 1) : '';
  if (graphRoot === '' && driver === null && runRoot === '') throw invalid(ref, 'empty store specification "[]"');
  if (graphRoot === '' && driver !== null) throw invalid(ref, 'empty graph root after "@"');
  for (const p of [graphRoot, runRoot]) if (p !== '' && !p.startsWith('/')) throw invalid(ref, `store path "${p}" is not absolute`);
  // `/g/`, `/g/.` and `/g` name one store (and one default tag).
  const norm = (p: string): string | null => (p === '' ? null : path.posix.normalize(p).replace(/(.)\/+$/, '$1'));
  return { driver, graphRoot: norm(graphRoot), runRoot: norm(runRoot), options };
}

interface ParsedName {
  repository: string;
  tag: string | null;
  shortName: boolean;
}

/** Docker-style name normalisation: domain defaulting, `library/` for one-component names. */
export function normalizeName(text: string, ref = text): ParsedName {
  if (text === '') throw invalid(ref, 'empty image name');
  const slash = text.indexOf('/');
  const first = slash >= 0 ? text.slice(0, slash) : '';
  const hasDomain = slash >= 0 && (first.includes('.') || first.includes(':') || first === 'localhost' || first !== first.toLowerCase());
  let domain = hasDomain ? first : DEFAULT_DOMAIN;
  let remainder = hasDomain ? text.slice(slash + 1) : text;
  let tag: string | null = null;
  const lastColon = remainder.lastIndexOf(':');
  if (lastColon >= 0) {
    tag = remainder.slice(lastColon + 1);
    remainder = remainder.slice(0, lastColon);
    if (!TAG.test(tag)) throw invalid(ref, `invalid tag "${tag}"`);
  }
  if (!DOMAIN.test(domain)) throw invalid(ref, `invalid registry "${domain}"`);
  if (domain === 'index.docker.io') domain = DEFAULT_DOMAIN;
  if (remainder !== remainder.toLowerCase()) throw invalid(ref, 'repository name must be lowercase');
  for (const c of remainder.split('/')) if (!PATH_COMPONENT.test(c)) throw invalid(ref, `invalid repository name component "${c}"`);
  if (domain === DEFAULT_DOMAIN && !remainder.includes('/')) remainder = `library/${remainder}`;
  return { repository: `${domain}/${remainder}`, tag, shortName: !hasDomain };
}

/** Parses what follows `containers-storage:` (the transport prefix itself is accepted too). */
export function parseStorageReference(input: string): StorageReference {
  let s = input.startsWith('containers-storage:') ? input.slice('containers-storage:'.length) : input;
  let store: StoreSpec | null = null;
  if (s.startsWith('[')) {
    const close = s.indexOf(']');
    if (close < 1) throw invalid(input, 'store specification "[" is not closed');
    store = parseStoreSpec(s.slice(1, close), input);
    s = s.slice(close + 1);
  }
  const out: StorageReference = {
    store,
    name: null,
    repository: null,
    shortName: false,
    given: null,
    tag: null,
    digest: null,
    id: null,
    idPrefix: null,
  };
  if (s === '') throw invalid(input, 'no image name or ID');

  const at = s.lastIndexOf('@');
  if (at >= 0) {
    const after = s.slice(at + 1);
    if (after === '') throw invalid(input, 'empty digest or ID after "@"');
    if (DIGEST.test(after)) out.digest = after;
    else if (FULL_ID.test(after)) out.id = after;
    else if (/^[0-9a-f]+$/.test(after) && after.length >= MIN_ID_PREFIX) out.idPrefix = after;
    else throw invalid(input, `"${after}" is neither a digest nor an image ID`);
    s = s.slice(0, at);
    if (s === '') return out; // `@ID`, or `@sha256:…`: whichever image has that manifest digest
    if (out.idPrefix) out.idPrefixOfName = true;
  } else if (/^sha256:[0-9a-f]{64}$/.test(s)) {
    out.id = s.slice(7);
    return out;
  } else if (FULL_ID.test(s)) {
    out.id = s;
    return out;
  } else if (/^[0-9a-f]+$/.test(s) && s.length >= MIN_ID_PREFIX) {
    out.idPrefix = s;
  }

  const parsed = normalizeName(s, input);
  out.given = s;
  out.repository = parsed.repository;
  out.shortName = parsed.shortName;
  out.tag = parsed.tag ?? (out.digest === null ? 'latest' : null);
  out.name = out.tag !== null ? `${parsed.repository}:${out.tag}` : parsed.repository;
  return out;
}

/** The reference written back in containers/image syntax (for messages and default tags). */
export function formatStorageReference(r: StorageReference): string {
  let s = 'containers-storage:';
  if (r.store) {
    s += '[';
    if (r.store.driver) s += `${r.store.driver}@`;
    s += r.store.graphRoot ?? '';
    if (r.store.runRoot) s += `+${r.store.runRoot}`;
    if (r.store.options.length) s += `:${r.store.options.join(',')}`;
    s += ']';
  }
  if (r.name) s += r.name;
  if (r.digest) s += `@${r.digest}`;
  else if (r.id) s += r.name ? `@${r.id}` : r.id;
  else if (r.idPrefix && !r.name) s += r.idPrefix;
  return s;
}
