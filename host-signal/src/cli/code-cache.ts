/**
 * How the `vmsubst` executable (launch.ts) runs the CLI: its bundle (vmsubst-cli.cjs: cli.ts and
 * everything it loads, in one CommonJS file, made by `make ts`) through V8 with the code cache the
 * build made for the command being run.
 *
 * Node starts in about 100 ms on the machines measured; parsing and compiling the modules a
 * command loads cost apply another 50 (docs/benchmarks.md, "Diff" and "Headline"). ES modules
 * have no code cache in node 20, a script has: the build runs each command once
 * (`VMSUBST_WRITE_CODE_CACHE=<command> vmsubst <command> --help`) and keeps what V8 compiled,
 * code-cache/<command>.<build>.v8cache. `<build>` is the bundle's build id, from its first line:
 * a cache is only ever used with the bundle it was made from. A cache V8 rejects (another node)
 * or none at all compiles the bundle from source, as any script: slower, never wrong.
 *
 * Nothing here may import the CLI's own modules: this, launch.ts and common/commonjs.ts are all a
 * run parses before the bundle.
 */
import { mkdirSync, readFileSync, writeFileSync } from 'node:fs';
import { dirname, join } from 'node:path';
import type { Script } from 'node:vm';
import { commonJsScript, runCommonJs } from '@vmsubst/common/commonjs';

/** The cache of a run: the command's own, or `main` for the bare command, --help and --version. */
export function cacheKey(argv: readonly string[]): string {
  const command = argv[0] ?? '';
  return /^[a-z]{1,16}$/.test(command) ? command : 'main';
}

/** The build id the bundle's first line carries (`// vmsubst build <16 hex digits>`), if it does. */
export function buildId(source: string): string | undefined {
  return /^(?:#![^\n]*\n)?\/\/ vmsubst build ([0-9a-f]{16})\n/.exec(source)?.[1];
}

/** Where the code cache of a run with these arguments is, for the bundle `source` in `dir`. */
export function cacheFileFor(dir: string, source: string, argv: readonly string[]): string | undefined {
  const id = buildId(source);
  return id !== undefined ? join(dir, 'code-cache', `${cacheKey(argv)}.${id}.v8cache`) : undefined;
}

/** Runs the bundle `raw` (from `file`) as CommonJS, with `cacheFile`'s code cache when there is one. */
export function runBundle(file: string, raw: string, cacheFile: string | undefined): Script {
  let cachedData: Buffer | undefined;
  try {
    cachedData = cacheFile !== undefined ? readFileSync(cacheFile) : undefined;
  } catch {
    // no cache for this command: compiled from source
  }
  const script = commonJsScript(file, raw, cachedData);
  runCommonJs(script, file);
  return script;
}

/**
 * Runs vmsubst-cli.cjs from `dir` for `argv` (the arguments after the command's name). With
 * VMSUBST_WRITE_CODE_CACHE naming this run's cache (the build's training run), keeps what V8
 * compiled once the command is done.
 */
export function launch(dir: string, argv: readonly string[], env: NodeJS.ProcessEnv): void {
  restoreExtraCaCerts(env);
  const file = join(dir, 'vmsubst-cli.cjs');
  // esbuild writes ASCII only (it escapes the rest), so latin1 reads the same string as utf8, without
  // the decoding: 2-4 ms less for the 560 KB bundle on the machines measured.
  const raw = readFileSync(file, 'latin1');
  const cacheFile = cacheFileFor(dir, raw, argv);
  const script = runBundle(file, raw, cacheFile);
  if (cacheFile !== undefined && env['VMSUBST_WRITE_CODE_CACHE'] === cacheKey(argv)) {
    process.once('exit', () => {
      mkdirSync(dirname(cacheFile), { recursive: true });
      writeFileSync(cacheFile, script.createCachedData());
    });
  }
}

/** Where the launcher's #! line keeps NODE_EXTRA_CA_CERTS while node starts without it. */
export const KEPT_CA_CERTS = 'VMSUBST_NODE_EXTRA_CA_CERTS';

/**
 * The executable's #! line (`env -S -u NODE_EXTRA_CA_CERTS VMSUBST_NODE_EXTRA_CA_CERTS=… node`)
 * starts node without NODE_EXTRA_CA_CERTS: node reads and parses that file at every start, before
 * any script runs (40 ms for Debian's 140 certificates on the machines measured), and vmsubst
 * makes no TLS connection. The value comes back here, for the processes vmsubst starts.
 */
export function restoreExtraCaCerts(env: NodeJS.ProcessEnv): void {
  const kept = env[KEPT_CA_CERTS];
  if (kept === undefined) return;
  delete env[KEPT_CA_CERTS];
  if (kept !== '') env['NODE_EXTRA_CA_CERTS'] = kept;
}
