/** Runs the real `vmsubst` CLI (compiled) as a child process. */
import { execFile } from 'node:child_process';
import { CLI } from './paths.js';

export interface CliRun {
  code: number;
  /** The signal that ended it (a fault-injected SIGKILL), or null. */
  signal: NodeJS.Signals | null;
  stdout: string;
  stderr: string;
  ms: number;
}

/** `env` is added to this process's environment. */
export function vmsubst(args: string[], timeoutMs = 120_000, env?: Record<string, string>): Promise<CliRun> {
  const t0 = Date.now();
  return new Promise((resolve) => {
    execFile(process.execPath, [CLI, ...args], { timeout: timeoutMs, maxBuffer: 64 << 20, ...(env ? { env: { ...process.env, ...env } } : {}) }, (err, stdout, stderr) => {
      const code = err ? (typeof err.code === 'number' ? err.code : 1) : 0;
      resolve({ code, signal: (err?.signal as NodeJS.Signals | undefined) ?? null, stdout, stderr, ms: Date.now() - t0 });
    });
  });
}

/** Runs with --json and returns the parsed document; throws with stderr when the command fails. */
export async function vmsubstJson<T = Record<string, unknown>>(args: string[], timeoutMs?: number, env?: Record<string, string>): Promise<T> {
  const r = await vmsubst([...args, '--json'], timeoutMs, env);
  if (r.code !== 0) throw new Error(`vmsubst ${args.join(' ')} exited ${r.code}\n${r.stderr}\n${r.stdout}`);
  return JSON.parse(r.stdout) as T;
}
