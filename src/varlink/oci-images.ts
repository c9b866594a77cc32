/**
 * Composefs images of stored OCI images for the varlink Oci methods (ComputeId, Pull
 * --bootable, OciMount): the tree rebuilt from the layer streams, optionally boot-transformed,
 * and the boot image refs kept in the config stream (`composefs.image.boot[.v1][.xattrs=<mode>]`).
 */
import { CfsError } from '../errors.js';
import { fsverityDigest, type HashAlg } from '../fsverity/digest.js';
import { buildTreeFromLayers, erofsForFormat } from '../oci/image-build.js';
import { configContentId, type StoredImage } from '../oci/stored.js';
import type { Repository } from '../repository/repository.js';
import { readExternalSplitStream } from '../splitstream/reader.js';
import { bootTransform } from '../boot/boot-transform.js';
import { bootRefName } from '../boot/oci-boot.js';
import { loadSelinuxPolicy } from '../boot/selinux.js';
import { repoTreeFiles } from '../boot/tree-files.js';

/** OCI transform xattr modes, as named on the wire. */
export const XATTR_MODES = ['AllowlistOnly', 'KeepUserXattrs'] as const;
export type XattrMode = (typeof XATTR_MODES)[number];

const MODE_SUFFIX: Record<XattrMode, string> = { AllowlistOnly: '', KeepUserXattrs: '.xattrs=keep-user-xattrs' };

/** Wire name or CLI spelling (allowlist-only, keep-user-xattrs) → mode; null when unknown. */
export function parseXattrMode(s: string): XattrMode | null {
  const m = XATTR_MODES.find((x) => x === s || x.replace(/[A-Z]/g, (c, i: number) => (i ? '-' : '') + c.toLowerCase()) === s);
  return m ?? null;
}

export function bootRef(erofsVersion: number, mode: XattrMode): string {
  return bootRefName(erofsVersion) + MODE_SUFFIX[mode];
}

export function formatVersionName(erofsVersion: number): string {
  return erofsVersion === 2 ? 'V2' : 'V1';
}

/** EROFS bytes of a stored image in the repository's format, rebuilt from its layers. */
export async function buildStoredErofs(repo: Repository, img: StoredImage, opts: { bootable: boolean; mode: XattrMode }): Promise<Buffer> {
  if (img.artifact) throw new CfsError('EINVAL', `image ${img.manifestDigest} is an OCI artifact, not a container image`);
  const layers = img.diffIds.map((diffId) => ({ diffId, streamId: img.layerStreams.get(diffId)! }));
  const root = await buildTreeFromLayers(repo, layers, { keepUserXattrs: opts.mode === 'KeepUserXattrs' });
  if (opts.bootable) bootTransform(root, await loadSelinuxPolicy(root, repoTreeFiles(repo).read));
  return erofsForFormat(root, repo.erofsFormats.default);
}

export function imageIdOf(erofs: Buffer, alg: HashAlg): string {
  return fsverityDigest(erofs, alg).toString('hex');
}

/** Hex id of a boot image recorded for `img` under `refName`, or null. */
export async function recordedBootImage(repo: Repository, img: StoredImage, refName: string): Promise<string | null> {
  const contentId = configContentId(img.configDigest);
  const stream = await repo.hasStream(contentId);
  if (!stream) return null;
  const c = await readExternalSplitStream(repo, stream, { name: contentId });
  return c.namedRefs.get(refName)?.toString('hex') ?? null;
}
