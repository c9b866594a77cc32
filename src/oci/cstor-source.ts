import { CfsError } from '../errors.js';
import type { ImageToImport } from './import.js';
import type { SourceOptions } from './sources.js';

export async function openContainersStorageImage(spec: string, _opts: SourceOptions): Promise<ImageToImport> {
  throw new CfsError('ENOTSUP', `containers-storage:${spec}: not supported yet`);
}
