import { suite } from 'uvu';
import * as assert from 'uvu/assert';
import { LineDecoder, encode, validateRequest, argsValidator } from '@vmsubst/common/protocol/codec';

const Decode = suite('LineDecoder');

Decode('splits lines across chunks', () => {
  const d = new LineDecoder();
  assert.equal(d.push(Buffer.from('{"a":')), []);
  assert.equal(d.push(Buffer.from('1}\n{"b":2}\n')), [
    { kind: 'message', value: { a: 1 }, bytes: 7 },
    { kind: 'message', value: { b: 2 }, bytes: 7 },
  ]);
});

Decode('reports a line that is not JSON and recovers on the next', () => {
  const d = new LineDecoder();
  const frames = d.push(Buffer.from('nope\n{"ok":true}\n'));
  assert.is(frames[0]?.kind, 'invalid');
  assert.equal(frames[1], { kind: 'message', value: { ok: true }, bytes: 11 });
});

Decode('discards an over-long line once and resynchronises at its newline', () => {
  const d = new LineDecoder(64);
  const frames = [...d.push(Buffer.from('{"x":"' + 'a'.repeat(100))), ...d.push(Buffer.from('"}\n{"y":1}\n'))];
  assert.is(frames.length, 2);
  assert.is(frames[0]?.kind, 'invalid');
  assert.match((frames[0] as { reason: string }).reason, /exceeds the 64-byte cap/);
  assert.equal(frames[1], { kind: 'message', value: { y: 1 }, bytes: 7 });
});

Decode('ignores blank lines and a leading 0xff resync byte', () => {
  const d = new LineDecoder();
  assert.equal(d.push(Buffer.concat([Buffer.from([0xff]), Buffer.from('\n\n{"z":0}\n')])), [
    { kind: 'message', value: { z: 0 }, bytes: 7 },
  ]);
});

Decode.run();

const Encode = suite('encode');
Encode('terminates with a newline', () => {
  assert.is(encode({ a: 1 }).toString(), '{"a":1}\n');
});
Encode('refuses a message over the cap', () => {
  assert.throws(() => encode({ big: 'x'.repeat(2 << 20) }), /exceeds/);
});
Encode.run();

const Schema = suite('protocol schema');
Schema('accepts a request', () => {
  assert.equal(validateRequest.problems({ execute: 'ping', id: 1 }), []);
});
Schema('rejects unknown fields with their path', () => {
  assert.equal(validateRequest.problems({ execute: 'ping', bogus: 1 }), ["/: unknown field 'bogus'"]);
});
Schema('validates substitute arguments strictly', () => {
  const v = argsValidator('substitute');
  const good = {
    id: 'ab'.repeat(16),
    disk: { serial: 'x' },
    ranges: [{ offset: 0, length: 4096, sha256: '0'.repeat(64) }],
  };
  assert.equal(v.problems(good), []);
  assert.ok(v.problems({ ...good, ranges: [] }).length > 0, 'empty ranges');
  assert.ok(
    v.problems({ ...good, ranges: [{ offset: -1, length: 4096, sha256: '0'.repeat(64) }] }).length > 0,
    'negative offset',
  );
  assert.ok(v.problems({ ...good, ranges: [{ offset: 0, length: 4096, sha256: 'XYZ' }] }).length > 0, 'bad hash');
  assert.ok(v.problems({ ...good, disk: { path: '/etc/passwd; rm' } }).length > 0, 'bad path');
});
Schema.run();
