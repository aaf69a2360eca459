/**
 * Errors of the native addons and the argument checks their facades make
 * before a call reaches native code.
 *
 * A failed syscall comes back as a NativeError, shaped like node's fs
 * errors: `code` ('ENOENT'), `errno` (negative, -2), `syscall` ('open') and a
 * message such as "ENOENT: no such file or directory, open '/dev/vmsubst'".
 * The glue (agent/native/glue/errors.cc) constructs this class itself once a
 * facade has handed it over (`setErrorClass`), so `instanceof` holds for
 * errors thrown synchronously and for those delivered by callbacks alike.
 */
import { constants as osConstants } from 'node:os';

export interface NativeErrorFields {
  code: string;
  errno: number;
  syscall: string;
  path?: string;
}

export class NativeError extends Error implements NativeErrorFields {
  /** errno name, e.g. 'EACCES'. */
  code: string;
  /** Negative errno, as in node's fs errors (-13 for EACCES). */
  errno: number;
  /** The system call that failed, e.g. 'connect', 'ioctl', 'open'. */
  syscall: string;
  /** The file or device involved, when there is one. */
  path?: string;

  /**
   * The glue calls it with the message alone and sets the fields after; a
   * facade passes them here.
   */
  constructor(
    message: string,
    fields: NativeErrorFields = { code: 'EIO', errno: -osConstants.errno.EIO, syscall: '' },
  ) {
    super(message);
    this.name = 'NativeError';
    this.code = fields.code;
    this.errno = fields.errno;
    this.syscall = fields.syscall;
    if (fields.path !== undefined) this.path = fields.path;
  }
}

/** A NativeError, or an Error of another realm or addon build with the same fields. */
export function isNativeError(value: unknown): value is NativeError {
  if (value instanceof NativeError) return true;
  if (!(value instanceof Error)) return false;
  const e = value as Partial<NativeErrorFields>;
  return typeof e.code === 'string' && typeof e.syscall === 'string' && typeof e.errno === 'number';
}

/** A NativeError made in TypeScript: "CODE: detail". */
export function nativeError(code: keyof typeof osConstants.errno, syscall: string, detail: string): NativeError {
  return new NativeError(`${code}: ${detail}`, { code, errno: -osConstants.errno[code], syscall });
}

// ---- argument checks -------------------------------------------------------------

export const U32_MAX = 0xffff_ffff;
const U64_LIMIT = 1n << 64n;

export function checkInteger(name: string, value: number, min: number, max: number): void {
  if (typeof value !== 'number' || !Number.isInteger(value)) {
    throw new TypeError(`${name} must be an integer, got ${String(value)}`);
  }
  if (value < min || value > max) {
    throw new RangeError(`${name} must be in [${min}, ${max}], got ${value}`);
  }
}

export function checkFd(fd: number): void {
  checkInteger('fd', fd, 0, 0x7fff_ffff);
}

export function checkU64(name: string, value: bigint): void {
  if (typeof value !== 'bigint') throw new TypeError(`${name} must be a bigint`);
  if (value < 0n || value >= U64_LIMIT) throw new RangeError(`${name} must be in [0, 2^64)`);
}
