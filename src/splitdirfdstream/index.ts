export { CHUNK, LIMITS, checkFileName, metadataHeader, fileHeader, type ChunkHeader } from './format.js';
export { SplitdirfdReader } from './reader.js';
export { openBeneath, checkDirSlot, type OpenedFile } from './open.js';
export { produceLayerStream, openObjectsDir } from './producer.js';
export { consumeLayerStream, type ConsumeOptions, type ConsumeResult } from './consumer.js';
export { ObjectPlacer, type PlaceMethod } from './place.js';
