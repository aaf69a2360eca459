/**
 * Failures of the agent. A CommandError travels to the host as
 * `{"error": {"class", "desc", "data"}}`; anything else thrown by a handler
 * becomes a GenericError reply.
 */
import type { ErrorClass } from '@vmsubst/common/protocol/schema';

export class CommandError extends Error {
  constructor(
    readonly errorClass: ErrorClass,
    message: string,
    readonly data?: unknown,
  ) {
    super(message);
    this.name = 'CommandError';
  }
}

/** Errors of the native layer carry node-style fields; this reads them safely. */
export function errnoCode(err: unknown): string | undefined {
  if (err && typeof err === 'object' && 'code' in err && typeof err.code === 'string') return err.code;
  return undefined;
}
