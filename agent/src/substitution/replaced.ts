/**
 * The `restart` policy for files a substitution replaces rather than changes
 * in place: a package manager writes X.dpkg-new and renames it over X, so a
 * running process keeps mapping the old inode (its blocks are free in the new
 * image but left as they were) and only a new exec sees the new file. Nothing
 * is written into that process, so `pin` and `remap` leave it on the old
 * version (`stale` lists it as old-inode); `restart` restarts its unit, which
 * then runs the new file.
 */
import type { FileHint, Policies, StaleProcess } from '@vmsubst/common/protocol/schema';
import { choosePolicy, hintClass, restartableUnit } from './plan.js';
import { readAttr } from '../proc/attr.js';

/**
 * The units to restart for the processes `stale` predicted on replaced files (`why: old-inode`):
 * those whose file's policy is `restart` (by path, else by the hint's class), when the unit is a
 * restartable system service. `mountPoints` are the substituted filesystems' mounts, to relate
 * each file to the hint's filesystem-relative path.
 */
export async function restartsForReplaced(
  stale: readonly StaleProcess[],
  hints: readonly FileHint[],
  mountPoints: readonly string[],
  policies: { notification?: Policies | undefined; config?: Policies | undefined },
  procRoot: string,
): Promise<string[]> {
  const self = readAttr(`${procRoot}/self/cgroup`) ?? '';
  const units = new Set<string>();
  for (const s of stale) {
    if (s.why !== 'old-inode') continue;
    const mp = [...mountPoints]
      .sort((a, b) => b.length - a.length)
      .find((m) => m === '/' || s.file.startsWith(m + '/'));
    if (mp === undefined) continue;
    const rel = mp === '/' ? s.file : s.file.slice(mp.length);
    const hint = hints.find((h) => h.path === rel || h.path === s.file);
    if (!hint) continue;
    if (choosePolicy(s.file, rel, hintClass(hint), policies).policy !== 'restart') continue;
    const v = restartableUnit(readAttr(`${procRoot}/${s.pid}/cgroup`) ?? '', self);
    if (v && !('refused' in v)) units.add(v.unit);
  }
  return [...units].sort();
}
