/**
 * `oci prepare-boot`: make a stored OCI image bootable (composefs-rs `PrepareBoot`):
 *
 * 1. Build the image tree from its layers with the OCI transform (default xattr mode).
 * 2. Take the kernels from /usr/lib/modules before /boot is emptied (bls.ts).
 * 3. Boot transform with the image's SELinux policy, read from the repository (boot-transform.ts).
 * 4. Commit the EROFS (repository format) as `images/<hex>` and record it in the config
 *    stream's named refs as `composefs.image.boot.v1` (`composefs.image.boot` for V2), next
 *    to the plain image's ref. The config and manifest streams are rewritten for that (brief
 *    3.14): same bytes and refs plus the boot ref; the manifest's `config:` ref follows.
 * 5. Write a BLS Type 1 entry per kernel with the composefs karg on its options line. The karg
 *    form follows the repository: V0/V1 → `composefs.digest=v1-…`, V2 → `composefs=`; `?` when
 *    the repository is insecure.
 * 6. Create `<repo parent>/state/deploy/<hex>/{var,etc/upper,etc/work}` for setup-root.
 */
import { mkdir } from 'node:fs/promises';
import path from 'node:path';
import { CfsError } from '../errors.js';
import { buildTreeFromLayers, erofsForFormat } from '../oci/image-build.js';
import { configContentId, manifestContentId, openStoredImage, type StoredImage } from '../oci/stored.js';
import type { Repository } from '../repository/repository.js';
import { isDir } from '../tree/inode.js';
import { readExternalSplitStream } from '../splitstream/reader.js';
import { SplitStreamWriter } from '../splitstream/writer.js';
import { bootTransform } from './boot-transform.js';
import { checkEntryOptions, findBootEntries, writeBootEntries } from './bls.js';
import { formatKarg } from './karg.js';
import { loadSelinuxPolicy } from './selinux.js';
import { STATE_DEPLOY_DIR } from '../repository/location.js';
import { repoTreeFiles } from './tree-files.js';

export const BOOT_REF_V1 = 'composefs.image.boot.v1';
export const BOOT_REF_V2 = 'composefs.image.boot';

export function bootRefName(erofsVersion: number): string {
  return erofsVersion === 2 ? BOOT_REF_V2 : BOOT_REF_V1;
}

export interface PrepareBootOptions {
  bootdir?: string;
  entryId?: string;
  cmdline?: string[];
}

export interface PrepareBootResult {
  imageId: string;
  karg: string;
  entries: string[];
  /** Entries that booted another image before (same entry id: same kernel version, or --entry-id). */
  replaced: Array<{ entry: string; previousKarg: string }>;
  stateDir: string;
}

async function rewriteStream(
  repo: Repository, contentId: string, edit: (refs: Map<string, Buffer>) => void,
): Promise<Buffer> {
  const streamId = await repo.hasStream(contentId);
  if (!streamId) throw new CfsError('ENOENT', `stream ${contentId} not found in repository ${repo.path}`);
  const old = await readExternalSplitStream(repo, streamId, { name: contentId });
  const refs = new Map(old.namedRefs);
  edit(refs);
  const w = new SplitStreamWriter(repo, { contentType: old.contentType });
  for (const [name, id] of refs) w.addNamedRef(name, id);
  await w.writeExternal(old.data);
  const id = await w.finish();
  await repo.linkStream(contentId, id);
  return id;
}

/**
 * Record a boot image in the config stream's named refs (and re-point the manifest at it).
 * `refName` differs from the default for other xattr modes (`….xattrs=<mode>`).
 */
export async function recordBootImage(repo: Repository, img: StoredImage, imageHex: string, erofsVersion: number, refName = bootRefName(erofsVersion)): Promise<void> {
  const configStream = await rewriteStream(repo, configContentId(img.configDigest), (refs) => {
    refs.set(refName, Buffer.from(imageHex, 'hex'));
  });
  await rewriteStream(repo, manifestContentId(img.manifestDigest), (refs) => {
    refs.set(`config:${img.configDigest}`, configStream);
  });
}

export async function prepareBoot(repo: Repository, ref: string, opts: PrepareBootOptions = {}): Promise<PrepareBootResult> {
  checkEntryOptions(opts.entryId, opts.cmdline);
  await repo.ensureWritable();
  const erofsVersion = repo.erofsFormats.default;
  const img = await openStoredImage(repo, ref, erofsVersion);
  if (img.artifact) throw new CfsError('EINVAL', `'${ref}' is an OCI artifact, not a container image: it cannot be booted`);
  const layers = img.diffIds.map((diffId) => {
    const streamId = img.layerStreams.get(diffId);
    if (!streamId) throw new CfsError('ECORRUPT', `image '${ref}': layer ${diffId} has no split stream in the repository`);
    return { diffId, streamId };
  });
  const root = await buildTreeFromLayers(repo, layers);
  // setup-root mounts the deployment's etc and var over the image's: without them it cannot.
  const lacking = ['etc', 'var'].filter((d) => {
    const n = root.children?.get(d);
    return !n || !isDir(n);
  });
  if (lacking.length > 0) throw new CfsError('EINVAL', `image '${ref}' has no ${lacking.map((d) => `/${d}`).join(' or ')} directory: setup-root mounts the deployment's ${lacking.join(' and ')} there, so it could not boot`);
  const files = repoTreeFiles(repo);
  const boot = findBootEntries(root);
  if (boot.kernels.length === 0) throw new CfsError('ENOENT', `image '${ref}' has no boot entries (no /usr/lib/modules/<kver>/vmlinuz)`);
  bootTransform(root, await loadSelinuxPolicy(root, files.read));
  const imageId = await repo.writeImage(erofsForFormat(root, erofsVersion));
  await recordBootImage(repo, img, imageId, erofsVersion);

  const karg = formatKarg(imageId, repo.alg, { insecure: repo.insecure, erofsVersion });
  const { entries, replaced } = await writeBootEntries(boot, { bootdir: opts.bootdir ?? '/boot', entryId: opts.entryId, karg, cmdline: opts.cmdline, files });

  const stateDir = path.join(path.dirname(repo.path), STATE_DEPLOY_DIR, imageId);
  for (const d of ['var', 'etc/upper', 'etc/work']) await mkdir(path.join(stateDir, d), { recursive: true });
  return { imageId, karg, entries, replaced, stateDir };
}
