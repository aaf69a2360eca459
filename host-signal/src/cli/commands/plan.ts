/** `vmsubst plan`. */
import type { DiskRef } from '@vmsubst/common/protocol/schema';
import { Bundle } from '../../bundle/index.js';
import { UsageError } from '../../errors.js';
import { parseAgentTarget } from '../../notify/index.js';
import { loadFleet, planFleet, type FleetMember, type VmPlan } from '../../rollout/index.js';
import { resolveLibvirtMembers } from '../../rollout/fleet.js';
import { formatBytes, plural, table } from '../format.js';
import { Output, helpRequested, loadPrivateKey, parse, positionals, type Command } from '../common.js';
import type { PlanOutput } from '../output.js';

const HELP = `Usage: vmsubst plan FLEET BUNDLE [--json]
       vmsubst plan --to ADDR [--disk-serial S | --disk-path P] BUNDLE [--json]

Asks each guest's agent what the bundle would do there, before anything is
written: the changed files (path, class: data, ELF whose code is unchanged
or changed), the kind of every changed block (file data, inode table, directory,
free, ...), the processes that map each file, the policy each file gets (remap,
pin, report, restart) and whether a restart is required. The agent verifies
nothing and changes nothing (a dry run).

  FLEET             the fleet file of vmsubst rollout (docs/rollout.md)
  --to ADDR         one agent instead: serial:PATH, vsock:CID:PORT,
                    hvsock:PATH:PORT or unix:PATH
  --disk-serial S   with --to: the guest disk by its virtio serial
  --disk-path P     with --to: the guest disk by its device path
  --concurrency N   agents asked at once (default 8)
  --sign KEY        sign the requests (needed unless vmsubst reaches the agent
                    from the hypervisor's side: virtio-serial, or vsock as root)
  --json            print the plans as JSON

Exit status: 0 when every agent answered with a plan, 1 otherwise.
`;

async function run(args: string[]): Promise<number> {
  const { values, positionals: pos } = parse('plan', args, {
    to: { type: 'string' },
    'disk-serial': { type: 'string' },
    'disk-path': { type: 'string' },
    concurrency: { type: 'string' },
    sign: { type: 'string' },
  });
  if (helpRequested(HELP, values)) return 0;
  let fleet: Pick<FleetMember, 'name' | 'agent' | 'disk' | 'policies' | 'customization'>[];
  let bundlePath: string;
  if (values.to !== undefined) {
    [bundlePath] = positionals('plan', pos, ['BUNDLE']) as [string];
    if (values['disk-serial'] !== undefined && values['disk-path'] !== undefined)
      throw new UsageError('plan: give --disk-serial or --disk-path, not both');
    const disk: DiskRef = {};
    if (values['disk-serial'] !== undefined) disk.serial = values['disk-serial'];
    if (values['disk-path'] !== undefined) disk.path = values['disk-path'];
    fleet = [{ name: values.to, agent: parseAgentTarget(values.to), disk }];
  } else {
    if (values['disk-serial'] !== undefined || values['disk-path'] !== undefined)
      throw new UsageError('plan: --disk-serial and --disk-path go with --to; a fleet file gives each VM its disk');
    const [fleetPath, b] = positionals('plan', pos, ['FLEET', 'BUNDLE']) as [string, string];
    bundlePath = b;
    const members = await loadFleet(fleetPath);
    await resolveLibvirtMembers(members);
    fleet = members;
  }
  const concurrency = values.concurrency === undefined ? 8 : Number(values.concurrency);
  if (!Number.isInteger(concurrency) || concurrency < 1)
    throw new UsageError(`plan: --concurrency ${values.concurrency}: expected a positive whole number`);
  const signWith = values.sign === undefined ? undefined : await loadPrivateKey(values.sign);
  const o = new Output(values.json === true);
  const bundle = await Bundle.open(bundlePath, { verifyData: false });
  let plans: VmPlan[];
  try {
    plans = await planFleet(bundle.manifest, fleet, {
      concurrency,
      ...(signWith ? { signWith } : {}),
      onDone: (_p, done, total) => o.progress.update('plan', done, total, `${done}/${total} agents`),
    });
  } finally {
    await bundle.close();
  }
  o.result<typeof PlanOutput>({ bundle: bundle.manifest.id, vms: plans }, () => plansHuman(plans));
  return plans.every((p) => p.status === 'planned') ? 0 : 1;
}

function plansHuman(plans: VmPlan[]): string {
  const out: string[] = [];
  for (const p of plans) {
    const head = `${p.name}${p.target && p.target !== p.name ? ` (${p.target})` : ''}`;
    if (p.status === 'no-agent' || p.status === 'failed') {
      out.push(
        `${head}: ${p.status === 'no-agent' ? 'no agent answered' : 'the agent refused'}: ${p.error?.message ?? ''}`,
      );
      if (p.status === 'no-agent')
        out.push(
          '  the guest cannot be told: it would keep cached copies of the changed files until they are evicted; ' +
            'see --on-no-agent',
        );
      out.push('');
      continue;
    }
    if (!p.plan) {
      const files = p.report?.files ?? [];
      out.push(
        `${head}: agent ${p.agentVersion ?? '?'} returned no plan (it predates plans); files affected: ` +
          `${files.length ? files.map((f) => f.path).join(', ') : 'none'}`,
      );
      out.push('');
      continue;
    }
    const plan = p.plan;
    out.push(
      `${head}: agent ${p.agentVersion ?? '?'}, ` +
        `${plural(plan.files.length, 'file')}${plan['restart-required'] ? ', RESTART REQUIRED' : ''}`,
    );
    if (plan.files.length > 0) {
      const rows = [['  FILE', 'CLASS', 'POLICY', 'FROM', 'PROCESSES', 'ACTION']];
      for (const f of plan.files) {
        const procs = f.mappers.length ? f.mappers.map((m) => `${m.comm}[${m.pid}]`).join(',') : '-';
        rows.push([`  ${f.path}`, f.class, f.policy, f['policy-from'], procs, f.action]);
      }
      out.push(table(rows));
    }
    const byClass = new Map<string, number>();
    for (const b of plan.blocks) byClass.set(b.class, (byClass.get(b.class) ?? 0) + b.length);
    if (byClass.size > 0) out.push(`  blocks: ${[...byClass].map(([c, n]) => `${c} ${formatBytes(n)}`).join(', ')}`);
    if (plan['pin-bytes'] > 0) out.push(`  pinning copies ${formatBytes(plan['pin-bytes'])}`);
    if (plan.units.length > 0) out.push(`  units restarted: ${plan.units.join(', ')}`);
    for (const r of plan.reasons) out.push(`  restart required: ${r}`);
    out.push('');
  }
  const planned = plans.filter((p) => p.status === 'planned').length;
  out.push(`${planned} of ${plural(plans.length, 'agent')} returned a plan; nothing was written`);
  return out.join('\n');
}

export const planCommand: Command = { help: HELP, run };
