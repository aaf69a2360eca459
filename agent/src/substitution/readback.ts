/**
 * The end-to-end invariant: after the invalidation, every changed range of a
 * file reads back through the filesystem — buffered, as any process reads it —
 * as the content verified on the disk. The verification reads the disk with
 * O_DIRECT anyway; while it does, each file piece (a run contiguous both on
 * the disk and in the file) is hashed from those bytes, so nothing is read
 * twice from the disk and nothing is kept but one sha256 per piece. After the
 * module has dropped the caches, each piece is read through the file and its
 * hash compared: a difference means the guest still sees other content there
 * than the disk holds (an invalidation skipped, failed silently, or undone by
 * a page the module could not drop).
 */
import { createHash, type Hash } from 'node:crypto';
import type { FileHandle } from 'node:fs/promises';
import { reasonOf } from '../errors.js';
import type { ByteRange, FileRanges, Policy, Readback } from '@vmsubst/common/protocol/schema';
import type { FileHit } from '../pedigree/index.js';
import { mergeRanges } from '../pedigree/index.js';
import { SwappedFileError } from './open-changed.js';

/** Buffered reads of the check, per call. */
const READ_CHUNK = 1 << 20;

interface Piece {
  file: FileHit['file'];
  policy: Policy;
  fileOffset: number;
  diskOffset: number;
  length: number;
  hash: Hash;
  /** Bytes of the piece hashed so far (all of it once the verification has read its range). */
  seen: number;
}

export interface ReadbackOutcome {
  /** Ranges that read back other content than the disk holds: the guest sees old content there. */
  stale: FileRanges[];
  readback: Readback;
}

export type OpenFile = (path: string, expect: { dev: number; ino: number }) => Promise<FileHandle>;

export class ReadbackCheck {
  readonly #pieces: Piece[];
  /** Pieces not yet wholly hashed, in disk order, and the next one to admit. */
  #active: Piece[] = [];
  #next = 0;

  private constructor(pieces: Piece[]) {
    this.#pieces = pieces.sort((a, b) => a.diskOffset - b.diskOffset);
  }

  /** The pieces of every changed file range: file ranges cut at the file's extents, clipped at the file's size when indexed. */
  static of(files: readonly { hit: FileHit; policy: Policy }[]): ReadbackCheck {
    const pieces: Piece[] = [];
    for (const { hit, policy } of files) {
      if (hit.file.kind !== 'file') continue;
      const size = hit.file.size ?? Number.MAX_SAFE_INTEGER;
      for (const r of hit.ranges) {
        for (const e of hit.file.extents) {
          const a = Math.max(r.offset, e.fileOffset);
          const b = Math.min(r.offset + r.length, e.fileOffset + e.length, size);
          if (b <= a) continue;
          pieces.push({
            file: hit.file,
            policy,
            fileOffset: a,
            diskOffset: e.diskStart + (a - e.fileOffset),
            length: b - a,
            hash: createHash('sha256'),
            seen: 0,
          });
        }
      }
    }
    return new ReadbackCheck(pieces);
  }

  get pieces(): number {
    return this.#pieces.length;
  }

  /** Feeds the bytes of one verified disk range (ranges come in disk order, as the bundle sorts them). */
  observe(offset: number, data: Buffer): void {
    const end = offset + data.length;
    while (this.#next < this.#pieces.length && this.#pieces[this.#next]!.diskOffset < end)
      this.#active.push(this.#pieces[this.#next++]!);
    for (const p of this.#active) {
      // The piece's next unhashed byte must lie in this range: ranges are disjoint and sorted.
      const from = p.diskOffset + p.seen;
      if (from < offset || from >= end) continue;
      const to = Math.min(p.diskOffset + p.length, end);
      p.hash.update(data.subarray(from - offset, to - offset));
      p.seen += to - from;
    }
    this.#active = this.#active.filter((p) => p.seen < p.length);
  }

  /** Reads every piece back through its file and compares. Opens each file once, by its indexed inode. */
  async check(open: OpenFile): Promise<ReadbackOutcome> {
    const byFile = new Map<FileHit['file'], Piece[]>();
    for (const p of this.#pieces) byFile.set(p.file, [...(byFile.get(p.file) ?? []), p]);
    const stale: FileRanges[] = [];
    const mixed: FileRanges[] = [];
    const skipped: { path: string; reason: string }[] = [];
    let bytes = 0;
    let files = 0;
    const buf = Buffer.allocUnsafe(READ_CHUNK);
    for (const [file, pieces] of byFile) {
      let fh: FileHandle;
      try {
        fh = await open(file.path, { dev: file.dev, ino: file.ino });
      } catch (e) {
        // The path names another inode now (a metadata substitution replaced it), or nothing: the
        // ranges belong to an inode no path reaches; `stale` lists the processes still using it.
        const why =
          e instanceof SwappedFileError ? 'the path names another inode now' : `cannot open it (${reasonOf(e)})`;
        skipped.push({ path: file.path, reason: why });
        continue;
      }
      const bad: ByteRange[] = [];
      try {
        const size = Number((await fh.stat()).size);
        files++;
        for (const p of pieces) {
          if (p.seen !== p.length) {
            skipped.push({
              path: file.path,
              reason: `bytes ${p.fileOffset}+${p.length} were not all read by the verification`,
            });
            continue;
          }
          if (p.fileOffset + p.length > size) {
            skipped.push({
              path: file.path,
              reason: `bytes ${p.fileOffset}+${p.length} lie past its end now (${size} bytes)`,
            });
            continue;
          }
          const h = createHash('sha256');
          for (let off = 0; off < p.length;) {
            const n = Math.min(READ_CHUNK, p.length - off);
            const { bytesRead } = await fh.read(buf, 0, n, p.fileOffset + off);
            if (bytesRead === 0) break;
            h.update(buf.subarray(0, bytesRead));
            off += bytesRead;
          }
          bytes += p.length;
          if (h.digest('hex') !== p.hash.digest('hex')) bad.push({ offset: p.fileOffset, length: p.length });
        }
      } finally {
        await fh.close();
      }
      if (bad.length === 0) continue;
      const entry = { path: file.path, ino: file.ino, ranges: mergeRanges(bad) };
      // Under `report` the module kept the mapped pages on purpose: known, and listed by `stale`.
      if (pieces[0]!.policy === 'report') mixed.push(entry);
      else stale.push(entry);
    }
    return {
      stale,
      readback: {
        files,
        bytes,
        ...(mixed.length > 0 ? { mixed } : {}),
        ...(skipped.length > 0 ? { skipped: skipped.slice(0, 64) } : {}),
      },
    };
  }
}

/** "path at 0+4096, 8192+4096; path2 at …": where, never what. */
export function describeStale(stale: readonly FileRanges[]): string {
  return (
    stale
      .slice(0, 8)
      .map(
        (f) =>
          `${f.path} (inode ${f.ino}) at ${f.ranges
            .slice(0, 4)
            .map((r) => `${r.offset}+${r.length}`)
            .join(', ')}${f.ranges.length > 4 ? `, … (${f.ranges.length} ranges)` : ''}`,
      )
      .join('; ') + (stale.length > 8 ? `; and ${stale.length - 8} more files` : '')
  );
}
