/**
 * The differ's native help: where a sparse image holds data, and which
 * blocks of two images differ (host-signal/native: seek.c, compare.c).
 */
import { checkFd, checkInteger } from '@vmsubst/common/native/errors';
import { optionalHostBinding, type HostBinding } from './binding.js';

/** Largest span compareSpan takes (its run list is sized to the span). */
export const COMPARE_SPAN_MAX = 1 << 30;

/** The native comparison, as the differ uses it. */
export interface NativeDiff {
  /**
   * The data segments `[offset, length]` of the open file `fd` within
   * [0, size), in order (lseek SEEK_DATA / SEEK_HOLE). Gaps are holes, which
   * read as zeros. A filesystem without SEEK_DATA gives one segment covering
   * everything. Synchronous; moves the file offset.
   */
  dataSegments(fd: number, size: number): [number, number][];
  /**
   * The runs of differing blocks between the open files `fdA` and `fdB` over
   * [offset, offset + length), as [offset, length] pairs in order, adjacent
   * differing blocks merged. Both files are read with pread in 64 KiB steps
   * and compared with memcmp on the libuv thread pool; several spans may run
   * at once. `length` is a multiple of `blockSize` (a power of two, 512 to
   * `blockMax`) and at most COMPARE_SPAN_MAX. A file that ends inside the span
   * rejects with an EIO NativeError ("short read"). The descriptors must stay
   * open until the promise settles.
   */
  compareSpan(fdA: number, fdB: number, offset: number, length: number, blockSize: number): Promise<Float64Array>;
  /**
   * Faults in the pages of `buffer` in one system call (madvise
   * MADV_POPULATE_WRITE): fresh memory then costs no fault per 4 KiB page
   * when it is filled. Advice: a kernel without it (before Linux 5.14)
   * changes nothing, and neither does a failure.
   */
  prefault(buffer: Buffer): Buffer;
  /** The largest block size compareSpan takes (its read buffer). */
  readonly blockMax: number;
}

function nativeDiff(b: HostBinding): NativeDiff {
  return {
    dataSegments(fd, size) {
      checkFd(fd);
      checkInteger('size', size, 0, Number.MAX_SAFE_INTEGER);
      return b.dataSegments(fd, size);
    },
    compareSpan(fdA, fdB, offset, length, blockSize) {
      checkFd(fdA);
      checkFd(fdB);
      checkInteger('offset', offset, 0, Number.MAX_SAFE_INTEGER);
      checkInteger('length', length, 0, COMPARE_SPAN_MAX);
      return b.compareSpan(fdA, fdB, offset, length, blockSize);
    },
    prefault(buffer) {
      try {
        b.prefault(buffer);
      } catch {
        // advice only: the pages fault in one by one instead
      }
      return buffer;
    },
    blockMax: b.constants.COMPARE_BLOCK_MAX,
  };
}

let cached: NativeDiff | undefined;

/** The native comparison, or undefined (after a warning on stderr) when the addon does not load. */
export function loadNativeDiff(): NativeDiff | undefined {
  if (cached) return cached;
  const b = optionalHostBinding();
  return b && (cached = nativeDiff(b));
}
