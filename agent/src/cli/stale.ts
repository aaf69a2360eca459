/**
 * `vmsubst-agent stale [--json]`: the processes that still run old content
 * (substitution/stale.ts), read from the journal without the daemon.
 */
import { parseArgs } from 'node:util';
import { messageOf } from '../errors.js';
import type { ReturnOf } from '@vmsubst/common/protocol/schema';
import type { JournalEntry } from '../journal/journal.js';
import { staleProcesses } from '../substitution/stale.js';
import { formatStale } from '@vmsubst/common/protocol/format';

export const STALE_USAGE = `Usage: vmsubst-agent stale [--json] [--state-dir DIR]

Lists every process that still runs old content: pid, command, systemd unit,
file and why — pinned (given private copies of the old image by a substitution),
old-inode (maps a deleted inode, or one no longer at its path), mixed (maps a
file substituted under the 'report' policy: old and new pages may mix).
needrestart cannot see a substitution that keeps the inode; this reads the
agent's journal for the pins and the 'report' policy.
Exit status: 0 (listed or not), 2 usage error.
`;

export async function staleCommand(
  argv: string[],
  out: (s: string) => void,
  readJournal: (stateDir: string | undefined) => { entries: JournalEntry[]; close(): void },
): Promise<number> {
  let values;
  try {
    ({ values } = parseArgs({
      args: argv,
      strict: true,
      options: { json: { type: 'boolean' }, 'state-dir': { type: 'string' }, help: { type: 'boolean', short: 'h' } },
    }));
  } catch (e) {
    out(`vmsubst-agent stale: ${messageOf(e)}\n\n${STALE_USAGE}`);
    return 2;
  }
  if (values.help) {
    out(STALE_USAGE);
    return 0;
  }
  const j = readJournal(values['state-dir']);
  let r: ReturnOf<'stale'>;
  try {
    r = await staleProcesses(j.entries);
  } finally {
    j.close();
  }
  out(values.json ? JSON.stringify(r, null, 2) + '\n' : formatStale(r));
  return 0;
}
