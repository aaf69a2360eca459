/**
 * Bundles: one file carrying a manifest (which blocks change, their old and
 * new sha256) and the new blocks. See format.ts for the layout.
 */
import { argsValidator } from '@vmsubst/common/protocol/codec';
import {
  MAX_RANGES,
  type Customization,
  type DiskRef,
  type FileHint,
  type Policies,
  type SubstituteArgs,
} from '@vmsubst/common/protocol/schema';
import { canonicalJson } from '@vmsubst/common/protocol/canonical';
import { createHash } from 'node:crypto';
import { BundleError } from '../errors.js';
import type { Manifest } from '@vmsubst/common/bundle/schema';

export { Bundle, manifestProblems, manifestSchemaProblems, type OpenBundleOptions } from './reader.js';
export { planBundle, writeBundle, type BundleInput, type WriteBundleOptions } from './writer.js';
export {
  BUNDLE_MAGIC,
  DATA_ALIGN,
  HEADER_BYTES,
  canonicalJson,
  decodeHeader,
  encodeHeader,
  manifestId,
} from '@vmsubst/common/bundle/format';
export {
  BUNDLE_FORMAT,
  READABLE_FORMATS,
  Manifest,
  BundleRange,
  BaseFilesystem,
  FileEntry,
  type ManifestBody,
} from '@vmsubst/common/bundle/schema';
export {
  checkManifestSignature,
  manifestSignedBytes,
  requireTrustedSignature,
  signBundle,
  signManifest,
  type SignatureStatus,
} from './signature.js';

/**
 * The manifest's file hints as the agent takes them: each changed file's path
 * inside its filesystem and, for an ELF file, whether its code changed. A
 * format 2 verdict (same-layout, new-layout: headers compared, not code) is
 * sent as code-changed. One hint per path (a path in two filesystems of the
 * disk keeps the more cautious verdict).
 */
export function fileHints(manifest: Manifest): FileHint[] {
  const byPath = new Map<string, FileHint>();
  for (const f of manifest.files ?? []) {
    const prev = byPath.get(f.path);
    const hint: FileHint =
      f.elf === undefined
        ? { path: f.path }
        : { path: f.path, elf: f.elf === 'code-unchanged' ? 'code-unchanged' : 'code-changed' };
    if (!prev || (hint.elf === 'code-changed' && prev.elf !== 'code-changed')) byPath.set(f.path, hint);
  }
  return [...byPath.values()];
}

/**
 * Hints and policies in the names an agent without the capability "elf-code" (an older agent)
 * understands: code-unchanged → same-layout (that agent remaps it, right for identical code),
 * code-changed → new-layout (pinned); the policy keys likewise.
 */
export function olderAgentArgs<T extends { hints?: FileHint[] | undefined; policies?: Policies | undefined }>(
  args: T,
): T {
  const out = { ...args };
  if (args.hints)
    out.hints = args.hints.map((h) =>
      h.elf === 'code-unchanged'
        ? { ...h, elf: 'same-layout' as const }
        : h.elf === 'code-changed'
          ? { ...h, elf: 'new-layout' as const }
          : h,
    );
  if (args.policies) {
    const { 'elf-code-unchanged': unchanged, 'elf-code-changed': changedCode, ...rest } = args.policies;
    const p: Policies = { ...rest };
    if (unchanged !== undefined) p['elf-same-layout'] = unchanged;
    if (changedCode !== undefined) p['elf-new-layout'] = changedCode;
    out.policies = p;
  }
  return out;
}

/** The agent's `substitute` arguments for this manifest and guest disk, validated against the protocol schema. */
export function substituteArgs(
  manifest: Manifest,
  disk: DiskRef,
  options: { dryRun?: boolean; customization?: Customization; policies?: Policies } = {},
): SubstituteArgs {
  if (manifest.ranges.length === 0) {
    throw new BundleError('the bundle changes no blocks; there is nothing to notify', [], 'nothing to do');
  }
  if (manifest.ranges.length > MAX_RANGES) {
    throw new BundleError(
      `the bundle has ${manifest.ranges.length} ranges; one substitution carries at most ${MAX_RANGES}`,
    );
  }
  const odd = manifest.ranges.find((r) => r.offset % 4096 !== 0 || r.length % 4096 !== 0);
  if (odd) {
    throw new BundleError(
      `the bundle's range at byte ${odd.offset} (${odd.length} bytes) is not whole 4 KiB blocks; the guest agent takes nothing smaller (its answers must not reveal less than a block)`,
      [],
      'make the bundle with vmsubst diff (4 KiB blocks), or apply it without telling the agent',
    );
  }
  const args: SubstituteArgs = {
    id: manifest.id,
    disk: { ...disk },
    ranges: manifest.ranges.map((r) => ({ offset: r.offset, length: r.length, sha256: r['new-sha256'] })),
  };
  if (options.dryRun) args['dry-run'] = true;
  if (options.policies) args.policies = options.policies;
  const hints = fileHints(manifest);
  if (hints.length > 0) args.hints = hints;
  // The bundle's own customization, unless the caller gives one.
  const customization = options.customization ?? manifest.customization;
  if (customization) {
    // The customization is part of what the guest journals under the id.
    args.customization = customization;
    args.id = createHash('sha256')
      .update(`${manifest.id}\n${canonicalJson(customization)}`)
      .digest('hex');
  }
  const problems = argsValidator('substitute').problems(args);
  if (problems.length > 0) {
    throw new BundleError(
      'cannot build a substitute request from this bundle',
      problems,
      'check the --disk-serial / --disk-path values',
    );
  }
  return args;
}
