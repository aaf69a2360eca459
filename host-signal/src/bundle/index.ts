/**
 * Bundles: one file carrying a manifest (which blocks change, their old and
 * new sha256) and the new blocks. See format.ts for the layout.
 */
import { argsValidator } from '../../../agent/src/protocol/codec.js';
import { MAX_RANGES, type Customization, type DiskRef, type Policies, type SubstituteArgs } from '../../../agent/src/protocol/schema.js';
import { canonicalJson } from '../../../agent/src/protocol/canonical.js';
import { createHash } from 'node:crypto';
import { BundleError } from '../errors.js';
import type { Manifest } from './schema.js';

export { Bundle, manifestProblems, manifestSchemaProblems, type OpenBundleOptions } from './reader.js';
export { planBundle, writeBundle, type BundleInput, type WriteBundleOptions } from './writer.js';
export { BUNDLE_MAGIC, DATA_ALIGN, HEADER_BYTES, canonicalJson, decodeHeader, encodeHeader, manifestId } from './format.js';
export { BUNDLE_FORMAT, Manifest, BundleRange, type ManifestBody } from './schema.js';

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
    throw new BundleError(`the bundle has ${manifest.ranges.length} ranges; one substitution carries at most ${MAX_RANGES}`);
  }
  const args: SubstituteArgs = {
    id: manifest.id,
    disk: { ...disk },
    ranges: manifest.ranges.map((r) => ({ offset: r.offset, length: r.length, sha256: r['new-sha256'] })),
  };
  if (options.dryRun) args['dry-run'] = true;
  if (options.policies) args.policies = options.policies;
  if (options.customization) {
    // The customization is part of what the guest journals under the id.
    args.customization = options.customization;
    args.id = createHash('sha256').update(`${manifest.id}\n${canonicalJson(options.customization)}`).digest('hex');
  }
  const problems = argsValidator('substitute').problems(args);
  if (problems.length > 0) {
    throw new BundleError('cannot build a substitute request from this bundle', problems, 'check the --disk-serial / --disk-path values');
  }
  return args;
}
