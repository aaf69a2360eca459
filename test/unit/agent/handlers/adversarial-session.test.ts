/**
 * A peer that sends faster than the agent answers is paused: not only after
 * 64 requests, but once 4 MiB of requests are queued, so big requests cannot
 * pile up 64 MiB per connection. Every request is still answered, in order,
 * and the stream resumes.
 */
import { suite } from 'uvu';
import * as assert from 'uvu/assert';
import { Duplex } from 'node:stream';
import { MAX_QUEUED_BYTES, Session } from '../../../../agent/src/session.js';
import { createLogger } from '../../../../agent/src/log.js';

const S = suite('adversarial: session read-ahead is bounded in bytes');

/** A duplex whose readable side the test pushes into and whose writes it collects. */
class Pipe extends Duplex {
  readonly written: string[] = [];
  override _read(): void {}
  override _write(chunk: Buffer, _enc: BufferEncoding, cb: () => void): void {
    this.written.push(chunk.toString());
    cb();
  }
}

S('big requests pause the stream once the queued bytes pass the cap, and all are answered', async () => {
  const stream = new Pipe();
  let release: () => void = () => undefined;
  const gate = new Promise<void>((r) => (release = r));
  let calls = 0;
  const session = new Session(
    stream,
    { transport: 'unix', description: 'test', greets: false },
    { version: 't', protocol: 1, capabilities: [] },
    {
      dispatch: async () => {
        calls++;
        await gate; // the first command runs long; the rest queue behind it
        return {};
      },
      whyNot: () => undefined,
    },
    createLogger('error', () => undefined),
  );
  // Arguments are checked in the queue, after the read-ahead: 900 KB requests, each refused in turn.
  const line = (i: number): string =>
    JSON.stringify({ execute: 'ping', id: i, arguments: { pad: 'x'.repeat(900_000) } }) + '\n';
  const first = JSON.stringify({ execute: 'ping', id: 0 }) + '\n';
  stream.push(first);
  for (let i = 1; i <= 20; i++) stream.push(line(i));
  await new Promise((r) => setTimeout(r, 200));
  const q = session.queued;
  assert.ok(q.paused, `paused after ${q.requests} requests, ${q.bytes} bytes`);
  assert.ok(q.requests < 20, `read ahead ${q.requests} requests: the byte cap did not stop it`);
  assert.ok(q.bytes <= MAX_QUEUED_BYTES + 1_000_000, `${q.bytes} bytes queued`);
  release();
  await new Promise((r) => setTimeout(r, 500));
  const replies = stream.written
    .join('')
    .trim()
    .split('\n')
    .map((l) => JSON.parse(l) as { id: number; error?: { class: string } });
  assert.is(replies.length, 21, 'every request answered');
  assert.equal(
    replies.map((r) => r.id),
    Array.from({ length: 21 }, (_, i) => i),
    'in order',
  );
  assert.is(replies[1]!.error?.class, 'InvalidArguments');
  assert.is(calls, 1);
  assert.not.ok(session.queued.paused, 'resumed');
});

S.run();
