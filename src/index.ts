/**
 * cfs as a library: the CLI's main operations, callable from TypeScript/JavaScript
 * (`import … from 'cfs'`). Failures are CfsErrors with a code, or Node's system errors for paths
 * given; nothing prints (but a foreground FUSE mount, see MountImageOptions.foreground).
 *
 *   const repo = await Repository.open('/var/lib/cfs', { create: true, fallbackInsecure: true });
 *   const pulled = await pullImage(repo, 'oci:/images/app:1.0');
 *   await mountImage(repo, pulled.imageId!, '/mnt/app');
 *   …
 *   await unmountImage('/mnt/app');
 *   repo.close();
 */
export { CfsError, isCfsError, type CfsErrorCode } from './errors.js';

// Repositories.
export { Repository, initRepository, type InitOptions, type OpenOptions, type ImageHandle, type RefKind } from './repository/repository.js';
export type { ObjectCounts } from './repository/object-counts.js';
export type { RepoMeta, ErofsFormat, ErofsFormats } from './repository/meta.js';
export type { LockWaitOptions } from './repository/lock.js';
export { resolveRepositoryPath, SYSTEM_REPO_PATH, type RepoLocationOptions } from './repository/location.js';
export { fsck, formatFsckReport, type FsckOptions, type FsckReport } from './repository/fsck.js';
export { collectGarbage, formatGcResult, type GcOptions, type GcResult, type RepoProblem } from './repository/gc.js';

// OCI images.
export { pullImage, LOCAL_FETCH_MODES, type PullOptions, type PullResult } from './oci/pull.js';
export type { LocalFetch, ImportResult } from './oci/import.js';
export type { ImageManifest, ImageConfig } from './oci/source.js';
export { openStoredImage, listTags, tagImage, untagImage, resolveTag, type StoredImage } from './oci/stored.js';
export { copyImage, type CopyOptions, type CopyResult } from './oci/copy.js';
export { buildTreeFromLayers } from './oci/image-build.js';
export { NO_PROGRESS, type ProgressSink } from './progress/events.js';

// Mounting.
export { mountImage, unmountImage, listMounts, type FuseMode, type MountImageOptions, type MountedImage, type MountEntry } from './mount/mount-image.js';

// composefs images: trees, dumpfiles, EROFS, fs-verity.
// Trees: names and paths are byte strings (each char one byte, as latin1), as in dumpfiles.
export { newInode, S_IFMT, S_IFREG, S_IFDIR, S_IFLNK, S_IFCHR, S_IFBLK, S_IFIFO, S_IFSOCK, type Inode, type ByteString } from './tree/inode.js';
export { scanDirectory, type ScanOptions } from './tree/scan.js';
export { ociTransform, type OciTransformOptions } from './tree/oci-transform.js';
export { parseDumpfile, type ParseOptions } from './dumpfile/parse.js';
export { printDumpfile } from './dumpfile/print.js';
export { writeErofs, type WriteOptions } from './erofs/writer.js';
export { readErofs, readErofsInfo, type ImageInfo } from './erofs/reader.js';
export { fsverityDigest, type HashAlg } from './fsverity/digest.js';
export { fsverityDigestFile } from './fsverity/file.js';
