/**
 * CommonJS code run through V8 directly (node:vm), so that it can be compiled with a code cache
 * (V8's compiled form of it, made by an earlier run): the CLI's bundle (host-signal/src/cli/
 * code-cache.ts) and the precompiled validators (protocol/precompiled.ts). V8 checks a cache
 * against its own version and flags and the source's length (not its content: a cache must be
 * kept with the source it was made from), and rejects one that does not fit
 * (`cachedDataRejected`): the source is then compiled as without one, slower, never wrong.
 */
import { createRequire } from 'node:module';
import { dirname } from 'node:path';
import { Script } from 'node:vm';

/** Compiles `source` (from `file`) as a CommonJS module's wrapper function, with `cachedData` when given. */
export function commonJsScript(file: string, source: string, cachedData?: Buffer): Script {
  // A leading "#!" line is not JavaScript inside the wrapper: made a comment, the lines keep their numbers.
  const body = source.startsWith('#!') ? `//${source}` : source;
  return new Script(`(function (exports, require, module, __filename, __dirname) {${body}\n})`, {
    filename: file,
    ...(cachedData !== undefined ? { cachedData } : {}),
  });
}

/** Runs a commonJsScript as the module `file` (its require resolves from there); returns its exports. */
export function runCommonJs(script: Script, file: string): unknown {
  const module = { exports: {} as unknown };
  const wrapper = script.runInThisContext() as (
    exports: unknown,
    require: NodeJS.Require,
    module: { exports: unknown },
    filename: string,
    dirname: string,
  ) => void;
  wrapper(module.exports, createRequire(file), module, file, dirname(file));
  return module.exports;
}
