/**
 * Who holds POSIX/OFD locks on a file, from /proc/locks (Linux). QEMU takes
 * OFD byte-range locks on every image it has open, so a lock on an image is
 * the sign that a hypervisor is using it. Best effort: where /proc/locks is
 * unreadable, nothing is reported.
 */
import { readFile, stat } from 'node:fs/promises';

export interface FileLock {
  kind: string;
  access: string;
  /** -1 for OFD locks, which belong to an open file description, not a process. */
  pid: number;
}

/** Linux major()/minor() of a st_dev. */
function devParts(dev: bigint): { major: bigint; minor: bigint } {
  return {
    major: ((dev >> 8n) & 0xfffn) | ((dev >> 32n) & ~0xfffn),
    minor: (dev & 0xffn) | ((dev >> 12n) & ~0xffn),
  };
}

/** Parses /proc/locks text; returns the locks on the inode `dev`/`ino`. */
export function locksOn(procLocks: string, dev: bigint, ino: bigint): FileLock[] {
  const { major, minor } = devParts(dev);
  const found: FileLock[] = [];
  for (const line of procLocks.split('\n')) {
    // "1: OFDLCK ADVISORY  READ  -1 fd:01:1837 100 100"; blocked waiters carry a "->" token.
    const fields = line.trim().split(/\s+/).filter((f) => f !== '->');
    const [, kind, , access, pid, where] = fields;
    if (kind === undefined || access === undefined || pid === undefined || where === undefined) continue;
    const m = /^([0-9a-f]+):([0-9a-f]+):(\d+)$/.exec(where);
    if (!m) continue;
    if (BigInt(`0x${m[1]!}`) === major && BigInt(`0x${m[2]!}`) === minor && BigInt(m[3]!) === ino) {
      found.push({ kind, access, pid: Number(pid) });
    }
  }
  return found;
}

export async function fileLocks(path: string, procLocksPath = '/proc/locks'): Promise<FileLock[]> {
  let text: string;
  try {
    text = await readFile(procLocksPath, 'utf8');
  } catch {
    return [];
  }
  const st = await stat(path, { bigint: true });
  return locksOn(text, st.dev, st.ino);
}
