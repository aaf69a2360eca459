/**
 * The bundle format's version numbers and its limit on files, as plain
 * numbers: the writer and the header code (format.ts) need no schema for
 * them; schema.ts re-exports them.
 */

/**
 * Format version written by this vmsubst; also in the file header. Version 2
 * added base filesystems, file hints, ELF verdicts, customization and the
 * signature, all optional; version 1 bundles (none of those) still open.
 * Version 3 replaced the ELF verdicts same-layout/new-layout by
 * code-unchanged/code-changed (the executable bytes compared); the older
 * verdicts still open, and are taken as code-changed.
 */
export const BUNDLE_FORMAT = 3;
/** Every format version this vmsubst reads. */
export const READABLE_FORMATS: readonly number[] = [1, 2, 3];
/** Most files a manifest describes (the protocol's limit on hints). */
export const MAX_FILES = 16384;
