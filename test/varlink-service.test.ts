/**
 * `cfs varlink` against an independent client (Python's socket module, test/clients/): GetInfo
 * and introspection, image listing, GetLayer for every layer (the tar rebuilt from the stream
 * and the received fds has the diff_id), PutLayer + FinalizeImage into a second repository,
 * socket activation, concurrent clients, and every misbehaving client: each gets an error or is
 * dropped while another client keeps working, the repository stays consistent and the server
 * leaks no fds.
 */
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { execFile, execFileSync, spawn, type ChildProcess } from 'node:child_process';
import { createHash, randomBytes } from 'node:crypto';
import { cpSync, existsSync, mkdtempSync, readdirSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { promisify } from 'node:util';
import { buildOciLayout, type EntrySpec } from './helpers/oci-fixture.js';
import { cfsCommand, cfsOk, PROJECT_ROOT, runCfs } from './helpers/cli.js';
import { repoProblems } from './helpers/repo-check.js';
import { firstOutput, stopChild as stop } from './helpers/child.js';
import { parseVarlinkInterface, replyMismatches, type IdlInterface } from './helpers/varlink-idl.js';

const run = promisify(execFile);
const CLIENT = path.join(PROJECT_ROOT, 'test/clients/varlink_client.py');

let work: string;
let sock: string;
let server: ChildProcess;
let serverLog = '';
let layout: string;
let diffIds: string[];

interface LayerReport {
  diff_id: string;
  rebuilt: string;
  size: number;
  files: number;
  frames: number;
  fds: number;
  dir_count: number;
}
interface VarlinkErrorReply {
  error: string;
  parameters: Record<string, string>;
}

/** The client's environment: every reply it receives is logged for the IDL check at the end. */
const clientEnv = (): NodeJS.ProcessEnv => ({ ...process.env, VARLINK_REPLY_LOG: path.join(work, 'replies.jsonl') });

async function client<T>(...args: string[]): Promise<T> {
  const { stdout } = await run('python3', [CLIENT, ...args], { maxBuffer: 64 << 20, env: clientEnv() });
  return JSON.parse(stdout) as T;
}

function repo(name: string, hash = 'sha256'): string {
  const p = path.join(work, name);
  cfsOk(['init', '--insecure', '--hash', hash, p]);
  return p;
}

async function waitFor(p: string): Promise<void> {
  for (let i = 0; i < 200 && !existsSync(p); i++) await new Promise((r) => setTimeout(r, 50));
  assert.ok(existsSync(p), `${p} did not appear; server log:\n${serverLog}`);
}

/** How often a service said it serves on unix:`p` (the socket exists a moment before). */
function servingCount(p: string): number {
  return serverLog.split(`serving on unix:${p}\n`).length - 1;
}

async function untilServing(p: string, times = 1): Promise<void> {
  for (let i = 0; i < 600 && servingCount(p) < times; i++) await new Promise((r) => setTimeout(r, 50));
  assert.equal(servingCount(p), times, `no service announced unix:${p}; server log:\n${serverLog}`);
}

/** Run `prefix… cfs args…` with its stderr collected into serverLog. */
function startServer(args: string[], prefix: string[] = []): ChildProcess {
  const argv = [...prefix, ...cfsCommand(), ...args];
  const child = spawn(argv[0], argv.slice(1), { cwd: PROJECT_ROOT, stdio: ['ignore', 'ignore', 'pipe'] });
  child.stderr!.on('data', (d: Buffer) => {
    serverLog += d.toString();
  });
  child.on('exit', (code, signal) => {
    serverLog += `[${argv.join(' ')}: exit ${code ?? signal}]\n`;
  });
  return child;
}

/** GetInfo on the abstract socket `@name` as user `uid`: 'reply', or 'closed' when the service hangs up. */
async function getInfoAs(uid: number, name: string): Promise<string> {
  const py = [
    'import json, socket, sys',
    's = socket.socket(socket.AF_UNIX)',
    `s.connect("\\0" + sys.argv[1][1:])`,
    's.sendall(json.dumps({"method": "org.varlink.service.GetInfo"}).encode() + b"\\0")',
    'try:',
    '    d = s.recv(65536)',
    'except ConnectionResetError:',
    '    d = b""',
    'print("reply" if d else "closed")',
  ].join('\n');
  const { stdout } = await run('setpriv', [`--reuid=${uid}`, `--regid=${uid}`, '--clear-groups', '/usr/bin/python3', '-c', py, name], { cwd: '/' });
  return stdout.trim();
}

function serverFds(): number {
  assert.equal(server.exitCode, null, `server exited; log:\n${serverLog}`);
  return readdirSync(`/proc/${server.pid}/fd`).length;
}

const T = 1_700_000_000;
const layers: EntrySpec[][] = [
  [{ path: 'usr/', type: 'directory', mtime: T }, { path: 'usr/a', content: Buffer.alloc(200_000, 'a'), mtime: T }, { path: 'usr/tiny', content: 'x', mtime: T }],
  [{ path: 'usr/b', content: Buffer.alloc(1_500_000, 'b'), mtime: T }, { path: 'usr/c', content: 'c'.repeat(65), mtime: T }],
  [{ path: 'etc/', type: 'directory', mtime: T }, { path: 'etc/d', content: Buffer.alloc(70_000, 'd'), mtime: T }],
];

before(async () => {
  work = mkdtempSync(path.join(tmpdir(), 'cfs-varlink-'));
  const built = await buildOciLayout(path.join(work, 'img'), { images: [{ tag: 'v1', layers }] });
  layout = built.dir;
  diffIds = built.images[0].layers.map((l) => l.diffId);
  repo('src');
  cfsOk(['--repo', path.join(work, 'src'), 'oci', 'pull', '-q', `oci:${layout}:v1`, 'app']);
  sock = path.join(work, 'cfs.sock');
  server = startServer(['--insecure', 'varlink', '--address', `unix:${sock}`]);
  await untilServing(sock);
});

after(async () => {
  await stop(server);
  rmSync(work, { recursive: true, force: true });
});

test('GetInfo, interface description, unknown method, bad parameter, stray fds', async () => {
  const r = await client<{
    service: { vendor: string; product: string; interfaces: string[] };
    oci: { features: string[] };
    description: string;
    descriptions: Record<string, string>;
    unknown_method: VarlinkErrorReply;
    bad_param: VarlinkErrorReply;
    upgrade: VarlinkErrorReply;
    with_stray_fds: { features: string[] };
  }>('info', sock);
  assert.equal(r.service.vendor, 'org.composefs');
  assert.deepEqual(r.service.interfaces, ['org.varlink.service', 'org.composefs.Repository', 'org.composefs.Oci']);
  assert.deepEqual(r.oci.features, ['splitdirfdstream-v0']);
  assert.match(r.description, /^interface org\.composefs\.Oci$/m);
  assert.match(r.description, /^method PutLayer\(/m);
  // Every interface the service publishes parses as varlink IDL (method replies are field lists).
  assert.deepEqual(Object.keys(r.descriptions), r.service.interfaces);
  for (const [name, text] of Object.entries(r.descriptions)) {
    const iface = parseVarlinkInterface(text);
    assert.equal(iface.name, name);
    served.set(name, iface);
  }
  assert.equal(r.unknown_method.error, 'org.varlink.service.MethodNotFound');
  assert.deepEqual(r.bad_param, { error: 'org.varlink.service.InvalidParameter', parameters: { parameter: 'handle' } });
  assert.deepEqual(r.upgrade, { error: 'org.varlink.service.InvalidParameter', parameters: { parameter: 'upgrade' } });
  assert.deepEqual(r.with_stray_fds.features, ['splitdirfdstream-v0']);
});

test('ListImages and ListImageRefs; an unknown handle is InvalidHandle', async () => {
  const r = await client<{ images: Array<{ name: string; layer_count: number; is_container: boolean; object_ids: string[] }>; bad_handle: VarlinkErrorReply }>('images', sock, path.join(work, 'src'));
  assert.deepEqual(r.images.map((i) => [i.name, i.layer_count, i.is_container]), [['app', 3, true]]);
  // usr/a, usr/b, usr/c (65 bytes), etc/d: four external objects, as `cfs` lists them.
  assert.equal(r.images[0].object_ids.length, 4);
  assert.ok(r.images[0].object_ids.every((o) => /^sha256:[0-9a-f]{64}$/.test(o)));
  assert.equal(r.bad_handle.error, 'org.composefs.Oci.InvalidHandle');
});

test('GetLayer for every layer: the tar rebuilt from stream + dirfds has the diff_id', async () => {
  const r = await client<{ layers: LayerReport[] }>('getlayers', sock, path.join(work, 'src'), 'app');
  assert.deepEqual(r.layers.map((l) => l.diff_id), diffIds);
  for (const l of r.layers) {
    assert.equal(l.rebuilt, l.diff_id);
    assert.ok(l.dir_count >= 2, 'sparse dirfd region with at least one dummy');
    assert.ok(l.frames >= 1 && l.fds >= l.dir_count + 2);
  }
  assert.deepEqual(r.layers.map((l) => l.files), [1, 2, 1], 'files above 64 bytes are file-backed');
});

test('PutLayer (with injected dummy fds) + FinalizeImage build the same image in a second repository', async () => {
  const src = path.join(work, 'src');
  const dst = repo('dst');
  const r = await client<{ layers: Array<{ already_present: boolean; objects_hardlinked: number; objects_copied: number }>; finalize: { manifest_digest: string } }>('copy', sock, src, dst, 'app', 'via-varlink');
  assert.deepEqual(r.layers.map((l) => l.already_present), [false, false, false]);
  assert.deepEqual(r.layers.map((l) => [l.objects_hardlinked, l.objects_copied]), [[1, 0], [2, 0], [1, 0]]);
  const img = (repoPath: string, name: string): unknown => (JSON.parse(cfsOk(['--repo', repoPath, 'oci', 'inspect', name]).stdout) as { imageId: string }).imageId;
  assert.equal(img(dst, 'via-varlink'), img(src, 'app'));
  assert.equal(cfsOk(['--repo', dst, 'oci', 'dump', 'via-varlink']).stdout, cfsOk(['--repo', src, 'oci', 'dump', 'app']).stdout);
  assert.deepEqual(repoProblems(dst), []);
  // Into a sha512 repository: objects are re-hashed.
  const d512 = repo('dst512', 'sha512');
  const r2 = await client<{ layers: Array<{ objects_copied: number; layer_verity: string }> }>('copy', sock, src, d512, 'app', 'x');
  assert.deepEqual(r2.layers.map((l) => l.objects_copied), [1, 2, 1]);
  assert.ok(r2.layers.every((l) => l.layer_verity.length === 128));
});

test('--address: never deletes what is not a stale socket, never takes over a live one, only unix: (paths and @abstract names)', async () => {
  const regular = path.join(work, 'regular-file');
  writeFileSync(regular, 'keep me');
  const notSocket = runCfs(['varlink', '--address', `unix:${regular}`]);
  assert.notEqual(notSocket.status, 0);
  assert.match(notSocket.stderr, /^cfs: varlink address .*regular-file exists and is not a socket; not replacing it\n$/);
  assert.equal(readFileSync(regular, 'utf8'), 'keep me');
  const live = runCfs(['varlink', '--address', `unix:${sock}`]);
  assert.notEqual(live.status, 0);
  assert.match(live.stderr, /^cfs: varlink address .*cfs\.sock is in use: another service is listening there\n$/);
  assert.deepEqual((await client<{ oci: { features: string[] } }>('info', sock)).oci.features, ['splitdirfdstream-v0'], 'the first service still answers');
  for (const bad of ['tcp:127.0.0.1:1234', 'unix:@', path.join(work, 'bare.sock')]) {
    const r = runCfs(['varlink', '--address', bad]);
    assert.notEqual(r.status, 0);
    assert.match(r.stderr, /unsupported varlink address/);
  }
  // The abstract namespace: no file anywhere; a second service on the name is refused.
  const abstract = `@cfs-test-${process.pid}-${Date.now()}`;
  const inAbstract = startServer(['--insecure', 'varlink', '--address', `unix:${abstract}`]);
  try {
    for (let i = 0; i < 600 && !serverLog.includes(`serving on unix:${abstract}\n`); i++) await new Promise((r) => setTimeout(r, 50));
    assert.deepEqual((await client<{ oci: { features: string[] } }>('info', abstract)).oci.features, ['splitdirfdstream-v0']);
    const taken = runCfs(['varlink', '--address', `unix:${abstract}`]);
    assert.equal(taken.status, 1);
    assert.equal(taken.stderr, `cfs: varlink address unix:${abstract} is in use: another service is listening there\n`);
    // An abstract socket has no permissions: the service itself turns away other users (it
    // acts with its own privileges), unless --allow-uid names them.
    if (process.getuid?.() === 0) {
      assert.equal(await getInfoAs(65534, abstract), 'closed');
      assert.match(serverLog, /cfs varlink: client refused: uid 65534 \(pid \d+\) is not this service's user \(uid 0\) or root\n/);
      const allowing = `${abstract}-allow`;
      const allowed = startServer(['--insecure', 'varlink', '--address', `unix:${allowing}`, '--allow-uid', '65534']);
      try {
        for (let i = 0; i < 600 && !serverLog.includes(`serving on unix:${allowing}\n`); i++) await new Promise((r) => setTimeout(r, 50));
        assert.equal(await getInfoAs(65534, allowing), 'reply');
      } finally {
        await stop(allowed);
      }
    }
  } finally {
    await stop(inAbstract);
  }
  // A socket left by a killed service is replaced; the one that exits removes only its own.
  const stale = path.join(work, 'stale.sock');
  const first = startServer(['--insecure', 'varlink', '--address', `unix:${stale}`]);
  await untilServing(stale);
  await stop(first, 'SIGKILL');
  assert.ok(existsSync(stale), 'SIGKILL leaves the socket file');
  // Replacing it happens under PATH.lock, so two services starting at once cannot both replace
  // it: while another holds that lock, the service waits.
  const holder = spawn('python3', ['-c', `import fcntl,sys\nf=open(${JSON.stringify(`${stale}.lock`)},'a')\nfcntl.flock(f,fcntl.LOCK_EX)\nprint('locked',flush=True)\nsys.stdin.read()`], { stdio: ['pipe', 'pipe', 'inherit'] });
  assert.equal((await firstOutput(holder, 'the lock holder')).trim(), 'locked');
  const second = startServer(['--insecure', 'varlink', '--address', `unix:${stale}`]);
  try {
    await new Promise((r) => setTimeout(r, 1000));
    assert.equal(servingCount(stale), 1, 'waits for the address lock (the first service said it once)');
    holder.stdin!.end();
    await untilServing(stale, 2);
    assert.deepEqual((await client<{ oci: { features: string[] } }>('info', stale)).oci.features, ['splitdirfdstream-v0']);
  } finally {
    holder.kill();
    await stop(second);
  }
  assert.ok(!existsSync(stale), 'the service removes its socket when it stops');
});

test('misbehaving clients (incl. one piling fds behind a stalled call) get an error or are dropped; others keep working; no leaks', async () => {
  const src = path.join(work, 'src');
  const target = repo('bad-target');
  // Let earlier clients' handles and fds settle, then take the baseline.
  await new Promise((r) => setTimeout(r, 300));
  const baseline = serverFds();
  const expectations: Array<[string, (r: { hangup?: boolean; error?: VarlinkErrorReply | null }) => void]> = [
    ['garbage', (r) => assert.equal(r.hangup, true)],
    ['fdflood', (r) => assert.equal(r.hangup, true)],
    ['oversize', (r) => assert.equal(r.hangup, true)],
    ['fdcount', (r) => assert.equal(r.error?.error, 'org.composefs.Oci.InvalidRequest')],
    ['devnull-stream', (r) => assert.match(r.error?.parameters.message ?? '', /fd 0 \(the stream\) must be a pipe, a socket or a regular file, not a character device/)],
    ['index', (r) => assert.match(r.error?.parameters.message ?? '', /dirfd index 77 out of range/)],
    ['dummy-slot', (r) => assert.match(r.error?.parameters.message ?? '', /slot 0 is not a directory/)],
    ['length', (r) => assert.match(r.error?.parameters.message ?? '', /declared length \d+ != actual size/)],
    ['truncated-inline', (r) => assert.match(r.error?.parameters.message ?? '', /truncated chunk body/)],
    ['escape', (r) => assert.match(r.error?.parameters.message ?? '', /'\.\.' component/)],
    ['wrong-diff-id', (r) => assert.equal(r.error?.error, 'org.composefs.Oci.DiffIdMismatch')],
  ];
  for (const [kind, check] of expectations) {
    const [bad, good] = await Promise.all([client<{ hangup?: boolean; error?: VarlinkErrorReply | null }>('bad', sock, src, target, 'app', kind), client<{ layers: LayerReport[] }>('getlayers', sock, src, 'app')]);
    check(bad);
    assert.ok(good.layers.every((l) => l.rebuilt === l.diff_id), `good client during ${kind}`);
  }
  // A client that vanishes in the middle of PutLayer.
  const [hang, good] = await Promise.all([run('python3', [CLIENT, 'bad', sock, src, target, 'app', 'hangup'], { env: clientEnv() }), client<{ layers: LayerReport[] }>('getlayers', sock, src, 'app')]);
  assert.equal(hang.stdout, '');
  assert.ok(good.layers.every((l) => l.rebuilt === l.diff_id));
  assert.deepEqual(repoProblems(src), []);
  assert.deepEqual(repoProblems(target), []);
  assert.deepEqual(readdirSync(path.join(target, 'streams')), [], 'no bad layer was stored');
  // Dropped connections close asynchronously: wait for the count to come back, not a fixed time.
  for (let i = 0; i < 200 && serverFds() > baseline; i++) await new Promise((r) => setTimeout(r, 50));
  assert.ok(serverFds() <= baseline, `server fds after bad clients: ${serverFds()} > ${baseline}; log:\n${serverLog}`);
  assert.match(serverLog, /dropped: message is not a varlink call/);
  assert.match(serverLog, /dropped: message exceeds 8388608 bytes/);
  assert.match(serverLog, /dropped: more than 506 fds or \d+ bytes in calls queued behind a running one/);
});

/** The interfaces as the service describes them (filled by the GetInfo test, which runs first). */
const served = new Map<string, IdlInterface>();

/** An interface description as the repository publishes it. */
function publishedInterface(name: string): IdlInterface {
  return parseVarlinkInterface(readFileSync(path.join(PROJECT_ROOT, 'src/varlink/interfaces', `${name}.varlink`), 'utf8'));
}

test('Pull streams progress frames; Fsck (full, metadata-only), Check and Gc answer for the handle, as their interfaces declare', async () => {
  const dst = repo('pulled');
  type Fsck = { ok: boolean; objects_checked: number; metadata_only: boolean } & Record<string, unknown>;
  const r = await client<{
    frames: Array<Record<string, { id?: string; manifest_digest?: string }>>;
    fsck: Fsck;
    fsck_metadata_only: Fsck;
    check: { ok: boolean; repo: Fsck } & Record<string, unknown>;
    gc: { dry_run: boolean; result: { objects_removed: number } };
  }>('pull', sock, dst, `oci:${layout}:v1`, 'p');
  const repoIdl = publishedInterface('org.composefs.Repository');
  const ociIdl = publishedInterface('org.composefs.Oci');
  for (const reply of [r.fsck, r.fsck_metadata_only]) assert.deepEqual(replyMismatches(repoIdl, repoIdl.methods.get('Fsck')!.output, reply), []);
  assert.deepEqual(replyMismatches(ociIdl, ociIdl.methods.get('Check')!.output, r.check), []);
  const fsckReply = ociIdl.types.get('FsckReply');
  assert.ok(fsckReply?.kind === 'struct');
  assert.deepEqual(replyMismatches(ociIdl, fsckReply.fields, r.check.repo), []);
  assert.equal(r.check.ok, true);
  assert.deepEqual([r.fsck_metadata_only.ok, r.fsck_metadata_only.metadata_only, r.fsck_metadata_only.objects_checked], [true, true, 0]);
  assert.equal(r.fsck.metadata_only, false);
  const kinds = r.frames.map((f) => Object.keys(f)[0]);
  assert.equal(kinds.filter((k) => k === 'started').length, 3);
  assert.equal(kinds.filter((k) => k === 'done').length, 3);
  assert.equal(kinds[kinds.length - 1], 'completed');
  assert.match(r.frames[r.frames.length - 1].completed.manifest_digest ?? '', /^sha256:/);
  assert.equal(r.fsck.ok, true);
  assert.ok(r.fsck.objects_checked > 0);
  assert.deepEqual([r.gc.dry_run, r.gc.result.objects_removed], [true, 0]);
  assert.ok(cfsOk(['--repo', dst, 'oci', 'images']).stdout.includes('p '));
});

test('a Pull whose client hangs up stops: nothing tagged, the repository consistent, the next pull completes', async () => {
  const big = await buildOciLayout(path.join(work, 'img-big'), { images: [{ tag: 'big', layers: [[{ path: 'usr/' }, { path: 'usr/big', content: randomBytes(64 << 20) }]] }] });
  const dst = repo('hangup-pull');
  const r = await client<{ first: { parameters?: Record<string, unknown> } }>('pullhangup', sock, dst, `oci:${big.dir}:big`, 'gone');
  assert.ok(r.first.parameters, JSON.stringify(r.first));
  // gc takes the repository's lock exclusively: it runs once the stopped pull let go of its handle.
  await run(cfsCommand()[0]!, [...cfsCommand().slice(1), '--repo', dst, 'gc'], { env: process.env });
  const manifest = path.join(dst, 'streams', `oci-manifest-${big.images[0].manifestDigest}`);
  assert.ok(!existsSync(manifest), `the pull went on after its client left; log:\n${serverLog}`);
  assert.equal(cfsOk(['--repo', dst, 'oci', 'images']).stderr, 'No images found\n');
  assert.deepEqual(repoProblems(dst), []);
  const again = await client<{ frames: Array<Record<string, unknown>> }>('pull', sock, dst, `oci:${big.dir}:big`, 'kept');
  assert.ok(again.frames.some((f) => 'completed' in f));
  assert.match(cfsOk(['--repo', dst, 'oci', 'images']).stdout, /^kept /m);
});

test('a client that stops writing is still answered (pipelined calls, a Pull with more); oneway calls run even when it closes right after sending them', async () => {
  const dst = repo('halfclose');
  const src = await buildOciLayout(path.join(work, 'img-halfclose'), { images: [{ tag: 'h', layers: [[{ path: 'usr/' }, { path: 'usr/h', content: randomBytes(1 << 20) }]] }] });
  // Big enough that the client is long gone (and seen gone) while it is pulled.
  const big = await buildOciLayout(path.join(work, 'img-halfclose-big'), { images: [{ tag: 'b', layers: [[{ path: 'usr/' }, { path: 'usr/b', content: randomBytes(48 << 20) }]] }] });
  const r = await client<{ pipelined: Array<Record<string, unknown>>; pulled: Array<{ parameters?: Record<string, unknown> }>; names: string[] }>(
    'halfclose', sock, dst, `oci:${src.dir}:h`, src.images[0].manifestDigest, 'fired', `oci:${big.dir}:b`, big.images[0].manifestDigest, 'fired-big',
  );
  assert.equal(r.pipelined.length, 2, JSON.stringify(r.pipelined));
  assert.ok(r.pipelined.every((m) => !('error' in m)), JSON.stringify(r.pipelined));
  assert.ok(r.pulled.some((f) => f.parameters && 'completed' in f.parameters), JSON.stringify(r.pulled));
  assert.deepEqual(r.names, ['fired', 'fired-big']);
  assert.deepEqual(repoProblems(dst), []);
});

test('at most MAX_CONNECTIONS clients at once: the next one waits in the backlog until one leaves', async () => {
  const { MAX_CONNECTIONS } = await import('../src/varlink/server.js');
  const r = await client<{ answered_while_full: boolean; answered_after: boolean }>('connflood', sock, String(MAX_CONNECTIONS));
  assert.deepEqual(r, { answered_while_full: false, answered_after: true });
  assert.match(serverLog, new RegExp(`not accepting new clients for now: ${MAX_CONNECTIONS} clients connected`));
});

test('out of fds (EMFILE on accept): the service pauses instead of spinning, and serves again', async () => {
  const low = path.join(work, 'low-fds.sock');
  const child = startServer(['--insecure', 'varlink', '--address', `unix:${low}`], ['prlimit', '--nofile=64:64', '--']);
  try {
    await untilServing(low);
    const cpu = (): number => {
      const f = readFileSync(`/proc/${child.pid}/stat`, 'utf8').split(') ')[1]!.split(' ');
      return (Number(f[11]) + Number(f[12])) / 100; // utime + stime, clock ticks → s
    };
    const before = cpu();
    const r = await client<{ answered_while_full: boolean; answered_after: boolean }>('connflood', low, '80');
    const used = cpu() - before;
    assert.deepEqual(r, { answered_while_full: false, answered_after: true });
    assert.match(serverLog, /not accepting new clients for now: accept: EMFILE/);
    // A spinning accept loop would burn the whole second the flood lasts (and more).
    assert.ok(used < 0.5, `server used ${used} s of CPU while out of fds`);
    // Out of fds with no client connected: the retry timer keeps the service alive until fds are back.
    await new Promise((res) => setTimeout(res, 300));
    const open = readdirSync(`/proc/${child.pid}/fd`).length;
    execFileSync('prlimit', ['--pid', String(child.pid), `--nofile=${open}:64`]);
    const waiting = client<{ answered_while_full: boolean; answered_after: boolean }>('connflood', low, '0');
    await new Promise((res) => setTimeout(res, 500));
    assert.equal(child.exitCode, null, `the service exited while out of fds; log:\n${serverLog}`);
    execFileSync('prlimit', ['--pid', String(child.pid), '--nofile=64:64']);
    assert.equal((await waiting).answered_after, true);
  } finally {
    await stop(child);
  }
});

test('a PutLayer whose client never writes fails after --idle-timeout, and lets go of the repository', async () => {
  const idle = path.join(work, 'idle.sock');
  const child = startServer(['--insecure', 'varlink', '--address', `unix:${idle}`, '--idle-timeout', '1']);
  try {
    await untilServing(idle);
    const dst = repo('stalled-put');
    const reply = await client<VarlinkErrorReply>('stalled-put', idle, dst, diffIds[0]!);
    assert.equal(reply.error, 'org.composefs.Oci.InvalidRequest');
    assert.match(reply.parameters.message, /the client sent nothing on the stream for 1 s; giving up/);
    // The handle closed with the connection: gc gets the repository's lock.
    await run(cfsCommand()[0]!, [...cfsCommand().slice(1), '--repo', dst, 'gc'], { env: process.env });
    assert.deepEqual(repoProblems(dst), []);
  } finally {
    await stop(child);
  }
  const bad = runCfs(['varlink', '--address', `unix:${path.join(work, 'never.sock')}`, '--idle-timeout', '0']);
  assert.match(bad.stderr, /^cfs: --idle-timeout must be a positive number of seconds, not '0'$/m);
});

test('Mount returns a detached composefs mount fd (plain and with an overlay upper layer)', async () => {
  const src = path.join(work, 'src');
  const id = (JSON.parse(cfsOk(['--repo', src, 'oci', 'inspect', 'app']).stdout) as { imageId: string }).imageId;
  const expect = createHash('sha256').update(Buffer.alloc(1_500_000, 'b')).digest('hex');
  const r = await client<{ wrong_fds: VarlinkErrorReply; root: string[]; sha256: string; missing: VarlinkErrorReply }>('mount', sock, src, id, 'usr/b');
  assert.match(r.wrong_fds.parameters.message, /Mount expects 0 fds/);
  assert.deepEqual(r.root, ['etc', 'usr']);
  assert.equal(r.sha256, expect);
  assert.equal(r.missing.error, 'org.composefs.Repository.NoSuchRef');
  const ov = path.join(work, 'overlay');
  const o = await client<{ root: string[]; sha256: string }>('mount', sock, src, id, 'usr/b', ov);
  assert.equal(o.sha256, expect);
  assert.equal(readFileSync(path.join(ov, 'upper', 'written-through-fd'), 'utf8'), 'hello');
  // A workdir fd that is not a directory: the client's mistake, and no fd of the call stays open.
  const fdCount = (): number => readdirSync(`/proc/${server.pid}/fd`).length;
  writeFileSync(path.join(work, 'dummy-file'), 'not a directory');
  const before = fdCount();
  for (let i = 0; i < 3; i++) {
    const bad = await client<{ error: VarlinkErrorReply }>('mountbadwork', sock, src, id, path.join(ov, 'upper'), path.join(work, 'dummy-file'));
    assert.equal(bad.error.error, 'org.composefs.Repository.InvalidSpec');
    assert.match(bad.error.parameters.message, /^workdir \S+: /);
  }
  assert.equal(fdCount(), before);
});

test('a mount made by Mount keeps its image from gc wherever the client attaches it, until it is unmounted', async () => {
  const r = repo('pinned');
  cfsOk(['--repo', r, 'oci', 'pull', `oci:${layout}:v1`, 'app']);
  const id = (JSON.parse(cfsOk(['--repo', r, 'oci', 'inspect', 'app']).stdout) as { imageId: string }).imageId;
  const target = mkdtempSync(path.join(work, 'attached-'));
  await client('mountat', sock, r, id, target);
  try {
    assert.equal(createHash('sha256').update(readFileSync(path.join(target, 'usr/b'))).digest('hex'), createHash('sha256').update(Buffer.alloc(1_500_000, 'b')).digest('hex'));
    // The mount was made detached: its pin knows it by id, so cfs mounts names its image.
    const { mounts } = JSON.parse(cfsOk(['mounts', '--json']).stdout) as { mounts: Array<{ mountpoint: string; imageId: string | null; repository: string | null }> };
    const listed = mounts.find((m) => m.mountpoint === target);
    assert.equal(listed?.imageId, id);
    assert.equal(listed?.repository, r);
    cfsOk(['--repo', r, 'oci', 'untag', 'app']);
    const gc = JSON.parse(cfsOk(['--repo', r, 'gc', '--json']).stdout) as { keptMounted: string[] };
    assert.deepEqual(gc.keptMounted, [`images/${id}`]);
    assert.deepEqual(repoProblems(r), []);
    assert.equal(readFileSync(path.join(target, 'usr/b')).length, 1_500_000);
  } finally {
    cfsOk(['umount', target]);
  }
  const after = JSON.parse(cfsOk(['--repo', r, 'gc', '--json']).stdout) as { keptMounted: string[]; images: string[] };
  assert.deepEqual(after.keptMounted, []);
  assert.ok(!existsSync(path.join(r, 'images', id)), 'the unmounted image is collected');
});

test('eight concurrent clients fetch every layer', async () => {
  const all = await Promise.all(Array.from({ length: 8 }, () => client<{ layers: LayerReport[] }>('getlayers', sock, path.join(work, 'src'), 'app')));
  for (const r of all) assert.deepEqual(r.layers.map((l) => l.rebuilt), diffIds);
});

test('socket activation: a listening fd, and one connected fd per process (--accept)', async () => {
  for (const mode of [[], ['--accept']]) {
    const s = path.join(work, `act${mode.length}.sock`);
    const act = startServer(['--insecure', 'varlink'], ['systemd-socket-activate', ...mode, '-l', s]);
    try {
      await waitFor(s);
      const r = await client<{ oci: { features: string[] } }>('info', s);
      assert.deepEqual(r.oci.features, ['splitdirfdstream-v0']);
      const g = await client<{ layers: LayerReport[] }>('getlayers', s, path.join(work, 'src'), 'app');
      assert.deepEqual(g.layers.map((l) => l.rebuilt), diffIds);
    } finally {
      await stop(act);
    }
  }
});

interface CallResult<T = Record<string, unknown>> {
  frames?: T[];
  error?: VarlinkErrorReply & { parameters: Record<string, unknown> };
}
type Call = [string, Record<string, unknown>, boolean?];
const OCI = 'org.composefs.Oci';
const calls = <T = Record<string, unknown>>(repoPath: string, list: Call[]): Promise<Array<CallResult<T>>> => client<Array<CallResult<T>>>('calls', sock, repoPath, JSON.stringify(list));
const last = <T>(r: CallResult<T>): T => {
  assert.ok(r.frames, `expected a reply, got ${JSON.stringify(r.error)}`);
  return r.frames[r.frames.length - 1];
};

test('GetLayer of a layer whose object is missing ends its stream inside a chunk: the client sees a truncated stream, not a short layer', async () => {
  const dmg = path.join(work, 'damaged-src');
  cpSync(path.join(work, 'src'), dmg, { recursive: true, verbatimSymlinks: true });
  const dump = cfsOk(['--repo', dmg, 'oci', 'dump', 'app']).stdout;
  const object = / ([0-9a-f]{2}\/[0-9a-f]{62}) /.exec(dump)![1]!;
  rmSync(path.join(dmg, 'objects', object));
  await assert.rejects(client('getlayers', sock, dmg, 'app'), (e: Error) => /stream truncated/.test(e.message));
  assert.match(serverLog, new RegExp(`GetLayer oci-layer-sha256:[0-9a-f]{64}: object ${object} not found`));
});

test('GetLayer fds outlive the connection; a handle closed during PutLayer is released when the call ends', async () => {
  const src = path.join(work, 'src');
  const hung = await client<{ layers: Array<{ diff_id: string; rebuilt: string }> }>('getlayers-hangup', sock, src, 'app');
  assert.deepEqual(hung.layers.map((l) => l.rebuilt), hung.layers.map((l) => l.diff_id));
  const dst = repo('close-during-put');
  const r = await client<{ put?: { layer_verity: string }; put_error?: unknown; close: unknown; gc: { dry_run: boolean } }>('close-during-put', sock, src, dst, 'app');
  assert.deepEqual(r.close, {});
  assert.ok(r.put, `PutLayer after its handle was closed: ${JSON.stringify(r.put_error)}`);
  assert.equal(r.gc.dry_run, false);
  // The Gc ran after the PutLayer (the untagged layer is garbage by then): a consistent repository.
  assert.deepEqual(repoProblems(dst), []);
});

test('parameters as the IDL declares them: required fields, absolute paths, names beneath the repository, FinalizeImage\'s layers', async () => {
  const src = path.join(work, 'src');
  const REPO = 'org.composefs.Repository';
  const manifest = cfsOk(['--repo', src, 'oci', 'inspect', '--manifest', 'app']).stdout;
  const config = cfsOk(['--repo', src, 'oci', 'inspect', '--config', 'app']).stdout;
  const has = await calls<{ layer_verity: string }>(src, diffIds.map((d): Call => [`${OCI}.HasLayer`, { diff_id: d }]));
  const good = diffIds.map((d, i) => ({ diff_id: d, layer_verity: last(has[i]!).layer_verity }));
  const r = await calls(src, [
    [`${REPO}.Gc`, { roots: [] }],
    [`${OCI}.PutLayer`, { diff_id: diffIds[0] }],
    ['GetInfo', {}],
    [`${REPO}.InitRepository`, { path: 'relative/repo', insecure: true }],
    [`${REPO}.ImageObjects`, { name: '../../../../etc/passwd' }],
    [`${OCI}.FinalizeImage`, { manifest_json: manifest, config_json: config, layers: good.slice(1) }],
    [`${OCI}.FinalizeImage`, { manifest_json: manifest, config_json: config, layers: [good[1], good[0], ...good.slice(2)] }],
    [`${OCI}.FinalizeImage`, { manifest_json: manifest, config_json: config, layers: good.map((l, i) => (i === 0 ? { ...l, layer_verity: 'deadbeef' } : l)) }],
    [`${OCI}.FinalizeImage`, { manifest_json: manifest, config_json: config, layers: good, name: 'finalized' }],
  ]);
  assert.deepEqual(r[0]!.error, { error: 'org.varlink.service.InvalidParameter', parameters: { parameter: 'dry_run' } });
  assert.deepEqual(r[1]!.error, { error: 'org.varlink.service.InvalidParameter', parameters: { parameter: 'zerocopy' } });
  assert.deepEqual(r[2]!.error, { error: 'org.varlink.service.MethodNotFound', parameters: { method: 'GetInfo' } });
  assert.equal(r[3]!.error?.error, `${REPO}.InvalidSpec`);
  assert.match(String(r[3]!.error?.parameters.message), /'relative\/repo' is not an absolute path/);
  assert.equal(r[4]!.error?.error, `${REPO}.InvalidSpec`);
  assert.match(String(r[4]!.error?.parameters.message), /invalid image name/);
  for (const bad of r.slice(5, 7)) assert.match(String(bad.error?.parameters.message), /layers must list the image's \d+ layers in order/);
  assert.match(String(r[7]!.error?.parameters.message), /layer_verity deadbeef is not the stored layer's/);
  assert.ok(last(r[8]!), 'the right layers are accepted');
  assert.equal(cfsOk(['--repo', src, 'oci', 'inspect', 'finalized']).status, 0);
  assert.deepEqual(repoProblems(src), []);
});

test('what the client asked for and cannot have is its error (InvalidRequest, InvalidSpec, NoSuchImage), not InternalError', async () => {
  const src = path.join(work, 'src');
  const REPO = 'org.composefs.Repository';
  const imageId = JSON.parse(cfsOk(['--repo', src, 'oci', 'inspect', 'app']).stdout).imageId as string;
  const r = await calls(src, [
    [`${REPO}.Mount`, { name: imageId, options: { read_write: true } }],
    [`${OCI}.OciMount`, { image: 'app', bootable: false, options: { read_write: true } }],
    [`${OCI}.OciMount`, { image: 'app', bootable: true, options: {} }],
    [`${OCI}.Pull`, { image: `oci:${path.join(work, 'no-such-layout')}:x` }],
    [`${OCI}.Pull`, { image: `oci:${layout}:v1`, bootable: true }],
    [`${OCI}.ComputeId`, { image: 'app', bootable: false, verity: 'md5' }],
    [`${REPO}.InitRepository`, { path: path.join(work, 'wants-verity') }],
    // parameters that are not an object: InvalidParameter, the connection kept.
    [`${OCI}.GetInfo`, ['not', 'an', 'object'] as unknown as Record<string, unknown>],
  ]);
  assert.deepEqual(r.map((x) => x.error?.error), [
    // (No boot image is InternalError, as composefs-rs answers it.)
    `${REPO}.InvalidSpec`, `${OCI}.InvalidRequest`, `${OCI}.InternalError`, `${OCI}.NoSuchImage`, `${OCI}.InvalidRequest`, `${OCI}.InvalidRequest`,
    // This machine's kernel has no fs-verity; where it has, the repository is simply created.
    ...(r[6]!.error ? [`${REPO}.InvalidSpec`] : [undefined]),
    'org.varlink.service.InvalidParameter',
  ], JSON.stringify(r));
  assert.deepEqual(r[7]!.error?.parameters, { parameter: 'parameters' });
  assert.match(String(r[0]!.error?.parameters.message), /read_write needs overlay/);
  assert.match(String(r[2]!.error?.parameters.message), /boot image: pull with bootable first/);
  assert.match(String(r[4]!.error?.parameters.message), /bootable image needs the directories \/usr, \/boot, \/sysroot; this tree lacks \//);
  assert.equal(r[5]!.error?.parameters.message, "verity 'md5' is not sha256 or sha512 (or fsverity-sha256-12, fsverity-sha512-12)");
  if (r[6]!.error) assert.match(String(r[6]!.error.parameters.message), /does not support fs-verity \(use --insecure\)/);
});

test('ComputeId equals `cfs oci compute-id`; xattrs mode and unknown images', async () => {
  const src = path.join(work, 'src');
  const cli = cfsOk(['--repo', src, 'oci', 'compute-id', 'app']).stdout.trim();
  const manifest = (JSON.parse(cfsOk(['--repo', src, 'oci', 'inspect', 'app']).stdout) as { manifestDigest: string }).manifestDigest;
  const r = await calls<{ image_id: string }>(src, [
    [`${OCI}.ComputeId`, { image: 'app', bootable: false }],
    [`${OCI}.ComputeId`, { image: `@${manifest}`, bootable: false, xattrs: 'KeepUserXattrs' }],
    [`${OCI}.ComputeId`, { image: 'app', bootable: false, verity: 'sha512' }],
    [`${OCI}.ComputeId`, { image: 'nope', bootable: false }],
    [`${OCI}.ComputeId`, { image: 'app', bootable: false, xattrs: 'Everything' }],
    [`${OCI}.ComputeId`, { image: 'app', bootable: true }],
  ]);
  assert.equal(last(r[0]).image_id, cli);
  assert.equal(last(r[1]).image_id, cli, 'no user.* xattrs in this image: same id');
  assert.match(last(r[2]).image_id, /^[0-9a-f]{128}$/);
  assert.equal(r[3].error?.error, `${OCI}.NoSuchImage`);
  assert.equal(r[4].error?.error, `${OCI}.InvalidRequest`);
  assert.match(String(r[5].error?.parameters.message), /this tree lacks \/boot/);
});

test('Tag/Untag, HasLayer, InitRepository, EnsureRepository, Gc of an unknown root, CloseRepository', async () => {
  const src = path.join(work, 'src');
  const manifest = (JSON.parse(cfsOk(['--repo', src, 'oci', 'inspect', 'app']).stdout) as { manifestDigest: string }).manifestDigest;
  const REPO = 'org.composefs.Repository';
  const fresh = path.join(work, 'init-via-varlink');
  const ensured = path.join(work, 'ensure-via-varlink');
  const r = await calls(src, [
    [`${OCI}.Tag`, { manifest_digest: manifest, name: 'extra-tag' }],
    [`${OCI}.Untag`, { name: 'extra-tag' }],
    [`${OCI}.Untag`, { name: 'extra-tag' }],
    [`${OCI}.HasLayer`, { diff_id: diffIds[0] }],
    [`${OCI}.HasLayer`, { diff_id: `sha256:${'0'.repeat(64)}` }],
    [`${REPO}.InitRepository`, { path: fresh, insecure: true }],
    [`${REPO}.InitRepository`, { path: fresh, insecure: true }],
    [`${REPO}.EnsureRepository`, { path: ensured, insecure: true }],
    [`${REPO}.EnsureRepository`, { path: ensured, insecure: true }],
    // Ensure opens an existing (sha256) repository without an algorithm; Init checks its default (sha512).
    [`${REPO}.EnsureRepository`, { path: src }],
    [`${REPO}.InitRepository`, { path: src }],
    [`${OCI}.Check`, { image: 'no-such-image' }],
    [`${REPO}.Gc`, { dry_run: true, roots: ['no-such-root'] }],
    [`${REPO}.CloseRepository`, {}],
    [`${OCI}.HasLayer`, { diff_id: diffIds[0] }],
  ]);
  assert.deepEqual(r.slice(0, 2).map(last), [{}, {}]);
  assert.equal(r[2].error?.error, `${OCI}.NoSuchImage`);
  const present = last(r[3]) as { present: boolean; layer_verity: string };
  assert.deepEqual([present.present, /^[0-9a-f]{64}$/.test(present.layer_verity)], [true, true]);
  assert.deepEqual(last(r[4]), { present: false });
  assert.deepEqual(r.slice(5, 9).map(last), [{ created: true }, { created: false }, { status: 'Created' }, { status: 'Opened' }]);
  assert.deepEqual(last(r[9]), { status: 'Opened' });
  assert.equal(r[10].error?.error, `${REPO}.InvalidSpec`);
  assert.deepEqual(r[11].error, { error: `${OCI}.NoSuchImage`, parameters: { image: 'no-such-image' } });
  assert.deepEqual(r[12].error, { error: `${REPO}.NoSuchRef`, parameters: { reference: 'no-such-root' } });
  assert.deepEqual(last(r[13]), {});
  assert.equal(r[14].error?.error, `${OCI}.InvalidHandle`, 'the handle is closed');
  assert.ok(!cfsOk(['--repo', src, 'oci', 'images']).stdout.includes('extra-tag'));
  for (const p of [fresh, ensured]) assert.match(cfsOk(['--repo', p, 'fsck']).stdout, /^status: ok$/m);
});

test('OciMount returns a detached mount fd of the image (by tag and by manifest digest)', async () => {
  const src = path.join(work, 'src');
  const manifest = (JSON.parse(cfsOk(['--repo', src, 'oci', 'inspect', 'app']).stdout) as { manifestDigest: string }).manifestDigest;
  const expect = createHash('sha256').update(Buffer.alloc(200_000, 'a')).digest('hex');
  for (const image of ['app', manifest]) {
    const r = await client<{ fds: number; root: string[]; sha256: string }>('ocimount', sock, src, image, 'usr/a', 'plain');
    assert.deepEqual([r.fds, r.root, r.sha256], [1, ['etc', 'usr'], expect]);
  }
  const e = await calls(src, [
    [`${OCI}.OciMount`, { image: 'nope', bootable: false, options: {} }],
    [`${OCI}.OciMount`, { image: 'app', bootable: true, options: {} }],
  ]);
  assert.equal(e[0].error?.error, `${OCI}.NoSuchImage`);
  assert.deepEqual([e[1].error?.error, /No composefs EROFS image linked/.test(String(e[1].error?.parameters.message))], [`${OCI}.InternalError`, true]);
});

test('Pull with bootable records the boot image; xattrs and expected_digest choose its mode', async () => {
  const bootLayers: EntrySpec[][] = [
    [
      { path: 'usr/', type: 'directory', mtime: T + 5 },
      { path: 'usr/bin/', type: 'directory', mtime: T },
      { path: 'usr/bin/tool', content: Buffer.alloc(5000, 't'), mtime: T, xattrs: { 'user.note': 'kept only with KeepUserXattrs' } },
      { path: 'boot/', type: 'directory', mtime: T },
      { path: 'boot/initrd', content: Buffer.alloc(3000, 'i'), mtime: T },
      { path: 'sysroot/', type: 'directory', mtime: T },
      { path: 'etc/', type: 'directory', mtime: T },
    ],
  ];
  const built = await buildOciLayout(path.join(work, 'bootimg'), { images: [{ tag: 'b1', layers: bootLayers }] });
  const ref = `oci:${built.dir}:b1`;
  const dst = repo('boot-pulled');
  type Completed = { completed?: { manifest_digest: string; boot_image?: string; boot_image_mode?: string; boot_image_format_version?: string; config_verity: string } };
  const pulls = await calls<Completed & { image_id?: string }>(dst, [
    [`${OCI}.Pull`, { image: ref, name: 'plain', local_fetch: 'if-possible' }],
    [`${OCI}.Pull`, { image: ref, expected_digest: '0'.repeat(64) }],
    [`${OCI}.Pull`, { image: ref, bootable: true, xattrs: 'AllowlistOnly', expected_digest: '0'.repeat(64) }],
    [`${OCI}.Pull`, { image: ref, bootable: true, expected_digest: 'sha256:xyz' }],
    [`${OCI}.ComputeId`, { image: 'plain', bootable: true }],
    [`${OCI}.ComputeId`, { image: 'plain', bootable: true, xattrs: 'KeepUserXattrs' }],
    [`${OCI}.Pull`, { image: ref, name: 'boot', bootable: true }, true],
    [`${OCI}.Pull`, { image: ref, bootable: true, expected_digest: 'f'.repeat(64) }],
  ]);
  const plain = last(pulls[0]).completed!;
  assert.equal(plain.boot_image, undefined);
  assert.equal(pulls[1].error?.error, `${OCI}.InvalidRequest`);
  assert.equal(pulls[2].error?.error, `${OCI}.InvalidRequest`);
  assert.equal(pulls[3].error?.error, `${OCI}.InvalidDigest`);
  const allow = last(pulls[4]).image_id!;
  const keep = last(pulls[5]).image_id!;
  assert.notEqual(allow, keep, 'the user.* xattr changes the image');
  const boot = last(pulls[6]).completed!;
  assert.deepEqual([boot.boot_image, boot.boot_image_mode], [allow, 'AllowlistOnly']);
  assert.match(boot.boot_image_format_version ?? '', /^V[12]$/);
  assert.notEqual(boot.config_verity, plain.config_verity, 'the config stream now names the boot image');
  assert.ok(existsSync(path.join(dst, 'images', allow)));
  assert.deepEqual(pulls[7].error?.error, `${OCI}.BootImageMismatch`);
  assert.deepEqual(pulls[7].error?.parameters, { expected: 'f'.repeat(64), tried: [allow, keep] });

  // expected_digest picks the mode whose boot image matches; xattrs names it directly.
  const more = await calls<Completed>(dst, [
    [`${OCI}.Pull`, { image: ref, bootable: true, expected_digest: keep }],
    [`${OCI}.Pull`, { image: ref, bootable: true, xattrs: 'KeepUserXattrs' }],
    [`${OCI}.Pull`, { image: ref, bootable: true, expected_digest: allow }],
  ]);
  assert.deepEqual([last(more[0]).completed!.boot_image, last(more[0]).completed!.boot_image_mode], [keep, 'KeepUserXattrs']);
  assert.deepEqual([last(more[1]).completed!.boot_image, last(more[1]).completed!.boot_image_mode], [keep, 'KeepUserXattrs']);
  assert.deepEqual([last(more[2]).completed!.boot_image, last(more[2]).completed!.boot_image_mode], [allow, 'AllowlistOnly']);

  // Inspect names the boot image once one is recorded.
  const fresh = repo('boot-inspect');
  const insp = await calls<{ composefs_erofs?: string; composefs_boot_erofs?: string | null }>(fresh, [
    [`${OCI}.Pull`, { image: ref, name: 'plain' }],
    [`${OCI}.Inspect`, { image: 'plain' }],
    [`${OCI}.Pull`, { image: ref, bootable: true }],
    [`${OCI}.Inspect`, { image: 'plain' }],
  ]);
  assert.equal(last(insp[1]).composefs_boot_erofs ?? null, null);
  assert.equal(last(insp[3]).composefs_boot_erofs, allow);
  assert.equal(last(insp[3]).composefs_erofs, last(insp[1]).composefs_erofs);

  // storage_root is for containers-storage: images, and really names the store read.
  const roots = await calls<Completed>(fresh, [
    [`${OCI}.Pull`, { image: ref, storage_root: '/var/lib/containers/storage' }],
    [`${OCI}.Pull`, { image: 'containers-storage:localhost/x:latest', storage_root: 'relative/dir' }],
    [`${OCI}.Pull`, { image: 'containers-storage:[/a/b]localhost/x:latest', storage_root: '/c/d' }],
    [`${OCI}.Pull`, { image: 'containers-storage:localhost/x:latest', storage_root: path.join(work, 'no-such-store') }],
  ]);
  assert.deepEqual(roots.map((r) => r.error?.error), [`${OCI}.InvalidRequest`, `${OCI}.InvalidRequest`, `${OCI}.InvalidRequest`, `${OCI}.InvalidRequest`]);
  assert.match(String(roots[3].error?.parameters?.message ?? ''), /storage_root '\S+no-such-store' is not a directory/);
  // The image part is looked up as the client wrote it (a short name keeps its localhost/ fallback).
  const emptyStore = mkdtempSync(path.join(work, 'store-'));
  const short = await calls<Completed>(fresh, [[`${OCI}.Pull`, { image: 'containers-storage:bookworm', storage_root: emptyStore }]]);
  assert.deepEqual(short[0]!.error, { error: `${OCI}.NoSuchImage`, parameters: { image: `containers-storage:[${emptyStore}]bookworm` } });
  // A reference that names nothing is NoSuchImage; one cfs cannot read is InvalidRequest.
  const refs = await calls(dst, [
    [`${OCI}.Pull`, { image: `oci:${layout}:no-such-tag` }],
    [`${OCI}.Pull`, { image: 'docker://quay.io/x:y' }],
  ]);
  assert.deepEqual(refs[0].error, { error: `${OCI}.NoSuchImage`, parameters: { image: `oci:${layout}:no-such-tag` } });
  assert.equal(refs[1].error?.error, `${OCI}.InvalidRequest`);

  // The recorded boot image mounts: /boot emptied; the plain image still has its files.
  const tool = createHash('sha256').update(Buffer.alloc(5000, 't')).digest('hex');
  const b = await client<{ root: string[]; boot: string[]; sha256: string }>('ocimount', sock, dst, 'boot', 'usr/bin/tool', 'bootable');
  assert.deepEqual([b.root, b.boot, b.sha256], [['boot', 'etc', 'sysroot', 'usr'], [], tool]);
  const pl = await client<{ boot: string[] }>('ocimount', sock, dst, 'boot', 'usr/bin/tool', 'plain');
  assert.deepEqual(pl.boot, ['initrd']);
  assert.deepEqual(repoProblems(dst), []);
});

test('every reply and error the client received matches the interface that declares it', () => {
  assert.ok(served.size >= 3, 'the GetInfo test parsed the served interfaces');
  const lines = readFileSync(path.join(work, 'replies.jsonl'), 'utf8').trim().split('\n');
  const problems = new Set<string>();
  const seen = new Set<string>();
  for (const line of lines) {
    const { method, reply } = JSON.parse(line) as { method: string; reply: { error?: string; parameters?: Record<string, unknown> } };
    const member = (reply.error ?? method).slice((reply.error ?? method).lastIndexOf('.') + 1);
    const iface = served.get((reply.error ?? method).slice(0, (reply.error ?? method).lastIndexOf('.')));
    const fields = reply.error ? iface?.errors.get(member) : iface?.methods.get(member)?.output;
    const what = reply.error ? `error ${reply.error} (from ${method})` : `reply of ${method}`;
    seen.add(reply.error ?? method);
    if (!fields) {
      // Calls the tests make on purpose to unknown methods get MethodNotFound, which is declared.
      problems.add(`${what}: not declared`);
      continue;
    }
    for (const p of replyMismatches(iface!, fields, reply.parameters ?? {})) problems.add(`${what}: ${p}`);
  }
  assert.deepEqual([...problems], []);
  assert.ok(seen.size > 20, `replies of ${seen.size} methods/errors checked`);
});
