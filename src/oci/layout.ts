/**
 * OCI image layout directory reader: `oci-layout` marker, `index.json`, `blobs/<alg>/<hex>`.
 */
import { constants as fsc } from 'node:fs';
import { open, readFile, stat } from 'node:fs/promises';
import { join } from 'node:path';
import type { Readable } from 'node:stream';
import { CfsError, errnoCode } from '../errors.js';
import {
  MAX_JSON_BLOB,
  blobPath,
  fileRangeStream,
  parseIndex,
  parseJson,
  readAll,
  type ImageIndex,
  type OciRead,
} from './source.js';

export class OciLayout implements OciRead {
  readonly description: string;

  private constructor(readonly dir: string) {
    this.description = `oci layout ${dir}`;
  }

  /** Opens a layout directory, checking its `oci-layout` marker. */
  static async open(dir: string): Promise<OciLayout> {
    const layout = new OciLayout(dir);
    let marker: Buffer;
    try {
      marker = await readFile(join(dir, 'oci-layout'));
    } catch (e) {
      const code = errnoCode(e);
      if (code === 'ENOENT' || code === 'ENOTDIR') {
        const st = await stat(dir).catch(() => null);
        if (st?.isDirectory()) throw new CfsError('ECORRUPT', `${layout.description}: not an OCI layout (no oci-layout file)`);
        if (st) throw new CfsError('EINVAL', `${layout.description}: a file, not a directory (an OCI archive is read with oci-archive:${dir})`);
        throw new CfsError('ENOENT', `${layout.description}: no such directory`, { missingImage: layout.description });
      }
      throw e;
    }
    const m = parseJson(marker, `${layout.description}: oci-layout`);
    const version = typeof m === 'object' && m !== null ? (m as Record<string, unknown>)['imageLayoutVersion'] : undefined;
    if (typeof version !== 'string' || !version.startsWith('1.')) {
      throw new CfsError('ECORRUPT', `${layout.description}: oci-layout: unsupported imageLayoutVersion ${JSON.stringify(version)}`);
    }
    return layout;
  }

  async readIndex(): Promise<ImageIndex> {
    const where = `${this.description}: index.json`;
    let bytes: Buffer;
    try {
      bytes = await readFile(join(this.dir, 'index.json'));
    } catch (e) {
      if (errnoCode(e) === 'ENOENT') throw new CfsError('ENOENT', `${where}: missing`);
      throw e;
    }
    return parseIndex(bytes, where);
  }

  private path(digest: string): string {
    return join(this.dir, blobPath(digest, this.description));
  }

  private missing(digest: string): CfsError {
    return new CfsError('ENOENT', `${this.description}: blob ${digest} not found`);
  }

  async blobSize(digest: string): Promise<number> {
    try {
      const s = await stat(this.path(digest));
      if (!s.isFile()) throw new CfsError('ECORRUPT', `${this.description}: blob ${digest} is not a regular file`);
      return s.size;
    } catch (e) {
      if (errnoCode(e) === 'ENOENT') throw this.missing(digest);
      throw e;
    }
  }

  async hasBlob(digest: string): Promise<boolean> {
    try {
      return (await stat(this.path(digest))).isFile();
    } catch (e) {
      if (errnoCode(e) === 'ENOENT') return false;
      throw e;
    }
  }

  async readBlob(digest: string): Promise<Buffer> {
    return readAll(this.openBlob(digest), MAX_JSON_BLOB, `${this.description}: blob ${digest}`);
  }

  openBlob(digest: string): Readable {
    const path = this.path(digest);
    return fileRangeStream(async () => {
      let fh;
      try {
        // Non-blocking: a FIFO planted as a blob must not hang the pull (checked below).
        fh = await open(path, fsc.O_RDONLY | fsc.O_NONBLOCK);
      } catch (e) {
        if (errnoCode(e) === 'ENOENT') throw this.missing(digest);
        throw e;
      }
      let size: number;
      try {
        const st = await fh.stat();
        if (!st.isFile()) throw new CfsError('ECORRUPT', `${this.description}: blob ${digest} is not a regular file`);
        size = st.size;
      } catch (e) {
        await fh.close();
        throw e;
      }
      return { fh, start: 0, end: size, release: () => fh.close() };
    }, `${this.description}: blob ${digest}`);
  }

  async close(): Promise<void> {
    // Nothing held open between calls.
  }
}
