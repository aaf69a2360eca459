/**
 * Positional byte sources: what the differ, the bundle writer and the image
 * target read from. Files in production, buffers in tests.
 */
import { open, type FileHandle } from 'node:fs/promises';
import { loadNativeDiff } from '../native/diff.js';

/** [offset, length]; sorted, disjoint. */
export type Segment = readonly [number, number];

export interface BlockSource {
  /** Size in bytes. */
  readonly size: number;
  /**
   * Fills `target` from `position`; returns the number of bytes read, which is
   * less than `target.length` only at the end of the source.
   */
  readInto(target: Buffer, position: number): Promise<number>;
  /**
   * Where the source may hold data; everything else reads as zeros. Absent,
   * or resolving to undefined: not known, all of it is read.
   */
  dataSegments?(): Promise<readonly Segment[] | undefined>;
  /** A file descriptor to read with pread, when the source is a plain file (the native comparison uses it). */
  readonly fd?: number;
  close?(): Promise<void>;
}

/** Reads exactly `length` bytes at `position`, or throws if the source is shorter. */
export async function readExactly(source: BlockSource, position: number, length: number): Promise<Buffer> {
  const buf = Buffer.allocUnsafe(length);
  const n = await source.readInto(buf, position);
  if (n !== length) {
    throw new RangeError(`short read: ${n} of ${length} bytes at offset ${position}`);
  }
  return buf;
}

/** A source over an in-memory buffer. */
export function bufferSource(data: Buffer): BlockSource {
  return {
    size: data.length,
    async readInto(target, position) {
      if (position >= data.length) return 0;
      return data.copy(target, 0, position, Math.min(data.length, position + target.length));
    },
  };
}

/** A source over a regular file; its size is taken once, when it is opened. */
export class FileSource implements BlockSource {
  private constructor(
    readonly path: string,
    private readonly handle: FileHandle,
    readonly size: number,
  ) {}

  static async open(path: string): Promise<FileSource> {
    const handle = await open(path, 'r');
    try {
      const st = await handle.stat();
      if (!st.isFile()) {
        throw Object.assign(new Error(`${path}: not a regular file`), { code: 'EINVAL' });
      }
      return new FileSource(path, handle, st.size);
    } catch (e) {
      await handle.close();
      throw e;
    }
  }

  /** The open file's descriptor (for the native comparison); valid until close(). */
  get fd(): number {
    return this.handle.fd;
  }

  /** Data segments by SEEK_DATA/SEEK_HOLE; undefined when the native addon is unavailable. */
  async dataSegments(): Promise<readonly Segment[] | undefined> {
    return loadNativeDiff()?.dataSegments(this.handle.fd, this.size);
  }

  async readInto(target: Buffer, position: number): Promise<number> {
    let done = 0;
    while (done < target.length) {
      const { bytesRead } = await this.handle.read(target, done, target.length - done, position + done);
      if (bytesRead === 0) break;
      done += bytesRead;
    }
    return done;
  }

  close(): Promise<void> {
    return this.handle.close();
  }
}

const QCOW2_MAGIC = Buffer.from([0x51, 0x46, 0x49, 0xfb]);

/** 'qcow2' when the file starts with the qcow2 magic, else 'raw'. */
export async function probeFormat(path: string): Promise<'qcow2' | 'raw'> {
  const h = await open(path, 'r');
  try {
    const head = Buffer.alloc(4);
    const { bytesRead } = await h.read(head, 0, 4, 0);
    return bytesRead === 4 && head.equals(QCOW2_MAGIC) ? 'qcow2' : 'raw';
  } finally {
    await h.close();
  }
}
