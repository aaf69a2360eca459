/** How the agent's plan and report read for people (notify, apply --notify, plan, rollout). */
import type { Plan, SubstituteReport } from '@vmsubst/common/protocol/schema';
import { NOT_TOLD, type AgentOutcome, type GuestStatus } from '../apply/index.js';
import type { AgentFields } from './output.js';
import { formatBytes, plural, table } from './format.js';

export function formatPlan(plan: Plan): string {
  const lines: string[] = [];
  if (plan.files.length > 0) {
    const rows = [['file', 'class', 'policy', 'processes', 'what happens']];
    for (const f of plan.files) {
      const procs = f.mappers.map((m) => `${m.comm}[${m.pid}]${m.unit ? ` (${m.unit})` : ''}`).join(', ') || '-';
      rows.push([
        f.path,
        f.class,
        `${f.policy}${f['policy-from'] === 'default' ? '' : ` (${f['policy-from']})`}`,
        procs,
        f.action,
      ]);
    }
    lines.push(table(rows));
    for (const f of plan.files) {
      for (const r of f.readers ?? [])
        lines.push(
          `open by ${r.comm}[${r.pid}]${r.unit ? ` (${r.unit})` : ''}: ${f.path} fd ${r.fd} at byte ` +
            `${r.pos}${r.script ? ', its script' : ''}: ${r.handling}${r.detail ? ` (${r.detail})` : ''}`,
        );
    }
  } else {
    lines.push('no file data changes');
  }
  const byClass = new Map<string, number>();
  for (const b of plan.blocks) byClass.set(b.class, (byClass.get(b.class) ?? 0) + b.length);
  lines.push(`blocks: ${[...byClass].map(([c, n]) => `${c} ${formatBytes(n)}`).join(', ') || 'none'}`);
  if (plan['pin-bytes'] > 0) lines.push(`pinning copies ${formatBytes(plan['pin-bytes'])} of mapped pages`);
  if (plan.units.length > 0) lines.push(`units to restart: ${plan.units.join(', ')}`);
  for (const p of plan.stale ?? [])
    lines.push(
      `will still run old content: ${p.comm}[${p.pid}]${p.unit ? ` (${p.unit})` : ''} maps ${p.file} (${p.why}: ` +
        `the new tree replaces it)`,
    );
  lines.push(plan['restart-required'] ? `RESTART REQUIRED: ${plan.reasons.join('; ')}` : 'no restart required');
  return lines.join('\n');
}

export function formatReport(report: SubstituteReport): string {
  const t = report['timings-ms'];
  if (report['dry-run'] && report.plan) return `plan for ${report.device}:\n${formatPlan(report.plan)}`;
  const lines = [
    `${report.replayed ? 'already done (answered from the journal): ' : ''}verified ` +
      `${formatBytes(report['verified-bytes'])} on ${report.device}; ` +
      (report.truncated?.counts['files'] !== undefined
        ? `${plural(report.truncated.counts['files'], 'file')} affected (the answer lists the first ` +
          `${report.files.length}; the agent keeps the full report, ` +
          `${formatBytes(report.truncated['report-bytes'])}, for the 'report' command)`
        : `${plural(report.files.length, 'file')} affected`),
  ];
  for (const f of report.files) {
    const policy = report.plan?.files.find((p) => p.path === f.path)?.policy;
    const mappers = f.mappers.length > 0 ? `; mapped by ${f.mappers.map((m) => `${m.comm}[${m.pid}]`).join(', ')}` : '';
    lines.push(
      `  ${f.path}: ${f['pages-dropped']} pages dropped, ${f['pages-kept']} ` +
        `kept${policy ? ` (policy ${policy})` : ''}${mappers}`,
    );
  }
  for (const p of report.pinned ?? [])
    lines.push(
      `  pinned ${p.comm}[${p.pid}] on the old ${p.path}: ${formatBytes(p['bytes-copied'])} copied ` +
        `(${p.status}${p.detail ? `: ${p.detail}` : ''})`,
    );
  for (const r of report.restarted ?? [])
    lines.push(`  restart ${r.unit}: ${r.status}${r.detail ? ` (${r.detail})` : ''}`);
  for (const f of report.plan?.files ?? []) {
    for (const r of f.readers ?? [])
      if (r.script)
        lines.push(
          `  ${f.path} is the script of ${r.comm}[${r.pid}] (fd ${r.fd} at byte ${r.pos}): ` +
            `${r.handling}${r.detail ? ` (${r.detail})` : ''}`,
        );
  }
  if (report.unmapped.length > 0)
    lines.push(`${plural(report.unmapped.length, 'range')} outside any file's data (metadata or free space)`);
  const rb = report.readback;
  if (rb) {
    lines.push(
      `read back ${formatBytes(rb.bytes)} of ${plural(rb.files, 'file')} through the filesystem: as verified on ` +
        `the disk`,
    );
    for (const m of rb.mixed ?? [])
      lines.push(
        `  ${m.path}: mapped pages kept under the 'report' policy still read old content ` +
          `(${plural(m.ranges.length, 'range')}); see vmsubst stale`,
      );
    for (const s of rb.skipped ?? []) lines.push(`  not read back: ${s.path}: ${s.reason}`);
  }
  const stages = Object.entries(t)
    .filter(([k]) => k !== 'total' && k !== 'invalidate')
    .map(([k, v]) => `${k} ${Math.round(v * 10) / 10}`);
  lines.push(`took ${Math.round(t.total)} ms (${stages.join(', ')})`);
  return lines.join('\n');
}

/**
 * What happened with a guest's agent, as `apply --json` and `rollout --json`
 * print it (`targetKey` names the agent's address). A guest the blocks reached
 * without being told gets the meaning of that spelled out.
 */
export function agentOutcomeJson<K extends 'target' | 'agent'>(
  a: AgentOutcome,
  status: GuestStatus,
  targetKey: K,
): AgentFields & { [P in K]?: string } {
  // A computed key's type is widened to string: the one cast, to the key given.
  const address = (a.target !== undefined ? { [targetKey]: a.target } : {}) as { [P in K]?: string };
  return {
    told: a.told,
    ...address,
    ...(a.version !== undefined ? { version: a.version } : {}),
    ...(a.mode !== undefined ? { mode: a.mode } : {}),
    ...(a.unreachable !== undefined ? { unreachable: a.unreachable } : {}),
    ...(!a.told && (status === 'applied' || status === 'done-before') ? { meaning: NOT_TOLD } : {}),
    ...(a.replayed ? { replayed: true } : {}),
    ...(a.recovered ? { recovered: true } : {}),
    resends: a.resends,
    ...(a.report ? { report: a.report } : {}),
  };
}
