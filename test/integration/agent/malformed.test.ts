/**
 * Malformed input at volume: the real agent on a unix socket receives more
 * than 10,000 broken, oversized and wrongly-typed messages. It must answer
 * every one with an error class, keep serving, and keep its memory bounded.
 */
import { suite } from 'uvu';
import * as assert from 'uvu/assert';
import { mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { connect, type Socket } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { startAgent, type AgentProcess } from '../../helpers/agent-process.js';
import { waitFor, withTimeout } from '../../helpers/timeout.js';
import { LineDecoder } from '@vmsubst/common/protocol/codec';

const M = suite('malformed input: 10k+ bad messages to the real agent');
const C = { dir: '', agent: undefined as AgentProcess | undefined };

function rssKiB(pid: number): number {
  return Number(/VmRSS:\s+(\d+)/.exec(readFileSync(`/proc/${pid}/status`, 'utf8'))![1]);
}

/** Deterministic generator of the kinds of garbage a confused or hostile peer sends. */
function* badMessages(n: number): Generator<{ line: string; expect: string[] }> {
  const big = 'x'.repeat((1 << 20) + 10);
  for (let i = 0; i < n; i++) {
    switch (i % 12) {
      case 0:
        yield { line: `{"execute":"ping"${'}'.repeat(i % 3)}`, expect: ['InvalidMessage'] };
        break; // unbalanced
      case 1:
        yield { line: `not json ${i}`, expect: ['InvalidMessage'] };
        break;
      case 2:
        yield { line: `[1,2,${i}]`, expect: ['InvalidMessage'] };
        break; // not an object
      case 3:
        yield { line: `{"execute":${i}}`, expect: ['InvalidMessage'] };
        break; // wrong type
      case 4:
        yield { line: `{"execute":"ping","arguments":"${i}"}`, expect: ['InvalidMessage'] };
        break;
      case 5:
        yield { line: `{"execute":"ping","id":{"nested":${i}}}`, expect: ['InvalidMessage'] };
        break;
      case 6:
        yield { line: `{"execute":"no-such-${i}"}`, expect: ['CommandNotFound'] };
        break;
      case 7:
        yield {
          line: JSON.stringify({ execute: 'substitute', arguments: { id: i, disk: [], ranges: 'all' } }),
          expect: ['InvalidArguments'],
        };
        break;
      case 8:
        yield {
          line: JSON.stringify({
            execute: 'substitute',
            arguments: { id: 'ab'.repeat(16), disk: {}, ranges: [{ offset: -i, length: 0, sha256: 'z' }] },
          }),
          expect: ['InvalidArguments'],
        };
        break;
      case 9:
        yield { line: JSON.stringify({ execute: 'ping', arguments: { extra: i } }), expect: ['InvalidArguments'] };
        break;
      case 10:
        yield { line: '\u0000\u0001\u0002' + String.fromCharCode(0xd800) + i, expect: ['InvalidMessage'] };
        break;
      default:
        yield {
          line: i % 120 === 11 ? `{"pad":"${big}"}` : `{"execute":"ping","unknown":${i}}`,
          expect: ['InvalidMessage'],
        };
    }
  }
}

M.before(async () => {
  C.dir = mkdtempSync(join(tmpdir(), 'vmsubst-malformed-'));
  C.agent = await startAgent(C.dir, ['--log-level', 'error']);
});
M.after(() => {
  C.agent?.kill();
  rmSync(C.dir, { recursive: true, force: true });
});

M('answers every one of 12,000 malformed messages with an error class, RSS bounded', () =>
  withTimeout(240_000, 'malformed', async () => {
    const N = 12_000;
    const sock: Socket = connect(C.agent!.sock);
    await new Promise((r, j) => sock.once('connect', r).once('error', j));
    const replies: Record<string, unknown>[] = [];
    const dec = new LineDecoder(2 << 20);
    sock.on('data', (b: Buffer) => {
      for (const f of dec.push(b)) if (f.kind === 'message') replies.push(f.value as Record<string, unknown>);
    });
    await waitFor(5000, 'greeting', () => (replies.length > 0 ? true : undefined));
    replies.length = 0;
    const rssStart = rssKiB(C.agent!.proc.pid!);
    let rssMax = rssStart;
    const expected: string[][] = [];
    let sent = 0;
    for (const m of badMessages(N)) {
      expected.push(m.expect);
      if (!sock.write(m.line + '\n')) await new Promise((r) => sock.once('drain', r));
      if (++sent % 1000 === 0) {
        await waitFor(60_000, `replies to ${sent}`, () => (replies.length >= sent ? true : undefined), 20);
        rssMax = Math.max(rssMax, rssKiB(C.agent!.proc.pid!));
      }
    }
    await waitFor(60_000, 'all replies', () => (replies.length >= N ? true : undefined), 20);
    assert.is(replies.length, N, 'exactly one reply per message');
    replies.forEach((r, i) => {
      const err = r['error'] as { class?: string } | undefined;
      assert.ok(err && expected[i]!.includes(err.class!), `message ${i}: ${JSON.stringify(r).slice(0, 200)}`);
    });
    sock.write('{"execute":"ping","id":"alive"}\n');
    await waitFor(5000, 'ping after the storm', () => (replies.some((r) => r['id'] === 'alive') ? true : undefined));
    const growthMiB = (rssMax - rssStart) / 1024;
    console.log(
      `  malformed: ${N} messages, RSS ${(rssStart / 1024).toFixed(0)} MiB → max ${(rssMax / 1024).toFixed(0)} MiB`,
    );
    assert.ok(growthMiB < 64, `RSS grew by ${growthMiB.toFixed(1)} MiB`);
    assert.is(C.agent!.proc.exitCode, null, 'the agent is still running');
    sock.destroy();
  }),
);

M.run();
