export { importTarLayer, layerContentId, type ImportTarOptions, type ImportTarResult } from './split.js';
export { readLayerEntries } from './layer.js';
export { catStream } from '../splitstream/cat.js';
export { INLINE_CONTENT_MAX, type TarEntry, type TarEntryType, type TarContent } from './entry.js';
export { makedev } from './header.js';
