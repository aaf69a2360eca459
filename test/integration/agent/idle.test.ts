/** The real agent closes a stream connection that stays silent past its idle timeout, and logs it. */
import { suite } from 'uvu';
import * as assert from 'uvu/assert';
import { mkdtempSync, rmSync } from 'node:fs';
import { connect } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { startAgent, type AgentProcess } from '../../helpers/agent-process.js';
import { withTimeout } from '../../helpers/timeout.js';

const Idle = suite('agent: idle connections');
const C = { dir: '', agent: undefined as AgentProcess | undefined };

Idle.before(async () => {
  C.dir = mkdtempSync(join(tmpdir(), 'vmsubst-idle-'));
  C.agent = await startAgent(C.dir, ['--idle-timeout', '2']);
});
Idle.after(() => {
  C.agent?.kill();
  rmSync(C.dir, { recursive: true, force: true });
});

Idle('a silent connection is closed after the idle timeout', () =>
  withTimeout(15_000, 'idle', async () => {
    const sock = connect(C.agent!.sock);
    sock.resume(); // read (and drop) the greeting, so the end of the stream is seen
    const t0 = Date.now();
    await new Promise<void>((resolve) => sock.once('close', () => resolve()));
    const ms = Date.now() - t0;
    assert.ok(ms >= 1500 && ms < 6000, `closed after ${ms} ms`);
    assert.match(C.agent!.log(), /closing an idle connection/);
  }),
);

Idle('a connection that keeps talking stays open', () =>
  withTimeout(15_000, 'active', async () => {
    const sock = connect(C.agent!.sock);
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
