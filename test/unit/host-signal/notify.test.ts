import { createServer, type Server, type Socket } from 'node:net';
import { suite } from 'uvu';
import * as assert from 'uvu/assert';
import type { SubstituteArgs, SubstituteReport } from '../../../agent/src/protocol/schema.js';
import { planBundle } from '../../../host-signal/src/bundle/index.js';
import { AgentError, TransportError, UsageError } from '../../../host-signal/src/errors.js';
import { formatAgentTarget, notify, parseAgentTarget } from '../../../host-signal/src/notify/index.js';
import { TempDir } from './fixtures.js';

const Parse = suite('notify: agent addresses');

Parse('serial:, unix: and vsock: addresses parse', () => {
  assert.equal(parseAgentTarget('serial:/run/vm1/agent.sock'), { kind: 'serial', path: '/run/vm1/agent.sock' });
  assert.equal(parseAgentTarget('unix:rel/a.sock'), { kind: 'unix', path: 'rel/a.sock' });
  assert.equal(parseAgentTarget('vsock:3:5252'), { kind: 'vsock', cid: 3, port: 5252 });
});

Parse('addresses format back to their text', () => {
  for (const s of ['serial:/a', 'unix:/b', 'vsock:42:1']) assert.is(formatAgentTarget(parseAgentTarget(s)), s);
});

Parse('malformed addresses are usage errors', () => {
  for (const s of ['/tmp/x.sock', 'tcp:1.2.3.4:5', 'vsock:3', 'vsock:x:1', 'vsock:1:99999999999', 'serial:']) {
    assert.throws(() => parseAgentTarget(s), (e: unknown) => e instanceof UsageError, s);
  }
});

const manifest = planBundle({
  base: { size: 1 << 20 },
  blockSize: 4096,
  ranges: [{ offset: 8192, length: 4096, oldSha256: 'a'.repeat(64), newSha256: 'b'.repeat(64) }],
}).manifest;

function report(args: SubstituteArgs): SubstituteReport {
  return {
    id: args.id,
    device: '/dev/vdb',
    'dry-run': args['dry-run'] ?? false,
    'verified-bytes': 4096,
    files: [],
    unmapped: [{ offset: 8192, length: 4096 }],
    'timings-ms': { verify: 1, map: 1, invalidate: 1, total: 3 },
  };
}

type AgentBehaviour = (msg: { execute: string; arguments?: unknown; id?: unknown }, sock: Socket) => void;

const Agent = suite('notify: against a fake agent');
const tmp = new TempDir();
const servers: Server[] = [];
Agent.after(() => {
  servers.forEach((s) => s.close());
  tmp.remove();
});

/** A stand-in agent on a unix socket: greets, then answers as `behave` says. */
async function fakeAgent(behave: AgentBehaviour, onConnect?: (sock: Socket) => void): Promise<string> {
  const path = tmp.file(`agent-${Math.random().toString(16).slice(2)}.sock`);
  const server = createServer((sock) => {
    if (onConnect) return onConnect(sock);
    sock.write(JSON.stringify({ vmsubst: { version: '0.1.0', protocol: 1, capabilities: ['substitute'] } }) + '\n');
    let buf = '';
    sock.on('data', (d) => {
      buf += d.toString();
      let nl: number;
      while ((nl = buf.indexOf('\n')) !== -1) {
        behave(JSON.parse(buf.slice(0, nl)), sock);
        buf = buf.slice(nl + 1);
      }
    });
  });
  servers.push(server);
  await new Promise<void>((r) => server.listen(path, r));
  return path;
}

const answer = (sock: Socket, id: unknown, ret: unknown) => sock.write(JSON.stringify({ return: ret, id }) + '\n');
const helloBody = { version: '0.1.0', protocol: 1, capabilities: ['substitute'] };

Agent('notify says hello, then sends substitute with the bundle\'s ranges and new hashes', async () => {
  const got: string[] = [];
  let sent: SubstituteArgs | undefined;
  const path = await fakeAgent((msg, sock) => {
    got.push(msg.execute);
    if (msg.execute === 'hello') answer(sock, msg.id, helloBody);
    if (msg.execute === 'substitute') {
      sent = msg.arguments as SubstituteArgs;
      answer(sock, msg.id, report(sent));
    }
  });
  const r = await notify(manifest, `unix:${path}`, { serial: 'vmsubst-data' });
  assert.equal(got, ['hello', 'substitute']);
  assert.equal(sent, { id: manifest.id, disk: { serial: 'vmsubst-data' }, ranges: [{ offset: 8192, length: 4096, sha256: 'b'.repeat(64) }] });
  assert.is(r.report.device, '/dev/vdb');
  assert.equal(r.agent, helloBody);
  assert.is(r.target, `unix:${path}`);
});

Agent('dry-run is passed to the agent', async () => {
  const path = await fakeAgent((msg, sock) => {
    if (msg.execute === 'hello') answer(sock, msg.id, helloBody);
    else answer(sock, msg.id, report(msg.arguments as SubstituteArgs));
  });
  const r = await notify({ manifest }, `serial:${path}`, {}, { dryRun: true });
  assert.is(r.report['dry-run'], true);
});

Agent('an error reply from the agent is an AgentError', async () => {
  const path = await fakeAgent((msg, sock) => {
    if (msg.execute === 'hello') answer(sock, msg.id, helloBody);
    else sock.write(JSON.stringify({ error: { class: 'VerifyMismatch', desc: 'range 0 does not hash to its sha256' }, id: msg.id }) + '\n');
  });
  const err = await notify(manifest, `unix:${path}`, {}).catch((e: unknown) => e);
  assert.instance(err, AgentError);
  assert.match((err as Error).message, /VerifyMismatch: range 0 does not hash/);
});

Agent('an agent that refuses the connection is reported with its reason', async () => {
  const path = await fakeAgent(() => undefined, (sock) => {
    sock.end(JSON.stringify({ error: { class: 'GenericError', desc: 'CID 1 is not allowed to talk to this agent' } }) + '\n');
  });
  const err = await notify(manifest, `unix:${path}`, {}).catch((e: unknown) => e);
  assert.instance(err, AgentError);
  assert.match((err as Error).message, /CID 1 is not allowed/);
});

Agent('a report for another substitution id is refused', async () => {
  const path = await fakeAgent((msg, sock) => {
    if (msg.execute === 'hello') answer(sock, msg.id, helloBody);
    else answer(sock, msg.id, { ...report(msg.arguments as SubstituteArgs), id: 'f'.repeat(64) });
  });
  const err = await notify(manifest, `unix:${path}`, {}).catch((e: unknown) => e);
  assert.match(String(err), /reported on substitution f+/);
});

Agent('a missing virtio-serial socket is a TransportError with a chardev hint', async () => {
  const err = await notify(manifest, `serial:${tmp.path}/absent.sock`, {}).catch((e: unknown) => e);
  assert.instance(err, TransportError);
  assert.match((err as TransportError).hint ?? '', /virtserialport/);
});

Agent('vsock without a reachable agent is a TransportError', async () => {
  const err = await notify(manifest, 'vsock:4294967290:5252', {}, { connectTimeoutMs: 2000 }).catch((e: unknown) => e);
  assert.instance(err, TransportError, String(err));
});

Parse.run();
Agent.run();
