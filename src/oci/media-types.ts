/**
 * OCI and Docker v2 schema 2 media types. Docker types are accepted as equivalents of their OCI
 * counterparts everywhere (layouts written by `docker save`-style tools use them).
 */

export const MT = {
  ociIndex: 'application/vnd.oci.image.index.v1+json',
  ociManifest: 'application/vnd.oci.image.manifest.v1+json',
  ociConfig: 'application/vnd.oci.image.config.v1+json',
  ociLayerTar: 'application/vnd.oci.image.layer.v1.tar',
  ociLayerGzip: 'application/vnd.oci.image.layer.v1.tar+gzip',
  ociLayerZstd: 'application/vnd.oci.image.layer.v1.tar+zstd',
  ociLayerNdTar: 'application/vnd.oci.image.layer.nondistributable.v1.tar',
  ociLayerNdGzip: 'application/vnd.oci.image.layer.nondistributable.v1.tar+gzip',
  ociLayerNdZstd: 'application/vnd.oci.image.layer.nondistributable.v1.tar+zstd',
  dockerManifestList: 'application/vnd.docker.distribution.manifest.list.v2+json',
  dockerManifest: 'application/vnd.docker.distribution.manifest.v2+json',
  dockerConfig: 'application/vnd.docker.container.image.v1+json',
  dockerLayerTar: 'application/vnd.docker.image.rootfs.diff.tar',
  dockerLayerGzip: 'application/vnd.docker.image.rootfs.diff.tar.gzip',
  dockerLayerZstd: 'application/vnd.docker.image.rootfs.diff.tar.zstd',
  dockerForeignGzip: 'application/vnd.docker.image.rootfs.foreign.diff.tar.gzip',
} as const;

/** Annotation carrying a tag in an OCI layout's index.json. */
export const REF_NAME_ANNOTATION = 'org.opencontainers.image.ref.name';

export type Compression = 'none' | 'gzip' | 'zstd';

const LAYER_COMPRESSION: ReadonlyMap<string, Compression> = new Map<string, Compression>([
  [MT.ociLayerTar, 'none'],
  [MT.ociLayerGzip, 'gzip'],
  [MT.ociLayerZstd, 'zstd'],
  [MT.ociLayerNdTar, 'none'],
  [MT.ociLayerNdGzip, 'gzip'],
  [MT.ociLayerNdZstd, 'zstd'],
  [MT.dockerLayerTar, 'none'],
  [MT.dockerLayerGzip, 'gzip'],
  [MT.dockerLayerZstd, 'zstd'],
  [MT.dockerForeignGzip, 'gzip'],
]);

export function isIndexMediaType(mt: string): boolean {
  return mt === MT.ociIndex || mt === MT.dockerManifestList;
}

export function isManifestMediaType(mt: string): boolean {
  return mt === MT.ociManifest || mt === MT.dockerManifest;
}

/** Config types that describe a container image (carry rootfs.diff_ids); others are artifacts. */
export function isImageConfigMediaType(mt: string): boolean {
  return mt === MT.ociConfig || mt === MT.dockerConfig;
}

/** Compression of a tar layer media type, or null when the blob is not a tar layer. */
export function layerCompression(mt: string): Compression | null {
  return LAYER_COMPRESSION.get(mt) ?? null;
}
