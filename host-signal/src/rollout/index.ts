/**
 * `vmsubst rollout`: one bundle to a fleet of running VMs. A canary batch
 * goes first and must succeed entirely; then the rest, at most `concurrency`
 * VMs at a time. On a failure the rollout halts (no VM starts after it; those
 * under way finish), unless told to continue. A state file lets an
 * interrupted rollout resume: VMs it records as done are confirmed, not redone.
 * Each VM is handled by rolloutVm (vm.ts), which is apply/guest.ts's applyAndTell.
 */
import type { KeyObject } from 'node:crypto';
import { performance } from 'node:perf_hooks';
import type { BundleData } from '../apply/index.js';
import { UsageError } from '../errors.js';
import { notificationArgs } from '../notify/index.js';
import type { FleetMember } from './fleet.js';
import { StateFile } from './state.js';
import type { NoAgentAction } from '../apply/index.js';
import { rolloutVm, type VmOutcome, type VmRolloutOptions } from './vm.js';

export { loadFleet, fleetFromJson, FleetFile, type FleetMember } from './fleet.js';
export { StateFile, STATE_FORMAT } from './state.js';
export { rolloutVm, type VmOutcome, type VmStatus } from './vm.js';
export { NoAgentError, NOT_TOLD, NO_AGENT_ACTIONS, type NoAgentAction, type AgentOutcome } from '../apply/index.js';
export { planFleet, type VmPlan } from './plan.js';

export interface RolloutOptions {
  /** VMs in flight at once; default 4. */
  concurrency?: number;
  /** The first N VMs of the fleet go first, and all must succeed before any other starts; default 0. */
  canary?: number;
  /** Halt on the first failure (default), or carry on with the others. */
  stopOnFailure?: boolean;
  onNoAgent?: NoAgentAction;
  /** State file path: resume an interrupted rollout, record progress. */
  statePath?: string;
  signWith?: KeyObject;
  /** Stops starting VMs (those under way finish; a write never starts after it). */
  signal?: AbortSignal;
  /** Per VM: the agent's timeouts, and apply's work directory. */
  vm?: Pick<VmRolloutOptions, 'agent' | 'workDir'>;
  onStart?: (name: string) => void;
  onPhase?: (name: string, phase: string) => void;
  onDone?: (outcome: VmOutcome, finished: number, total: number) => void;
}

export interface RolloutResult {
  bundle: string;
  /** Why the rollout stopped before every VM was handled, if it did. */
  halted?: string;
  canary: number;
  concurrency: number;
  vms: VmOutcome[];
  counts: Record<VmOutcome['status'], number>;
  elapsedMs: number;
}

const OK: ReadonlySet<VmOutcome['status']> = new Set(['applied', 'done-before']);

export function succeeded(o: VmOutcome): boolean {
  return OK.has(o.status);
}

export async function rollout(
  bundle: BundleData,
  fleet: readonly FleetMember[],
  options: RolloutOptions = {},
): Promise<RolloutResult> {
  const started = performance.now();
  const concurrency = options.concurrency ?? 4;
  const canary = options.canary ?? 0;
  if (!Number.isInteger(concurrency) || concurrency < 1)
    throw new UsageError(`rollout: concurrency ${concurrency}: expected a whole number ≥ 1`);
  if (!Number.isInteger(canary) || canary < 0 || canary > fleet.length)
    throw new UsageError(`rollout: canary ${canary}: expected 0 to ${fleet.length} (the fleet's size)`);
  if (bundle.manifest.ranges.length === 0)
    throw new UsageError('rollout: the bundle changes no blocks; there is nothing to roll out', 'nothing to do');
  const state =
    options.statePath !== undefined ? await StateFile.open(options.statePath, bundle.manifest.id) : undefined;
  const stopOnFailure = options.stopOnFailure ?? true;

  const outcomes = new Map<string, VmOutcome>();
  let halted: string | undefined;
  let finished = 0;
  const runOne = async (vm: FleetMember): Promise<VmOutcome> => {
    options.onStart?.(vm.name);
    const id = notificationArgs(
      bundle.manifest,
      vm.disk,
      vm.customization ? { customization: vm.customization } : {},
    ).id;
    const o = await rolloutVm(bundle, vm, {
      onNoAgent: options.onNoAgent ?? 'warn',
      ...(options.signWith ? { signWith: options.signWith } : {}),
      ...(options.signal ? { signal: options.signal } : {}),
      ...(state?.done(vm.name, id) ? { resumed: true } : {}),
      ...options.vm,
      onPhase: (p) => options.onPhase?.(vm.name, p),
    });
    outcomes.set(vm.name, o);
    await state?.record(o);
    options.onDone?.(o, ++finished, fleet.length);
    return o;
  };

  /** Runs `vms` with at most `width` at a time; stops taking new ones once `stop()` says so. */
  const batch = async (vms: readonly FleetMember[], width: number, stop: () => boolean): Promise<void> => {
    let next = 0;
    const worker = async (): Promise<void> => {
      while (next < vms.length && !stop()) {
        const vm = vms[next++]!;
        await runOne(vm);
      }
    };
    await Promise.all(Array.from({ length: Math.min(width, vms.length) }, worker));
  };
  const cancelled = (): boolean => {
    if (options.signal?.aborted && halted === undefined) halted = 'cancelled';
    return options.signal?.aborted === true;
  };
  const failedOnes = (): VmOutcome[] => [...outcomes.values()].filter((o) => !succeeded(o));

  if (canary > 0) {
    const first = fleet.slice(0, canary);
    await batch(first, concurrency, cancelled);
    const bad = first
      .map((vm) => outcomes.get(vm.name))
      .filter((o): o is VmOutcome => o !== undefined && !succeeded(o));
    if (bad.length > 0)
      halted = `the canary batch failed (${bad.map((o) => `${o.name}: ${o.status}`).join(', ')}); no other VM was touched`;
  }
  if (halted === undefined) {
    await batch(fleet.slice(canary), concurrency, () => {
      if (cancelled()) return true;
      if (stopOnFailure && failedOnes().length > 0) {
        const bad = failedOnes();
        halted ??= `halted after ${bad.map((o) => `${o.name}: ${o.status}`).join(', ')} (stop on failure)`;
        return true;
      }
      return false;
    });
  }

  const vms = fleet.map(
    (vm) =>
      outcomes.get(vm.name) ?? {
        name: vm.name,
        status: 'not-started' as const,
        id: notificationArgs(bundle.manifest, vm.disk, vm.customization ? { customization: vm.customization } : {}).id,
        agent: { told: false, resends: 0, retries: 0 },
        reset: false,
        notes: [halted ?? 'not started'],
        elapsedMs: 0,
      },
  );
  const counts = { applied: 0, 'done-before': 0, refused: 0, failed: 0, 'not-started': 0 } as RolloutResult['counts'];
  for (const o of vms) counts[o.status]++;
  // A failure in the last batch halts nothing, but still says the rollout did not complete.
  if (halted === undefined && stopOnFailure && failedOnes().length > 0 && counts['not-started'] > 0)
    halted = 'stopped on failure';
  return {
    bundle: bundle.manifest.id,
    ...(halted !== undefined ? { halted } : {}),
    canary,
    concurrency,
    vms,
    counts,
    elapsedMs: Math.round(performance.now() - started),
  };
}
