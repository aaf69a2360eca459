#!/usr/bin/env node
/**
 * vmsubst, the host command line: argument parsing, output and exit status.
 * The work is done by the library modules (diff/, bundle/, apply/, notify/).
 *
 * Exit status: 0 success, 1 failure, 2 usage error. With --json, exactly one
 * JSON document goes to stdout (the result, or {"error": …}); human output
 * and the progress bar (TTY only) go to stderr/stdout as usual. Each command
 * lives in cli/commands/; cli/commands/index.ts lists them, and a command's
 * module is loaded only when it runs (or its help is shown).
 */
import { UsageError, VmsubstError } from './errors.js';
import { TOOL_VERSION } from './version.js';
import { COMMANDS } from './cli/commands/index.js';
import type { ErrorOutput } from './cli/output.js';
import { usePrecompiled } from '@vmsubst/common/protocol/precompiled';
import { precompiledValidators } from './cli/precompiled.js';

function mainHelp(): string {
  const width = Math.max(...COMMANDS.map((c) => c.synopsis.length)) + 2;
  const list = COMMANDS.map(
    (c) => `  ${c.synopsis.padEnd(width)}${c.summary.replace(/\n/g, '\n' + ' '.repeat(width + 2))}`,
  ).join('\n');
  return `Usage: vmsubst <command> [options]

Live block substitution for running virtual machines: patch a golden image
once, then copy only the changed blocks into every VM cloned from it.

Commands:
${list}

Options (every command):
  --json       print one JSON document on stdout
  -h, --help   show help (vmsubst <command> --help for a command)
  --version    print the version

Exit status: 0 success, 1 failure, 2 usage error.
`;
}

export async function main(argv: string[]): Promise<number> {
  const json = argv.includes('--json');
  try {
    const [command, ...rest] = argv;
    if (command === undefined || command === '-h' || command === '--help' || command === 'help') {
      const topic = command === 'help' ? rest[0] : undefined;
      const about = COMMANDS.find((c) => c.name === topic);
      process.stdout.write(about ? (await about.load()).help : mainHelp());
      return command === undefined ? 2 : 0;
    }
    if (command === '--version' || command === 'version') {
      process.stdout.write(json ? JSON.stringify({ version: TOOL_VERSION }) + '\n' : `vmsubst ${TOOL_VERSION}\n`);
      return 0;
    }
    const found = COMMANDS.find((c) => c.name === command);
    if (!found) throw new UsageError(`unknown command '${command}'`, "see 'vmsubst --help'");
    return (await (await found.load()).run(rest)) ?? 0;
  } catch (e) {
    return reportError(e, json);
  }
}

function reportError(e: unknown, json: boolean): number {
  process.stderr.write('\r\x1b[K'.repeat(process.stderr.isTTY ? 1 : 0));
  const err = e instanceof VmsubstError ? e : undefined;
  const message = err ? err.message : `internal error: ${e instanceof Error ? e.message : String(e)}`;
  process.stderr.write(`vmsubst: ${message}\n`);
  if (err?.hint) process.stderr.write(`hint: ${err.hint}\n`);
  if (!err && process.env['VMSUBST_DEBUG'] && e instanceof Error) process.stderr.write(`${e.stack ?? ''}\n`);
  if (json) {
    const doc: ErrorOutput = {
      error: { code: err?.code ?? 'E_VMSUBST_INTERNAL', message, ...(err?.hint ? { hint: err.hint } : {}) },
    };
    process.stdout.write(JSON.stringify(doc, null, 2) + '\n');
  }
  return err instanceof UsageError ? 2 : 1;
}

const validators = precompiledValidators(import.meta.url);
if (validators) usePrecompiled(validators);

main(process.argv.slice(2)).then(
  (code) => {
    // Not process.exit: a large --json document on a pipe may still be on its way out.
    process.exitCode = code;
  },
  (e: unknown) => {
    process.stderr.write(`vmsubst: ${String(e)}\n`);
    process.exitCode = 1;
  },
);
