/**
 * Checks that the guest really sees the new blocks: reads each range with
 * O_DIRECT (past the guest's own caches, from the virtual disk) and compares
 * its sha256 with the notification. A mismatch stops the substitution before
 * anything is invalidated.
 */
import { createHash } from 'node:crypto';
import { CommandError } from '../errors.js';
import type { HashedRange } from '@vmsubst/common/protocol/schema';

export type DiskReader = (path: string, offset: number, length: number) => Promise<Buffer>;

export async function hashRange(
  read: DiskReader,
  path: string,
  r: { offset: number; length: number },
): Promise<string> {
  return createHash('sha256')
    .update(await read(path, r.offset, r.length))
    .digest('hex');
}

/**
 * Ranges must be sorted by offset and disjoint, as a bundle's are: otherwise one request could make
 * the agent read and hash the same blocks many times over (8192 copies of one 64 MiB range is 512 GiB
 * of reads). The end of the disk is checked once it is known (resolve.ts). Throws InvalidArguments.
 */
export function checkRanges(ranges: readonly { offset: number; length: number }[]): void {
  for (let i = 1; i < ranges.length; i++) {
    const prev = ranges[i - 1]!;
    const cur = ranges[i]!;
    const prevEnd = prev.offset + prev.length;
    if (cur.offset < prevEnd) {
      const what =
        cur.offset < prev.offset
          ? 'is not sorted: it starts before range ' + (i - 1)
          : `overlaps range ${i - 1}, which ends at byte ${prevEnd}`;
      throw new CommandError(
        'InvalidArguments',
        `range ${i} (offset ${cur.offset}, ${cur.length} bytes) ${what}; ranges must be sorted by offset and must not overlap, ` +
          'as `vmsubst diff` makes them: rebuild the notification from the bundle. nothing was read',
      );
    }
  }
}

/**
 * A range that does not hold the announced content: where it is, nothing of what it holds. An
 * answer never carries guest content the caller did not send (no hash of what the disk has: with
 * small ranges that would read the disk a table lookup at a time).
 */
export interface Mismatch {
  offset: number;
  length: number;
}

/** Every range is whole 4 KiB blocks: nothing smaller can be asked about. */
export const RANGE_ALIGN = 4096;

/**
 * Returns the number of bytes verified; throws VerifyMismatch naming up to 8 ranges. `observe` sees
 * every range's bytes as read (in disk order), before they are dropped: the read-back check hashes
 * the file pieces it needs from them, so nothing is read twice and nothing is kept.
 */
export async function verifyRanges(
  read: DiskReader,
  path: string,
  ranges: HashedRange[],
  observe?: (offset: number, data: Buffer) => void,
): Promise<number> {
  const mismatches: Mismatch[] = [];
  let bytes = 0;
  for (const r of ranges) {
    const data = await read(path, r.offset, r.length);
    observe?.(r.offset, data);
    const actual = createHash('sha256').update(data).digest('hex');
    bytes += r.length;
    if (actual !== r.sha256) mismatches.push({ offset: r.offset, length: r.length });
  }
  if (mismatches.length > 0) {
    const first = mismatches[0]!;
    throw new CommandError(
      'VerifyMismatch',
      `${mismatches.length} of ${ranges.length} ranges on ${path} do not hold the announced blocks ` +
        `(first at byte ${first.offset}); has the host applied the bundle? nothing was invalidated`,
      { mismatches: mismatches.slice(0, 8) },
    );
  }
  return bytes;
}
