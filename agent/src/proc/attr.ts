/** Attributes the kernel makes in memory: sysfs and small procfs files. */
import { readFileSync } from 'node:fs';

/**
 * A sysfs or procfs attribute, trimmed; undefined when it cannot be read. Synchronous on purpose:
 * the kernel makes these few bytes in memory, and one open/read/close costs far less than the four
 * thread-pool round trips of fs/promises' readFile, of which a substitution's mapping made dozens
 * (most of its map stage under TCG).
 */
export function readAttr(path: string): string | undefined {
  try {
    return readFileSync(path, 'utf8').trim();
  } catch {
    return undefined;
  }
}

/** readAttr of an attribute that must be there: its absence is an error. */
export function needAttr(path: string): string {
  const v = readAttr(path);
  if (v === undefined) throw new Error(`${path} cannot be read`);
  return v;
}
