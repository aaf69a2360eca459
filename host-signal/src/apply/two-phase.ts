/**
 * Applying with the guest told, over one agent connection (DESIGN.md,
 * "consistency"):
 *
 *   verify the disk (no agent involved: a diverged VM is refused before its
 *   processes are pinned) → prepare (the agent plans and pins while the disk
 *   still holds the old blocks) → write → commit (the agent verifies,
 *   invalidates and reports); a write that fails after prepare → abort.
 *
 * An agent without the "two-phase" capability gets the one-shot
 * `substitute` after the write. A disk that already holds the new blocks is
 * not prepared either: `substitute` tells the guest (the agent's journal
 * answers a repeat of a substitution it has done).
 */
import type { AbortReport, PrepareReport, SubstituteArgs, SubstituteReport } from '../../../agent/src/protocol/schema.js';
import type { AgentConnection } from '../notify/index.js';

export interface TwoPhaseOutcome<R> {
  apply: R;
  /** Whether prepare/commit was used (else substitute). */
  twoPhase: boolean;
  prepare?: PrepareReport;
  report: SubstituteReport;
}

/**
 * Runs `apply` (which calls beforeWrite once the disk is verified and before
 * it changes it) with the agent told. A failure after prepare sends abort and
 * rethrows the failure, with the abort's report attached as `abort`.
 */
export async function applyWithAgent<R>(
  conn: AgentConnection,
  args: SubstituteArgs,
  apply: (beforeWrite: () => Promise<void>) => Promise<R>,
): Promise<TwoPhaseOutcome<R>> {
  const twoPhase = conn.supports('two-phase');
  let prepare: PrepareReport | undefined;
  const beforeWrite = async (): Promise<void> => {
    if (!twoPhase) return;
    const { 'dry-run': _dry, ...prepareArgs } = args;
    prepare = await conn.prepare(prepareArgs);
  };
  let result: R;
  try {
    result = await apply(beforeWrite);
  } catch (e) {
    if (prepare === undefined) throw e;
    let abort: AbortReport | undefined;
    let abortError: unknown;
    try {
      abort = await conn.abort(args.id);
    } catch (err) {
      abortError = err;
    }
    Object.assign(e as object, { abort, abortError });
    throw e;
  }
  const report = prepare !== undefined ? await conn.commit(args.id) : await conn.substitute(args);
  return { apply: result, twoPhase: prepare !== undefined, ...(prepare ? { prepare } : {}), report };
}
