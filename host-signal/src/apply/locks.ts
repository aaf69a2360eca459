/**
 * Who uses a file, from /proc (Linux): the POSIX/OFD locks on it
 * (/proc/locks) and the processes that have it open (/proc/PID/fd, with the
 * open flags from /proc/PID/fdinfo). QEMU takes OFD locks on single bytes
 * from 100 on (its permission bits) of every image it has open. Best effort:
 * what /proc does not show (other users' processes) is not reported.
 */
import { readFile, readdir, readlink, stat } from 'node:fs/promises';

export interface FileLock {
  kind: string;
  access: string;
  /** -1 for OFD locks, which belong to an open file description, not a process. */
  pid: number;
  start: number;
  /** Inclusive; Infinity for EOF. */
  end: number;
}

/**
 * QEMU's image locks: one byte per permission at 100 + bit and 200 + bit (block/file-posix.c), adjacent ones merged by
 * the kernel.
 */
export function isQemuLock(l: FileLock): boolean {
  return l.kind === 'OFDLCK' && l.start >= 100 && l.end < 300;
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
    const fields = line
      .trim()
      .split(/\s+/)
      .filter((f) => f !== '->');
    const [, kind, , access, pid, where, start, end] = fields;
    if (kind === undefined || access === undefined || pid === undefined || where === undefined) continue;
    const m = /^([0-9a-f]+):([0-9a-f]+):(\d+)$/.exec(where);
    if (!m) continue;
    if (BigInt(`0x${m[1]!}`) === major && BigInt(`0x${m[2]!}`) === minor && BigInt(m[3]!) === ino) {
      found.push({
        kind,
        access,
        pid: Number(pid),
        start: Number(start ?? 0),
        end: end === undefined || end === 'EOF' ? Infinity : Number(end),
      });
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

export interface FileOpener {
  pid: number;
  /** The process's command name (/proc/PID/comm). */
  comm: string;
  /** Opened with O_DIRECT: its I/O bypasses the host page cache. */
  direct: boolean;
  writable: boolean;
}

const O_ACCMODE = 0o3;
const O_DIRECT = 0o40000;

/** Processes (other than this one) that have the file open. */
export async function fileOpeners(path: string, proc = '/proc'): Promise<FileOpener[]> {
  const st = await stat(path, { bigint: true });
  const want = `${st.dev}:${st.ino}`;
  let pids: string[];
  try {
    pids = (await readdir(proc)).filter((p) => /^\d+$/.test(p) && Number(p) !== process.pid);
  } catch {
    return [];
  }
  const out: FileOpener[] = [];
  for (const pid of pids) {
    let fds: string[];
    try {
      fds = await readdir(`${proc}/${pid}/fd`);
    } catch {
      continue; // gone, or another user's
    }
    let found: FileOpener | undefined;
    for (const fd of fds) {
      try {
        const link = await readlink(`${proc}/${pid}/fd/${fd}`);
        if (!link.startsWith('/')) continue;
        const s = await stat(`${proc}/${pid}/fd/${fd}`, { bigint: true });
        if (`${s.dev}:${s.ino}` !== want) continue;
        const info = await readFile(`${proc}/${pid}/fdinfo/${fd}`, 'utf8');
        const flags = parseInt(/^flags:\s*([0-7]+)/m.exec(info)?.[1] ?? '0', 8);
        found ??= {
          pid: Number(pid),
          comm: (await readFile(`${proc}/${pid}/comm`, 'utf8').catch(() => '?')).trim(),
          direct: false,
          writable: false,
        };
        found.direct ||= (flags & O_DIRECT) !== 0;
        found.writable ||= (flags & O_ACCMODE) !== 0;
      } catch {
        continue;
      }
    }
    if (found) out.push(found);
  }
  return out;
}
