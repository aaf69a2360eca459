/**
 * Opening a bundle: header, manifest (schema, id, bounds) and, by default, the
 * sha256 of every range's data, all before any caller can write a byte.
 */
import { createHash } from 'node:crypto';
import { open, type FileHandle } from 'node:fs/promises';
import { Validator } from '@vmsubst/common/protocol/codec';
import { BundleError } from '../errors.js';
import {
  DATA_ALIGN,
  HEADER_BYTES,
  dataStart as dataStartFor,
  decodeHeader,
  manifestId,
} from '@vmsubst/common/bundle/format';
import { Manifest, type BundleRange } from '@vmsubst/common/bundle/schema';

const validateManifest = new Validator(Manifest);

/** Bytes hashed per read while verifying. */
const VERIFY_CHUNK = 4 << 20;

/** Schema problems as "path: message" strings; empty when the value is a well-formed manifest. */
export function manifestSchemaProblems(value: unknown): string[] {
  return validateManifest.problems(value);
}

/**
 * Consistency of a schema-valid manifest with itself and with the file
 * holding it: id, block alignment, ranges inside the base image, sorted and
 * non-overlapping, data inside the file and in order, no trailing bytes.
 */
export function manifestProblems(m: Manifest, file: { size: number; dataStart: number; version?: number }): string[] {
  const problems: string[] = [];
  const id = manifestId(m);
  if (id !== m.id) problems.push(`/id: does not match the manifest's content (expected ${id})`);
  if (file.version !== undefined && file.version !== m.format)
    problems.push(`/format: ${m.format}, but the file header says version ${file.version}`);
  if (m.format === 1) {
    for (const field of ['files', 'customization', 'signature'] as const)
      if (m[field] !== undefined) problems.push(`/${field}: not part of format 1`);
    if (m.base.filesystems !== undefined) problems.push('/base/filesystems: not part of format 1');
    if (m.ranges.some((r) => r.files !== undefined)) problems.push('/ranges: per-range files are not part of format 1');
  }
  if (m.format < 3) {
    m.files?.forEach((f, i) => {
      if (f.elf === 'code-unchanged' || f.elf === 'code-changed')
        problems.push(`/files/${i}/elf: ${f.elf} is not part of format ${m.format} (format 3 verdict)`);
    });
  }
  const nFs = m.base.filesystems?.length ?? 0;
  m.base.filesystems?.forEach((f, i) => {
    if (f.offset + f.size > m.base.size)
      problems.push(
        `/base/filesystems/${i}: ends at ${f.offset + f.size}, beyond the base image's ${m.base.size} bytes`,
      );
  });
  const nFiles = m.files?.length ?? 0;
  m.files?.forEach((f, i) => {
    if (f.filesystem >= nFs)
      problems.push(`/files/${i}/filesystem: ${f.filesystem}, but the base has ${nFs} filesystems`);
  });
  const bs = m['block-size'];
  if ((bs & (bs - 1)) !== 0) problems.push(`/block-size: ${bs} is not a power of two`);
  let prevEnd = 0;
  let prevDataEnd = file.dataStart;
  m.ranges.forEach((r, i) => {
    const at = `/ranges/${i}`;
    const end = r.offset + r.length;
    if (r.offset % bs !== 0) problems.push(`${at}/offset: ${r.offset} is not a multiple of the block size ${bs}`);
    if (r.length % bs !== 0 && end !== m.base.size) {
      problems.push(
        `${at}/length: ${r.length} is not a multiple of the block size ${bs} and the range does not end the image`,
      );
    }
    if (end > m.base.size) problems.push(`${at}: ends at ${end}, beyond the base image's ${m.base.size} bytes`);
    if (i > 0 && r.offset < prevEnd)
      problems.push(`${at}: overlaps or precedes the previous range (ranges must be sorted and disjoint)`);
    const d = r['data-offset'];
    if (d % DATA_ALIGN !== 0) problems.push(`${at}/data-offset: ${d} is not ${DATA_ALIGN}-byte aligned`);
    if (d < prevDataEnd) problems.push(`${at}/data-offset: ${d} overlaps the manifest or the previous range's data`);
    if (d + r.length > file.size)
      problems.push(`${at}/data-offset: data ends at ${d + r.length}, beyond the end of the file (${file.size} bytes)`);
    const bad = r.files?.find((f) => f >= nFiles);
    if (bad !== undefined) problems.push(`${at}/files: index ${bad}, but the manifest lists ${nFiles} files`);
    prevEnd = Math.max(prevEnd, end);
    prevDataEnd = Math.max(prevDataEnd, d + r.length);
  });
  const last = m.ranges.at(-1);
  const expectedEnd = last ? last['data-offset'] + last.length : file.dataStart;
  if (problems.length === 0 && file.size !== expectedEnd) {
    problems.push(`file is ${file.size} bytes but its data ends at ${expectedEnd}`);
  }
  return problems;
}

export interface OpenBundleOptions {
  /** Check every range's data against its new-sha256 (default true). */
  verifyData?: boolean;
  onProgress?: (done: number, total: number) => void;
}

export class Bundle {
  #verified = false;

  private constructor(
    readonly path: string,
    private readonly handle: FileHandle,
    readonly manifest: Manifest,
    readonly fileSize: number,
    readonly dataStart: number,
  ) {}

  /** Opens and validates a bundle; throws BundleError listing every problem found. */
  static async open(path: string, options: OpenBundleOptions = {}): Promise<Bundle> {
    let handle: FileHandle;
    try {
      handle = await open(path, 'r');
    } catch (e) {
      throw new BundleError(`cannot open bundle ${path}: ${(e as Error).message}`, [], 'check the path');
    }
    try {
      const st = await handle.stat();
      if (!st.isFile()) throw new BundleError(`${path} is not a regular file`);
      const head = Buffer.alloc(HEADER_BYTES);
      const { bytesRead } = await handle.read(head, 0, HEADER_BYTES, 0);
      const header = decodeHeader(head.subarray(0, bytesRead));
      if (typeof header === 'string') throw new BundleError(`${path}: ${header}`);
      if (HEADER_BYTES + header.manifestLength > st.size) {
        throw new BundleError(
          `${path}: truncated: the manifest (${header.manifestLength} bytes) runs past the end of the file (${st.size} bytes)`,
        );
      }
      const raw = Buffer.alloc(header.manifestLength);
      await readFull(handle, raw, HEADER_BYTES);
      let value: unknown;
      try {
        value = JSON.parse(raw.toString('utf8'));
      } catch (e) {
        throw new BundleError(`${path}: manifest is not JSON (${(e as Error).message})`);
      }
      const schema = manifestSchemaProblems(value);
      if (schema.length > 0) throw new BundleError(`${path}: invalid manifest`, schema);
      const manifest = value as Manifest;
      const dataStart = dataStartFor(header.manifestLength);
      const problems = manifestProblems(manifest, { size: st.size, dataStart, version: header.version });
      if (problems.length > 0) throw new BundleError(`${path}: inconsistent manifest`, problems);
      const bundle = new Bundle(path, handle, manifest, st.size, dataStart);
      if (options.verifyData ?? true) await bundle.verifyData(options.onProgress);
      return bundle;
    } catch (e) {
      await handle.close();
      throw e;
    }
  }

  /** True once verifyData() has passed. */
  get verified(): boolean {
    return this.#verified;
  }

  /** Total bytes of new data the bundle carries. */
  get dataBytes(): number {
    return this.manifest.ranges.reduce((n, r) => n + r.length, 0);
  }

  /** Hashes every range's data; throws BundleError naming the ranges whose data is corrupt. */
  async verifyData(onProgress?: (done: number, total: number) => void): Promise<void> {
    const total = this.dataBytes;
    const bad: string[] = [];
    let done = 0;
    const buf = Buffer.allocUnsafe(Math.min(VERIFY_CHUNK, Math.max(total, 1)));
    for (const [i, r] of this.manifest.ranges.entries()) {
      const hash = createHash('sha256');
      for (let pos = 0; pos < r.length; pos += buf.length) {
        const chunk = buf.subarray(0, Math.min(buf.length, r.length - pos));
        await readFull(this.handle, chunk, r['data-offset'] + pos);
        hash.update(chunk);
        done += chunk.length;
        onProgress?.(done, total);
      }
      if (hash.digest('hex') !== r['new-sha256'])
        bad.push(`/ranges/${i}: data does not match new-sha256 (offset ${r.offset}, ${r.length} bytes)`);
    }
    if (bad.length > 0) {
      const shown = bad.length > 5 ? [...bad.slice(0, 5), `... and ${bad.length - 5} more`] : bad;
      throw new BundleError(`${this.path}: corrupt data`, shown);
    }
    this.#verified = true;
  }

  /** Reads `length` bytes of a range's new data, starting `from` bytes into the range. */
  async readData(range: BundleRange, from = 0, length = range.length - from): Promise<Buffer> {
    if (from < 0 || length < 0 || from + length > range.length) {
      throw new RangeError(`read of ${length} bytes at ${from} is outside a range of ${range.length} bytes`);
    }
    const buf = Buffer.allocUnsafe(length);
    await readFull(this.handle, buf, range['data-offset'] + from);
    return buf;
  }

  close(): Promise<void> {
    return this.handle.close();
  }
}

async function readFull(handle: FileHandle, target: Buffer, position: number): Promise<void> {
  let done = 0;
  while (done < target.length) {
    const { bytesRead } = await handle.read(target, done, target.length - done, position + done);
    if (bytesRead === 0) throw new BundleError(`unexpected end of file at offset ${position + done}`);
    done += bytesRead;
  }
}
