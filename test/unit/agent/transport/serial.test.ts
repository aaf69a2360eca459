/**
 * The virtio-serial transport's wake-up: the port reads end-of-file while no host is connected,
 * so the stream is made anew after a pause; SIGIO (the kernel's signal for the host side
 * connecting, armed with notifyAsync) ends the pause at once. The port here is a plain file and
 * the streams are PassThroughs the test ends, as the host disconnecting does.
 */
import { suite } from 'uvu';
import * as assert from 'uvu/assert';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { PassThrough, type Duplex } from 'node:stream';
import { SerialTransport } from '../../../../agent/src/transport/serial.js';
import type { Logger } from '../../../../agent/src/log.js';

const quiet: Logger = { debug() {}, info() {}, warn() {}, error() {} };
const S = suite('serial transport: reopen on SIGIO');
let dir = '';
let port = '';

S.before.each(() => {
  dir = mkdtempSync(join(tmpdir(), 'vmsubst-serial-'));
  port = join(dir, 'org.vmsubst.0');
  writeFileSync(port, '');
});
S.after.each(() => rmSync(dir, { recursive: true, force: true }));

function harness(withSignal: boolean): {
  transport: SerialTransport;
  streams: PassThrough[];
  armed: number[];
} {
  const streams: PassThrough[] = [];
  const armed: number[] = [];
  const adopt = (): Duplex => {
    const s = new PassThrough();
    streams.push(s);
    return s;
  };
  const transport = new SerialTransport(
    port,
    adopt,
    quiet,
    (fd) => fd,
    60_000,
    withSignal ? (fd) => armed.push(fd) : undefined,
  );
  return { transport, streams, armed };
}

const tick = (): Promise<void> => new Promise((r) => setImmediate(r));

S('SIGIO in the pause after the host left makes the stream anew at once, without waiting the pause out', async () => {
  const before = process.listenerCount('SIGIO');
  const { transport, streams, armed } = harness(true);
  let connections = 0;
  await transport.start(() => connections++);
  try {
    assert.is(connections, 1);
    assert.is(armed.length, 1, 'the held descriptor is armed once');
    assert.is(process.listenerCount('SIGIO'), before + 1, 'SIGIO is handled before it is armed');
    process.emit('SIGIO', 'SIGIO');
    await tick();
    assert.is(connections, 1, 'a signal while a stream is open (data) makes no new stream');
    streams[0]!.end(); // the host disconnects: end-of-file
    streams[0]!.resume();
    await tick();
    assert.is(connections, 1, 'in the pause (60 s here)');
    process.emit('SIGIO', 'SIGIO'); // the host connects
    await tick();
    assert.is(connections, 2, 'the new stream is made on the signal');
    assert.is(armed.length, 1, 'not armed again');
  } finally {
    await transport.stop();
  }
  streams.at(-1)!.end();
  process.emit('SIGIO', 'SIGIO');
  await tick();
  assert.is(streams.length, 2, 'nothing is opened after stop');
});

S('without notifyAsync no SIGIO handler is installed and the pause is waited out', async () => {
  const before = process.listenerCount('SIGIO');
  const { transport, streams } = harness(false);
  let connections = 0;
  await transport.start(() => connections++);
  try {
    assert.is(process.listenerCount('SIGIO'), before);
    streams[0]!.end();
    streams[0]!.resume();
    await tick();
    process.emit('SIGIO', 'SIGIO');
    await tick();
    assert.is(connections, 1);
  } finally {
    await transport.stop();
  }
});

S.run();
