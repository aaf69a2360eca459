import { createServer, type Server, type Socket } from 'node:net';
import { join } from 'node:path';
import { suite } from 'uvu';
import * as assert from 'uvu/assert';
import { QmpError, TargetError, TimeoutError } from '../../../../host-signal/src/errors.js';
import { Qemu, QmpClient, type QmpEvent } from '../../../../host-signal/src/qmp/index.js';
import { TempDir } from '../fixtures.js';

type Handler = (cmd: { execute: string; arguments?: Record<string, unknown>; id?: unknown }, sock: Socket) => void;

const GREETING = {
  QMP: { version: { qemu: { major: 7, minor: 2, micro: 22 }, package: 'test' }, capabilities: ['oob'] },
};

/** A fake QMP server: greets (unless told not to), then hands each command to `handler`. */
async function fakeQemu(
  dir: TempDir,
  handler: Handler,
  greet = true,
): Promise<{ path: string; server: Server; seen: string[] }> {
  const path = dir.file(`qmp-${Math.random().toString(16).slice(2)}.sock`);
  const seen: string[] = [];
  const server = createServer((sock) => {
    if (greet) sock.write(JSON.stringify(GREETING) + '\r\n');
    let buf = '';
    sock.on('data', (d) => {
      buf += d.toString();
      let nl: number;
      while ((nl = buf.indexOf('\n')) !== -1) {
        const cmd = JSON.parse(buf.slice(0, nl)) as Parameters<Handler>[0];
        buf = buf.slice(nl + 1);
        seen.push(cmd.execute);
        if (cmd.execute === 'qmp_capabilities') sock.write(JSON.stringify({ return: {}, id: cmd.id }) + '\r\n');
        else handler(cmd, sock);
      }
    });
  });
  await new Promise<void>((r) => server.listen(path, r));
  return { path, server, seen };
}

const reply = (sock: Socket, msg: unknown): boolean => sock.write(JSON.stringify(msg) + '\r\n');

const Qmp = suite('qmp client');
const tmp = new TempDir();
const servers: Server[] = [];
const clients: QmpClient[] = [];
Qmp.after(() => {
  clients.forEach((c) => c.close());
  servers.forEach((s) => s.close());
  tmp.remove();
});

async function connect(handler: Handler): Promise<{ qmp: QmpClient; seen: string[] }> {
  const f = await fakeQemu(tmp, handler);
  servers.push(f.server);
  const qmp = await QmpClient.connect(f.path);
  clients.push(qmp);
  return { qmp, seen: f.seen };
}

Qmp('connect reads the greeting and negotiates capabilities first', async () => {
  const { qmp, seen } = await connect(() => undefined);
  assert.equal(qmp.greeting.version.qemu, { major: 7, minor: 2, micro: 22 });
  assert.equal(seen, ['qmp_capabilities']);
});

Qmp('replies are matched to commands by id, whatever their order', async () => {
  const held: Parameters<Handler>[0][] = [];
  const { qmp } = await connect((cmd, sock) => {
    held.push(cmd);
    if (held.length === 2) {
      reply(sock, { return: { n: 2 }, id: held[1]!.id });
      reply(sock, { return: { n: 1 }, id: held[0]!.id });
    }
  });
  const [a, b] = await Promise.all([qmp.execute('first'), qmp.execute('second')]);
  assert.equal(a, { n: 1 });
  assert.equal(b, { n: 2 });
});

Qmp('an error reply rejects with QmpError carrying class, desc and command', async () => {
  const { qmp } = await connect((cmd, sock) =>
    reply(sock, { error: { class: 'GenericError', desc: 'NBD server already running' }, id: cmd.id }),
  );
  const err = await qmp.execute('nbd-server-start', {}).catch((e: unknown) => e);
  assert.instance(err, QmpError);
  const q = err as QmpError;
  assert.is(q.errorClass, 'GenericError');
  assert.is(q.desc, 'NBD server already running');
  assert.is(q.command, 'nbd-server-start');
  assert.is(q.code, 'E_VMSUBST_QMP');
});

Qmp('events are emitted and never taken for replies', async () => {
  const { qmp } = await connect((cmd, sock) => {
    reply(sock, { event: 'STOP', timestamp: { seconds: 1, microseconds: 2 } });
    reply(sock, { return: {}, id: cmd.id });
  });
  const events: QmpEvent[] = [];
  qmp.on('event', (e) => events.push(e));
  assert.equal(await qmp.execute('stop'), {});
  assert.equal(
    events.map((e) => e.event),
    ['STOP'],
  );
});

Qmp('a closed connection rejects the pending command', async () => {
  const { qmp } = await connect((_cmd, sock) => sock.destroy());
  const err = await qmp.execute('query-status').catch((e: unknown) => e);
  assert.instance(err, QmpError);
  assert.match((err as Error).message, /closed while 'query-status' was pending/);
});

Qmp('typed wrappers check the reply shape', async () => {
  const { qmp } = await connect((cmd, sock) => reply(sock, { return: { running: 'yes' }, id: cmd.id }));
  const err = await new Qemu(qmp).queryStatus().catch((e: unknown) => e);
  assert.instance(err, QmpError);
  assert.match((err as Error).message, /unexpected reply.*\/running/);
});

Qmp('typed wrappers pass the QMP arguments through', async () => {
  let args: unknown;
  const { qmp } = await connect((cmd, sock) => {
    args = cmd.arguments;
    reply(sock, { return: {}, id: cmd.id });
  });
  await new Qemu(qmp).blockExportAdd({ id: 'e', nodeName: 'disk0', name: 'e', writable: true });
  assert.equal(args, { type: 'nbd', id: 'e', 'node-name': 'disk0', name: 'e', writable: true });
});

Qmp('a server that never greets times out with a hint about the single QMP client', async () => {
  const f = await fakeQemu(tmp, () => undefined, false);
  servers.push(f.server);
  const err = await QmpClient.connect(f.path, { timeoutMs: 200 }).catch((e: unknown) => e);
  assert.instance(err, TimeoutError);
  assert.match((err as TimeoutError).hint ?? '', /one client per QMP socket/);
});

Qmp('a missing socket is a TargetError saying so', async () => {
  const err = await QmpClient.connect(join(tmp.path, 'absent.sock')).catch((e: unknown) => e);
  assert.instance(err, TargetError);
  assert.match((err as Error).message, /no QMP socket at/);
});

Qmp.run();
