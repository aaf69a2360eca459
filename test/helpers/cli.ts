/** Runs the real `vmsubst` CLI (compiled) as a child process. */
import { execFile } from 'node:child_process';
import { CLI } from './paths.js';
import { jsonOutputProblems } from './json-output.js';

export interface CliRun {
  code: number;
  /** The signal that ended it (a fault-injected SIGKILL), or null. */
  signal: NodeJS.Signals | null;
  stdout: string;
  stderr: string;
  ms: number;
}

/**
 * `vmsubst apply BUNDLE` into the test guest's data disk (QMP, device vblk0); with `notify`, the
 * two-phase substitution through the agent on its virtio-serial socket, the disk named by serial.
 */
export function applyArgs(
  bundle: string,
  vm: { qmpSocket: string; agentSocket: string },
  notify: boolean,
  ...more: string[]
): string[] {
  return [
    'apply',
    bundle,
    '--qmp',
    vm.qmpSocket,
    '--device',
    'vblk0',
    ...(notify ? ['--notify', `serial:${vm.agentSocket}`, '--disk-serial', 'vmsubst-data'] : []),
    ...more,
  ];
}

/**
 * `env` is added to this process's environment. With --json, the document
 * printed is checked against the command's schema (json-output.ts): one that
 * does not conform rejects, naming the problems.
 */
export function vmsubst(args: string[], timeoutMs = 120_000, env?: Record<string, string>): Promise<CliRun> {
  const t0 = Date.now();
  return new Promise((resolve, reject) => {
    // The executable itself, as an operator runs it: its #! line starts node (code-cache.ts, restoreExtraCaCerts).
    execFile(
      CLI,
      args,
      { timeout: timeoutMs, maxBuffer: 64 << 20, ...(env ? { env: { ...process.env, ...env } } : {}) },
      (err, stdout, stderr) => {
        // Before the schema check below: that is the test's work, not the command's.
        const ms = Date.now() - t0;
        const code = err ? (typeof err.code === 'number' ? err.code : 1) : 0;
        const signal = (err?.signal as NodeJS.Signals | undefined) ?? null;
        const problems = signal === null ? jsonOutputProblems(args, stdout) : [];
        if (problems.length > 0) {
          reject(
            new Error(
              `vmsubst ${args.join(' ')}: the --json document does not match its schema: ${problems.join('; ')}\n${stdout}`,
            ),
          );
          return;
        }
        resolve({ code, signal, stdout, stderr, ms });
      },
    );
  });
}

/** Runs with --json and returns the parsed document; throws with stderr when the command fails. */
export async function vmsubstJson<T = Record<string, unknown>>(
  args: string[],
  timeoutMs?: number,
  env?: Record<string, string>,
): Promise<T> {
  const r = await vmsubst([...args, '--json'], timeoutMs, env);
  if (r.code !== 0) throw new Error(`vmsubst ${args.join(' ')} exited ${r.code}\n${r.stderr}\n${r.stdout}`);
  return JSON.parse(r.stdout) as T;
}
