/**
 * Bounded answers, full reports kept. A substitution touching thousands of
 * files makes a report larger than one message (MAX_MESSAGE_BYTES): sent as
 * it is, it would fail after the work was done and journaled, and every retry
 * would replay the failure. So every answer carries counts and the first
 * entries of each list, with a `truncated` marker giving the true lengths;
 * the full report is kept in the state directory (reports/ID.json, 0600,
 * written atomically) and the `report` command returns it page by page.
 */
import {
  closeSync,
  existsSync,
  fsyncSync,
  mkdirSync,
  openSync,
  readdirSync,
  readFileSync,
  renameSync,
  statSync,
  unlinkSync,
  writeSync,
} from 'node:fs';
import { join } from 'node:path';
import { CommandError } from '../errors.js';
import { MAX_REPORT_PAGE_BYTES, type ReportPage, type Truncated } from '@vmsubst/common/protocol/schema';
import { fsyncDir } from './journal.js';

/** An answer is cut until its JSON is at most this long: half the message cap, room for the envelope. */
export const REPORT_BUDGET_BYTES = 512 * 1024;
/** Full reports kept; the oldest files go first. */
export const KEEP_REPORTS = 64;

type Json = Record<string, unknown>;

/** Lists cut in an answer: path (dots into objects, [] into every element of a list) → first N kept. */
const LISTS: readonly { path: string; nested?: boolean }[] = [
  { path: 'files' },
  { path: 'files[].ranges', nested: true },
  { path: 'files[].mappers', nested: true },
  { path: 'unmapped' },
  { path: 'plan.files' },
  { path: 'plan.files[].ranges', nested: true },
  { path: 'plan.files[].mappers', nested: true },
  { path: 'plan.blocks' },
  { path: 'plan.reasons' },
  { path: 'plan.units' },
  { path: 'metadata.ranges' },
  { path: 'metadata.pinned' },
  { path: 'metadata.dentries' },
  { path: 'metadata.dentries[].names', nested: true },
  { path: 'metadata.inodes.in-use' },
  { path: 'metadata.inodes.in-use[].mappers', nested: true },
  { path: 'metadata.inodes.in-use[].reasons', nested: true },
  { path: 'pinned' },
  { path: 'restarted' },
  { path: 'customization' },
];

/** Every array found at `path` with a setter, walking [] into each element. */
function arraysAt(root: unknown, path: string): { get: () => unknown[]; set: (v: unknown[]) => void }[] {
  const steps = path.split('.');
  let holders: { obj: Json; key: string }[] = [];
  let cur: unknown[] = [root];
  for (const [i, step] of steps.entries()) {
    const each = step.endsWith('[]');
    const key = each ? step.slice(0, -2) : step;
    const next: unknown[] = [];
    holders = [];
    for (const o of cur) {
      if (o === null || typeof o !== 'object' || Array.isArray(o)) continue;
      const v = (o as Json)[key];
      if (i === steps.length - 1) {
        if (Array.isArray(v)) holders.push({ obj: o as Json, key });
      } else if (each && Array.isArray(v)) next.push(...v);
      else if (!each) next.push(v);
    }
    cur = next;
  }
  return holders.map((h) => ({ get: () => h.obj[h.key] as unknown[], set: (v) => (h.obj[h.key] = v) }));
}

/**
 * The answer for `report`: itself when its JSON fits REPORT_BUDGET_BYTES, else a copy with each
 * list cut to its first entries (fewer until it fits) and `truncated` saying what was cut.
 */
export function boundReport<T extends object>(
  report: T,
  budget = REPORT_BUDGET_BYTES,
): { answer: T; full: string; truncated: boolean } {
  const full = JSON.stringify(report);
  if (Buffer.byteLength(full) <= budget) return { answer: report, full, truncated: false };
  for (let top = 1000, nested = 32; ; top = Math.floor(top / 2), nested = Math.max(1, Math.floor(nested / 2))) {
    const copy = JSON.parse(full) as Json;
    const counts: Record<string, number> = {};
    for (const l of LISTS) {
      const limit = l.nested ? nested : top;
      for (const a of arraysAt(copy, l.path)) {
        const arr = a.get();
        if (arr.length > limit) {
          // Nested lists: the sum of the true lengths over the entries kept.
          counts[l.path] = (counts[l.path] ?? 0) + arr.length;
          a.set(arr.slice(0, limit));
        } else if (l.nested && counts[l.path] !== undefined) counts[l.path]! += arr.length;
      }
    }
    const truncated: Truncated = {
      counts,
      'report-bytes': Buffer.byteLength(full),
      detail: `lists cut to their first ${top} entries (${nested} for lists inside entries); the full report: the 'report' command (id, offset, limit) returns it in pages`,
    };
    copy['truncated'] = truncated;
    if (Buffer.byteLength(JSON.stringify(copy)) <= budget || top === 0)
      return { answer: copy as T, full, truncated: true };
  }
}

export class ReportStore {
  readonly dir: string;
  constructor(stateDir: string) {
    this.dir = join(stateDir, 'reports');
  }

  #path(id: string): string {
    if (!/^[0-9a-f]{16,64}$/.test(id))
      throw new CommandError('InvalidArguments', `report id ${id.slice(0, 80)}: not a substitution id`);
    return join(this.dir, `${id}.json`);
  }

  /** Keeps the full report of `id` (write, fsync, rename, fsync of the directory), dropping the oldest beyond KEEP_REPORTS. */
  save(id: string, full: string): void {
    mkdirSync(this.dir, { recursive: true, mode: 0o700 });
    const path = this.#path(id);
    const tmp = `${path}.tmp`;
    const fd = openSync(tmp, 'w', 0o600);
    try {
      writeSync(fd, full);
      fsyncSync(fd);
    } finally {
      closeSync(fd);
    }
    renameSync(tmp, path);
    fsyncDir(this.dir);
    const files = readdirSync(this.dir)
      .filter((f) => f.endsWith('.json'))
      .map((f) => ({ f, t: statSync(join(this.dir, f)).mtimeMs }));
    files.sort((a, b) => b.t - a.t);
    for (const { f } of files.slice(KEEP_REPORTS)) unlinkSync(join(this.dir, f));
  }

  /** One page: `limit` bytes of the report's JSON from `offset`, base64. */
  page(id: string, offset: number, limit: number): ReportPage {
    const path = this.#path(id);
    if (!existsSync(path)) {
      throw new CommandError(
        'InvalidArguments',
        `no full report is kept for ${id}: only answers that were truncated are kept, the newest ${KEEP_REPORTS}`,
      );
    }
    const bytes = readFileSync(path);
    if (offset > bytes.length)
      throw new CommandError('InvalidArguments', `offset ${offset} is past the report's end (${bytes.length} bytes)`);
    const n = Math.min(limit, MAX_REPORT_PAGE_BYTES, bytes.length - offset);
    return {
      id,
      offset,
      bytes: bytes.length,
      data: bytes.subarray(offset, offset + n).toString('base64'),
      done: offset + n >= bytes.length,
    };
  }
}
