/**
 * Text renderings of protocol replies, shared by the agent's own CLI and the
 * host's (`vmsubst-agent stale` in the guest, `vmsubst stale --to` on the host).
 */
import type { ReturnOf } from './schema.js';

/** The `stale` reply as a table: pid, command, unit, why, file. */
export function formatStale(r: ReturnOf<'stale'>): string {
  if (r.processes.length === 0)
    return `no process runs old content (${r.sources.processes} processes, ${r.sources.substitutions} substitutions looked at)\n`;
  const rows = [
    ['PID', 'COMMAND', 'UNIT', 'WHY', 'FILE'],
    ...r.processes.map((p) => [String(p.pid), p.comm, p.unit ?? '-', p.why, p.file]),
  ];
  const w = rows[0]!.map((_, i) => Math.max(...rows.map((row) => row[i]!.length)));
  return (
    rows.map((row) => row.map((c, i) => (i === row.length - 1 ? c : c.padEnd(w[i]!))).join('  ')).join('\n') + '\n'
  );
}
