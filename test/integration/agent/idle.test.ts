/** The real agent closes a stream connection that stays silent past its idle timeout, and logs it. */
import { suite } from 'uvu';
import * as assert from 'uvu/assert';
import { spawn, type ChildProcess } from 'node:child_process';
import { existsSync, mkdtempSync, rmSync } from 'node:fs';
import { connect } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { ROOT } from '../../helpers/paths.js';
import { waitFor, withTimeout } from '../../helpers/timeout.js';

const Idle = suite('agent: idle connections');
const C = { dir: '', sock: '', proc: undefined as ChildProcess | undefined, log: '' };

Idle.before(async () => {
  C.dir = mkdtempSync(join(tmpdir(), 'vmsubst-idle-'));
  C.sock = join(C.dir, 'agent.sock');
  C.proc = spawn(process.execPath, [join(ROOT, 'build/agent/src/main.js'), '--no-vsock', '--no-serial', '--unix', C.sock, '--state-dir', join(C.dir, 'state'), '--idle-timeout', '2'], { stdio: ['ignore', 'ignore', 'pipe'] });
  C.proc.stderr!.on('data', (d: Buffer) => (C.log += d.toString()));
  await waitFor(10_000, 'agent listening', () => (existsSync(C.sock) ? true : undefined));
});
Idle.after(() => {
  C.proc?.kill('SIGKILL');
  rmSync(C.dir, { recursive: true, force: true });
});

Idle('a silent connection is closed after the idle timeout', () =>
  withTimeout(15_000, 'idle', async () => {
    const sock = connect(C.sock);
    sock.resume(); // read (and drop) the greeting, so the end of the stream is seen
    const t0 = Date.now();
    await new Promise<void>((resolve) => sock.once('close', () => resolve()));
    const ms = Date.now() - t0;
    assert.ok(ms >= 1500 && ms < 6000, `closed after ${ms} ms`);
    assert.match(C.log, /closing an idle connection/);
  }),
);

Idle('a connection that keeps talking stays open', () =>
  withTimeout(15_000, 'active', async () => {
    const sock = connect(C.sock);
    let closed = false;
    sock.on('close', () => (closed = true));
    sock.on('data', () => undefined);
    for (let i = 0; i < 8; i++) {
      sock.write('{"execute":"ping"}\n');
      await new Promise((r) => setTimeout(r, 500));
    }
    assert.not.ok(closed, 'still open after 4 s of pings every 0.5 s');
    sock.destroy();
  }),
);

Idle.run();
