export { SplitStreamWriter, writeSplitStream, writeExternalSplitStream, INLINE_CHUNK_MAX, type SplitStreamWriterOptions, type ExternalStreamOptions } from './writer.js';
export { SplitStreamReader, readExternalSplitStream, type Chunk, type OpenStreamOptions } from './reader.js';
export { catStream, catStreamObject } from './cat.js';
export { CONTENT_TYPES, contentTypeValue, contentTypeText, type ContentTypeSpec } from './format.js';
