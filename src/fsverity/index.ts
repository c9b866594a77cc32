export * from './digest.js';
export * from './file.js';
