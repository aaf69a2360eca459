/**
 * Who uses a changed file: the processes that map it, and the descriptors other processes hold on
 * it. From /proc that is a pass over every process (each one's maps, each descriptor), whose cost
 * grows with the processes that have nothing to do with the substitution. With the module it is
 * one reverse-map walk per file (QUERY_MAPPERS: the file's own mappings only) and one pass of the
 * kernel over the descriptor tables for all files at once (QUERY_OPENERS).
 */
import { openChanged } from '../substitution/open-changed.js';
import { findMappers, keyOf, type FileKey, type MapperInfo } from './mappers.js';
import { scanOpenFds, type OpenFd } from './readers.js';

export interface UsedFile extends FileKey {
  path: string;
  /** Bytes: the mappings asked about are those of [0, size). */
  size?: number;
}

export interface FileUsers {
  /** Where the answers come from: the module, or a scan of /proc. */
  readonly source: 'module' | 'proc';
  mappers(files: readonly UsedFile[]): Promise<Map<string, MapperInfo[]>>;
  openFds(files: readonly UsedFile[]): Promise<Map<string, OpenFd[]>>;
}

/** The module's two questions, as the agent asks them (system.ts wires the device). */
export interface UsersOps {
  /** Every mapping of [0, length) of the open file: its owner (pid 0: unknown), and its bounds. */
  queryMappers(fd: number, length: number): Promise<{ pid: number; comm: string; start: number; end: number }[]>;
  /** The descriptors other processes hold on the open files; `file` indexes `fds`. */
  queryOpeners(
    fds: readonly number[],
  ): Promise<{ pid: number; comm: string; file: number; fd: number; pos: number; flags: number }[]>;
  /** Most files per queryOpeners call. */
  readonly maxFiles: number;
}

/** The /proc scan: what works without the module, and on a fake /proc in tests. */
export function procUsers(procRoot = '/proc'): FileUsers {
  return {
    source: 'proc',
    mappers: (files) => findMappers([...files], procRoot),
    openFds: (files) => scanOpenFds(files, procRoot),
  };
}

/** Largest length a file is asked about when its size is not indexed (the kernel clamps at EOF). */
const WHOLE_FILE = Number.MAX_SAFE_INTEGER;

/**
 * The module's answers, by the indexed inode: each file is opened by its path and checked to be
 * that inode. A file that cannot be opened so, or a mapping whose owner the kernel cannot name
 * (no CONFIG_MEMCG), sends that question to /proc instead: never a silently shorter answer.
 */
export function moduleUsers(ops: UsersOps, fallback: FileUsers): FileUsers {
  async function withOpen<T>(
    files: readonly UsedFile[],
    ask: (fds: number[]) => Promise<T | undefined>,
  ): Promise<T | undefined> {
    const handles = [];
    try {
      for (const f of files) handles.push(await openChanged(f.path, 'file', { dev: f.dev, ino: f.ino }));
    } catch {
      for (const h of handles) await h.close();
      return undefined;
    }
    try {
      // An older module (ENOTTY), none at all (ENOENT): /proc answers.
      return await ask(handles.map((h) => h.fd)).catch(() => undefined);
    } finally {
      for (const h of handles) await h.close();
    }
  }

  return {
    source: 'module',
    async mappers(files) {
      if (files.length === 0) return new Map();
      const out = await withOpen(files, async (fds) => {
        const result = new Map<string, MapperInfo[]>();
        for (const [i, f] of files.entries()) {
          const byPid = new Map<number, MapperInfo>();
          for (const m of await ops.queryMappers(fds[i]!, f.size ?? WHOLE_FILE)) {
            if (m.pid <= 0) return undefined;
            const e = byPid.get(m.pid) ?? { pid: m.pid, comm: m.comm, mappedBytes: 0 };
            e.mappedBytes += m.end - m.start;
            byPid.set(m.pid, e);
          }
          result.set(
            keyOf(f),
            [...byPid.values()].sort((a, b) => a.pid - b.pid),
          );
        }
        return result;
      });
      return out ?? fallback.mappers(files);
    },
    async openFds(files) {
      if (files.length === 0) return new Map();
      const out = await withOpen(files, async (fds) => {
        const result = new Map<string, OpenFd[]>();
        for (let at = 0; at < files.length; at += ops.maxFiles) {
          const batch = fds.slice(at, at + ops.maxFiles);
          for (const o of await ops.queryOpeners(batch)) {
            const key = keyOf(files[at + o.file]!);
            const list = result.get(key) ?? [];
            list.push({ pid: o.pid, comm: o.comm, fd: o.fd, pos: o.pos, flags: o.flags });
            result.set(key, list);
          }
        }
        return result;
      });
      return out ?? fallback.openFds(files);
    },
  };
}
