export { Repository, initRepository, type RefKind, type InitOptions, type OpenOptions, type ImageHandle } from './repository.js';
export { ObjectWriter } from './objects.js';
export { resolveRepositoryPath, SYSTEM_REPO_PATH, type RepoLocationOptions } from './location.js';
export { objectRelPath, parseHexId, idFromObjectPath } from './ids.js';
export { algorithmString, parseAlgorithm, type RepoMeta, type ErofsFormat, type ErofsFormats } from './meta.js';
