#!/usr/bin/env node
/**
 * Makes the bundled CLI's code caches (host-signal/src/cli/code-cache.ts): runs
 * `vmsubst <command> --help` once per command, and `vmsubst --help` for the bare
 * command, each with VMSUBST_WRITE_CODE_CACHE naming its cache, so that the launcher
 * keeps what V8 compiled (every module the command loads) in CLI_DIR/code-cache/.
 *
 *   train-code-cache.mjs CLI_DIR
 *
 * CLI_DIR holds vmsubst.mjs (the launcher) and vmsubst-cli.cjs; the command list is read from
 * the compiled tree beside it (CLI_DIR/commands/index.js).
 */
import { spawnSync } from 'node:child_process';
import { readdirSync, rmSync } from 'node:fs';
import { join, resolve } from 'node:path';
import { pathToFileURL } from 'node:url';

const dirArg = process.argv[2];
if (!dirArg) {
  process.stderr.write('usage: train-code-cache.mjs CLI_DIR\n');
  process.exit(2);
}
const dir = resolve(dirArg);
const { COMMANDS } = await import(pathToFileURL(join(dir, 'commands/index.js')).href);
rmSync(join(dir, 'code-cache'), { recursive: true, force: true });
const runs = [
  ['main', ['--help']],
  ['help', ['help']],
  ...COMMANDS.map((c) => [c.name, [c.name, '--help']]),
];
for (const [key, args] of runs) {
  const r = spawnSync(process.execPath, [join(dir, 'vmsubst.mjs'), ...args], {
    env: { ...process.env, VMSUBST_WRITE_CODE_CACHE: key },
    stdio: ['ignore', 'ignore', 'pipe'],
    encoding: 'utf8',
  });
  if (r.status !== 0) {
    process.stderr.write(`vmsubst ${args.join(' ')} exited ${r.status}: ${r.stderr}\n`);
    process.exit(1);
  }
}
const made = readdirSync(join(dir, 'code-cache')).length;
if (made !== runs.length) {
  process.stderr.write(`expected ${runs.length} code caches, made ${made}\n`);
  process.exit(1);
}
process.stderr.write(`code caches for ${made} commands in ${join(dir, 'code-cache')}\n`);
