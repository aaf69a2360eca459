/**
 * Pinning: give every process that maps a file privately its own copy of the
 * mapped pages, while the disk still holds the old blocks, so that it keeps
 * running a consistent old image after a substitution while new execs get the
 * new file. The `prepare` phase of a two-phase substitution pins the processes
 * whose policy is `pin`; `vmsubst-agent pin FILE…` (cli/pin.ts) does it by hand.
 */
import { open } from 'node:fs/promises';
import type { KmodDevice, PinCursor } from '../native/index.js';

/** Pages copied per ioctl call; the loop continues while the module reports more work. */
const PAGES_PER_CALL = 4096;
/**
 * A bound on calls per file (4096 pages or 65,536 mappings each), so a file mapped by ever more
 * processes cannot keep us here; reaching it is reported (`complete: false`), never silent.
 */
export const MAX_PIN_CALLS = 1024;

/** A process that keeps a mapping of the file without (all of) its own copy, and why. */
export interface NotPinned {
  pid: number;
  comm: string;
  reason: 'shared' | 'failed' | 'exited' | 'not-reached';
  detail: string;
}

export interface PinReport {
  path: string;
  /** Every process with a private mapping the module visited; `bytes-private` is at least what was private before. */
  processes: {
    pid: number;
    comm: string;
    'bytes-copied': number;
    'bytes-private': number;
    'bytes-failed': number;
    exited: boolean;
  }[];
  'bytes-copied': number;
  'shared-unpinned': { pid: number; comm: string }[];
  /** Private mappings the module finished, over all calls (each once when it can resume). */
  mappings: number;
  /** PIN_MAPPERS calls made. */
  calls: number;
  /** Every private mapping was visited; false: some were not reached, see `not-pinned`. */
  complete: boolean;
  /** Every mapper that does not have all of its own copy: shared, failed pages, exited, not reached. */
  'not-pinned': NotPinned[];
}

/** What pinFile needs of the kmod's device (injectable for tests). */
export type PinNative = Pick<KmodDevice, 'pinMappers' | 'queryMappers' | 'features'>;

export interface PinOptions {
  /** Whether the module resumes with a cursor (kmod feature 'pinCursor'); asked of the module when absent. */
  resumable?: boolean;
  /** Bound on calls; default MAX_PIN_CALLS. */
  maxCalls?: number;
}

/**
 * Pins every private mapper of `path`: PIN_MAPPERS until neither BUDGET nor TRUNCATED, each call
 * resuming after the previous one's cursor, so that mappers beyond the first
 * VMSUBST_PIN_VMAS_MAX mappings are reached too. A module without the cursor (older than 0.3.0)
 * restarts at the first mapping every call: TRUNCATED then cannot be cleared, and the loop stops.
 * When the loop stops short, the private mappers not reached are named (from QUERY_MAPPERS).
 */
export async function pinFile(native: PinNative, path: string, options: PinOptions = {}): Promise<PinReport> {
  const resumable = options.resumable ?? native.features().includes('pinCursor');
  const maxCalls = options.maxCalls ?? MAX_PIN_CALLS;
  const fh = await open(path, 'r');
  try {
    const size = BigInt((await fh.stat()).size);
    const length = size > 0n ? size : 1n;
    const procs = new Map<number, PinReport['processes'][number]>();
    const shared = new Map<number, string>();
    let copied = 0;
    let mappings = 0;
    let calls = 0;
    // PIN_CURSOR_START of the facade, restated so that importing this file does not load the addon.
    let cursor: PinCursor | undefined = resumable ? { mm: 0n, addr: 0n } : undefined;
    let incomplete = '';
    for (;;) {
      if (calls >= maxCalls) {
        incomplete = `stopped after ${calls} calls with work left`;
        break;
      }
      const r = await native.pinMappers(fh.fd, 0n, length, { maxPages: PAGES_PER_CALL, ...(cursor ? { cursor } : {}) });
      calls++;
      copied += Number(r.bytesCopied);
      mappings += r.mappings;
      for (const p of r.pinned) {
        const e = procs.get(p.pid) ?? {
          pid: p.pid,
          comm: p.comm,
          'bytes-copied': 0,
          'bytes-private': 0,
          'bytes-failed': 0,
          exited: false,
        };
        e['bytes-copied'] += Number(p.bytesCopied);
        e['bytes-private'] = Math.max(e['bytes-private'], Number(p.bytesPrivate));
        e['bytes-failed'] += Number(p.bytesFailed);
        e.exited ||= p.exited;
        procs.set(p.pid, e);
      }
      for (const m of r.unpinned) shared.set(m.pid, m.comm);
      if (r.cursor) cursor = r.cursor;
      if (!r.budgetExhausted && !r.truncated) break;
      if (!r.budgetExhausted && !resumable) {
        incomplete = 'the module cannot resume past its first VMSUBST_PIN_VMAS_MAX mappings (no pinCursor feature)';
        break;
      }
    }
    const notPinned: NotPinned[] = [];
    for (const [pid, comm] of shared)
      notPinned.push({ pid, comm, reason: 'shared', detail: 'maps the file shared: cannot be pinned' });
    for (const p of procs.values()) {
      if (p.exited)
        notPinned.push({ pid: p.pid, comm: p.comm, reason: 'exited', detail: 'exited before it could be pinned' });
      else if (p['bytes-failed'] > 0)
        notPinned.push({
          pid: p.pid,
          comm: p.comm,
          reason: 'failed',
          detail: `${p['bytes-failed']} bytes could not be copied`,
        });
    }
    if (incomplete) {
      const q = await native.queryMappers(fh.fd, 0n, length);
      const named = new Set(procs.keys());
      for (const m of q.mappers) {
        if (m.shared || named.has(m.pid)) continue;
        named.add(m.pid);
        notPinned.push({ pid: m.pid, comm: m.comm, reason: 'not-reached', detail: incomplete });
      }
      if (q.mappersTotal > BigInt(q.mappers.length)) {
        notPinned.push({
          pid: 0,
          comm: '',
          reason: 'not-reached',
          detail: `${incomplete}; ${q.mappersTotal - BigInt(q.mappers.length)} more mappings not listed`,
        });
      }
    }
    return {
      path,
      processes: [...procs.values()],
      'bytes-copied': copied,
      'shared-unpinned': [...shared].map(([pid, comm]) => ({ pid, comm })),
      mappings,
      calls,
      complete: incomplete === '',
      'not-pinned': notPinned,
    };
  } finally {
    await fh.close();
  }
}
