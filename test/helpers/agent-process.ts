/**
 * The real agent as a child process on a unix socket in a scratch directory
 * (no vsock, no serial), the way qemu-guest-agent's own tests run theirs.
 */
import { spawn, type ChildProcess } from 'node:child_process';
import { existsSync } from 'node:fs';
import { join } from 'node:path';
import { ROOT } from './paths.js';
import { waitFor } from './timeout.js';

export interface AgentProcess {
  proc: ChildProcess;
  sock: string;
  /** Everything the agent logged so far. */
  log(): string;
  kill(): void;
}

/** Starts the agent with its socket and state in `dir`; resolves once it listens. */
export async function startAgent(
  dir: string,
  extraArgs: string[] = [],
  env: NodeJS.ProcessEnv = process.env,
): Promise<AgentProcess> {
  const sock = join(dir, 'agent.sock');
  const args = [
    join(ROOT, 'build/agent/src/main.js'),
    '--no-vsock',
    '--no-serial',
    '--unix',
    sock,
    '--state-dir',
    join(dir, 'state'),
    ...extraArgs,
  ];
  const proc = spawn(process.execPath, args, { stdio: ['ignore', 'ignore', 'pipe'], env });
  let log = '';
  proc.stderr!.on('data', (d: Buffer) => (log += d.toString()));
  await waitFor(10_000, 'agent listening', () => {
    if (proc.exitCode !== null) throw new Error(`the agent exited (${proc.exitCode}):\n${log}`);
    return existsSync(sock) ? true : undefined;
  });
  return { proc, sock, log: () => log, kill: () => void proc.kill('SIGKILL') };
}
