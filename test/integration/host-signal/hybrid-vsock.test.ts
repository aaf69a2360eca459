/**
 * Hybrid vsock (hvsock:PATH:PORT), the way Firecracker and Cloud Hypervisor
 * let the host reach a guest's vsock port: `CONNECT <port>\n` on the VMM's
 * unix socket, `OK <n>\n`, then the guest's stream. Neither hypervisor can run
 * here, so test/helpers/vsock-muxer.ts stands in for the VMM's muxer (and says
 * so); behind it is the real agent, on a unix socket.
 */
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { suite } from 'uvu';
import * as assert from 'uvu/assert';
import { startAgent, type AgentProcess } from '../../helpers/agent-process.js';
import { startMuxer, type Muxer } from '../../helpers/vsock-muxer.js';
import { vmsubst } from '../../helpers/cli.js';
import { withTimeout } from '../../helpers/timeout.js';
import { AgentConnection, withAgent } from '../../../host-signal/src/notify/index.js';
import { TimeoutError, TransportError } from '../../../host-signal/src/errors.js';
import { writeBundle } from '../../../host-signal/src/bundle/index.js';
import { bufferSource, diffSources } from '../../../host-signal/src/diff/index.js';

const PORT = 5252;
const Hv = suite('hybrid-vsock: CONNECT/OK through a stand-in for the VMM muxer, to the real agent');
const C = { dir: '', agent: undefined as AgentProcess | undefined, mux: undefined as Muxer | undefined, bundle: '' };

async function rejection(p: Promise<unknown>): Promise<Error> {
  const e = await p.then(
    () => undefined,
    (err: unknown) => err,
  );
  assert.ok(e instanceof Error, 'expected a rejection');
  return e as Error;
}

Hv.before(async () => {
  C.dir = mkdtempSync(join(tmpdir(), 'vmsubst-hvsock-'));
  C.agent = await startAgent(C.dir);
  C.mux = await startMuxer(join(C.dir, 'vm.vsock'), new Map([[PORT, C.agent.sock]]));
  const base = Buffer.alloc(1 << 20, 1);
  const patched = Buffer.from(base);
  patched.fill(2, 8192, 12288);
  const d = await diffSources(bufferSource(base), bufferSource(patched));
  C.bundle = join(C.dir, 'p.vsb');
  await writeBundle(
    C.bundle,
    { base: { size: base.length }, blockSize: d.blockSize, ranges: d.ranges },
    bufferSource(patched),
  );
});
Hv.after(async () => {
  await C.mux?.close();
  C.agent?.kill();
  rmSync(C.dir, { recursive: true, force: true });
});
Hv.before.each(() => {
  C.mux!.behaviour = 'ok';
});

Hv('the host sends CONNECT <port>, reads OK and gets the agent greeting and replies', () =>
  withTimeout(20_000, 'hello', async () => {
    const before = C.mux!.connects.length;
    const conn = await AgentConnection.open(`hvsock:${C.mux!.path}:${PORT}`);
    try {
      assert.equal(C.mux!.connects.slice(before), [`CONNECT ${PORT}`]);
      assert.is(conn.target, `hvsock:${C.mux!.path}:${PORT}`);
      assert.is(conn.agent.protocol, 1);
      assert.ok(conn.agent.capabilities.includes('substitute'));
      assert.equal(await conn.client.execute('ping', {}), {});
    } finally {
      conn.close();
    }
  }),
);

Hv('vmsubst notify over hvsock: the agent answers the substitution and the CLI renders it', () =>
  withTimeout(30_000, 'notify', async () => {
    // The agent runs on the host here, with no such disk: its answer (DeviceNotFound) comes back
    // through the muxer and is rendered as the agent's error.
    const r = await vmsubst([
      'notify',
      C.bundle,
      '--to',
      `hvsock:${C.mux!.path}:${PORT}`,
      '--disk-path',
      '/dev/vmsubst-absent',
      '--json',
    ]);
    assert.is(r.code, 1, r.stderr);
    const doc = JSON.parse(r.stdout) as { error: { code: string; message: string } };
    assert.is(doc.error.code, 'E_VMSUBST_AGENT');
    assert.match(doc.error.message, /agent: \w+: .*vmsubst-absent/);
    assert.match(C.agent!.log(), /substitute/);
  }),
);

Hv('no listener on the guest port: the muxer closes, and the error says nothing listens there', () =>
  withTimeout(20_000, 'no listener', async () => {
    const e = await rejection(AgentConnection.open(`hvsock:${C.mux!.path}:9999`));
    assert.instance(e, TransportError);
    assert.match(e.message, /closed the connection instead of answering 'CONNECT 9999'/);
    assert.match((e as TransportError).hint ?? '', /nothing listens on vsock port 9999/);
  }),
);

Hv('a muxer answering garbage is refused with what it said', () =>
  withTimeout(20_000, 'garbage', async () => {
    C.mux!.behaviour = 'garbage';
    const e = await rejection(AgentConnection.open(`hvsock:${C.mux!.path}:${PORT}`));
    assert.instance(e, TransportError);
    assert.match(e.message, /the reply 'HELLO THERE' to CONNECT \(expected 'OK <port>'\)/);
  }),
);

Hv('a muxer that never answers times out (connect timeout) with a hint', () =>
  withTimeout(20_000, 'silent', async () => {
    C.mux!.behaviour = 'silent';
    const e = await rejection(AgentConnection.open(`hvsock:${C.mux!.path}:${PORT}`, { connectTimeoutMs: 1500 }));
    assert.instance(e, TimeoutError);
    assert.match(e.message, /no answer to 'CONNECT 5252' within \d+ ms/);
  }),
);

Hv('a socket that is not there is a TransportError naming the hypervisor setting', () =>
  withTimeout(20_000, 'absent', async () => {
    const e = await rejection(AgentConnection.open(`hvsock:${C.dir}/absent.vsock:${PORT}`));
    assert.instance(e, TransportError);
    assert.match((e as TransportError).hint ?? '', /uds_path/);
  }),
);

Hv('the CLI prints the refusal and its hint, exit status 1', () =>
  withTimeout(20_000, 'cli refusal', async () => {
    C.mux!.behaviour = 'garbage';
    const r = await vmsubst(['notify', C.bundle, '--to', `hvsock:${C.mux!.path}:${PORT}`]);
    assert.is(r.code, 1);
    assert.match(r.stderr, /vmsubst: hvsock:.*HELLO THERE/);
    assert.match(r.stderr, /hint: .*hybrid vsock protocol/);
  }),
);

Hv('a handshake that times out is retried on a new connection; the second one gets through', () =>
  withTimeout(20_000, 'retry', async () => {
    C.mux!.behaviour = 'silent';
    const retries: string[] = [];
    const r = await withAgent(
      `hvsock:${C.mux!.path}:${PORT}`,
      {
        connectTimeoutMs: 1500,
        retryDelayMs: 10,
        onRetry: (_n, e) => {
          retries.push(e.message);
          C.mux!.behaviour = 'ok';
        },
      },
      (conn) => conn.client.execute('ping', {}),
    );
    assert.is(r.attempts, 2);
    assert.equal(r.value, {});
    assert.match(retries[0]!, /no answer to 'CONNECT/);
  }),
);

Hv.run();
