/**
 * The CLI's precompiled validators: `make ts` writes one CommonJS file per schema
 * (scripts/precompile-validators.mjs) into cli/validators/, beside the bundled CLI
 * (build/host-signal/src/cli/vmsubst.mjs) and under the compiled one's cli/ directory. A command
 * loads only the validators it uses, when it first uses them.
 */
import { existsSync } from 'node:fs';
import { createRequire } from 'node:module';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import type { ValidateFunction } from 'ajv';

/** The loader for usePrecompiled, given the calling module's URL; undefined when none were built. */
export function precompiledValidators(moduleUrl: string): ((key: string) => ValidateFunction | undefined) | undefined {
  const dir = ['./validators/', './cli/validators/']
    .map((d) => fileURLToPath(new URL(d, moduleUrl)))
    .find((d) => existsSync(d));
  if (dir === undefined) return undefined;
  const require = createRequire(join(dir, 'index.cjs'));
  return (key) => {
    if (!/^[0-9a-f]{32}$/.test(key)) return undefined;
    const file = join(dir, `${key}.cjs`);
    return existsSync(file) ? (require(file) as ValidateFunction) : undefined;
  };
}
