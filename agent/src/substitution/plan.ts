/**
 * The plan of a substitution: for every changed file its class, the policy
 * for the processes that map it and what that policy will do; every changed
 * block's class; whether a restart is required. A dry run returns it,
 * `prepare` acts on its pins, `commit` and `substitute` follow it.
 */
import { openChanged } from './open-changed.js';
import type {
  ByteRange,
  FileClass,
  FileHint,
  Plan,
  PlannedFile,
  PlannedMapper,
  Policies,
  Policy,
} from '@vmsubst/common/protocol/schema';
import type { FileHit } from '../pedigree/index.js';
import { Ext4Classifier } from '@vmsubst/common/pedigree/classify';
import type { DiskReader } from './verify.js';
import { restartReasons, type MetadataPlan } from './metadata.js';
import { keyOf, type MapperInfo } from '../proc/mappers.js';
import { procUsers, type FileUsers } from '../proc/users.js';
import { readAttr } from '../proc/attr.js';

/**
 * Without configuration: data files and ELF files whose code the host found unchanged are remapped;
 * ELF files whose code changed, or whose code nobody compared, are pinned: a running process holds
 * return addresses, saved instruction pointers and code pointers into the old code.
 */
export const DEFAULT_POLICIES: Readonly<Record<FileClass, Policy>> = {
  data: 'remap',
  'elf-code-unchanged': 'remap',
  'elf-code-changed': 'pin',
};

/** The class names of older hosts and configurations, applied where the new name is not given. */
const OLDER_NAME: Readonly<Partial<Record<FileClass, 'elf-same-layout' | 'elf-new-layout'>>> = {
  'elf-code-unchanged': 'elf-same-layout',
  'elf-code-changed': 'elf-new-layout',
};

/** Blocks classified one by one for the plan; beyond this a range is reported as `unknown`. */
const MAX_CLASSIFIED_BLOCKS = 1 << 16;

export interface PlanInput {
  files: FileHit[];
  unmapped: ByteRange[];
  metadata: MetadataPlan;
  /** The changed disk ranges. */
  changed: ByteRange[];
  hints: readonly FileHint[];
  /** The notification's policies, then the configuration's. */
  policies: { notification?: Policies | undefined; config?: Policies | undefined };
  diskPath: string;
  read: DiskReader;
  procRoot: string;
  /** Who maps the files (the module); default a /proc scan of procRoot. */
  users?: FileUsers;
}

export interface FilePlan {
  hit: FileHit;
  planned: PlannedFile;
}

export interface PlanResult {
  plan: Plan;
  files: FilePlan[];
  mappers: Map<string, MapperInfo[]>;
}

export async function buildPlan(input: PlanInput): Promise<PlanResult> {
  const fileHits = input.files.filter((f) => f.file.kind === 'file');
  const mappers = await (input.users ?? procUsers(input.procRoot)).mappers(fileHits.map((f) => f.file));
  const units = new Map<number, UnitVerdict | undefined>();
  const self = readAttr(`${input.procRoot}/self/cgroup`) ?? '';
  const files: FilePlan[] = [];
  for (const hit of fileHits) {
    const cls = await fileClass(hit, input.hints);
    const { policy, from } = choosePolicy(hit.file.path, relativePath(hit), cls, input.policies);
    const procs: PlannedMapper[] = [];
    for (const m of mappers.get(keyOf(hit.file)) ?? []) {
      if (!units.has(m.pid)) units.set(m.pid, await unitOf(m.pid, input.procRoot, self));
      const v = units.get(m.pid);
      procs.push({
        pid: m.pid,
        comm: m.comm,
        ...(v?.unit !== undefined ? { unit: v.unit } : {}),
        ...(v !== undefined && 'refused' in v ? { 'not-restartable': v.refused } : {}),
        'mapped-bytes': m.mappedBytes,
      });
    }
    files.push({
      hit,
      planned: {
        path: hit.file.path,
        ino: hit.file.ino,
        mount: hit.file.mount.mountPoint,
        class: cls,
        policy,
        'policy-from': from,
        action: describe(policy, procs),
        ranges: hit.ranges,
        mappers: procs,
      },
    });
  }
  const reasons = input.metadata.filesystems.flatMap((fs) => restartReasons(fs, false));
  const restartUnits = new Set<string>();
  let pinBytes = 0;
  for (const f of files) {
    for (const m of f.planned.mappers) {
      if (f.planned.policy === 'restart' && m.unit !== undefined && m['not-restartable'] === undefined)
        restartUnits.add(m.unit);
      if (f.planned.policy === 'pin') pinBytes += m['mapped-bytes'];
    }
  }
  return {
    plan: {
      files: files.map((f) => f.planned),
      blocks: await blockClasses(input),
      'restart-required': reasons.length > 0,
      reasons,
      units: [...restartUnits].sort(),
      'pin-bytes': pinBytes,
    },
    files,
    mappers,
  };
}

function relativePath(hit: FileHit): string {
  const mp = hit.file.mount.mountPoint;
  if (mp === '/') return hit.file.path;
  return hit.file.path.startsWith(mp + '/') ? hit.file.path.slice(mp.length) : hit.file.path;
}

/**
 * The host's hint decides; without one, an ELF file is taken as changed in code (the safe side). Only
 * `code-unchanged` (the host compared the executable bytes) yields remap's class: an older host's
 * `same-layout` compared headers and symbols, which stay equal when instructions move inside a function.
 */
export function hintClass(hint: FileHint): FileClass {
  if (hint.elf === undefined) return 'data';
  return hint.elf === 'code-unchanged' ? 'elf-code-unchanged' : 'elf-code-changed';
}

async function fileClass(hit: FileHit, hints: readonly FileHint[]): Promise<FileClass> {
  const rel = relativePath(hit);
  const hint = hints.find((h) => h.path === rel || h.path === hit.file.path);
  if (hint) return hintClass(hint);
  return (await isElf(hit.file.path)) ? 'elf-code-changed' : 'data';
}

async function isElf(path: string): Promise<boolean> {
  // O_NOFOLLOW|O_NONBLOCK and a regular-file check: a FIFO swapped into place must not block the queue.
  const fh = await openChanged(path, 'file').catch(() => undefined);
  if (!fh) return false;
  try {
    const buf = Buffer.alloc(4);
    const { bytesRead } = await fh.read(buf, 0, 4, 0);
    return bytesRead === 4 && buf.equals(Buffer.from([0x7f, 0x45, 0x4c, 0x46]));
  } finally {
    await fh.close();
  }
}

export function choosePolicy(
  path: string,
  rel: string,
  cls: FileClass,
  policies: PlanInput['policies'],
): { policy: Policy; from: PlannedFile['policy-from'] } {
  const byPath = (p: Policies | undefined): Policy | undefined => p?.files?.[path] ?? p?.files?.[rel];
  const n = byPath(policies.notification);
  if (n) return { policy: n, from: 'notification' };
  const c = byPath(policies.config);
  if (c) return { policy: c, from: 'config' };
  const byClass = (p: Policies | undefined): Policy | undefined => {
    const older = OLDER_NAME[cls];
    return p?.[cls] ?? (older !== undefined ? p?.[older] : undefined);
  };
  const nc = byClass(policies.notification);
  if (nc) return { policy: nc, from: 'notification' };
  const cc = byClass(policies.config);
  if (cc) return { policy: cc, from: 'config' };
  return { policy: DEFAULT_POLICIES[cls], from: 'default' };
}

function describe(policy: Policy, procs: PlannedMapper[]): string {
  const n = procs.length;
  const who = `${n} process${n === 1 ? '' : 'es'}`;
  switch (policy) {
    case 'remap':
      return n === 0
        ? 'cached pages dropped; no process maps it'
        : `cached pages dropped; ${who} fault in the new content`;
    case 'pin':
      return n === 0
        ? 'nothing to pin (no process maps it); cached pages dropped'
        : `${who} keep the old image (${procs.reduce((s, p) => s + p['mapped-bytes'], 0)} bytes mapped, copied by prepare); new execs get the new file`;
    case 'report':
      return n === 0
        ? 'cached pages dropped; no process maps it'
        : `pages nobody maps dropped; ${who} keep mapped pages that may mix old and new content: reported`;
    case 'restart': {
      const units = [
        ...new Set(procs.flatMap((p) => (p.unit !== undefined && p['not-restartable'] === undefined ? [p.unit] : []))),
      ];
      const refused = procs.filter((p) => p['not-restartable'] !== undefined);
      const loose = procs.filter((p) => p.unit === undefined && p['not-restartable'] === undefined).length;
      return (
        `cached pages dropped; ${units.length > 0 ? `units restarted: ${units.join(', ')}` : 'no unit to restart'}` +
        (refused.length > 0
          ? `; not restarted (fault in the new content): ${refused.map((p) => `pid ${p.pid}: ${p['not-restartable']}`).join('; ')}`
          : '') +
        (loose > 0 ? `; ${loose} process${loose === 1 ? '' : 'es'} outside any service fault in the new content` : '')
      );
    }
  }
}

/** The systemd cgroup path of a process from its /proc/PID/cgroup text (the v2 line, or v1's name=systemd). */
export function systemdCgroupPath(text: string): string | undefined {
  for (const line of text.split('\n')) {
    const [hier, ctrl, path] = line.split(':', 3);
    if (path === undefined) continue;
    if ((hier === '0' && ctrl === '') || ctrl === 'name=systemd') return path;
  }
  return undefined;
}

export type UnitVerdict = { unit: string } | { unit?: string; refused: string };

/**
 * Whether the `restart` policy may restart the unit a process runs in. Only system services
 * qualify: the first `*.service` directly under /system.slice (or a sub-slice of it) — not the
 * deepest component, which can be a delegated subgroup or, under user.slice, a user's own unit
 * that merely shares a system service's name. Never the agent's own unit: restarting it would kill
 * the substitution that asked for it, and the host's retry would do it again.
 */
export function restartableUnit(cgroupText: string, selfCgroupText: string): UnitVerdict | undefined {
  const path = systemdCgroupPath(cgroupText);
  if (path === undefined || path === '/' || path === '') return undefined;
  const parts = path.split('/').filter(Boolean);
  if (parts[0] !== 'system.slice') {
    const named = [...parts].reverse().find((c) => c.endsWith('.service') || c.endsWith('.scope'));
    const where = parts[0] === 'user.slice' ? 'a user session or user service' : `${parts[0]}`;
    return {
      ...(named ? { unit: named } : {}),
      refused: `runs in ${where} (cgroup ${path}), not a system service: only units under /system.slice are restarted`,
    };
  }
  let i = 1;
  while (i < parts.length && parts[i]!.endsWith('.slice')) i++;
  const unit = parts[i];
  if (unit === undefined) return undefined;
  if (!unit.endsWith('.service'))
    return { unit, refused: `runs in ${unit} (cgroup ${path}), which is not a service: a scope cannot be restarted` };
  const self = systemdCgroupPath(selfCgroupText);
  const selfUnit =
    self !== undefined
      ? ((): string | undefined => {
          const sp = self.split('/').filter(Boolean);
          if (sp[0] !== 'system.slice') return undefined;
          let j = 1;
          while (j < sp.length && sp[j]!.endsWith('.slice')) j++;
          return sp[j];
        })()
      : undefined;
  if (selfUnit === unit)
    return { unit, refused: `${unit} is the agent's own unit: restarting it would stop this substitution` };
  return { unit };
}

/** The verdict for `pid`; `self` is the agent's own /proc/self/cgroup text. */
async function unitOf(pid: number, procRoot: string, self: string): Promise<UnitVerdict | undefined> {
  const text = readAttr(`${procRoot}/${pid}/cgroup`) ?? '';
  return restartableUnit(text, self);
}

type BlockRow = Plan['blocks'][number];

/** Every changed range split by what it holds: file data, directory, ext4 metadata (block by block), free. */
async function blockClasses(input: PlanInput): Promise<BlockRow[]> {
  const rows: BlockRow[] = [];
  const clip = (start: number, length: number): ByteRange[] =>
    input.changed.flatMap((c) => {
      const a = Math.max(c.offset, start);
      const b = Math.min(c.offset + c.length, start + length);
      return b > a ? [{ offset: a, length: b - a }] : [];
    });
  for (const hit of input.files) {
    const cls = hit.file.kind === 'dir' ? 'directory' : 'file-data';
    for (const e of hit.file.extents)
      for (const r of clip(e.diskStart, e.length)) rows.push({ ...r, class: cls, mount: hit.file.mount.mountPoint });
  }
  let budget = MAX_CLASSIFIED_BLOCKS;
  const classifiers = new Map<number, Ext4Classifier | undefined>();
  for (const r of input.unmapped) {
    const fs = input.metadata.filesystems.find(
      (f) => r.offset >= f.part.startBytes && r.offset + r.length <= f.part.startBytes + f.part.sizeBytes,
    );
    if (!fs) {
      rows.push({ ...r, class: 'outside-filesystems' });
      continue;
    }
    const start = fs.part.startBytes;
    if (!classifiers.has(start))
      classifiers.set(
        start,
        await Ext4Classifier.open((o, l) => input.read(input.diskPath, o, l), start).catch(() => undefined),
      );
    const cls = classifiers.get(start);
    const bs = cls?.blockSize ?? 4096;
    if (!cls || r.length / bs > budget || (r.offset - start) % bs !== 0) {
      rows.push({ ...r, class: 'unknown', mount: fs.mountPoint });
      continue;
    }
    budget -= r.length / bs;
    for (let off = r.offset; off < r.offset + r.length; off += bs) {
      const c = await cls.classify((off - start) / bs);
      const klass = c.class === 'directory' ? 'directory' : c.class;
      const last = rows[rows.length - 1];
      if (last && last.class === klass && last.offset + last.length === off && last.mount === fs.mountPoint)
        last.length += bs;
      else rows.push({ offset: off, length: bs, class: klass, mount: fs.mountPoint });
    }
  }
  return rows.sort((a, b) => a.offset - b.offset);
}
