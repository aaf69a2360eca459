/**
 * `vmsubst plan`: before anything is written, ask each guest's agent what the
 * bundle would do there: a `substitute` with `dry-run: true`, which verifies
 * nothing and changes nothing, and answers with the plan (changed files and
 * their class, block classes, the processes that map them, the policy per
 * file, whether a restart is required).
 */
import type { KeyObject } from 'node:crypto';
import type { Plan, SubstituteReport } from '@vmsubst/common/protocol/schema';
import type { Manifest } from '@vmsubst/common/bundle/schema';
import { AgentError } from '../errors.js';
import { makeSigner, notificationArgs, withAgent, type ConnectOptions } from '../notify/index.js';
import { formatAgentTarget } from '../notify/transport.js';
import type { FleetMember } from './fleet.js';
import { errorJson } from '../apply/index.js';

export interface VmPlan {
  name: string;
  target?: string;
  /**
   * planned: the agent returned its plan; no-plan: the agent answered the dry
   * run without a plan (an older agent); no-agent: nothing answered; failed:
   * the agent refused.
   */
  status: 'planned' | 'no-plan' | 'no-agent' | 'failed';
  agentVersion?: string;
  plan?: Plan;
  /** The dry run's report (device, files); for agents that predate plans, all there is. */
  report?: SubstituteReport;
  error?: { code: string; message: string; hint?: string };
}

export async function planFleet(
  manifest: Manifest,
  fleet: readonly Pick<FleetMember, 'name' | 'agent' | 'disk' | 'policies' | 'customization' | 'uuid'>[],
  options: {
    concurrency?: number;
    signWith?: KeyObject;
    agent?: ConnectOptions;
    onDone?: (p: VmPlan, done: number, total: number) => void;
  } = {},
): Promise<VmPlan[]> {
  const results: VmPlan[] = new Array(fleet.length);
  let next = 0;
  let done = 0;
  const one = async (vm: (typeof fleet)[number]): Promise<VmPlan> => {
    if (!vm.agent)
      return {
        name: vm.name,
        status: 'no-agent',
        error: { code: 'E_VMSUBST_NO_AGENT', message: 'the fleet file gives no agent address' },
      };
    const target = formatAgentTarget(vm.agent);
    const args = notificationArgs(manifest, vm.disk, {
      dryRun: true,
      ...(vm.policies ? { policies: vm.policies } : {}),
      ...(vm.customization ? { customization: vm.customization } : {}),
    });
    try {
      const { value: report, conn } = await withAgent(
        vm.agent,
        {
          connectTimeoutMs: 5000,
          helloTimeoutMs: 10_000,
          attempts: 2,
          ...options.agent,
          ...(options.signWith ? { signer: makeSigner(options.signWith, vm.disk, vm.uuid) } : {}),
        },
        (c) => c.substitute(args),
      );
      return {
        name: vm.name,
        target,
        status: report.plan ? 'planned' : 'no-plan',
        agentVersion: conn.agent.version,
        ...(report.plan ? { plan: report.plan } : {}),
        report,
      };
    } catch (e) {
      return { name: vm.name, target, status: e instanceof AgentError ? 'failed' : 'no-agent', error: errorJson(e) };
    }
  };
  const worker = async (): Promise<void> => {
    while (next < fleet.length) {
      const i = next++;
      results[i] = await one(fleet[i]!);
      options.onDone?.(results[i]!, ++done, fleet.length);
    }
  };
  await Promise.all(Array.from({ length: Math.min(options.concurrency ?? 8, fleet.length) }, worker));
  return results;
}
