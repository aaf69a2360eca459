/**
 * Error families of the host CLI and library. Each has a stable `code` that
 * scripts can match and a `hint` telling the operator what to do next.
 */
import { CodedError } from '@vmsubst/common/errors';

/** The host's errors: the shared model (@vmsubst/common/errors). */
export class VmsubstError extends CodedError {}

/** The agent answered with an error reply. */
export class AgentError extends VmsubstError {
  constructor(
    readonly errorClass: string,
    desc: string,
    readonly data?: unknown,
    hint?: string,
  ) {
    super('E_VMSUBST_AGENT', `agent: ${errorClass}: ${desc}`, hint);
  }
}

export class ProtocolError extends VmsubstError {
  constructor(message: string, hint?: string) {
    super('E_VMSUBST_PROTOCOL', message, hint);
  }
}

export class TimeoutError extends VmsubstError {
  constructor(message: string, hint = 'is the agent running in the guest and the channel connected?') {
    super('E_VMSUBST_TIMEOUT', message, hint);
  }
}

/** The command line was wrong; the CLI exits with status 2. */
export class UsageError extends VmsubstError {
  constructor(message: string, hint = "see 'vmsubst --help'") {
    super('E_VMSUBST_USAGE', message, hint);
  }
}

/** Comparing the base and patched images failed. */
export class DiffError extends VmsubstError {
  constructor(message: string, hint?: string, options?: { cause?: unknown }) {
    super('E_VMSUBST_DIFF', message, hint, options);
  }
}

/** File hints could not be computed (debugfs missing or failing, an unreadable filesystem). */
export class HintError extends VmsubstError {
  constructor(message: string, hint = 'pass --no-hints to make the bundle without file hints') {
    super('E_VMSUBST_HINTS', message, hint);
  }
}

/** A bundle file is malformed, corrupt or inconsistent; nothing was written anywhere. */
export class BundleError extends VmsubstError {
  constructor(
    message: string,
    readonly problems: readonly string[] = [],
    hint = 'the bundle is damaged or was not written by vmsubst; copy it again or re-run `vmsubst diff`',
  ) {
    super('E_VMSUBST_BUNDLE', problems.length > 0 ? `${message}: ${problems.join('; ')}` : message, hint);
  }
}

/** QEMU answered a QMP command with an error, or the monitor connection failed. */
export class QmpError extends VmsubstError {
  constructor(
    readonly errorClass: string,
    readonly desc: string,
    readonly command?: string,
    hint?: string,
  ) {
    super('E_VMSUBST_QMP', command ? `QMP ${command}: ${errorClass}: ${desc}` : `QMP: ${errorClass}: ${desc}`, hint);
  }
}

/** The NBD server refused the handshake or a request. `errno` is the protocol's error name. */
export class NbdError extends VmsubstError {
  constructor(
    message: string,
    readonly errno?: string,
    hint?: string,
  ) {
    super('E_VMSUBST_NBD', message, hint);
  }
}

/**
 * The target disk is not the bundle's base (wrong size, or blocks holding
 * neither the old nor the new content). Raised before anything is written.
 */
export class BaseMismatchError extends VmsubstError {
  constructor(
    message: string,
    readonly ranges: readonly { offset: number; length: number }[] = [],
    hint = 'was this VM cloned from the image the bundle was made from, and has the guest not written to these ' +
      'blocks? Nothing was written',
  ) {
    super('E_VMSUBST_BASE_MISMATCH', message, hint);
  }
}

/** The write target (QEMU drive or image file) cannot be used as asked. */
export class TargetError extends VmsubstError {
  constructor(message: string, hint?: string, options?: { cause?: unknown }) {
    super('E_VMSUBST_TARGET', message, hint, options);
  }
}

/** The channel to the guest agent could not be opened. */
export class TransportError extends VmsubstError {
  constructor(message: string, hint?: string, options?: { cause?: unknown }) {
    super('E_VMSUBST_TRANSPORT', message, hint, options);
  }
}

/** The operation was cancelled (SIGINT/SIGTERM) before anything was written. */
export class CancelledError extends VmsubstError {
  constructor(message = 'cancelled', hint = 'nothing was written') {
    super('E_VMSUBST_CANCELLED', message, hint);
  }
}
