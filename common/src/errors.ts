/**
 * The one error model of both sides: a stable `code` (`E_VMSUBST_…`) that
 * scripts and logs can match, and a `hint` telling the person reading it what
 * to do next. The host's families (host-signal/src/errors.ts) and the agent's
 * (agent/src/errors.ts) extend it.
 */
export class CodedError extends Error {
  constructor(
    readonly code: `E_VMSUBST_${string}`,
    message: string,
    readonly hint?: string,
    options?: { cause?: unknown },
  ) {
    super(message, options);
    this.name = new.target.name;
  }
}
