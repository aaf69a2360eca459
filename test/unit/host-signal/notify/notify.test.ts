import { createServer, type Server, type Socket } from 'node:net';
import { suite } from 'uvu';
import * as assert from 'uvu/assert';
import type { SubstituteArgs, SubstituteReport } from '@vmsubst/common/protocol/schema';
import { planBundle } from '../../../../host-signal/src/bundle/index.js';
import { AgentError, ProtocolError, TransportError, UsageError } from '../../../../host-signal/src/errors.js';
import {
  AgentConnection,
  formatAgentTarget,
  notify,
  parseAgentTarget,
  truncationNote,
} from '../../../../host-signal/src/notify/index.js';
import { TempDir } from '../fixtures.js';

const Parse = suite('notify: agent addresses');

Parse('serial:, unix: and vsock: addresses parse', () => {
  assert.equal(parseAgentTarget('serial:/run/vm1/agent.sock'), { kind: 'serial', path: '/run/vm1/agent.sock' });
  assert.equal(parseAgentTarget('unix:rel/a.sock'), { kind: 'unix', path: 'rel/a.sock' });
  assert.equal(parseAgentTarget('vsock:3:5252'), { kind: 'vsock', cid: 3, port: 5252 });
});

Parse('hvsock:PATH:PORT parses, the port after the last colon', () => {
  assert.equal(parseAgentTarget('hvsock:/run/fc/v.sock:5252'), { kind: 'hvsock', path: '/run/fc/v.sock', port: 5252 });
  assert.equal(parseAgentTarget('hvsock:/a:b/v.sock:1'), { kind: 'hvsock', path: '/a:b/v.sock', port: 1 });
});

Parse('addresses format back to their text', () => {
  for (const s of ['serial:/a', 'unix:/b', 'vsock:42:1', 'hvsock:/c:7'])
    assert.is(formatAgentTarget(parseAgentTarget(s)), s);
});

Parse('malformed addresses are usage errors', () => {
  for (const s of [
    '/tmp/x.sock',
    'tcp:1.2.3.4:5',
    'vsock:3',
    'vsock:x:1',
    'vsock:1:99999999999',
    'serial:',
    'hvsock:/x',
    'hvsock::5',
    'hvsock:/x:99999999999',
    'hvsock:/x:p',
  ]) {
    assert.throws(
      () => parseAgentTarget(s),
      (e: unknown) => e instanceof UsageError,
      s,
    );
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
async function fakeAgent(
  behave: AgentBehaviour,
  onConnect?: (sock: Socket) => void,
  onEachConnection?: () => void,
): Promise<string> {
  const path = tmp.file(`agent-${Math.random().toString(16).slice(2)}.sock`);
  const server = createServer((sock) => {
    onEachConnection?.();
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

Agent("notify says hello, then sends substitute with the bundle's ranges and new hashes", async () => {
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
  assert.equal(sent, {
    id: manifest.id,
    disk: { serial: 'vmsubst-data' },
    ranges: [{ offset: 8192, length: 4096, sha256: 'b'.repeat(64) }],
  });
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
    else
      sock.write(
        JSON.stringify({
          error: { class: 'VerifyMismatch', desc: 'range 0 does not hash to its sha256' },
          id: msg.id,
        }) + '\n',
      );
  });
  const err = await notify(manifest, `unix:${path}`, {}).catch((e: unknown) => e);
  assert.instance(err, AgentError);
  assert.match((err as Error).message, /VerifyMismatch: range 0 does not hash/);
});

Agent('an agent that refuses the connection is reported with its reason', async () => {
  const path = await fakeAgent(
    () => undefined,
    (sock) => {
      sock.end(
        JSON.stringify({ error: { class: 'GenericError', desc: 'CID 1 is not allowed to talk to this agent' } }) + '\n',
      );
    },
  );
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

Agent('an unanswered substitute is resent with the same substitution id until the agent answers', async () => {
  // The stand-in agent drops the first substitute line, as a virtio-serial port being reopened does.
  const seen: { id: unknown; args: SubstituteArgs }[] = [];
  const path = await fakeAgent((msg, sock) => {
    if (msg.execute === 'hello') {
      answer(sock, msg.id, helloBody);
      return;
    }
    seen.push({ id: msg.id, args: msg.arguments as SubstituteArgs });
    if (seen.length > 1) answer(sock, msg.id, report(msg.arguments as SubstituteArgs));
  });
  const r = await notify(manifest, `serial:${path}`, {}, { resendMs: 100 });
  assert.is(r.resends, 1);
  assert.is(r.attempts, 1);
  assert.is(seen.length, 2);
  assert.is(seen[0]!.id, seen[1]!.id, 'the same request line');
  assert.equal(seen[0]!.args, seen[1]!.args);
  assert.is(r.report.id, manifest.id);
});

Agent('a channel that closes mid-request is retried on a new connection with the same id', async () => {
  let connections = 0;
  const ids: string[] = [];
  const path = await fakeAgent(
    (msg, sock) => {
      if (msg.execute === 'hello') {
        answer(sock, msg.id, helloBody);
        return;
      }
      const args = msg.arguments as SubstituteArgs;
      ids.push(args.id);
      if (connections === 1) sock.destroy();
      else answer(sock, msg.id, report(args));
    },
    undefined,
    () => connections++,
  );
  const retried: number[] = [];
  const r = await notify(manifest, `unix:${path}`, {}, { retryDelayMs: 10, onRetry: (n) => retried.push(n) });
  assert.is(r.attempts, 2);
  assert.equal(retried, [1]);
  assert.equal(ids, [manifest.id, manifest.id]);
});

Agent('an answer from the agent is not retried', async () => {
  let subs = 0;
  const path = await fakeAgent((msg, sock) => {
    if (msg.execute === 'hello') {
      answer(sock, msg.id, helloBody);
      return;
    }
    subs++;
    sock.write(JSON.stringify({ error: { class: 'VerifyMismatch', desc: 'no' }, id: msg.id }) + '\n');
  });
  await notify(manifest, `unix:${path}`, {}, { retryDelayMs: 10 }).catch(() => undefined);
  assert.is(subs, 1);
});

const reportHello = { version: '0.1.0', protocol: 1, capabilities: ['substitute', 'report'] };
const ID = 'ab'.repeat(32);

/** A fake agent serving `report` pages of `full` (or what `sizeOf(call)` says the size is). */
async function pagingAgent(
  full: Buffer,
  sizeOf: (call: number) => number = () => full.length,
): Promise<{ path: string; asked: { offset: number; limit: number }[] }> {
  const asked: { offset: number; limit: number }[] = [];
  const path = await fakeAgent((msg, sock) => {
    if (msg.execute === 'hello') {
      answer(sock, msg.id, reportHello);
      return;
    }
    const a = msg.arguments as { id: string; offset: number; limit: number };
    asked.push({ offset: a.offset, limit: a.limit });
    const end = Math.min(full.length, a.offset + a.limit);
    answer(sock, msg.id, {
      id: a.id,
      offset: a.offset,
      bytes: sizeOf(asked.length),
      data: full.subarray(a.offset, end).toString('base64'),
      done: end >= full.length,
    });
  });
  return { path, asked };
}

Agent('fullReportBytes reads every page in order and returns the bytes as kept', async () => {
  const full = Buffer.from(JSON.stringify({ id: ID, files: Array.from({ length: 500 }, (_, i) => `/f${i}`) }));
  const { path, asked } = await pagingAgent(full);
  const conn = await AgentConnection.open(`unix:${path}`);
  try {
    const got = await conn.fullReportBytes(ID, 1000);
    assert.ok(got.json.equals(full));
    assert.is(got.pages, Math.ceil(full.length / 1000));
    assert.equal(
      asked.map((a) => a.offset),
      Array.from({ length: got.pages }, (_, i) => i * 1000),
    );
  } finally {
    conn.close();
  }
});

Agent('a report whose size changes between pages is refused, not glued together', async () => {
  const full = Buffer.from(JSON.stringify({ id: ID, pad: 'x'.repeat(3000) }));
  const { path } = await pagingAgent(full, (call) => (call === 1 ? full.length : full.length + 10));
  const conn = await AgentConnection.open(`unix:${path}`);
  try {
    const err = await conn.fullReportBytes(ID, 1000).catch((e: unknown) => e);
    assert.instance(err, ProtocolError);
    assert.match((err as Error).message, /changed while it was read/);
  } finally {
    conn.close();
  }
});

Agent('an agent without the report capability is told apart, with what to do', async () => {
  const path = await fakeAgent((msg, sock) => answer(sock, msg.id, helloBody));
  const conn = await AgentConnection.open(`unix:${path}`);
  try {
    const err = await conn.fullReportBytes(ID).catch((e: unknown) => e);
    assert.instance(err, AgentError);
    assert.match((err as AgentError).hint ?? '', /capability "report"/);
  } finally {
    conn.close();
  }
});

Agent('a truncated answer names the command that fetches the rest; a whole one none', () => {
  const cut = { id: ID, truncated: { counts: { files: 3000 }, 'report-bytes': 1_400_000, detail: '' } };
  assert.match(
    truncationNote(cut, 'serial:/run/vm/agent.sock')!,
    new RegExp(`files 3000.*1400000 bytes.*vmsubst report ${ID} --to serial:/run/vm/agent\\.sock$`),
  );
  assert.match(
    truncationNote(cut, 'vsock:3:5252', { diskSerial: 'd1' })!,
    /--to vsock:3:5252 --sign KEY --disk-serial d1$/,
  );
  assert.is(truncationNote({ id: ID }, 'serial:/x'), undefined);
});

Parse.run();
Agent.run();
