/**
 * Writes the tiny OCI layout used by the README's first command (examples/hello):
 * two gzip layers (a base with /usr, /etc, a script; an update that deletes and adds files),
 * tagged `latest`, for the running platform. Deterministic: same bytes on every run.
 */
import { createHash } from 'node:crypto';
import { mkdirSync, writeFileSync, rmSync } from 'node:fs';
import path from 'node:path';
import { gzipSync } from 'node:zlib';
import tar from 'tar-stream';

interface FileSpec {
  name: string;
  type?: 'file' | 'directory' | 'symlink';
  mode: number;
  content?: string;
  linkname?: string;
}

const MTIME = new Date(1_700_000_000_000);

async function makeTar(entries: FileSpec[]): Promise<Buffer> {
  const pack = tar.pack();
  const chunks: Buffer[] = [];
  pack.on('data', (c: unknown) => {
    chunks.push(c as Buffer);
  });
  const done = new Promise<void>((resolve, reject) => {
    pack.on('end', () => resolve());
    pack.on('error', reject);
  });
  for (const e of entries) {
    const header = { name: e.name, mode: e.mode, mtime: MTIME, uid: 0, gid: 0, type: e.type ?? 'file', linkname: e.linkname };
    if (e.type === 'file' || e.type === undefined) pack.entry(header, e.content ?? '');
    else pack.entry(header);
  }
  pack.finalize();
  await done;
  return Buffer.concat(chunks);
}

function sha256(b: Buffer): string {
  return `sha256:${createHash('sha256').update(b).digest('hex')}`;
}

function ociArch(): { architecture: string; os: string } {
  const arch = process.arch === 'x64' ? 'amd64' : process.arch;
  return { architecture: arch, os: 'linux' };
}

export async function makeExample(dir: string): Promise<string> {
  rmSync(dir, { recursive: true, force: true });
  mkdirSync(path.join(dir, 'blobs', 'sha256'), { recursive: true });
  const putBlob = (b: Buffer): string => {
    const d = sha256(b);
    writeFileSync(path.join(dir, 'blobs', 'sha256', d.slice(7)), b);
    return d;
  };
  const message = 'Hello from cfs! This file is larger than 64 bytes, so it lives in the object store.\n';
  const base = await makeTar([
    { name: 'usr/', type: 'directory', mode: 0o755 },
    { name: 'usr/bin/', type: 'directory', mode: 0o755 },
    { name: 'usr/bin/hello', mode: 0o755, content: '#!/bin/sh\ncat /usr/share/hello/message.txt\n' },
    { name: 'usr/share/', type: 'directory', mode: 0o755 },
    { name: 'usr/share/hello/', type: 'directory', mode: 0o755 },
    { name: 'usr/share/hello/message.txt', mode: 0o644, content: message },
    { name: 'usr/share/hello/old.txt', mode: 0o644, content: 'removed by the second layer\n' },
    { name: 'bin', type: 'symlink', mode: 0o777, linkname: 'usr/bin' },
    { name: 'etc/', type: 'directory', mode: 0o755 },
    { name: 'etc/os-release', mode: 0o644, content: 'NAME="cfs hello"\nID=cfs-hello\n' },
  ]);
  const update = await makeTar([
    { name: 'usr/share/hello/', type: 'directory', mode: 0o755 },
    { name: 'usr/share/hello/.wh.old.txt', mode: 0o644, content: '' },
    { name: 'usr/share/hello/NEWS', mode: 0o644, content: 'layer 2 was here\n'.repeat(8) },
  ]);
  const layers = [base, update].map((t) => {
    const gz = gzipSync(t, { level: 9 });
    return { diffId: sha256(t), digest: putBlob(gz), size: gz.length };
  });
  const config = Buffer.from(
    JSON.stringify({
      ...ociArch(),
      config: { Cmd: ['/usr/bin/hello'] },
      rootfs: { type: 'layers', diff_ids: layers.map((l) => l.diffId) },
      history: [{ created_by: 'cfs make-example base' }, { created_by: 'cfs make-example update' }],
    }),
  );
  const configDigest = putBlob(config);
  const manifest = Buffer.from(
    JSON.stringify({
      schemaVersion: 2,
      mediaType: 'application/vnd.oci.image.manifest.v1+json',
      config: { mediaType: 'application/vnd.oci.image.config.v1+json', digest: configDigest, size: config.length },
      layers: layers.map((l) => ({ mediaType: 'application/vnd.oci.image.layer.v1.tar+gzip', digest: l.digest, size: l.size })),
    }),
  );
  const manifestDigest = putBlob(manifest);
  writeFileSync(path.join(dir, 'oci-layout'), JSON.stringify({ imageLayoutVersion: '1.0.0' }));
  writeFileSync(
    path.join(dir, 'index.json'),
    JSON.stringify({
      schemaVersion: 2,
      mediaType: 'application/vnd.oci.image.index.v1+json',
      manifests: [
        {
          mediaType: 'application/vnd.oci.image.manifest.v1+json',
          digest: manifestDigest,
          size: manifest.length,
          annotations: { 'org.opencontainers.image.ref.name': 'latest' },
        },
      ],
    }),
  );
  return manifestDigest;
}

if (process.argv[1] && import.meta.url.endsWith(path.basename(process.argv[1]))) {
  const out = process.argv[2] ?? 'examples/hello';
  makeExample(out).then(
    (d) => process.stdout.write(`${out}: ${d}\n`),
    (e: unknown) => {
      process.stderr.write(`make-example: ${String(e)}\n`);
      process.exitCode = 1;
    },
  );
}
