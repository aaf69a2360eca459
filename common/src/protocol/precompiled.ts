/**
 * Where validation functions generated at build time come from (ajv standalone code, by
 * schemaKey; scripts/precompile-validators.mjs writes one CommonJS file per schema). Apart from
 * the codec, so that an entry point can say where they are without loading ajv or the schemas;
 * a process then parses only the validators it uses, when it first uses them.
 */
import { existsSync } from 'node:fs';
import { createRequire } from 'node:module';
import { join } from 'node:path';
import type { ValidateFunction } from 'ajv';

let loader: ((key: string) => ValidateFunction | undefined) | undefined;

/**
 * A Validator whose schema's key `load` knows uses that function, with no ajv compilation at
 * run time (which cost a short-lived process, every vmsubst command, hundreds of milliseconds);
 * any other compiles as before, so a stale or missing set is slower, never wrong.
 */
export function usePrecompiled(load: (key: string) => ValidateFunction | undefined): void {
  loader = load;
}

/** The generated function for a schema key, if one is at hand. */
export function precompiledFor(key: string): ValidateFunction | undefined {
  return loader?.(key);
}

/** A loader for usePrecompiled over the first of `dirs` that exists; undefined when none does (not built). */
export function precompiledIn(dirs: readonly string[]): ((key: string) => ValidateFunction | undefined) | undefined {
  const dir = dirs.find((d) => existsSync(d));
  if (dir === undefined) return undefined;
  const require = createRequire(join(dir, 'index.cjs'));
  return (key) => {
    if (!/^[0-9a-f]{32}$/.test(key)) return undefined;
    const file = join(dir, `${key}.cjs`);
    return existsSync(file) ? (require(file) as ValidateFunction) : undefined;
  };
}
