/**
 * The real agent process on a unix socket, the way qemu-guest-agent's own
 * tests drive it: greeting, commands, and every kind of bad input answered
 * with the right error class while the agent keeps serving.
 */
import { suite } from 'uvu';
import * as assert from 'uvu/assert';
import { mkdtempSync, rmSync, existsSync, statSync } from 'node:fs';
import { connect, type Socket } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { startAgent, type AgentProcess } from '../../helpers/agent-process.js';
import { waitFor, withTimeout } from '../../helpers/timeout.js';
import { LineDecoder } from '@vmsubst/common/protocol/codec';
import { AgentClient } from '../../../host-signal/src/notify/client.js';

const Agent = suite('vmsubst-agent over a unix socket');
const C = { dir: '', sock: '', agent: undefined as AgentProcess | undefined };

/** A raw line-level connection, for sending what a well-behaved client never would. */
class Raw {
  readonly lines: unknown[] = [];
  readonly #dec = new LineDecoder();
  constructor(readonly sock: Socket) {
    sock.on('data', (b: Buffer) => {
      for (const f of this.#dec.push(b)) if (f.kind === 'message') this.lines.push(f.value);
    });
  }
  static async open(path: string): Promise<Raw> {
    const sock = connect(path);
    await new Promise((r, j) => sock.once('connect', r).once('error', j));
    return new Raw(sock);
  }
  async next(n = this.lines.length + 1): Promise<Record<string, unknown>> {
    return (await waitFor(5000, 'reply', () => this.lines[n - 1])) as Record<string, unknown>;
  }
}

Agent.before(async () => {
  C.dir = mkdtempSync(join(tmpdir(), 'vmsubst-agent-'));
  C.agent = await startAgent(C.dir);
  C.sock = C.agent.sock;
});
Agent.after(() => {
  C.agent?.kill();
  rmSync(C.dir, { recursive: true, force: true });
});

Agent('the socket is private to root (0600)', () => {
  assert.is(statSync(C.sock).mode & 0o777, 0o600);
});

Agent('greets on connect with version, protocol and capabilities', async () => {
  const raw = await Raw.open(C.sock);
  const g = (await raw.next()) as { vmsubst: { protocol: number; capabilities: string[] } };
  assert.is(g.vmsubst.protocol, 1);
  assert.ok(g.vmsubst.capabilities.includes('substitute'));
  raw.sock.destroy();
});

Agent('answers hello and ping through the host client', () =>
  withTimeout(10_000, 'client', async () => {
    const client = new AgentClient(connect(C.sock));
    const hello = await client.hello();
    assert.is(hello.version, '0.1.0');
    assert.equal(await client.execute('ping', {}), {});
    client.close();
  }),
);

Agent('reports malformed JSON as InvalidMessage and keeps serving', async () => {
  const raw = await Raw.open(C.sock);
  await raw.next();
  raw.sock.write('{not json\n');
  assert.equal(((await raw.next(2)) as { error: { class: string } }).error.class, 'InvalidMessage');
  raw.sock.write('{"execute":"ping","id":7}\n');
  assert.equal(await raw.next(3), { return: {}, id: 7 });
  raw.sock.destroy();
});

Agent('rejects unknown fields, echoing the id', async () => {
  const raw = await Raw.open(C.sock);
  await raw.next();
  raw.sock.write('{"execute":"ping","id":"x","extra":1}\n');
  const r = (await raw.next(2)) as { error: { class: string; desc: string }; id: string };
  assert.is(r.error.class, 'InvalidMessage');
  assert.match(r.error.desc, /unknown field 'extra'/);
  assert.is(r.id, 'x');
  raw.sock.destroy();
});

Agent('answers an unknown command with CommandNotFound', async () => {
  const raw = await Raw.open(C.sock);
  await raw.next();
  raw.sock.write('{"execute":"format-disk","id":1}\n');
  assert.is(((await raw.next(2)) as { error: { class: string } }).error.class, 'CommandNotFound');
  raw.sock.destroy();
});

Agent('answers bad arguments with InvalidArguments naming the field', async () => {
  const raw = await Raw.open(C.sock);
  await raw.next();
  raw.sock.write(
    JSON.stringify({ execute: 'substitute', id: 2, arguments: { id: 'zz', disk: {}, ranges: [] } }) + '\n',
  );
  const r = (await raw.next(2)) as { error: { class: string; desc: string } };
  assert.is(r.error.class, 'InvalidArguments');
  assert.match(r.error.desc, /\/ranges/);
  assert.match(r.error.desc, /\/id/);
  raw.sock.destroy();
});

Agent('refuses an over-long message without buffering it', async () => {
  const raw = await Raw.open(C.sock);
  await raw.next();
  raw.sock.write('{"execute":"ping","pad":"' + 'a'.repeat(1 << 21) + '"}\n{"execute":"ping","id":3}\n');
  const r = (await raw.next(2)) as { error: { class: string; desc: string } };
  assert.is(r.error.class, 'InvalidMessage');
  assert.match(r.error.desc, /cap/);
  assert.equal(await raw.next(3), { return: {}, id: 3 });
  raw.sock.destroy();
});

Agent('a substitute naming a disk that does not exist fails with DeviceNotFound', () =>
  withTimeout(10_000, 'substitute', async () => {
    const client = new AgentClient(connect(C.sock));
    await client.hello();
    const err = await client
      .execute('substitute', {
        id: 'ab'.repeat(16),
        disk: { serial: 'no-such-disk' },
        ranges: [{ offset: 0, length: 4096, sha256: '0'.repeat(64) }],
      })
      .catch((e: Error) => e);
    assert.instance(err, Error);
    assert.match((err as Error).message, /DeviceNotFound/);
    client.close();
  }),
);

Agent('stops cleanly on SIGTERM and removes its socket', () =>
  withTimeout(10_000, 'stop', async () => {
    const proc = C.agent!.proc;
    const exited = new Promise<number | null>((r) => proc.once('exit', (code) => r(code)));
    proc.kill('SIGTERM');
    assert.is(await exited, 0);
    assert.not.ok(existsSync(C.sock), 'socket removed');
  }),
);

Agent.run();
