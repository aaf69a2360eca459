/**
 * The protocol's version and size limits, as plain numbers: what code that
 * needs only a limit (the differ, the bundle writer) imports, without the
 * schemas of schema.ts, which re-exports them.
 */

export const PROTOCOL_VERSION = 1;
/** No line (message) may exceed this many bytes, newline included. */
export const MAX_MESSAGE_BYTES = 1 << 20;
/**
 * Upper bound on ranges in one substitution; keeps a message's work bounded. Sized so that a
 * request carrying MAX_RANGES ranges fits in one message: a range is at most 122 bytes of JSON
 * (16-digit offset, 8-digit length, 64-digit hash), 8192 of them 999,424 bytes, leaving 49 KiB of
 * the 1 MiB line for the id, disk, signature, hints, policies and customization (the host checks
 * the encoded size of the whole request before sending it).
 */
export const MAX_RANGES = 8192;
/** Largest page of a kept full report (`report`); base64 makes it 4/3 larger on the wire. */
export const MAX_REPORT_PAGE_BYTES = 512 * 1024;
/** Largest single range; a bundle splits bigger runs of changed blocks. */
export const MAX_RANGE_BYTES = 64 << 20;
