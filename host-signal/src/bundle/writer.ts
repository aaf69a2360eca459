/**
 * Writing a bundle. The manifest goes first, so the ranges and their hashes
 * must be known before the data is copied: the data is then streamed from the
 * patched image range by range and hashed again on the way, which catches an
 * image that changed since it was compared. The file appears under its name
 * only when complete (written to a temporary name, renamed).
 *
 * It is not fsync'd, like cp's or rsync's output: the fsync cost 15-25 ms
 * of a 400 ms diff (18 MiB bundle, docs/design.md "Writing the bundle").
 * A host crash before the kernel wrote it back can leave the bundle cut short
 * or empty under its name; every reader refuses that before anything is
 * written (the header, the manifest's length and each range's new-sha256 are
 * checked, bundle/reader.ts), and the diff is run again.
 */
import { createHash, randomBytes } from 'node:crypto';
import { open, rename, rm, type FileHandle } from 'node:fs/promises';
import { basename, dirname, join } from 'node:path';
import type { DiffRange } from '../diff/index.js';
import type { BlockSource } from '../diff/source.js';
import { DiffError } from '../errors.js';
import { TOOL_VERSION } from '../version.js';
import type { Customization } from '@vmsubst/common/protocol/schema';
import type { BaseFilesystem, BundleRange, FileEntry, Manifest } from '@vmsubst/common/bundle/schema';
import { BUNDLE_FORMAT } from '@vmsubst/common/bundle/version';
import { HEADER_BYTES, encodeHeader, layOut } from '@vmsubst/common/bundle/format';

/** Bytes copied per read from the patched image. */
const COPY_CHUNK = 4 << 20;

export interface BundleInput {
  base: { size: number; label?: string; filesystems?: BaseFilesystem[] };
  blockSize: number;
  /** `files`: indexes into `files` of the files each range changes. */
  ranges: readonly (DiffRange & { files?: readonly number[] })[];
  files?: readonly FileEntry[];
  customization?: Customization;
  created?: Date;
  toolVersion?: string;
}

export interface WriteBundleOptions {
  onProgress?: (done: number, total: number) => void;
  /**
   * The new bytes of each range, in order, as the differ read and hashed them
   * (DiffResult.newData): written as they are instead of being read from the
   * patched image and checked against new-sha256 again.
   */
  newData?: readonly Buffer[];
}

/** Buffers per writev (below IOV_MAX). */
const WRITEV_BUFFERS = 512;

/** The manifest `input` will produce, with data offsets and id; pure. */
export function planBundle(input: BundleInput): ReturnType<typeof layOut> {
  const base: Manifest['base'] = { size: input.base.size };
  if (input.base.label !== undefined) base.label = input.base.label;
  if (input.base.filesystems !== undefined && input.base.filesystems.length > 0)
    base.filesystems = input.base.filesystems;
  return layOut({
    ...(input.files !== undefined && input.files.length > 0 ? { files: [...input.files] } : {}),
    ...(input.customization !== undefined ? { customization: input.customization } : {}),
    format: BUNDLE_FORMAT,
    'block-size': input.blockSize,
    base,
    created: (input.created ?? new Date()).toISOString(),
    'tool-version': input.toolVersion ?? TOOL_VERSION,
    ranges: input.ranges.map((r) => ({
      offset: r.offset,
      length: r.length,
      'old-sha256': r.oldSha256,
      'new-sha256': r.newSha256,
      ...(r.files !== undefined && r.files.length > 0 ? { files: [...r.files] } : {}),
    })),
  });
}

/**
 * Writes the bundle for `input` to `path`, copying each range's new bytes
 * from `patched`. Returns the manifest written.
 */
export async function writeBundle(
  path: string,
  input: BundleInput,
  patched: BlockSource,
  options: WriteBundleOptions = {},
): Promise<Manifest> {
  if (patched.size !== input.base.size) {
    throw new DiffError(`the patched image is ${patched.size} bytes, the base ${input.base.size}`);
  }
  const layout = planBundle(input);
  const { manifest } = layout;
  const total = manifest.ranges.reduce((n, r) => n + r.length, 0);
  const tmp = join(dirname(path), `.${basename(path)}.${randomBytes(4).toString('hex')}.tmp`);
  const out = await open(tmp, 'wx', 0o644);
  let ok = false;
  try {
    await writeFull(out, encodeHeader(layout.manifestBytes.length), 0);
    await writeFull(out, layout.manifestBytes, HEADER_BYTES);
    const preloaded = options.newData;
    if (preloaded !== undefined) {
      if (
        preloaded.length !== manifest.ranges.length ||
        preloaded.some((d, i) => d.length !== manifest.ranges[i]!.length)
      ) {
        throw new RangeError('newData does not match the ranges');
      }
      await writeContiguous(out, manifest.ranges, preloaded, (done) => options.onProgress?.(done, total));
    } else {
      await copyRanges(out, manifest.ranges, patched, (done) => options.onProgress?.(done, total));
    }
    await out.truncate(layout.fileSize);
    ok = true;
  } finally {
    await out.close();
    if (!ok) await rm(tmp, { force: true });
  }
  await rename(tmp, path);
  return manifest;
}

/** Copies each range's bytes from the patched image to its data-offset, checking them against new-sha256 on the way. */
async function copyRanges(
  out: FileHandle,
  ranges: readonly BundleRange[],
  patched: BlockSource,
  onProgress: (done: number) => void,
): Promise<void> {
  const total = ranges.reduce((n, r) => n + r.length, 0);
  const buf = Buffer.allocUnsafe(Math.min(COPY_CHUNK, Math.max(total, 1)));
  let done = 0;
  for (const r of ranges) {
    const hash = createHash('sha256');
    for (let pos = 0; pos < r.length; pos += buf.length) {
      const chunk = buf.subarray(0, Math.min(buf.length, r.length - pos));
      const n = await patched.readInto(chunk, r.offset + pos);
      if (n !== chunk.length) throw new DiffError(`short read from the patched image at offset ${r.offset + pos}`);
      hash.update(chunk);
      await writeFull(out, chunk, r['data-offset'] + pos);
      done += chunk.length;
      onProgress(done);
    }
    if (hash.digest('hex') !== r['new-sha256']) {
      throw new DiffError(
        `the patched image changed while the bundle was written (range at offset ${r.offset})`,
        'do not modify the patched image while `vmsubst diff` runs',
      );
    }
  }
}

/** Writes the ranges' bytes at their data-offsets, ranges whose data follow each other in one writev. */
async function writeContiguous(
  out: FileHandle,
  ranges: readonly BundleRange[],
  data: readonly Buffer[],
  onProgress: (done: number) => void,
): Promise<void> {
  let done = 0;
  for (let i = 0; i < ranges.length;) {
    const start = ranges[i]!['data-offset'];
    const group: Buffer[] = [];
    let end = start;
    while (i < ranges.length && ranges[i]!['data-offset'] === end && group.length < WRITEV_BUFFERS) {
      group.push(data[i]!);
      end += ranges[i]!.length;
      i++;
    }
    let written = 0;
    while (written < end - start) {
      const { bytesWritten } = await out.writev(written === 0 ? group : remaining(group, written), start + written);
      written += bytesWritten;
    }
    done += end - start;
    onProgress(done);
  }
}

/** The buffers of `group` from byte `skip` on. */
function remaining(group: readonly Buffer[], skip: number): Buffer[] {
  const out: Buffer[] = [];
  for (const b of group) {
    if (skip >= b.length) {
      skip -= b.length;
      continue;
    }
    out.push(skip > 0 ? b.subarray(skip) : b);
    skip = 0;
  }
  return out;
}

async function writeFull(handle: FileHandle, data: Buffer, position: number): Promise<void> {
  let done = 0;
  while (done < data.length) {
    const { bytesWritten } = await handle.write(data, done, data.length - done, position + done);
    done += bytesWritten;
  }
}
