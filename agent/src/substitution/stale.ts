/**
 * `stale`: who still runs old content. needrestart and checkrestart find
 * processes mapping a deleted or replaced file ("(deleted)" in
 * /proc/PID/maps); a block substitution keeps the inode, so they see nothing
 * when a file changes in place. This list adds what only the agent knows,
 * from its journal: the processes it pinned to an old image, and the files it
 * substituted under the `report` policy (mapped pages may mix old and new).
 *   pinned    — pinned by a substitution (journal), still alive and mapping the file;
 *   old-inode — maps an inode that is deleted, or no longer the one at its path;
 *   mixed     — maps a file the last substitution of it left under `report`.
 */
import { readdir, readFile, stat } from 'node:fs/promises';
import { join } from 'node:path';
import type { Plan, ReturnOf, StaleProcess, SubstituteReport, PrepareReport } from '@vmsubst/common/protocol/schema';
import type { JournalEntry } from '../journal/journal.js';
import { devToMapsField, findMappers } from '../proc/mappers.js';
import { restartableUnit } from './plan.js';
import type { FileHint } from '@vmsubst/common/protocol/schema';
import type { FileHit } from '../pedigree/index.js';
import { keyOf } from '../proc/mappers.js';
import { parseMountinfo, readMounts, type Mount } from '../pedigree/mounts.js';
import { overlayLowers } from './overlay.js';

/** Mappings that are not files a program runs from: shared memory, memfd, SysV segments, devices. */
const NOT_FILES = [/^\/dev\//, /^\/memfd:/, /^\/SYSV/, /^\/\[/, /^\/proc\//, /^\/sys\//];

/** The journal entries looked at: the newest first. */
const LOOK_BACK = 64;

interface PinRecord {
  pid: number;
  comm: string;
  path: string;
  id: string;
}

/** The unit a process runs in, if any (the service, a user unit, a scope), for people to read. */
export async function unitName(pid: number, procRoot: string): Promise<string | undefined> {
  const text = await readFile(`${procRoot}/${pid}/cgroup`, 'utf8').catch(() => '');
  return restartableUnit(text, '')?.unit;
}

/** Every process still running old content, from the journal's last reports and every process's mappings. */
export async function staleProcesses(entries: readonly JournalEntry[], procRoot = '/proc'): Promise<ReturnOf<'stale'>> {
  const pins: PinRecord[] = [];
  /** path → [inode, id] of the newest substitution of that path, when its policy was `report`. */
  const newestByPath = new Map<string, { ino: number; id: string; policy: string }>();
  const recent = entries.slice(0, LOOK_BACK);
  for (const e of recent) {
    const rec = e.last;
    if (rec.phase !== 'done' && rec.phase !== 'prepared') continue;
    const report = rec.report as Partial<SubstituteReport & PrepareReport>;
    for (const p of report.pinned ?? [])
      if (p.status === 'pinned') pins.push({ pid: p.pid, comm: p.comm, path: p.path, id: e.id });
    if (rec.phase !== 'done') continue;
    for (const f of (report.plan as Plan | undefined)?.files ?? []) {
      if (!newestByPath.has(f.path)) newestByPath.set(f.path, { ino: f.ino, id: e.id, policy: f.policy });
    }
  }
  const out: StaleProcess[] = [];
  const seen = new Set<string>();
  const add = (s: Omit<StaleProcess, 'unit'>): void => {
    const k = `${s.pid} ${s.file} ${s.why}`;
    if (seen.has(k)) return;
    seen.add(k);
    out.push(s);
  };
  const atPath = new Map<string, { dev: string; ino: string } | null>();
  const current = async (path: string): Promise<{ dev: string; ino: string } | null> => {
    if (!atPath.has(path)) {
      const st = await stat(path).catch(() => undefined);
      atPath.set(path, st ? { dev: devToMapsField(Number(st.dev)), ino: String(st.ino) } : null);
    }
    return atPath.get(path)!;
  };
  const ownMounts = await readMounts(procRoot).catch(() => [] as Mount[]);
  const noRootLink = new Map<string, boolean>();
  /**
   * Whether `path` (as the process's maps name it: from its own root, in its own mount namespace)
   * holds the inode the mapping names: the file at that path as the process sees it, or the lower
   * file an overlay there shows.
   */
  const holds = async (pid: number, path: string, f: { dev: string; ino: string }): Promise<boolean> => {
    const root = `${procRoot}/${pid}/root`;
    // A process in another root or mount namespace (systemd's RootDirectory=, a container) names
    // its files from there; a fake /proc of the tests has no root links: the agent's own view.
    if (!noRootLink.has(root))
      noRootLink.set(
        root,
        !(await stat(root).then(
          () => true,
          () => false,
        )),
      );
    const view = noRootLink.get(root) ? path : join(root, path);
    const now = await current(view);
    if (now !== null && now.dev === f.dev && now.ino === f.ino) return true;
    // A file opened through an overlay is mapped as its real (lower) file: the maps line has the lower
    // filesystem's device, while stat() through the overlay answers with the overlay's.
    const mounts = noRootLink.get(root)
      ? ownMounts
      : await readFile(`${procRoot}/${pid}/mountinfo`, 'utf8').then(parseMountinfo, () => ownMounts);
    for (const lower of await overlayResolver(mounts)(path)) {
      // The layer paths are the mounter's: tried as the agent sees them, then from the process's root.
      for (const candidate of noRootLink.get(root) ? [lower] : [lower, join(root, lower)]) {
        const real = await current(candidate);
        if (real !== null) return real.dev === f.dev && real.ino === f.ino;
      }
    }
    return false;
  };
  let processes = 0;
  const self = procRoot === '/proc' ? String(process.pid) : '';
  for (const name of await readdir(procRoot).catch(() => [] as string[])) {
    if (!/^\d+$/.test(name) || name === self) continue;
    const maps = await readFile(`${procRoot}/${name}/maps`, 'utf8').catch(() => undefined);
    if (maps === undefined || maps === '') continue;
    processes++;
    const pid = Number(name);
    let comm: string | undefined;
    const commOf = async (): Promise<string> =>
      (comm ??= (await readFile(`${procRoot}/${name}/comm`, 'utf8').catch(() => '?')).trim());
    const files = new Map<string, { dev: string; ino: string; deleted: boolean }>();
    for (const line of maps.split('\n')) {
      // start-end perms offset dev inode   path
      const m = /^\S+\s+\S+\s+\S+\s+(\S+)\s+(\d+)\s+(\/.*)$/.exec(line);
      if (!m || m[2] === '0') continue;
      const deleted = m[3]!.endsWith(' (deleted)');
      const path = deleted ? m[3]!.slice(0, -' (deleted)'.length) : m[3]!;
      if (NOT_FILES.some((r) => r.test(path))) continue;
      files.set(`${path}\0${m[1]}\0${m[2]}`, { dev: m[1]!, ino: m[2]!, deleted });
    }
    for (const [k, f] of files) {
      const path = k.slice(0, k.indexOf('\0'));
      if (f.deleted || !(await holds(pid, path, f))) {
        add({ pid, comm: await commOf(), file: path, why: 'old-inode' });
        continue;
      }
      const pin = pins.find((p) => p.pid === pid && p.path === path);
      if (pin && pin.comm === (await commOf())) {
        add({ pid, comm: pin.comm, file: path, why: 'pinned', substitution: pin.id });
        continue;
      }
      const sub = newestByPath.get(path);
      if (sub && sub.policy === 'report' && String(sub.ino) === f.ino)
        add({ pid, comm: await commOf(), file: path, why: 'mixed', substitution: sub.id });
    }
  }
  const withUnits: StaleProcess[] = [];
  for (const s of out.sort((a, b) => a.pid - b.pid || a.file.localeCompare(b.file))) {
    const unit = await unitName(s.pid, procRoot);
    withUnits.push({
      pid: s.pid,
      comm: s.comm,
      ...(unit !== undefined ? { unit } : {}),
      file: s.file,
      why: s.why,
      ...(s.substitution ? { substitution: s.substitution } : {}),
    });
  }
  return { processes: withUnits, sources: { substitutions: recent.length, processes } };
}

/**
 * For a path on an overlay mount that was not copied up (or created) in the upper layer: where the
 * lower layers would hold it, topmost first; none for paths on other mounts.
 */
function overlayResolver(mounts: readonly Mount[]): (path: string) => Promise<string[]> {
  const within = (path: string, dir: string): boolean => path === dir || path.startsWith(dir === '/' ? '/' : dir + '/');
  const exists = (p: string): Promise<boolean> =>
    stat(p).then(
      () => true,
      () => false,
    );
  return async (path) => {
    // The mount that holds the path: the last of the longest mount points (mounted over the others).
    let mount: Mount | undefined;
    for (const m of mounts)
      if (within(path, m.mountPoint) && (!mount || m.mountPoint.length >= mount.mountPoint.length)) mount = m;
    if (!mount || mount.fsType !== 'overlay') return [];
    const rest = path.slice(mount.mountPoint.length).replace(/^\/+/, '');
    const upper = mount.superOptions?.find((o) => o.startsWith('upperdir='))?.slice('upperdir='.length);
    if (upper !== undefined && (await exists(join(upper, rest)))) return [];
    return overlayLowers([mount], () => true).map(({ lower }) => join(lower, rest));
  };
}

/**
 * The plan's prediction for a metadata substitution: the processes mapping an inode the new tree
 * replaces. The host's hints name the new tree's files whose blocks change; a hinted path whose
 * current inode owns none of the changed blocks gets its new content in other blocks — a new inode
 * (or new extents), while the running processes keep the old one.
 */
export async function predictReplaced(
  mountPoints: readonly string[],
  hints: readonly FileHint[],
  hits: readonly FileHit[],
  procRoot: string,
): Promise<StaleProcess[]> {
  const changedInPlace = new Set(hits.map((h) => keyOf(h.file)));
  const replaced: { path: string; dev: number; ino: number }[] = [];
  for (const mp of mountPoints) {
    for (const h of hints) {
      const path = mp === '/' ? h.path : join(mp, h.path);
      const st = await stat(path).catch(() => undefined);
      if (!st?.isFile()) continue; // absent now: an added file, nobody runs it
      const key = { dev: Number(st.dev), ino: Number(st.ino) };
      if (changedInPlace.has(keyOf(key))) continue;
      replaced.push({ path, ...key });
    }
  }
  if (replaced.length === 0) return [];
  const mappers = await findMappers(replaced, procRoot);
  const out: StaleProcess[] = [];
  for (const r of replaced) {
    for (const m of mappers.get(keyOf(r)) ?? []) {
      const unit = await unitName(m.pid, procRoot);
      out.push({ pid: m.pid, comm: m.comm, ...(unit !== undefined ? { unit } : {}), file: r.path, why: 'old-inode' });
    }
  }
  return out;
}
