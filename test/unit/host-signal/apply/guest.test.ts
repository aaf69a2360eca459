/**
 * applyAndTell's order against a stand-in agent on a unix socket and an apply that only
 * records its steps: the agent is reached while the disk is verified, and nothing is written
 * before both are done.
 */
import { createServer, type Server, type Socket } from 'node:net';
import { suite } from 'uvu';
import * as assert from 'uvu/assert';
import type { SubstituteArgs } from '@vmsubst/common/protocol/schema';
import { applyAndTell } from '../../../../host-signal/src/apply/guest.js';
import type { Substitution } from '../../../../host-signal/src/apply/core.js';
import { TempDir } from '../fixtures.js';

const Order = suite('apply: reaching the agent beside the verification');
const tmp = new TempDir();
const servers: Server[] = [];
Order.after(() => {
  servers.forEach((s) => s.close());
  tmp.remove();
});

const args: SubstituteArgs = {
  id: 'c'.repeat(64),
  disk: { serial: 'vmsubst-data' },
  ranges: [{ offset: 8192, length: 4096, sha256: 'b'.repeat(64) }],
};

/** A one-shot agent (no two-phase) that answers hello after `helloDelayMs`; `events` gets its steps. */
async function slowAgent(helloDelayMs: number, events: string[], { tellClose = false } = {}): Promise<string> {
  const path = tmp.file(`agent-${Math.random().toString(16).slice(2)}.sock`);
  const server = createServer((sock: Socket) => {
    if (tellClose) sock.on('close', () => events.push('agent: closed'));
    sock.write(JSON.stringify({ vmsubst: { version: '0.1.0', protocol: 1, capabilities: ['substitute'] } }) + '\n');
    let buf = '';
    sock.on('data', (d) => {
      buf += d.toString();
      for (let nl = buf.indexOf('\n'); nl !== -1; nl = buf.indexOf('\n')) {
        const msg = JSON.parse(buf.slice(0, nl)) as { execute: string; id: unknown };
        buf = buf.slice(nl + 1);
        const reply = (ret: unknown): boolean => sock.write(JSON.stringify({ return: ret, id: msg.id }) + '\n');
        if (msg.execute === 'hello') {
          setTimeout(() => {
            events.push('agent: hello answered');
            reply({ version: '0.1.0', protocol: 1, capabilities: ['substitute'] });
          }, helloDelayMs);
        } else if (msg.execute === 'substitute') {
          events.push('agent: substitute');
          reply({
            id: args.id,
            device: '/dev/vdb',
            'dry-run': false,
            'verified-bytes': 4096,
            files: [],
            unmapped: [{ offset: 8192, length: 4096 }],
            'timings-ms': { verify: 1, map: 1, invalidate: 1, total: 3 },
          });
        }
      }
    });
  });
  servers.push(server);
  await new Promise<void>((r) => server.listen(path, r));
  return path;
}

/** An apply that verifies (records it), asks beforeWrite, then writes (records it). */
function recordingApply(events: string[], status: Substitution['status'] = 'applied') {
  return async (beforeWrite: () => Promise<void>): Promise<Substitution> => {
    events.push('apply: verified');
    if (status === 'applied') {
      await beforeWrite();
      events.push('apply: written');
    }
    const written = status === 'applied' ? 1 : 0;
    return {
      status,
      ranges: 1,
      rangesWritten: written,
      rangesAlreadyNew: 1 - written,
      bytesWritten: 4096 * written,
      verifiedBytes: 4096,
      timingsMs: { verify: 1, write: 1 },
    };
  };
}

Order('the disk is verified while the agent answers hello; the write waits for the agent', async () => {
  const events: string[] = [];
  const path = await slowAgent(150, events);
  const out = await applyAndTell(recordingApply(events), {
    args,
    agent: { kind: 'unix', path },
    onNoAgent: 'fail',
  });
  assert.is(out.status, 'applied', JSON.stringify(out.error));
  assert.equal(events, ['apply: verified', 'agent: hello answered', 'apply: written', 'agent: substitute']);
  assert.ok(out.agent.told);
  // The wait for the agent beyond the verification is its own phase.
  assert.ok((out.phasesMs?.agent ?? 0) >= 100, JSON.stringify(out.phasesMs));
});

Order('no agent with onNoAgent fail: apply verified, nothing written, and the result says so', async () => {
  const events: string[] = [];
  const out = await applyAndTell(recordingApply(events), {
    args,
    agent: { kind: 'unix', path: tmp.file('nobody.sock') },
    onNoAgent: 'fail',
  });
  assert.is(out.status, 'failed');
  assert.is(out.error?.code, 'E_VMSUBST_NO_AGENT');
  assert.equal(events, ['apply: verified']);
  assert.is(out.apply, undefined);
  assert.ok(out.notes.includes('nothing was written'), out.notes.join('; '));
});

Order('a disk that already holds the new blocks: no write, the agent is still told', async () => {
  const events: string[] = [];
  const path = await slowAgent(50, events);
  const out = await applyAndTell(recordingApply(events, 'already-applied'), {
    args,
    agent: { kind: 'unix', path },
    onNoAgent: 'fail',
  });
  assert.is(out.status, 'applied', JSON.stringify(out.error));
  assert.equal(events, ['apply: verified', 'agent: hello answered', 'agent: substitute']);
  assert.ok(out.notes.some((n) => n.includes('already held the new blocks')));
});

Order(
  'a failed verification while the agent still connects: the error at once, the connection closed once made',
  async () => {
    const events: string[] = [];
    const path = await slowAgent(100, events, { tellClose: true });
    const out = await applyAndTell(
      () => {
        events.push('apply: refused');
        return Promise.reject(new Error('the disk does not hold the base'));
      },
      { args, agent: { kind: 'unix', path }, onNoAgent: 'fail' },
    );
    assert.is(out.status, 'failed');
    assert.match(out.error?.message ?? '', /does not hold the base/);
    assert.ok(out.notes.includes('nothing was written'));
    assert.equal(events, ['apply: refused']);
    await new Promise((r) => setTimeout(r, 300));
    assert.equal(events, ['apply: refused', 'agent: hello answered', 'agent: closed']);
  },
);

Order.run();
