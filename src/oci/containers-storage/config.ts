/**
 * Where the containers-storage store is, following containers/storage's rules (types/options.go):
 *
 * - config file: `$CONTAINERS_STORAGE_CONF`; else for root `$XDG_CONFIG_HOME/containers/storage.conf`
 *   when it exists, then `/etc/containers/storage.conf`, then `/usr/share/containers/storage.conf`;
 *   rootless: `$XDG_CONFIG_HOME/containers/storage.conf` or `~/.config/containers/storage.conf`,
 *   falling back to the system file for `driver` and `rootless_storage_path`.
 * - `[storage]` keys: driver, graphroot, runroot, imagestore, rootless_storage_path,
 *   transient_store; `[storage.options]` additionalimagestores.
 * - defaults: root graphroot /var/lib/containers/storage, runroot /run/containers/storage;
 *   rootless `$XDG_DATA_HOME/containers/storage` (or ~/.local/share/…) and
 *   `$XDG_RUNTIME_DIR/containers`.
 * - `$UID` and `$VAR` in paths are expanded; `STORAGE_DRIVER` overrides the driver; `STORAGE_OPTS`
 *   (comma-separated driver options) replaces the file's options; `overlay2` means `overlay`.
 */
import { readFile, realpath, stat } from 'node:fs/promises';
import { homedir } from 'node:os';
import path from 'node:path';
import { CfsError, errnoCode } from '../../errors.js';
import type { StoreSpec } from './reference.js';
import { isTomlTable, parseToml, type TomlTable, type TomlValue } from './toml.js';

export interface StorageConfig {
  /** The storage.conf that was read, or null when none exists. */
  configFile: string | null;
  /** null: detect from the `<driver>-images` directory in the graph root. */
  driver: string | null;
  graphRoot: string;
  /** The graph root came from a reference's `[…]` store spec, not from the configuration. */
  graphRootFromReference?: boolean;
  runRoot: string;
  /** Separate image store (`imagestore`), searched before the graph root. */
  imageStore: string | null;
  /** Read-only stores (`additionalimagestores`), searched after the graph root. */
  additionalImageStores: string[];
  transientStore: boolean;
}

export interface ConfigContext {
  env: NodeJS.ProcessEnv;
  uid: number;
  home: string;
}

export const SYSTEM_CONFIG = '/etc/containers/storage.conf';
export const VENDOR_CONFIG = '/usr/share/containers/storage.conf';
const ROOT_GRAPHROOT = '/var/lib/containers/storage';
const ROOT_RUNROOT = '/run/containers/storage';

/**
 * This process's context. Inside `podman unshare` (a user namespace where we are uid 0), podman
 * sets _CONTAINERS_USERNS_CONFIGURED and _CONTAINERS_ROOTLESS_UID: the store is then the
 * invoking user's rootless one, as containers/storage's GetRootlessUID decides.
 */
export function defaultContext(env: NodeJS.ProcessEnv = process.env): ConfigContext {
  const rootlessUid = env['_CONTAINERS_USERNS_CONFIGURED'] ? Number(env['_CONTAINERS_ROOTLESS_UID']) : NaN;
  const uid = Number.isSafeInteger(rootlessUid) && rootlessUid > 0 ? rootlessUid : process.getuid?.() ?? 0;
  return { env, uid, home: env['HOME'] || homedir() };
}

function resolveContext(ctx: Partial<ConfigContext>): ConfigContext {
  const d = defaultContext(ctx.env ?? process.env);
  const env = ctx.env ?? d.env;
  return { env, uid: ctx.uid ?? d.uid, home: ctx.home ?? (env['HOME'] || d.home) };
}

/** `$UID` first, then `$VAR` / `${VAR}` from the environment (unset → empty), as os.ExpandEnv. */
export function expandPath(p: string, ctx: ConfigContext): string {
  const replaced = p
    .replaceAll('$UID', String(ctx.uid))
    .replace(/\$\{([^}]*)\}|\$([A-Za-z_][A-Za-z0-9_]*)/g, (_m, a: string | undefined, b: string | undefined) => ctx.env[a ?? b ?? ''] ?? '');
  return replaced === '' ? '' : path.normalize(replaced);
}

function rootlessDefaults(ctx: ConfigContext): { graphRoot: string; runRoot: string } {
  const data = ctx.env['XDG_DATA_HOME'] || path.join(ctx.home, '.local', 'share');
  const run = ctx.env['XDG_RUNTIME_DIR'] || `/run/user/${ctx.uid}`;
  return { graphRoot: path.join(data, 'containers', 'storage'), runRoot: path.join(run, 'containers') };
}

async function exists(p: string): Promise<boolean> {
  try {
    await stat(p);
    return true;
  } catch (e) {
    if (errnoCode(e) === 'ENOENT' || errnoCode(e) === 'ENOTDIR') return false;
    throw e;
  }
}

/** The config files to consult, most specific first: [main, fallback for rootless defaults]. */
export async function configFiles(ctx: ConfigContext): Promise<{ main: string; system: string | null }> {
  const explicit = ctx.env['CONTAINERS_STORAGE_CONF'];
  if (explicit) return { main: explicit, system: null };
  const system = (await exists(SYSTEM_CONFIG)) ? SYSTEM_CONFIG : VENDOR_CONFIG;
  const xdg = ctx.env['XDG_CONFIG_HOME'];
  if (ctx.uid === 0) {
    const user = xdg ? path.join(xdg, 'containers', 'storage.conf') : null;
    return { main: user && (await exists(user)) ? user : system, system: null };
  }
  return { main: path.join(xdg || path.join(ctx.home, '.config'), 'containers', 'storage.conf'), system };
}

class TomlReader {
  constructor(
    private readonly t: TomlTable,
    private readonly file: string,
  ) {}
  private get(key: string): TomlValue | undefined {
    let v: TomlValue | undefined = this.t;
    for (const k of key.split('.')) v = isTomlTable(v) ? v[k] : undefined;
    return v;
  }
  private bad(key: string, want: string): CfsError {
    return new CfsError('EINVAL', `${this.file}: "${key}" must be ${want}`);
  }
  string(key: string): string | null {
    const v = this.get(key);
    if (v === undefined) return null;
    if (typeof v !== 'string') throw this.bad(key, 'a string');
    return v;
  }
  bool(key: string): boolean | null {
    const v = this.get(key);
    if (v === undefined) return null;
    if (typeof v !== 'boolean') throw this.bad(key, 'true or false');
    return v;
  }
  strings(key: string): string[] {
    const v = this.get(key);
    if (v === undefined) return [];
    if (!Array.isArray(v) || v.some((x) => typeof x !== 'string')) throw this.bad(key, 'an array of strings');
    return v as string[];
  }
}

/** Image stores named in driver options (`overlay.imagestore=/p`, `additionalimagestore=/p`). */
function storesFromOptions(options: string[]): string[] {
  const out: string[] = [];
  for (const o of options) {
    const eq = o.indexOf('=');
    if (eq < 0) continue;
    const key = o.slice(0, eq).trim().toLowerCase();
    const bare = key.slice(key.lastIndexOf('.') + 1);
    if (bare === 'imagestore' || bare === 'additionalimagestore') out.push(...o.slice(eq + 1).split(',').filter(Boolean));
  }
  return out;
}

function normalizeDriver(d: string | null): string | null {
  if (!d) return null;
  return d === 'overlay2' ? 'overlay' : d;
}

/**
 * The configuration from storage.conf text (null: no file). Pure apart from `ctx`, so tests can
 * feed it tables of inputs.
 */
export function storageConfigFromToml(
  text: string | null,
  file: string,
  ctx: ConfigContext,
  systemText: string | null = null,
  systemFile = SYSTEM_CONFIG,
): StorageConfig {
  const r = text === null ? null : new TomlReader(parseToml(text, file), file);
  // Rootless users without their own file still get the system file's driver and rootless path.
  const sys = ctx.uid !== 0 && text === null && systemText !== null ? new TomlReader(parseToml(systemText, systemFile), systemFile) : null;
  const rootless = ctx.uid !== 0;
  const defaults = rootless ? rootlessDefaults(ctx) : { graphRoot: ROOT_GRAPHROOT, runRoot: ROOT_RUNROOT };
  const rootlessPath = r?.string('storage.rootless_storage_path') ?? sys?.string('storage.rootless_storage_path') ?? null;
  const graphRoot = r?.string('storage.graphroot') || (rootless && rootlessPath) || defaults.graphRoot;
  const runRoot = r?.string('storage.runroot') || defaults.runRoot;
  let driver = normalizeDriver(r?.string('storage.driver') ?? sys?.string('storage.driver') ?? null);
  const envDriver = ctx.env['STORAGE_DRIVER'];
  if (envDriver) driver = normalizeDriver(envDriver);
  let additional = r?.strings('storage.options.additionalimagestores') ?? [];
  const envOpts = ctx.env['STORAGE_OPTS'];
  if (envOpts !== undefined) additional = storesFromOptions(envOpts.split(','));
  const imageStore = r?.string('storage.imagestore') || null;
  return {
    configFile: text === null ? null : file,
    driver,
    graphRoot: expandPath(graphRoot, ctx),
    runRoot: expandPath(runRoot, ctx),
    imageStore: imageStore ? expandPath(imageStore, ctx) : null,
    additionalImageStores: additional.map((p) => expandPath(p, ctx)).filter((p) => p !== ''),
    transientStore: r?.bool('storage.transient_store') ?? false,
  };
}

async function readOptional(p: string): Promise<string | null> {
  try {
    return await readFile(p, 'utf8');
  } catch (e) {
    if (errnoCode(e) === 'ENOENT') return null;
    throw new CfsError('EIO', `${p}: cannot read storage configuration: ${(e as Error).message}`);
  }
}

/** Resolves symlinks in store paths like containers/storage (EvalSymlinks, else the cleaned path). */
async function canonical(p: string): Promise<string> {
  try {
    return await realpath(p);
  } catch {
    return p;
  }
}

/** Loads storage.conf (see the module comment) for this process or the given context. */
export async function loadStorageConfig(ctxIn: Partial<ConfigContext> = {}): Promise<StorageConfig> {
  const ctx = resolveContext(ctxIn);
  const { main, system } = await configFiles(ctx);
  const text = await readOptional(main);
  if (text === null && ctx.env['CONTAINERS_STORAGE_CONF']) {
    throw new CfsError('ENOENT', `${main}: storage configuration named by CONTAINERS_STORAGE_CONF does not exist`);
  }
  const systemText = text === null && system ? await readOptional(system) : null;
  const cfg = storageConfigFromToml(text, main, ctx, systemText, system ?? SYSTEM_CONFIG);
  cfg.graphRoot = await canonical(cfg.graphRoot);
  cfg.runRoot = await canonical(cfg.runRoot);
  return cfg;
}

/** Applies a reference's `[driver@graphroot+runroot:opts]` over the configuration. */
export function applyStoreSpec(cfg: StorageConfig, spec: StoreSpec | null): StorageConfig {
  if (!spec) return cfg;
  const out: StorageConfig = { ...cfg, additionalImageStores: [...cfg.additionalImageStores] };
  if (spec.driver) out.driver = normalizeDriver(spec.driver);
  if (spec.graphRoot) {
    // Another graph root is another store: the configured image stores belong to the old one.
    out.graphRoot = path.normalize(spec.graphRoot);
    out.graphRootFromReference = true;
    out.imageStore = null;
    out.additionalImageStores = [];
  }
  if (spec.runRoot) out.runRoot = path.normalize(spec.runRoot);
  if (spec.options.length) out.additionalImageStores = storesFromOptions(spec.options);
  return out;
}
