/**
 * Checks that the guest really sees the new blocks: reads each range with
 * O_DIRECT (past the guest's own caches, from the virtual disk) and compares
 * its sha256 with the notification. A mismatch stops the substitution before
 * anything is invalidated.
 */
import { createHash } from 'node:crypto';
import { CommandError } from '../errors.js';
import type { HashedRange } from '../protocol/schema.js';

export type DiskReader = (path: string, offset: number, length: number) => Promise<Buffer>;

export async function hashRange(read: DiskReader, path: string, r: { offset: number; length: number }): Promise<string> {
  return createHash('sha256').update(await read(path, r.offset, r.length)).digest('hex');
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

/** Returns the number of bytes verified; throws VerifyMismatch naming up to 8 ranges. */
export async function verifyRanges(read: DiskReader, path: string, ranges: HashedRange[]): Promise<number> {
  const mismatches: Mismatch[] = [];
  let bytes = 0;
  for (const r of ranges) {
    const actual = await hashRange(read, path, r);
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
