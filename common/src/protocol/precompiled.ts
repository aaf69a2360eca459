/**
 * Where validation functions generated at build time come from (ajv standalone code, by
 * schemaKey; scripts/precompile-validators.mjs writes one CommonJS file per schema). Apart from
 * the codec, so that an entry point can say where they are without loading ajv or the schemas;
 * a process then parses only the validators it uses, when it first uses them.
 */
import { existsSync, readFileSync } from 'node:fs';
import { join } from 'node:path';
import type { Script } from 'node:vm';
import type { ValidateFunction } from 'ajv';
import { commonJsScript, runCommonJs } from '../commonjs.js';

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
  return (key) => {
    if (!/^[0-9a-f]{32}$/.test(key)) return undefined;
    const file = join(dir, `${key}.cjs`);
    if (!existsSync(file)) return undefined;
    const cache = codeCacheFile(file);
    return compileValidator(file, existsSync(cache) ? readFileSync(cache) : undefined).validate;
  };
}

/** Where the build keeps a validator's V8 code cache: beside it. */
export function codeCacheFile(file: string): string {
  return file.replace(/\.cjs$/, '.v8cache');
}

/**
 * A generated validator (CommonJS), compiled with V8's code cache when one is given. The largest
 * (the reports of prepare and commit) are 100-200 KiB of code: compiling one and its first run cost
 * a command tens of milliseconds, which the cache saves. V8 rejects a cache made by another build
 * of node (`rejected`), and the source is compiled as without one: slower, never wrong.
 */
export function compileValidator(
  file: string,
  cachedData?: Buffer,
): { validate: ValidateFunction; script: Script; rejected: boolean } {
  const script = commonJsScript(file, readFileSync(file, 'utf8'), cachedData);
  const validate = runCommonJs(script, file) as ValidateFunction;
  return {
    validate,
    script,
    rejected: cachedData !== undefined && script.cachedDataRejected === true,
  };
}
