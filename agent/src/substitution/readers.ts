/**
 * Readers in the middle of a file. A file rewritten in place may be open by a
 * process that reads it as it runs — a shell executing a script reads it piece
 * by piece — and after the invalidation it reads on at its old offset in the
 * new content: the middle of some other line. The plan lists every process
 * that holds a changed file open without mapping it; a script being executed
 * is handled by `restart` when a systemd service owns the process, and
 * otherwise refuses that substitution in `prepare`, before anything is
 * written, unless the host forces it.
 */
import { CommandError } from '../errors.js';
import type { OpenReader } from '@vmsubst/common/protocol/schema';
import { findReaders } from '../proc/readers.js';
import { keyOf } from '../proc/mappers.js';
import { procUsers, type FileUsers } from '../proc/users.js';
import { restartableUnit } from './plan.js';
import type { PlanResult } from './plan.js';
import { readAttr } from '../proc/attr.js';

/** When the plan is made: before the host writes (dry run, prepare) or after (one-shot substitute, commit). */
export type Moment = 'before-write' | 'after-write';

/** Adds each file's open readers to the plan, with what happens to them; restartable units join `plan.units`. */
export async function addReaders(
  planned: PlanResult,
  procRoot: string,
  force: boolean,
  moment: Moment,
  users: FileUsers = procUsers(procRoot),
): Promise<void> {
  const files = planned.files.map((f) => ({ ...f.hit.file, path: f.hit.file.path }));
  const mapping = new Map([...planned.mappers].map(([k, ms]) => [k, new Set(ms.map((m) => m.pid))]));
  const readers = await findReaders(files, procRoot, mapping, () => users.openFds(files));
  if (readers.size === 0) return;
  const self = readAttr(`${procRoot}/self/cgroup`) ?? '';
  const units = new Set(planned.plan.units);
  for (const f of planned.files) {
    const list = readers.get(keyOf(f.hit.file));
    if (!list?.length) continue;
    const out: OpenReader[] = [];
    for (const r of list) {
      const verdict = restartableUnit(readAttr(`${procRoot}/${r.pid}/cgroup`) ?? '', self);
      const unit = verdict?.unit;
      const base = {
        pid: r.pid,
        comm: r.comm,
        ...(unit !== undefined ? { unit } : {}),
        fd: r.fd,
        pos: r.pos,
        script: r.script,
      };
      if (!r.script) {
        out.push({ ...base, handling: 'none', detail: `reads on from byte ${r.pos} in the new content` });
      } else if (verdict && unit !== undefined && !('refused' in verdict)) {
        units.add(unit);
        out.push({ ...base, handling: 'restart', detail: `${r.because}; ${unit} is restarted after the invalidation` });
      } else {
        const why = `${r.because}; ${verdict && 'refused' in verdict ? verdict.refused : 'no systemd service owns it'}`;
        const handling = force ? 'forced' : moment === 'before-write' ? 'refuse' : 'reads-on';
        const what = force
          ? 'forced: it reads on at that offset in the new content'
          : moment === 'before-write'
            ? 'the substitution of this file is refused (force to proceed)'
            : 'the host wrote before asking (one-shot substitute): it reads on at that offset in the new content';
        out.push({ ...base, handling, detail: `${why}; ${what}` });
      }
    }
    f.planned.readers = out;
    const scripts = out.filter((r) => r.script);
    if (scripts.length > 0) {
      f.planned.action += `; script run by ${scripts.map((r) => `${r.comm}[${r.pid}] (${r.handling}, at byte ${r.pos})`).join(', ')}`;
    }
  }
  planned.plan.units = [...units].sort();
}

/** Refuses (ScriptInUse) when a changed file is a script being executed that nothing restarts. Before anything is written. */
export function refuseScriptReaders(planned: PlanResult): void {
  const refused = planned.files.flatMap((f) =>
    (f.planned.readers ?? []).filter((r) => r.handling === 'refuse').map((r) => ({ path: f.planned.path, r })),
  );
  if (refused.length === 0) return;
  throw new CommandError(
    'ScriptInUse',
    `${refused.map(({ path, r }) => `${path} is a script being executed by ${r.comm}[${r.pid}] (fd ${r.fd} at byte ${r.pos}), which no systemd service owns`).join('; ')}: ` +
      'after the substitution it would read on at that offset in the rewritten file. nothing was written; ' +
      'stop the process (or run it under a systemd service: the restart handles it) and apply again, or force the substitution (vmsubst apply --force, notify --force)',
    { files: refused.map(({ path, r }) => ({ path, pid: r.pid, comm: r.comm, fd: r.fd, pos: r.pos })) },
  );
}
