/**
 * One VM of a rollout, start to end: reach the agent, verify the disk through
 * QEMU (apply refuses a diverged disk, writing nothing), prepare (two-phase
 * agents, apply's beforeWrite), write, then commit or substitute; or abort
 * when the write failed. (apply/two-phase.ts's applyWithAgent is the same
 * sequence for `vmsubst apply --notify`; this one adds channel retries, the
 * no-agent choices and the resumed-state confirmation.) A VM whose agent does not answer is handled as
 * --on-no-agent says. Everything that happened comes back as one VmOutcome;
 * this function does not throw.
 */
import type { KeyObject } from 'node:crypto';
import { performance } from 'node:perf_hooks';
import type { PrepareArgs, SubstituteArgs, SubstituteReport } from '../../../agent/src/protocol/schema.js';
import { applyToQemu, type BundleData, type QemuApplyResult } from '../apply/index.js';
import { AgentError, BaseMismatchError, CancelledError, VmsubstError } from '../errors.js';
import { AgentConnection, notificationArgs, retryable, withAgent, type ConnectOptions } from '../notify/index.js';
import { formatAgentTarget } from '../notify/transport.js';
import { QmpClient } from '../qmp/client.js';
import type { FleetMember } from './fleet.js';

/** What to do with a VM whose agent does not answer. */
export type NoAgentAction = 'fail' | 'warn' | 'reset';
export const NO_AGENT_ACTIONS: readonly NoAgentAction[] = ['fail', 'warn', 'reset'];

export type VmStatus =
  /** The blocks were written (or already there) and the guest was told, or handled per --on-no-agent. */
  | 'applied'
  /** Done by an earlier run of this rollout (state file), confirmed by the agent's journal or the disk. */
  | 'done-before'
  /** The disk does not hold the bundle's base: nothing was written. */
  | 'refused'
  | 'failed'
  /** Not started: the rollout halted first, or was cancelled. */
  | 'not-started';

/** What an unenlightened guest means, said in every result that concerns one. */
export const NOT_TOLD =
  'the guest was not told: it keeps serving cached copies of the changed files (page cache, running programs) until they are evicted (memory pressure, drop_caches) or it restarts; new reads of uncached blocks see the new content';

export interface AgentOutcome {
  /** The guest's agent was told and answered with its report. */
  told: boolean;
  target?: string;
  version?: string;
  /** How it was told. */
  mode?: 'two-phase' | 'substitute';
  /** Why no agent could be reached (the guest was not told). */
  unreachable?: string;
  /** Answered from the agent's journal (this id was done already). */
  replayed?: boolean;
  recovered?: boolean;
  /** Requests resent and connections retried to get the answers. */
  resends: number;
  retries: number;
  report?: SubstituteReport;
}

export interface VmOutcome {
  name: string;
  status: VmStatus;
  /** The substitution id the guest journals (the bundle id, or its hash with this VM's customization). */
  id: string;
  apply?: QemuApplyResult;
  agent: AgentOutcome;
  /** The VM was reset (QMP system_reset), --on-no-agent=reset. */
  reset: boolean;
  notes: string[];
  error?: { code: string; message: string; hint?: string };
  elapsedMs: number;
}

export interface VmRolloutOptions {
  onNoAgent: NoAgentAction;
  signWith?: KeyObject;
  signal?: AbortSignal;
  /** The state file says this VM was done: confirm it (agent journal, or the disk) instead of redoing it. */
  resumed?: boolean;
  /** Agent connect/hello/command timeouts; the connect is short by default (5 s), a silent channel means no agent. */
  agent?: Omit<ConnectOptions, 'connect'> & { connect?: ConnectOptions['connect'] };
  /** Phase changes, for progress display. */
  onPhase?: (phase: 'agent' | 'prepare' | 'write' | 'notify' | 'reset') => void;
  /** Where apply makes its private NBD socket directory. */
  workDir?: string;
}

/** Rolls the bundle out to one VM. Never throws: the outcome says what happened. */
export async function rolloutVm(bundle: BundleData, vm: FleetMember, options: VmRolloutOptions): Promise<VmOutcome> {
  const started = performance.now();
  const out: VmOutcome = { name: vm.name, status: 'failed', id: bundle.manifest.id, agent: { told: false, resends: 0, retries: 0 }, reset: false, notes: [], elapsedMs: 0 };
  let conn: AgentConnection | undefined;
  try {
    const args = notificationArgs(bundle.manifest, vm.disk, {
      ...(vm.policies ? { policies: vm.policies } : {}),
      ...(vm.customization ? { customization: vm.customization } : {}),
      ...(options.signWith ? { signWith: options.signWith } : {}),
    });
    out.id = args.id;
    const connectOptions: ConnectOptions = { connectTimeoutMs: 5000, helloTimeoutMs: 10_000, ...options.agent };

    options.onPhase?.('agent');
    if (vm.agent === undefined) {
      out.agent.unreachable = 'the fleet file gives no agent address';
    } else {
      out.agent.target = formatAgentTarget(vm.agent);
      try {
        conn = await AgentConnection.open(vm.agent, connectOptions);
        out.agent.version = conn.agent.version;
      } catch (e) {
        // An agent that answers with a refusal is there: that is a failure, not "no agent".
        if (e instanceof AgentError) throw e;
        out.agent.unreachable = (e as Error).message;
      }
    }
    if (options.resumed && (await confirmDone(conn, args, out))) return out;
    if (!conn && options.onNoAgent === 'fail') {
      throw new NoAgentError(`no agent answered (${out.agent.unreachable}); nothing written`);
    }
    if (options.signal?.aborted) throw new CancelledError();

    // Two-phase: once apply has verified the disk (a diverged VM is refused before any of its
    // processes is pinned) and before it changes it, the agent plans and pins while the disk still
    // holds the old blocks. Not called when the disk already holds the new blocks.
    let prepared = false;
    const twoPhase = conn?.supports('two-phase') === true;
    const beforeWrite = async (): Promise<void> => {
      if (!conn || !twoPhase) return;
      options.onPhase?.('prepare');
      const { 'dry-run': _unused, ...prepareArgs } = args;
      await conn.prepare(prepareArgs as PrepareArgs);
      prepared = true;
      options.onPhase?.('write');
    };

    options.onPhase?.('write');
    try {
      out.apply = await applyToQemu(bundle, vm.qmp, {
        ...(vm.device !== undefined ? { device: vm.device } : {}),
        ...(vm.node !== undefined ? { node: vm.node } : {}),
        ...(options.signal ? { signal: options.signal } : {}),
        ...(options.workDir ? { workDir: options.workDir } : {}),
        beforeWrite,
      });
    } catch (e) {
      if (prepared && conn) {
        try {
          const a = await conn.abort(args.id);
          out.notes.push(`the agent dropped the prepared substitution (${a.status})${a['pins-kept'].length ? `; ${a['pins-kept'].length} pinned processes keep their private copies` : ''}`);
        } catch (abortError) {
          out.notes.push(`abort after the failed write also failed: ${(abortError as Error).message}`);
        }
      }
      throw e;
    }
    for (const w of out.apply.warnings) out.notes.push(w);
    if (out.apply.status === 'already-applied' && !options.resumed) out.notes.push('the disk already held the new blocks; nothing written');

    if (options.resumed && !conn && out.apply.status === 'already-applied') {
      out.status = 'done-before';
      out.notes.push('done by an earlier run: the disk holds the new blocks', NOT_TOLD);
      return out;
    }
    if (conn && vm.agent) {
      options.onPhase?.('notify');
      out.agent.mode = prepared ? 'two-phase' : 'substitute';
      const tell = (c: AgentConnection): Promise<SubstituteReport> => (prepared ? c.commit(args.id) : c.substitute(args));
      let report: SubstituteReport;
      try {
        report = await tell(conn);
      } catch (e) {
        if (!retryable(e)) throw e;
        // The channel failed after the write: tell the agent again on a new connection, same id.
        out.notes.push(`the agent channel failed (${(e as Error).message}); retried with the same substitution id`);
        const again = await withAgent(vm.agent, connectOptions, tell);
        out.agent.retries += again.attempts;
        out.agent.resends += again.resends;
        report = again.value;
      }
      out.agent.resends += conn.resends;
      out.agent.told = true;
      out.agent.report = report;
      if (report.replayed) out.agent.replayed = true;
      if (report.recovered) out.agent.recovered = true;
      if (report.plan?.['restart-required']) out.notes.push(`the guest says a restart is required: ${report.plan.reasons.join('; ')}`);
    } else {
      out.notes.push(NOT_TOLD);
      if (options.onNoAgent === 'reset') {
        options.onPhase?.('reset');
        await systemReset(vm.qmp);
        out.reset = true;
        out.notes.push('the VM was reset (QMP system_reset) so that it starts from the new disk content');
      }
    }
    out.status = 'applied';
  } catch (e) {
    out.status = e instanceof BaseMismatchError ? 'refused' : e instanceof CancelledError ? 'not-started' : 'failed';
    out.error = errorJson(e);
    // A refusal says itself that nothing was written.
    if (!out.apply && out.status === 'failed') out.notes.push('nothing was written');
    else if (out.apply && out.status === 'failed' && !out.agent.told) out.notes.push('the blocks were written, but the guest was not told: roll out again (same substitution id) once the agent answers');
  } finally {
    conn?.close();
    out.elapsedMs = Math.round(performance.now() - started);
  }
  return out;
}

/**
 * A VM the state file records as done: the agent confirms it (a repeat of the
 * id is answered from its journal, or verified and run again, harmlessly); with
 * no agent, apply's verification of the disk does (every range already new,
 * nothing written). True when confirmed; false means roll it out again.
 */
async function confirmDone(conn: AgentConnection | undefined, args: SubstituteArgs, out: VmOutcome): Promise<boolean> {
  if (!conn) return false;
  try {
    const report = await conn.substitute(args);
    out.status = 'done-before';
    out.agent.told = true;
    out.agent.mode = 'substitute';
    out.agent.report = report;
    out.agent.resends += conn.resends;
    if (report.replayed) out.agent.replayed = true;
    out.notes.push(report.replayed ? 'done by an earlier run: the agent answered from its journal' : 'done by an earlier run: the agent verified the blocks again');
    return true;
  } catch (e) {
    out.notes.push(`the state file says done, but the agent did not confirm it (${(e as Error).message}); rolling it out again`);
    return false;
  }
}

async function systemReset(qmpPath: string): Promise<void> {
  const qmp = await QmpClient.connect(qmpPath);
  try {
    await qmp.execute('system_reset');
  } finally {
    qmp.close();
  }
}

/** No agent answered and --on-no-agent=fail. */
export class NoAgentError extends VmsubstError {
  constructor(message: string) {
    super('E_VMSUBST_NO_AGENT', message, 'start vmsubst-agent in the guest, or choose --on-no-agent=warn (write anyway; the guest keeps stale caches) or --on-no-agent=reset (write, then reset the VM)');
  }
}

export function errorJson(e: unknown): { code: string; message: string; hint?: string } {
  if (e instanceof VmsubstError) return { code: e.code, message: e.message, ...(e.hint ? { hint: e.hint } : {}) };
  return { code: 'E_VMSUBST_INTERNAL', message: e instanceof Error ? e.message : String(e) };
}
