/** Runs the real `vmsubst` CLI (compiled) as a child process. */
import { execFile } from 'node:child_process';
import { CLI } from './paths.js';

export interface CliRun {
  code: number;
  stdout: string;
  stderr: string;
  ms: number;
}

export function vmsubst(args: string[], timeoutMs = 120_000): Promise<CliRun> {
  const t0 = Date.now();
  return new Promise((resolve) => {
    execFile(process.execPath, [CLI, ...args], { timeout: timeoutMs, maxBuffer: 64 << 20 }, (err, stdout, stderr) => {
      const code = err ? (typeof err.code === 'number' ? err.code : 1) : 0;
      resolve({ code, stdout, stderr, ms: Date.now() - t0 });
    });
  });
}

/** Runs with --json and returns the parsed document; throws with stderr when the command fails. */
export async function vmsubstJson<T = Record<string, unknown>>(args: string[], timeoutMs?: number): Promise<T> {
  const r = await vmsubst([...args, '--json'], timeoutMs);
  if (r.code !== 0) throw new Error(`vmsubst ${args.join(' ')} exited ${r.code}\n${r.stderr}\n${r.stdout}`);
  return JSON.parse(r.stdout) as T;
}
