import assert from 'node:assert/strict';
import { mkdir, mkdtemp, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { test } from 'node:test';
import { isCfsError } from '../src/errors.js';
import { applyStoreSpec, defaultContext, loadStorageConfig, storageConfigFromToml, type ConfigContext } from '../src/oci/containers-storage/config.js';
import { crc64 } from '../src/oci/containers-storage/crc64.js';
import { formatStorageReference, parseStorageReference, type StorageReference } from '../src/oci/containers-storage/reference.js';
import { bigDataFileName } from '../src/oci/containers-storage/store.js';
import { parseToml } from '../src/oci/containers-storage/toml.js';

const rejects = (fn: () => unknown, code: string, re: RegExp): void => {
  assert.throws(fn, (e: unknown) => isCfsError(e) && e.code === code && re.test(e.message));
};

test('toml: accepted subset', () => {
  const table: Array<[string, unknown]> = [
    ['', {}],
    ['# only a comment\n\n', {}],
    ['a = "x" # trailing', { a: 'x' }],
    ["a = 'C:\\path'", { a: 'C:\\path' }],
    ['a = "tab\\tq\\"u\\u00e9\\U0001F600"', { a: 'tab\tq"ué😀' }],
    ['a = """\nline1\nline2\\\n   joined"""', { a: 'line1\nline2joined' }],
    ["a = '''\nraw \\n'''", { a: 'raw \\n' }],
    ['a = 1_000\nb = -7\nc = 0x1f\nd = 0o755\ne = 0b101\nf = 1.5e3\ng = +inf', { a: 1000, b: -7, c: 31, d: 0o755, e: 5, f: 1500, g: Infinity }],
    ['t = true\nf = false', { t: true, f: false }],
    ['a = [ "x", "y", ]', { a: ['x', 'y'] }],
    ['a = [\n  "x", # one\n  # between\n  "y"\n]', { a: ['x', 'y'] }],
    ['a = [[1, 2], ["n"]]', { a: [[1, 2], ['n']] }],
    ['p = {enable_partial_images = "false", use_hard_links = "false", ostree_repos=""}', { p: { enable_partial_images: 'false', use_hard_links: 'false', ostree_repos: '' } }],
    ['[storage]\ndriver = "overlay"\n[storage.options]\nadditionalimagestores = [\n]\n[storage.options.overlay]\nmountopt = "nodev"', { storage: { driver: 'overlay', options: { additionalimagestores: [], overlay: { mountopt: 'nodev' } } } }],
    ['a.b.c = 1\n"quoted key" = 2\n\'lit\' = 3', { a: { b: { c: 1 } }, 'quoted key': 2, lit: 3 }],
    ['[a.b]\nx = 1\n[a]\ny = 2', { a: { b: { x: 1 }, y: 2 } }],
    ['a = "x"\r\nb = "y"\r\n', { a: 'x', b: 'y' }],
  ];
  for (const [src, want] of table) assert.deepEqual(parseToml(src, 'f.conf'), want, src);
});

test('toml: errors name the file and line', () => {
  const table: Array<[string, RegExp]> = [
    ['a = "unterminated', /f\.conf:1: unterminated string/],
    ['\n\na = ', /f\.conf:3: expected a value/],
    ['a = 1\na = 2', /f\.conf:2: key "a" defined twice/],
    ['[s]\n[s]', /f\.conf:2: table \[s\] defined twice/],
    ['[[bin]]', /arrays of tables are not supported/],
    ['a = 1979-05-27', /dates and times are not supported/],
    ['a = "x" b', /unexpected "b" after value/],
    ['a = [1 2]', /expected "," or "\]" in array/],
    ['a = "\\q"', /invalid escape/],
    ['a = 1__0', /invalid value "1__0"/],
    ['a = tru', /invalid value "tru"/],
    ['= 1', /unexpected "=" where a key was expected/],
    ['a = 1\na.b = 2', /key "a" is not a table/],
    // Invisible characters are named by code point.
    ['a = 1\n\u00a0b = 2', /f\.conf:2: unexpected U\+00A0 where a key was expected/],
    ['a = 1\n\uFEFFb = 2', /f\.conf:2: unexpected U\+FEFF where a key was expected/],
  ];
  for (const [src, re] of table) rejects(() => parseToml(src, 'f.conf'), 'EINVAL', re);
  // A byte-order mark at the start is skipped.
  assert.deepEqual(parseToml('\uFEFF[storage]\ndriver = "vfs"\n', 'f.conf'), { storage: { driver: 'vfs' } });
});

const root: ConfigContext = { env: {}, uid: 0, home: '/root' };
const user: ConfigContext = { env: { XDG_RUNTIME_DIR: '/run/user/1000' }, uid: 1000, home: '/home/u' };

test('storage.conf: resolution table', () => {
  type Row = [string, string | null, ConfigContext, Partial<ReturnType<typeof storageConfigFromToml>>];
  const table: Row[] = [
    ['no file, root', null, root, { driver: null, graphRoot: '/var/lib/containers/storage', runRoot: '/run/containers/storage', additionalImageStores: [] }],
    ['no file, rootless', null, user, { graphRoot: '/home/u/.local/share/containers/storage', runRoot: '/run/user/1000/containers' }],
    ['rootless XDG_DATA_HOME', null, { ...user, env: { ...user.env, XDG_DATA_HOME: '/d' } }, { graphRoot: '/d/containers/storage' }],
    [
      'typical file',
      '[storage]\ndriver = "overlay"\nrunroot = "/run/c"\ngraphroot = "/var/lib/c"\n[storage.options]\nadditionalimagestores = [ "/ro/a", "/ro/b/" ]\npull_options = {enable_partial_images = "false"}\n[storage.options.overlay]\nmountopt = "nodev,metacopy=on"\n',
      root,
      { configFile: 'f.conf', driver: 'overlay', graphRoot: '/var/lib/c', runRoot: '/run/c', additionalImageStores: ['/ro/a', '/ro/b/'] },
    ],
    ['overlay2 is overlay', '[storage]\ndriver = "overlay2"', root, { driver: 'overlay' }],
    ['STORAGE_DRIVER wins', '[storage]\ndriver = "overlay"', { ...root, env: { STORAGE_DRIVER: 'vfs' } }, { driver: 'vfs' }],
    ['STORAGE_OPTS replaces stores', '[storage.options]\nadditionalimagestores = ["/a"]', { ...root, env: { STORAGE_OPTS: 'overlay.imagestore=/b,overlay.mountopt=nodev' } }, { additionalImageStores: ['/b'] }],
    ['$UID and $HOME expanded', '[storage]\ngraphroot = "$HOME/s"\nrunroot = "/run/user/$UID/c"', { ...user, env: { HOME: '/home/u' } }, { graphRoot: '/home/u/s', runRoot: '/run/user/1000/c' }],
    ['rootless_storage_path for users', '[storage]\nrootless_storage_path = "/big/${USER}"', { ...user, env: { USER: 'u' } }, { graphRoot: '/big/u' }],
    ['rootless_storage_path ignored for root', '[storage]\nrootless_storage_path = "/big"', root, { graphRoot: '/var/lib/containers/storage' }],
    ['graphroot beats rootless path', '[storage]\ngraphroot = "/g"\nrootless_storage_path = "/big"', user, { graphRoot: '/g' }],
    ['transient and imagestore', '[storage]\ntransient_store = true\nimagestore = "/img"', root, { transientStore: true, imageStore: '/img' }],
  ];
  for (const [what, text, ctx, want] of table) {
    const got = storageConfigFromToml(text, 'f.conf', ctx);
    for (const [k, v] of Object.entries(want)) assert.deepEqual(got[k as keyof typeof got], v, `${what}: ${k}`);
  }
  // A rootless user without a file of their own gets the system file's driver and path.
  const sys = storageConfigFromToml(null, '/home/u/.config/containers/storage.conf', user, '[storage]\ndriver = "vfs"\nrootless_storage_path = "/sys/$UID"');
  assert.equal(sys.driver, 'vfs');
  assert.equal(sys.graphRoot, '/sys/1000');
});

test('inside podman unshare (uid 0 in a user namespace) the store is the invoking user\'s', () => {
  const ctx = defaultContext({ _CONTAINERS_USERNS_CONFIGURED: 'done', _CONTAINERS_ROOTLESS_UID: '4242', HOME: '/home/u' });
  assert.deepEqual([ctx.uid, ctx.home], [4242, '/home/u']);
  const cfg = storageConfigFromToml(null, '/home/u/.config/containers/storage.conf', ctx);
  assert.equal(cfg.graphRoot, '/home/u/.local/share/containers/storage');
  assert.equal(defaultContext({ _CONTAINERS_ROOTLESS_UID: '4242', HOME: '/root' }).uid, process.getuid?.() ?? 0, 'only inside the namespace podman configured');
});

test('storage.conf: bad types name the file and key', () => {
  rejects(() => storageConfigFromToml('[storage]\ngraphroot = 1', '/etc/x.conf', root), 'EINVAL', /\/etc\/x\.conf: "storage\.graphroot" must be a string/);
  rejects(() => storageConfigFromToml('[storage.options]\nadditionalimagestores = "/a"', 'f', root), 'EINVAL', /additionalimagestores" must be an array of strings/);
  rejects(() => storageConfigFromToml('[storage]\ntransient_store = "yes"', 'f', root), 'EINVAL', /must be true or false/);
  rejects(() => storageConfigFromToml('[storage\n', 'f', root), 'EINVAL', /^f:1: /);
});

test('storage.conf: CONTAINERS_STORAGE_CONF and XDG_CONFIG_HOME are honoured', async () => {
  const dir = await mkdtemp(join(tmpdir(), 'cfs-cstor-conf-'));
  try {
    const conf = join(dir, 'my.conf');
    await writeFile(conf, `[storage]\ndriver = "vfs"\ngraphroot = "${dir}/g"\nrunroot = "${dir}/r"\n`);
    const a = await loadStorageConfig({ env: { CONTAINERS_STORAGE_CONF: conf }, uid: 0 });
    assert.equal(a.configFile, conf);
    assert.equal(a.driver, 'vfs');
    assert.equal(a.graphRoot, `${dir}/g`);
    await assert.rejects(loadStorageConfig({ env: { CONTAINERS_STORAGE_CONF: join(dir, 'nope.conf') }, uid: 0 }), (e: unknown) => isCfsError(e) && e.code === 'ENOENT' && /nope\.conf/.test(e.message));
    await mkdir(join(dir, 'xdg', 'containers'), { recursive: true });
    await writeFile(join(dir, 'xdg', 'containers', 'storage.conf'), '[storage]\ngraphroot = "/from/xdg"\n');
    const b = await loadStorageConfig({ env: { XDG_CONFIG_HOME: join(dir, 'xdg') }, uid: 1000, home: dir });
    assert.equal(b.graphRoot, '/from/xdg');
    const c = await loadStorageConfig({ env: { XDG_CONFIG_HOME: join(dir, 'xdg') }, uid: 0, home: dir });
    assert.equal(c.graphRoot, '/from/xdg');
  } finally {
    await rm(dir, { recursive: true, force: true });
  }
});

const ID = 'a'.repeat(64);
const DIG = `sha256:${'b'.repeat(64)}`;

test('reference: parse table', () => {
  const base: StorageReference = { store: null, name: null, repository: null, shortName: false, given: null, tag: null, digest: null, id: null, idPrefix: null };
  const named = (given: string, repository: string, tag: string | null, short: boolean, extra: Partial<StorageReference> = {}): StorageReference => ({
    ...base,
    given,
    repository,
    tag,
    shortName: short,
    name: tag ? `${repository}:${tag}` : repository,
    ...extra,
  });
  const table: Array<[string, StorageReference]> = [
    ['x', named('x', 'docker.io/library/x', 'latest', true)],
    ['containers-storage:x:1.0', named('x:1.0', 'docker.io/library/x', '1.0', true)],
    ['localhost/x', named('localhost/x', 'localhost/x', 'latest', false)],
    ['quay.io/a/b:v', named('quay.io/a/b:v', 'quay.io/a/b', 'v', false)],
    ['registry:5000/a', named('registry:5000/a', 'registry:5000/a', 'latest', false)],
    ['user/app', named('user/app', 'docker.io/user/app', 'latest', true)],
    ['index.docker.io/x', named('index.docker.io/x', 'docker.io/library/x', 'latest', false)],
    [`x@${DIG}`, named('x', 'docker.io/library/x', null, true, { digest: DIG })],
    [`x:t@${DIG}`, named('x:t', 'docker.io/library/x', 't', true, { digest: DIG })],
    [`@${DIG}`, { ...base, digest: DIG }],
    [ID, { ...base, id: ID }],
    [`@${ID}`, { ...base, id: ID }],
    [`sha256:${ID}`, { ...base, id: ID }],
    [`localhost/x@${ID}`, named('localhost/x', 'localhost/x', 'latest', false, { id: ID })],
    ['abc123', named('abc123', 'docker.io/library/abc123', 'latest', true, { idPrefix: 'abc123' })],
    ['[/g]x', named('x', 'docker.io/library/x', 'latest', true, { store: { driver: null, graphRoot: '/g', runRoot: null, options: [] } })],
    ['[vfs@/g+/r]x', named('x', 'docker.io/library/x', 'latest', true, { store: { driver: 'vfs', graphRoot: '/g', runRoot: '/r', options: [] } })],
    ['[overlay@/g+/r:overlay.mountopt=nodev,overlay.imagestore=/i]x', named('x', 'docker.io/library/x', 'latest', true, { store: { driver: 'overlay', graphRoot: '/g', runRoot: '/r', options: ['overlay.mountopt=nodev', 'overlay.imagestore=/i'] } })],
  ];
  for (const [s, want] of table) assert.deepEqual(parseStorageReference(s), want, s);
});

test('reference: rejected', () => {
  const table: Array<[string, RegExp]> = [
    ['', /no image name or ID/],
    ['containers-storage:', /no image name or ID/],
    ['[/g', /not closed/],
    ['[]x', /empty store specification/],
    ['[rel/g]x', /not absolute/],
    ['[overlay@]x', /empty graph root/],
    ['[@/g]x', /empty storage driver/],
    ['[/g]', /no image name or ID/],
    ['X', /must be lowercase/],
    ['x@', /empty digest or ID/],
    ['x@zz', /neither a digest nor an image ID/],
    ['x:bad tag', /invalid tag/],
    ['a//b', /invalid repository name component ""/],
  ];
  for (const [s, re] of table) rejects(() => parseStorageReference(s), 'EINVAL', re);
});

test('reference: format round trip', () => {
  for (const s of ['containers-storage:docker.io/library/x:latest', `containers-storage:[overlay@/g+/r]localhost/x:latest`, `containers-storage:localhost/x@${DIG}`, `containers-storage:${ID}`]) {
    assert.equal(formatStorageReference(parseStorageReference(s)), s);
  }
});

test('reference: store spec overrides the configuration', () => {
  const cfg = storageConfigFromToml('[storage.options]\nadditionalimagestores = ["/ro"]', 'f', root);
  const got = applyStoreSpec(cfg, parseStorageReference('[vfs@/g+/r]x').store);
  assert.equal(got.driver, 'vfs');
  assert.equal(got.graphRoot, '/g');
  assert.equal(got.runRoot, '/r');
  assert.deepEqual(got.additionalImageStores, []);
});

test('big-data file names and crc64', () => {
  assert.equal(bigDataFileName('manifest'), 'manifest');
  assert.equal(bigDataFileName('sha256:abc'), `=${Buffer.from('sha256:abc').toString('base64')}`);
  assert.equal(bigDataFileName('manifest-sha256:ab'), '=bWFuaWZlc3Qtc2hhMjU2OmFi');
  assert.equal(bigDataFileName('Upper'), `=${Buffer.from('Upper').toString('base64')}`);
  assert.equal(crc64(Buffer.from('123456789')).toString('hex'), 'b90956c775a41001');
  assert.equal(crc64(Buffer.alloc(0)).toString('hex'), '0000000000000000');
});
