/**
 * Failures of the agent, in the model of host-signal/src/errors.ts: one base
 * class with a stable `code` (`E_VMSUBST_…`) that scripts and logs can match,
 * and a `hint` telling the person reading it what to do next.
 *
 * A CommandError travels to the host as `{"error": {"class", "desc", "data"}}`
 * (its `class` is the protocol's ErrorClass; the hint stays in the guest's log,
 * the wire format has no place for it); anything else thrown by a handler
 * becomes a GenericError reply.
 */
import { CodedError } from '@vmsubst/common/errors';
import type { ErrorClass } from '@vmsubst/common/protocol/schema';

/** The agent's errors: the shared model (@vmsubst/common/errors). */
export class AgentError extends CodedError {}

/** What to do next, per error class; a CommandError may carry its own. */
const HINTS: Partial<Record<ErrorClass, string>> = {
  Unauthorized: "sign the request (vmsubst notify --sign KEY) or send it from the hypervisor's side",
  NotPrepared: 'send prepare first (vmsubst apply --notify does prepare, write, commit)',
  KmodUnavailable: 'load the module: modprobe vmsubst (package vmsubst-dkms)',
  VerifyMismatch: 'the disk does not hold the new blocks yet: write them (vmsubst apply), then notify again',
  GuestDirty: 'nothing was done: let the guest sync (or unmount) the filesystem, then notify again',
  Unsupported:
    'nothing was done: the filesystem cannot take block substitution; rebuild or reboot the VM from the new image',
  RestartRequired: 'restart the VM (or the listed units) to use the new blocks',
  Stale: 'the named files still read old content: restart what uses them, or reboot the VM',
  ScriptInUse: 'restart the process running the script, or send the notification with --force',
};

/** `E_VMSUBST_` and the class in upper snake case: VerifyMismatch → E_VMSUBST_VERIFY_MISMATCH. */
export function codeOf(errorClass: ErrorClass): `E_VMSUBST_${string}` {
  return `E_VMSUBST_${errorClass.replace(/([a-z])([A-Z])/g, '$1_$2').toUpperCase()}`;
}

/** A protocol command failed; the host receives `class`, `desc` (the message) and `data`. */
export class CommandError extends AgentError {
  constructor(
    readonly errorClass: ErrorClass,
    message: string,
    readonly data?: unknown,
    options: { hint?: string; cause?: unknown } = {},
  ) {
    super(
      codeOf(errorClass),
      message,
      options.hint ?? HINTS[errorClass],
      options.cause === undefined ? undefined : { cause: options.cause },
    );
  }
}

/** The message of anything thrown (an Error's message, or the value as text): what crosses a boundary. */
export function messageOf(err: unknown): string {
  if (err instanceof Error) return err.message;
  return String(err);
}

/** Errors of the native layer carry node-style fields; this reads them safely. */
export function errnoCode(err: unknown): string | undefined {
  if (err instanceof AgentError) return undefined;
  if (err && typeof err === 'object' && 'code' in err && typeof err.code === 'string') return err.code;
  return undefined;
}

/** The errno code of a system error, else its message: "ENOENT", or what went wrong. */
export function reasonOf(err: unknown): string {
  return errnoCode(err) ?? messageOf(err);
}
