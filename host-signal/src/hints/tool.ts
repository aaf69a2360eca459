/**
 * Running the filesystem tools the hints read images with (debugfs, xfs_db): whether one is
 * installed, and one run with its commands on standard input and its output bounded.
 */
import { execFile, spawn } from 'node:child_process';
import { HintError } from '../errors.js';

/** `TOOL -V` works: the package that ships it is installed. */
export function toolAvailable(tool: string): Promise<boolean> {
  return new Promise((resolve) => {
    execFile(tool, ['-V'], { timeout: 10_000 }, (err) => resolve(!err));
  });
}

export interface ToolRun {
  code: number | null;
  signal: NodeJS.Signals | null;
  stdout: string;
  stderr: string;
  /** The output passed maxOutput and the tool was killed. */
  tooLarge: boolean;
}

/** Runs `tool args` with `input` on standard input; rejects only when the tool cannot be started. */
export function runTool(
  tool: string,
  args: string[],
  input: string,
  options: { maxOutput: number; install: string; env?: NodeJS.ProcessEnv },
): Promise<ToolRun> {
  return new Promise((resolve, reject) => {
    const child = spawn(tool, args, { stdio: ['pipe', 'pipe', 'pipe'], ...(options.env ? { env: options.env } : {}) });
    const out: Buffer[] = [];
    let outBytes = 0;
    let err = '';
    child.stdout.on('data', (b: Buffer) => {
      outBytes += b.length;
      if (outBytes > options.maxOutput) child.kill('SIGKILL');
      else out.push(b);
    });
    child.stderr.on('data', (b: Buffer) => (err += b.toString('utf8')));
    child.on('error', (e) =>
      reject(new HintError(`cannot run ${tool}: ${e.message}`, `install ${options.install}, or pass --no-hints`)),
    );
    child.on('close', (code, signal) =>
      resolve({
        code,
        signal,
        stdout: Buffer.concat(out).toString('utf8'),
        stderr: err,
        tooLarge: outBytes > options.maxOutput,
      }),
    );
    child.stdin.on('error', () => undefined);
    child.stdin.end(input);
  });
}
