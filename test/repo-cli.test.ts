import { test } from 'node:test';
import assert from 'node:assert/strict';
import { spawnSync, spawn } from 'node:child_process';
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { createHash } from 'node:crypto';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { fileURLToPath, pathToFileURL } from 'node:url';
import { Repository } from '../src/repository/index.js';
import { importTarLayer } from '../src/tar/index.js';
import { cfsCommand } from './helpers/cli.js';

const here = path.dirname(fileURLToPath(import.meta.url));
const ext = import.meta.url.endsWith('.ts') ? 'ts' : 'js';
const projectRoot = path.resolve(here, ext === 'ts' ? '..' : '../..');

/** Runs the repo command group under a program with cfs's global options (as src/cli/main.ts has them). */
function cliArgs(args: string[]): string[] {
  const mod = pathToFileURL(path.join(here, `../src/cli/repo.${ext}`)).href;
  const script = `
    import { Command } from 'commander';
    const { register } = await import(${JSON.stringify(mod)});
    const p = new Command().name('cfs').option('--repo <path>').option('--user').option('--system').option('--insecure');
    register(p);
    try { await p.parseAsync(process.argv.slice(1), { from: 'user' }); }
    catch (e) { process.stderr.write('cfs: ' + e.message + '\\n'); process.exitCode = 1; }`;
  return [...(ext === 'ts' ? ['--import', 'tsx'] : []), '--input-type=module', '-e', script, '--', ...args];
}

function cfs(args: string[], env: Record<string, string> = {}): { status: number | null; stdout: Buffer; stderr: string } {
  const r = spawnSync(process.execPath, cliArgs(args), { cwd: projectRoot, env: { ...process.env, ...env }, maxBuffer: 64 << 20 });
  return { status: r.status, stdout: r.stdout, stderr: r.stderr.toString() };
}

test('cfs init: insecure, sha512, idempotent, refuses secure init without fs-verity', () => {
  const d = mkdtempSync(path.join(tmpdir(), 'cfs-cli-'));
  try {
    const secure = cfs(['init', path.join(d, 'secure')]);
    assert.equal(secure.status, 1);
    assert.match(secure.stderr, new RegExp(`cannot initialise repository ${path.join(d, 'secure')}: its filesystem does not support fs-verity \\(use --insecure\\)`));
    const r = cfs(['init', '--insecure', '--hash', 'sha512', path.join(d, 'a/b')]);
    assert.equal(r.status, 0, r.stderr);
    assert.equal(r.stdout.toString(), `Initialized composefs repository at ${path.join(d, 'a/b')}\nalgorithm: fsverity-sha512-12\nverity: not required (insecure)\n`);
    assert.match(readFileSync(path.join(d, 'a/b/meta.json'), 'utf8'), /"algorithm": "fsverity-sha512-12"/);
    const again = cfs(['init', '--insecure', '--hash', 'sha512', path.join(d, 'a/b')]);
    const existing = `Repository already initialized at ${path.join(d, 'a/b')}\nalgorithm: fsverity-sha512-12\nverity: not required (insecure)\n`;
    assert.equal(again.stdout.toString(), existing);
    // Only what is asked for must match: no --hash (nor --insecure) is fine for an existing one,
    // which is said to stay insecure when a secure one was asked for.
    for (const args of [['--insecure'], []]) {
      const plain = cfs(['init', ...args, path.join(d, 'a/b')]);
      assert.equal(plain.stdout.toString(), existing, plain.stderr.toString());
      assert.equal(plain.stderr.toString(), args.length ? '' : `cfs: note: ${path.join(d, 'a/b')} is an insecure repository (fs-verity not required); it stays so\n`);
    }
    const conflict = cfs(['init', '--insecure', '--hash', 'sha256', path.join(d, 'a/b')]);
    assert.equal(conflict.status, 1);
    assert.match(conflict.stderr, /already initialized with different configuration/);
    // Global options select the path; --insecure works before the subcommand too.
    const viaEnv = cfs(['--insecure', 'init'], { CFS_REPO: path.join(d, 'env') });
    assert.equal(viaEnv.status, 0, viaEnv.stderr);
    assert.match(readFileSync(path.join(d, 'env/meta.json'), 'utf8'), /fsverity-sha256-12/);
  } finally {
    rmSync(d, { recursive: true, force: true });
  }
});

test('cfs cat: content id and refs/NAME, byte-exact; closed pipe ends quietly', async () => {
  const d = mkdtempSync(path.join(tmpdir(), 'cfs-cli-'));
  try {
    const repoPath = path.join(d, 'r');
    const repo = await Repository.init(repoPath, { insecure: true });
    const tarFile = path.join(d, 'l.tar');
    const big = Buffer.alloc(3 << 20, 'z');
    writeFileSync(path.join(d, 'big'), big);
    spawnSync('tar', ['--format=pax', '-cf', tarFile, '-C', d, 'big']);
    const tar = readFileSync(tarFile);
    const res = await importTarLayer(repo, (async function* () { yield tar; })());
    await repo.setRef('streams', 'layers/one', `oci-layer-${res.diffId}`);
    repo.close();
    for (const ref of [`oci-layer-${res.diffId}`, 'refs/layers/one']) {
      const r = cfs(['--repo', repoPath, 'cat', ref]);
      assert.equal(r.status, 0, r.stderr);
      assert.equal(createHash('sha256').update(r.stdout).digest('hex'), res.diffId.slice(7));
    }
    const missing = cfs(['--repo', repoPath, 'cat', 'refs/nope']);
    assert.equal(missing.status, 1);
    assert.match(missing.stderr, /stream ref 'nope' not found/);
    // The reader closes the pipe after a few bytes: no EPIPE crash, exit status 0.
    const child = spawn(process.execPath, cliArgs(['--repo', repoPath, 'cat', 'refs/layers/one']), { cwd: projectRoot, stdio: ['ignore', 'pipe', 'pipe'] });
    let stderr = '';
    child.stderr.on('data', (b: Buffer) => (stderr += b.toString()));
    await new Promise<void>((resolve) => child.stdout.once('data', () => resolve()));
    child.stdout.destroy();
    const status = await new Promise<number | null>((resolve) => child.once('exit', (c) => resolve(c)));
    assert.equal(status, 0, stderr);
    assert.equal(stderr, '');
  } finally {
    rmSync(d, { recursive: true, force: true });
  }
});

test('output that cannot be written (a full disk, a closed pipe) ends in one line and a failing status, not a stack trace', () => {
  const dir = mkdtempSync(path.join(tmpdir(), 'cfs-stdout-'));
  try {
    const repo = path.join(dir, 'repo');
    const cli = cfsCommand().map((a) => JSON.stringify(a)).join(' ');
    spawnSync('sh', ['-c', `${cli} init --insecure ${JSON.stringify(repo)}`]);
    for (const args of ['mounts --json', 'fsck', 'oci images --json']) {
      const r = spawnSync('sh', ['-c', `${cli} --repo ${JSON.stringify(repo)} ${args} > /dev/full`], { encoding: 'utf8' });
      assert.equal(r.status, 1, `${args}: ${r.stderr}`);
      assert.equal(r.stderr, 'cfs: cannot write to standard output: ENOSPC: no space left on device, write\n', args);
    }
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
});

test('on a terminal, a pull that fails with progress bars up gives the terminal back and ends', { skip: spawnSync('script', ['--version']).status === 0 ? false : 'no script(1)' }, async () => {
  const { buildOciLayout } = await import('./helpers/oci-fixture.js');
  const dir = mkdtempSync(path.join(tmpdir(), 'cfs-tty-'));
  try {
    const built = await buildOciLayout(path.join(dir, 'layout'), { images: [{ tag: 'x', layers: [[{ path: 'usr/' }, { path: 'usr/f', content: Buffer.alloc(3 << 20, 7) }]] }] });
    // The layer blob cut short: the pull fails while its bar is on screen.
    const blob = path.join(built.dir, 'blobs', ...built.images[0]!.layers[0]!.digest.split(':'));
    writeFileSync(blob, readFileSync(blob).subarray(0, 1000));
    const cli = [...cfsCommand(), '--repo', path.join(dir, 'repo'), 'oci', 'pull', `oci:${built.dir}:x`].map((a) => `'${a}'`).join(' ');
    const r = spawnSync('script', ['-qec', cli, '/dev/null'], { encoding: 'utf8', timeout: 60_000, env: { ...process.env, TERM: 'xterm' } });
    assert.equal(r.signal, null, 'the process ended by itself');
    assert.notEqual(r.status, 0);
    assert.match(r.stdout, /cfs: layer blob sha256:[0-9a-f]+: blob has 1000 bytes, descriptor says \d+/);
    // Whatever hid the cursor showed it again.
    if (r.stdout.includes('\x1b[?25l')) assert.ok(r.stdout.lastIndexOf('\x1b[?25h') > r.stdout.lastIndexOf('\x1b[?25l'), JSON.stringify(r.stdout.slice(-300)));
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
});

test('on a short terminal, a pull of more layers than rows leaves one line per layer and no bar behind', { skip: spawnSync('script', ['--version']).status === 0 ? false : 'no script(1)' }, async () => {
  const { buildOciLayout } = await import('./helpers/oci-fixture.js');
  const { renderTerminal } = await import('./helpers/vt.js');
  const dir = mkdtempSync(path.join(tmpdir(), 'cfs-tty-'));
  try {
    const n = 12;
    const layerSpecs = Array.from({ length: n }, (_, i) => [{ path: `f${i}`, content: Buffer.alloc(64 << 10, i) }]);
    const built = await buildOciLayout(path.join(dir, 'layout'), { images: [{ tag: 'x', layers: [[{ path: 'usr/' }], ...layerSpecs] }] });
    const cli = [...cfsCommand(), '--repo', path.join(dir, 'repo'), 'oci', 'pull', `oci:${built.dir}:x`].map((a) => `'${a}'`).join(' ');
    const r = spawnSync('script', ['-qec', `stty rows 6 cols 100; ${cli} >/dev/null`, '/dev/null'], { encoding: 'utf8', timeout: 60_000, env: { ...process.env, TERM: 'xterm' } });
    assert.equal(r.status, 0, r.stdout);
    const lines = renderTerminal(r.stdout, 6, 100).filter((l) => l !== '');
    for (const l of built.images[0]!.layers) {
      const short = l.diffId.slice('sha256:'.length, 'sha256:'.length + 12);
      assert.equal(lines.filter((x) => new RegExp(`^${short}: \\d+(\\.\\d)? [KM]?i?B in \\d+\\.\\d\\d s$`).test(x)).length, 1, `${short} once:\n${lines.join('\n')}`);
    }
    assert.deepEqual(lines.filter((x) => x.includes('[') || x.includes('%')), [], lines.join('\n'));
    assert.ok(r.stdout.lastIndexOf('\x1b[?25h') > r.stdout.lastIndexOf('\x1b[?25l'));
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
});

test('progress ETA: from the average rate, in s, m+s or h+m', async () => {
  const { formatEta } = await import('../src/cli/progress.js');
  assert.deepEqual([0.2, 7, 59.4, 60, 65, 3599, 3600, 7385].map(formatEta), ['1s', '7s', '1m00s', '1m00s', '1m05s', '59m59s', '1h00m', '2h03m']);
});
