/**
 * The real agent under a stand-in for systemd's notification socket (an
 * AF_UNIX datagram socket read by python3): READY=1 once it serves,
 * WATCHDOG=1 at half of WATCHDOG_USEC, STOPPING=1 on SIGTERM.
 */
import { suite } from 'uvu';
import * as assert from 'uvu/assert';
import { spawn, spawnSync, type ChildProcess } from 'node:child_process';
import { existsSync, mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { startAgent } from '../../helpers/agent-process.js';
import { waitFor, withTimeout } from '../../helpers/timeout.js';

const Sd = suite('agent: systemd notify protocol');
const C = {
  dir: '',
  notify: '',
  rx: undefined as ChildProcess | undefined,
  agent: undefined as ChildProcess | undefined,
  got: '',
};
const RECEIVER = `
import socket, sys
s = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
s.bind(sys.argv[1])
print("bound", flush=True)
while True:
    data = s.recv(4096)
    print(data.decode().replace("\\n", "|"), flush=True)
`;

const noPython = spawnSync('python3', ['--version']).error ? 'python3 is not installed' : undefined;
if (noPython) {
  console.log(`  skipped: ${noPython}`);
  Sd.skip('READY, WATCHDOG and STOPPING reach the notify socket', () => undefined);
} else {
  Sd.before(async () => {
    C.dir = mkdtempSync(join(tmpdir(), 'vmsubst-sd-'));
    C.notify = join(C.dir, 'notify.sock');
    C.rx = spawn('python3', ['-c', RECEIVER, C.notify], { stdio: ['ignore', 'pipe', 'inherit'] });
    C.rx.stdout!.on('data', (d: Buffer) => (C.got += d.toString()));
    await waitFor(10_000, 'receiver bound', () => (C.got.includes('bound') ? true : undefined));
  });
  Sd.after(() => {
    C.agent?.kill('SIGKILL');
    C.rx?.kill('SIGKILL');
    rmSync(C.dir, { recursive: true, force: true });
  });

  Sd('READY, WATCHDOG and STOPPING reach the notify socket', () =>
    withTimeout(30_000, 'sd_notify', async () => {
      const agent = await startAgent(C.dir, [], { ...process.env, NOTIFY_SOCKET: C.notify, WATCHDOG_USEC: '400000' });
      C.agent = agent.proc;
      await waitFor(10_000, 'READY=1', () => (C.got.includes('READY=1') ? true : undefined));
      assert.ok(existsSync(agent.sock), 'READY only after the channel listens');
      assert.match(C.got, new RegExp(`MAINPID=${C.agent.pid}`));
      await waitFor(5_000, 'two watchdog pings', () =>
        (C.got.match(/WATCHDOG=1/g) ?? []).length >= 2 ? true : undefined,
      );
      const exited = new Promise<number | null>((r) => C.agent!.once('exit', (code) => r(code)));
      C.agent.kill('SIGTERM');
      assert.is(await exited, 0);
      await waitFor(5_000, 'STOPPING=1', () => (C.got.includes('STOPPING=1') ? true : undefined));
    }),
  );
}

Sd.run();
