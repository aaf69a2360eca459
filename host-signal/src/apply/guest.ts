/**
 * Applying with the guest told: the one sequence behind `vmsubst apply`
 * (with or without --notify) and each VM of `vmsubst rollout`
 * (DESIGN.md, "consistency"):
 *
 *   reach the agent, and meanwhile verify the disk (apply; no agent involved:
 *   a diverged disk is refused before any of its processes is pinned); once
 *   both are done → prepare (the
 *   agent plans and pins while the disk still holds the old blocks) → write
 *   → commit (the agent verifies, invalidates and reports); a write that
 *   fails after prepare → abort.
 *
 * An agent without the "two-phase" capability gets the one-shot `substitute`
 * after the write; so does a disk that already held the new blocks (the
 * agent's journal answers a repeat of a substitution it has done). A guest
 * whose agent does not answer, or that has no agent address at all, is
 * handled as `onNoAgent` says: fail (write nothing), warn (write; the result
 * says the guest was not told and what that means) or reset (write, then
 * restart the VM). Everything that happened comes back as one GuestOutcome;
 * applyAndTell does not throw.
 */
import { performance } from 'node:perf_hooks';
import type { PrepareArgs, PrepareReport, SubstituteArgs, SubstituteReport } from '@vmsubst/common/protocol/schema';
import { AgentError, BaseMismatchError, CancelledError, UsageError, VmsubstError } from '../errors.js';
import { AgentConnection, retryable, truncationNote, withAgent, type ConnectOptions } from '../notify/index.js';
import { formatAgentTarget, type AgentTarget } from '../notify/transport.js';
import type { Substitution } from './core.js';

/** What to do with a guest whose agent does not answer. */
export type NoAgentAction = 'fail' | 'warn' | 'reset';
export const NO_AGENT_ACTIONS: readonly NoAgentAction[] = ['fail', 'warn', 'reset'];

export type GuestStatus =
  /** The blocks were written (or already there) and the guest was told, or handled per onNoAgent. */
  | 'applied'
  /** Done by an earlier run (a rollout's state file), confirmed by the agent's journal or the disk. */
  | 'done-before'
  /** The disk does not hold the bundle's base: nothing was written. */
  | 'refused'
  | 'failed'
  /** Not started: cancelled (or, in a rollout, halted) first. */
  | 'not-started';

/** What an unenlightened guest means, said in every result that concerns one. */
export const NOT_TOLD =
  'the guest was not told: it keeps serving cached copies of the changed files (page cache, running programs) ' +
  'until they are evicted (memory pressure, drop_caches) or it restarts; new reads of uncached blocks see the ' +
  'new content';

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
  /** The agent's answer to prepare (its plan and pins), two-phase only. */
  prepare?: PrepareReport;
  report?: SubstituteReport;
}

export interface GuestOutcome<R extends Substitution> {
  status: GuestStatus;
  /** The substitution id the guest journals (the bundle id, or its hash with this guest's customization). */
  id: string;
  apply?: R;
  agent: AgentOutcome;
  /** The VM was restarted (onNoAgent 'reset'). */
  reset: boolean;
  notes: string[];
  error?: { code: string; message: string; hint?: string };
  /** The error itself, for callers that pass it on (not serialized). */
  cause?: unknown;
  elapsedMs: number;
  /** Wall time spent in each phase (connecting to the agent, its prepare, the host's verify and write, its commit). */
  phasesMs?: Partial<Record<GuestPhase, number>>;
}

export type GuestPhase = 'agent' | 'prepare' | 'write' | 'notify' | 'reset';

export interface ApplyAndTellOptions {
  /** The notification (notificationArgs): its id is the one the agent journals. */
  args: SubstituteArgs;
  /** The agent's address; undefined: no agent to tell (handled as onNoAgent says). */
  agent?: AgentTarget;
  /** Why there is no address, when there is none (said in the outcome). */
  noAgentReason?: string;
  onNoAgent: NoAgentAction;
  /** Restarts the VM (QMP system_reset); required for onNoAgent 'reset'. */
  reset?: () => Promise<void>;
  /** Agent connect/hello/command timeouts; the connect is short by default (5 s): a silent channel means no agent. */
  connect?: ConnectOptions;
  /** An earlier run recorded this guest as done: confirm it (agent journal, or the disk) instead of redoing it. */
  resumed?: boolean;
  signal?: AbortSignal;
  onPhase?: (phase: GuestPhase) => void;
}

/**
 * Writes with `apply` (which calls beforeWrite once the disk is verified and
 * before it changes it) and tells the guest. Never throws.
 */
export async function applyAndTell<R extends Substitution>(
  apply: (beforeWrite: () => Promise<void>) => Promise<R>,
  options: ApplyAndTellOptions,
): Promise<GuestOutcome<R>> {
  const started = performance.now();
  const { args } = options;
  const out: GuestOutcome<R> = {
    status: 'failed',
    id: args.id,
    agent: { told: false, resends: 0, retries: 0 },
    reset: false,
    notes: [],
    elapsedMs: 0,
  };
  const phases: Partial<Record<GuestPhase, number>> = {};
  out.phasesMs = phases;
  // Each phase's time is added up when the next one starts (the write phase resumes after prepare).
  let current: GuestPhase | undefined;
  let since = started;
  const enter = (phase: GuestPhase | undefined): void => {
    const now = performance.now();
    if (current) phases[current] = Math.round(((phases[current] ?? 0) + now - since) * 10) / 10;
    current = phase;
    since = now;
    if (phase) options.onPhase?.(phase);
  };
  let conn: AgentConnection | undefined;
  /** Set when applyAndTell returns: a connection made after that is closed as soon as it is. */
  let finished = false;
  try {
    if (options.onNoAgent === 'reset' && !options.reset)
      throw new UsageError(
        "resetting a guest that cannot be told needs the VM's QMP socket",
        'give --qmp, or choose --on-no-agent=fail or warn',
      );
    const connectOptions: ConnectOptions = { connectTimeoutMs: 5000, helloTimeoutMs: 10_000, ...options.connect };
    // An answer cut to fit one message: say how to fetch the whole report (signed like the request was).
    const signer = connectOptions.signer;
    const noteCut = (answer: { id: string; truncated?: PrepareReport['truncated'] }): void => {
      const note =
        out.agent.target !== undefined
          ? truncationNote(
              answer,
              out.agent.target,
              signer
                ? {
                    ...(signer.target['disk-serial'] !== undefined ? { diskSerial: signer.target['disk-serial'] } : {}),
                  }
                : undefined,
            )
          : undefined;
      if (note && !out.notes.includes(note)) out.notes.push(note);
    };

    // The agent is reached while apply opens and verifies the disk (neither needs the other); nothing is
    // written before both are done: beforeWrite waits for the connection. A resumed guest is confirmed first.
    let reached = false;
    const connecting = reachAgent(options, connectOptions, out)
      .then((c) => {
        if (finished) c?.close();
        else conn = c;
      })
      .finally(() => (reached = true));
    connecting.catch(() => undefined); // a refusal is thrown by agentReady, before any write
    const agentReady = async (): Promise<void> => {
      if (!reached) enter('agent');
      await connecting;
      if (!conn && options.onNoAgent === 'fail') {
        throw new NoAgentError(`no agent answered (${out.agent.unreachable}); nothing written`);
      }
    };
    if (options.resumed) {
      await agentReady();
      if (await confirmDone(conn, args, out)) return out;
    }
    if (options.signal?.aborted) throw new CancelledError();

    // Two-phase: called by apply once the disk is verified and before it changes it.
    let prepared = false;
    const beforeWrite = async (): Promise<void> => {
      await agentReady();
      if (!conn || conn.supports('prepare') !== true) return enter('write');
      enter('prepare');
      const { 'dry-run': _unused, ...prepareArgs } = args;
      out.agent.prepare = await conn.prepare(prepareArgs as PrepareArgs);
      noteCut(out.agent.prepare);
      prepared = true;
      enter('write');
    };

    enter('write');
    try {
      const applied = await apply(beforeWrite);
      // Apply asked before any write; a disk that already held the new blocks was not written and did not ask.
      await agentReady();
      out.apply = applied;
    } catch (e) {
      if (prepared && conn) {
        try {
          const a = await conn.abort(args.id, out.agent.prepare?.token);
          const kept = a['pins-kept'].length;
          const pins = kept ? `; ${kept} pinned processes keep their private copies` : '';
          out.notes.push(`the agent dropped the prepared substitution (${a.status})${pins}`);
        } catch (abortError) {
          out.notes.push(`abort after the failed write also failed: ${(abortError as Error).message}`);
        }
      }
      throw e;
    }
    if (out.apply.status === 'already-applied' && !options.resumed)
      out.notes.push('the disk already held the new blocks; nothing written');

    if (options.resumed && !conn && out.apply.status === 'already-applied') {
      out.status = 'done-before';
      out.notes.push('done by an earlier run: the disk holds the new blocks', NOT_TOLD);
      return out;
    }
    if (conn && options.agent) {
      enter('notify');
      out.agent.mode = prepared ? 'two-phase' : 'substitute';
      const tell = (c: AgentConnection): Promise<SubstituteReport> =>
        prepared ? c.commit(args.id, out.agent.prepare?.token) : c.substitute(args);
      let report: SubstituteReport;
      try {
        report = await tell(conn);
      } catch (e) {
        if (!retryable(e)) throw e;
        // The channel failed after the write: tell the agent again on a new connection, same id.
        out.notes.push(`the agent channel failed (${(e as Error).message}); retried with the same substitution id`);
        const again = await withAgent(options.agent, connectOptions, tell);
        out.agent.retries += again.attempts;
        out.agent.resends += again.resends;
        report = again.value;
      }
      out.agent.resends += conn.resends;
      out.agent.told = true;
      out.agent.report = report;
      noteCut(report);
      if (report.replayed) out.agent.replayed = true;
      if (report.recovered) out.agent.recovered = true;
      if (report.plan?.['restart-required'])
        out.notes.push(`the guest says a restart is required: ${report.plan.reasons.join('; ')}`);
    } else if (out.apply.status !== 'no-changes') {
      out.notes.push(NOT_TOLD);
      if (options.onNoAgent === 'reset') {
        enter('reset');
        await options.reset!();
        out.reset = true;
        out.notes.push('the VM was reset (QMP system_reset) so that it starts from the new disk content');
      }
    }
    out.status = 'applied';
  } catch (e) {
    out.status = e instanceof BaseMismatchError ? 'refused' : e instanceof CancelledError ? 'not-started' : 'failed';
    out.error = errorJson(e);
    Object.defineProperty(out, 'cause', { value: e, enumerable: false });
    // A refusal says itself that nothing was written.
    if (!out.apply && out.status === 'failed') out.notes.push('nothing was written');
    else if (out.apply && out.status === 'failed' && !out.agent.told)
      out.notes.push(
        'the blocks were written, but the guest was not told: apply again (same substitution id) once the agent ' +
          'answers',
      );
  } finally {
    finished = true;
    enter(undefined);
    conn?.close();
    out.elapsedMs = Math.round(performance.now() - started);
  }
  return out;
}

/**
 * The agent's connection, or undefined with the reason in `out.agent.unreachable`. An agent that
 * answers with a refusal is there: that is thrown (a failure, not "no agent").
 */
async function reachAgent<R extends Substitution>(
  options: ApplyAndTellOptions,
  connectOptions: ConnectOptions,
  out: GuestOutcome<R>,
): Promise<AgentConnection | undefined> {
  if (options.agent === undefined) {
    out.agent.unreachable = options.noAgentReason ?? 'no agent address was given';
    return undefined;
  }
  out.agent.target = formatAgentTarget(options.agent);
  try {
    const conn = await AgentConnection.open(options.agent, connectOptions);
    out.agent.version = conn.agent.version;
    return conn;
  } catch (e) {
    if (e instanceof AgentError) throw e;
    out.agent.unreachable = (e as Error).message;
    return undefined;
  }
}

/**
 * A guest an earlier run records as done: the agent confirms it (a repeat of
 * the id is answered from its journal, or verified and run again, harmlessly);
 * with no agent, apply's verification of the disk does (every range already
 * new, nothing written). True when confirmed; false means do it again.
 */
async function confirmDone<R extends Substitution>(
  conn: AgentConnection | undefined,
  args: SubstituteArgs,
  out: GuestOutcome<R>,
): Promise<boolean> {
  if (!conn) return false;
  try {
    const report = await conn.substitute(args);
    out.status = 'done-before';
    out.agent.told = true;
    out.agent.mode = 'substitute';
    out.agent.report = report;
    out.agent.resends += conn.resends;
    if (report.replayed) out.agent.replayed = true;
    out.notes.push(
      report.replayed
        ? 'done by an earlier run: the agent answered from its journal'
        : 'done by an earlier run: the agent verified the blocks again',
    );
    return true;
  } catch (e) {
    out.notes.push(
      `an earlier run recorded this as done, but the agent did not confirm it (${(e as Error).message}); doing it ` +
        `again`,
    );
    return false;
  }
}

/** No agent answered and onNoAgent is 'fail'. */
export class NoAgentError extends VmsubstError {
  constructor(message: string) {
    super(
      'E_VMSUBST_NO_AGENT',
      message,
      'start vmsubst-agent in the guest, or choose --on-no-agent=warn (write anyway; the guest keeps stale caches) ' +
        'or --on-no-agent=reset (write, then reset the VM)',
    );
  }
}

export function errorJson(e: unknown): { code: string; message: string; hint?: string } {
  if (e instanceof VmsubstError) return { code: e.code, message: e.message, ...(e.hint ? { hint: e.hint } : {}) };
  return { code: 'E_VMSUBST_INTERNAL', message: e instanceof Error ? e.message : String(e) };
}
