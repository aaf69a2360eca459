/**
 * Where validation functions generated at build time come from (ajv standalone code, by
 * schemaKey; scripts/precompile-validators.mjs). Apart from the codec, with no imports, so that
 * an entry point can say where they are without loading ajv or the schemas.
 */
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
