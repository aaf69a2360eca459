/**
 * The CLI's precompiled validators: `make ts` writes them into cli/validators/, beside the bundled
 * CLI (build/host-signal/src/cli/vmsubst.mjs) and under the compiled one's cli/ directory.
 */
import { fileURLToPath } from 'node:url';
import type { ValidateFunction } from 'ajv';
import { precompiledIn } from '@vmsubst/common/protocol/precompiled';

/** The loader for usePrecompiled, given the calling module's URL; undefined when none were built. */
export function precompiledValidators(moduleUrl: string): ((key: string) => ValidateFunction | undefined) | undefined {
  return precompiledIn(['./validators/', './cli/validators/'].map((d) => fileURLToPath(new URL(d, moduleUrl))));
}
