/**
 * `vmsubst-agent status`: what this guest can do and what it did — agent and
 * module versions, and the last substitutions from the journal. Reads the
 * journal file and the module directly; the daemon need not be running.
 */
import { parseArgs } from 'node:util';
import { messageOf } from '../errors.js';
import { AGENT_VERSION } from '../agent.js';
import { DEFAULT_STATE_DIR } from '../config.js';
import { Journal, type JournalEntry } from '../journal/journal.js';

export const STATUS_USAGE = `Usage: vmsubst-agent status [--json] [--state-dir DIR] [--kmod-device PATH] [--last N]

Shows the agent and kernel module versions and the last substitutions with their outcome.
Exit status: 0 all fine, 1 the module is unavailable, 2 the last substitution failed or was interrupted.
`;

interface Status {
  agent: { version: string };
  module: { loaded: true; abiVersion: number; features: string; version: string } | { loaded: false; reason: string };
  journal: string;
  /** Lines of the journal that are not records (reported, never dropped silently), and lines earlier compactions quarantined. */
  'journal-problems': {
    corrupt: { line: number; reason: string; excerpt: string }[];
    'torn-tail-bytes': number;
    quarantined: number;
    'quarantine-file': string;
  };
  substitutions: { id: string; state: JournalEntry['state']; time: string; files?: number; error?: string }[];
}

export async function status(argv: string[], out: (s: string) => void): Promise<number> {
  const { values } = parseArgs({
    args: argv,
    strict: true,
    options: {
      json: { type: 'boolean' },
      'state-dir': { type: 'string' },
      'kmod-device': { type: 'string' },
      last: { type: 'string' },
      help: { type: 'boolean', short: 'h' },
    },
  });
  if (values.help) {
    out(STATUS_USAGE);
    return 0;
  }
  // Read-only: the daemon may be appending; only the daemon cuts a torn tail.
  const journal = Journal.read(values['state-dir'] ?? DEFAULT_STATE_DIR);
  const last = Math.max(1, Math.min(1000, Number(values.last ?? 10) || 10));
  let module: Status['module'];
  try {
    const native = await import('../native/index.js');
    const device = new native.KmodDevice(values['kmod-device'] ?? native.DEFAULT_KMOD_DEVICE);
    let v: import('../native/index.js').VersionInfo;
    try {
      v = device.version();
    } finally {
      device.close();
    }
    module = {
      loaded: true,
      abiVersion: v.abiVersion,
      features: `0x${v.features.toString(16)}`,
      version: v.moduleVersion,
    };
  } catch (e) {
    module = { loaded: false, reason: messageOf(e) };
  }
  const s: Status = {
    agent: { version: AGENT_VERSION },
    module,
    journal: journal.path,
    'journal-problems': {
      corrupt: journal.corrupt.map(({ line, reason, excerpt }) => ({ line, reason, excerpt })),
      'torn-tail-bytes': journal.tornBytes,
      quarantined: journal.quarantined(),
      'quarantine-file': journal.quarantinePath,
    },
    substitutions: journal.recent(last).map((e) => {
      const base = { id: e.id, state: e.state, time: e.last.t };
      if (e.last.phase === 'done')
        return { ...base, files: ((e.last.report as { files?: unknown[] }).files ?? []).length };
      if (e.last.phase === 'failed') return { ...base, error: `${e.last.error.class}: ${e.last.error.desc}` };
      return base;
    }),
  };
  journal.close();
  if (values.json) {
    out(JSON.stringify(s, null, 2) + '\n');
  } else {
    out(`agent   vmsubst-agent ${s.agent.version}\n`);
    out(
      s.module.loaded
        ? `module  vmsubst.ko ${s.module.version} (ABI ${s.module.abiVersion}, features ${s.module.features})\n`
        : `module  unavailable: ${s.module.reason}\n`,
    );
    out(`journal ${s.journal}\n`);
    const jp = s['journal-problems'];
    for (const c of jp.corrupt)
      out(
        `journal CORRUPT line ${c.line}: ${c.reason} (${JSON.stringify(c.excerpt)}); the record is unreadable: its substitution's outcome is unknown, check it on the host\n`,
      );
    if (jp['torn-tail-bytes'] > 0)
      out(
        `journal torn last line (${jp['torn-tail-bytes']} bytes, a write cut short); the agent cuts it at its next start\n`,
      );
    if (jp.quarantined > 0)
      out(`journal ${jp.quarantined} corrupt line(s) moved to ${jp['quarantine-file']} by compaction\n`);
    if (s.substitutions.length === 0) out('no substitutions yet\n');
    for (const x of s.substitutions) {
      out(
        `${x.time}  ${x.id.slice(0, 16)}  ${x.state.padEnd(11)}  ${x.files !== undefined ? `${x.files} file(s)` : (x.error ?? '')}\n`,
      );
    }
  }
  if (!s.module.loaded) return 1;
  const newest = s.substitutions[0];
  return newest && (newest.state === 'failed' || newest.state === 'interrupted') ? 2 : 0;
}
