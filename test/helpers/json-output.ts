/**
 * Checks what `vmsubst … --json` printed against the command's schema
 * (host-signal/src/cli/output.ts), or against the error document's when it
 * printed one: every suite that runs the CLI with --json checks the real
 * output of that run.
 */
import { Validator } from '@vmsubst/common/protocol/codec';
import { ErrorOutput, OUTPUTS, VersionOutput } from '../../host-signal/src/cli/output.js';

const byCommand = new Map(Object.entries(OUTPUTS).map(([name, schema]) => [name, new Validator(schema)]));
const errorDocument = new Validator(ErrorOutput);
const version = new Validator(VersionOutput);

/** "path: message" problems of the document a run printed; empty when it conforms, or was not asked for JSON. */
export function jsonOutputProblems(args: readonly string[], stdout: string): string[] {
  const [command] = args;
  if (!args.includes('--json') || args.includes('--help') || args.includes('-h') || command === undefined) return [];
  let doc: unknown;
  try {
    doc = JSON.parse(stdout);
  } catch (e) {
    return [`stdout is not one JSON document (${(e as Error).message})`];
  }
  if (typeof doc === 'object' && doc !== null && 'error' in doc) return errorDocument.problems(doc);
  if (command === '--version' || command === 'version') return version.problems(doc);
  // Anything else prints help or a usage error, not a result.
  return byCommand.get(command)?.problems(doc) ?? [];
}
