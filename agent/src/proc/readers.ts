/**
 * Processes that hold a changed file open without mapping it: found by
 * (device, inode) through /proc/PID/fd, with the fd's position from
 * /proc/PID/fdinfo. A file rewritten in place is read on from that position
 * in the new content after the invalidation — harmless for a log reader, but
 * a shell executing a script reads it piece by piece, and continues at its old
 * offset in the new text.
 */
import { readdir, readFile, readlink, stat } from 'node:fs/promises';
import { basename, resolve } from 'node:path';
import { keyOf, type FileKey } from './mappers.js';

/** Interpreters that read their script as they run it (a shell reads the next command when it needs it). */
const SHELLS = new Set(['sh', 'ash', 'bash', 'dash', 'ksh', 'mksh', 'zsh', 'hush', 'busybox']);

export interface FileReader {
  pid: number;
  comm: string;
  fd: number;
  pos: number;
  /** The file is the script the process executes. */
  script: boolean;
  /** Why it counts as the process's script. */
  because?: string;
}

/** Parses /proc/PID/fdinfo/FD: its position and open flags (octal). */
export function parseFdinfo(text: string): { pos: number; flags: number } {
  const pos = /^pos:\s*(\d+)/m.exec(text);
  const flags = /^flags:\s*([0-7]+)/m.exec(text);
  return { pos: pos ? Number(pos[1]) : 0, flags: flags ? parseInt(flags[1]!, 8) : 0 };
}

/**
 * Whether the open file is the script the process runs: the kernel named the process after it (a
 * `#!` exec: comm is the script's name), a shell's command line names it (`sh /path/script`), or a
 * shell holds it read-only with a position past its start (it has read into it and will read on).
 * Other programs naming a file (`tail -f FILE`, `less FILE`) read data, not code.
 */
export function isScript(
  args: readonly string[],
  cwd: string | undefined,
  path: string,
  comm: string,
  exe: string | undefined,
  fdinfo: { pos: number; flags: number },
): string | undefined {
  const readOnly = (fdinfo.flags & 3) === 0;
  if (!readOnly) return undefined;
  // comm is cut at 15 bytes.
  if (
    comm.length > 0 &&
    basename(path).slice(0, 15) === comm &&
    args.slice(1).some((a) => a === path || (cwd !== undefined && resolve(cwd, a) === path))
  ) {
    return `it runs ${path} (a #! script: the process is named after it)`;
  }
  const shell = SHELLS.has(comm) || (exe !== undefined && SHELLS.has(basename(exe)));
  if (!shell) return undefined;
  for (const a of args.slice(1)) {
    if (a === '' || a.startsWith('-')) continue;
    if (a === path || (cwd !== undefined && resolve(cwd, a) === path))
      return `its command line (${comm}) names ${path}`;
  }
  if (fdinfo.pos > 0) return `a shell (${comm}) holds it open read-only at byte ${fdinfo.pos}`;
  return undefined;
}

/** A descriptor of a process that refers to a file; `flags` are its open flags. */
export interface OpenFd {
  pid: number;
  comm: string;
  fd: number;
  pos: number;
  flags: number;
}

/**
 * For each file (by dev:ino), the descriptors other processes hold on it, from /proc: one pass over
 * every process; an fd is stat'ed only when its link is a path. The module answers the same question
 * without the per-descriptor cost (users.ts).
 */
export async function scanOpenFds(files: readonly FileKey[], procRoot = '/proc'): Promise<Map<string, OpenFd[]>> {
  const wanted = new Set(files.map(keyOf));
  const out = new Map<string, OpenFd[]>();
  if (wanted.size === 0) return out;
  const self = procRoot === '/proc' ? String(process.pid) : '';
  for (const pid of await readdir(procRoot).catch(() => [] as string[])) {
    if (!/^\d+$/.test(pid) || pid === self) continue;
    const fds = await readdir(`${procRoot}/${pid}/fd`).catch(() => [] as string[]);
    let comm: string | undefined;
    for (const fd of fds) {
      const link = await readlink(`${procRoot}/${pid}/fd/${fd}`).catch(() => '');
      if (!link.startsWith('/')) continue; // sockets, pipes, anon inodes
      const st = await stat(`${procRoot}/${pid}/fd/${fd}`).catch(() => undefined);
      if (!st || !st.isFile()) continue;
      const key = keyOf({ dev: Number(st.dev), ino: Number(st.ino) });
      if (!wanted.has(key)) continue;
      const info = parseFdinfo(await readFile(`${procRoot}/${pid}/fdinfo/${fd}`, 'utf8').catch(() => ''));
      comm ??= (await readFile(`${procRoot}/${pid}/comm`, 'utf8').catch(() => '?')).trim();
      const list = out.get(key) ?? [];
      list.push({ pid: Number(pid), comm, fd: Number(fd), pos: info.pos, flags: info.flags });
      out.set(key, list);
    }
  }
  return out;
}

/**
 * For each file (by dev:ino), the processes with an fd open on it, except `skip` (pids that map it:
 * the policies handle those), and whether each runs the file as its script. `openFds` finds the
 * descriptors (the module, or the /proc scan); only their processes' command lines are read.
 */
export async function findReaders(
  files: readonly (FileKey & { path: string })[],
  procRoot = '/proc',
  skip: ReadonlyMap<string, ReadonlySet<number>> = new Map(),
  openFds: (files: readonly FileKey[]) => Promise<Map<string, OpenFd[]>> = (f) => scanOpenFds(f, procRoot),
): Promise<Map<string, FileReader[]>> {
  const out = new Map<string, FileReader[]>();
  if (files.length === 0) return out;
  const found = await openFds(files);
  for (const file of files) {
    const key = keyOf(file);
    for (const o of found.get(key) ?? []) {
      if (skip.get(key)?.has(o.pid)) continue;
      const dir = `${procRoot}/${o.pid}`;
      const args = (await readFile(`${dir}/cmdline`, 'utf8').catch(() => '')).split('\0');
      const cwd = await readlink(`${dir}/cwd`).catch(() => undefined);
      const exe = await readlink(`${dir}/exe`).catch(() => undefined);
      const because = isScript(args, cwd, file.path, o.comm, exe, { pos: o.pos, flags: o.flags });
      const list = out.get(key) ?? [];
      list.push({
        pid: o.pid,
        comm: o.comm,
        fd: o.fd,
        pos: o.pos,
        script: because !== undefined,
        ...(because ? { because } : {}),
      });
      out.set(key, list);
    }
  }
  return out;
}
