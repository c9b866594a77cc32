export * from './digest.js';
export * from './file.js';
export * from './file-hash.js';
