/**
 * The agent's failures (agent/src/errors.ts): a stable code per family, a hint
 * for the reader, the protocol's class for the wire, and one way to read the
 * message of anything thrown.
 */
import { suite } from 'uvu';
import * as assert from 'uvu/assert';
import { AgentError, CommandError, codeOf, errnoCode, messageOf, reasonOf } from '../../../agent/src/errors.js';
import { ConfigError } from '../../../agent/src/config.js';

const E = suite('agent errors: codes and hints');

E('a command error carries its protocol class, a code derived from it and the default hint of the class', () => {
  const e = new CommandError('VerifyMismatch', 'range 0+4096 holds neither the old nor the new content');
  assert.ok(e instanceof AgentError);
  assert.is(e.errorClass, 'VerifyMismatch');
  assert.is(e.code, 'E_VMSUBST_VERIFY_MISMATCH');
  assert.match(e.hint ?? '', /write them/);
  assert.is(e.name, 'CommandError');
});

E('a hint given replaces the class default; the data stays for the wire', () => {
  const e = new CommandError('Unauthorized', 'no', { why: 1 }, { hint: 'ask root' });
  assert.is(e.hint, 'ask root');
  assert.equal(e.data, { why: 1 });
});

E('every class maps to one E_VMSUBST_ code', () => {
  assert.is(codeOf('GenericError'), 'E_VMSUBST_GENERIC_ERROR');
  assert.is(codeOf('KmodUnavailable'), 'E_VMSUBST_KMOD_UNAVAILABLE');
  assert.is(codeOf('Busy'), 'E_VMSUBST_BUSY');
});

E('configuration errors are agent errors with their own code', () => {
  const e = new ConfigError(['vsock.port: must be an integer']);
  assert.ok(e instanceof AgentError);
  assert.is(e.code, 'E_VMSUBST_CONFIG');
  assert.match(e.message, /invalid configuration:\n {2}vsock.port/);
});

E('messageOf and reasonOf read anything thrown; an agent error code is not taken for an errno', () => {
  const enoent = Object.assign(new Error('ENOENT: no such file or directory'), { code: 'ENOENT' });
  assert.is(messageOf(enoent), 'ENOENT: no such file or directory');
  assert.is(reasonOf(enoent), 'ENOENT');
  assert.is(messageOf('plain text'), 'plain text');
  assert.is(reasonOf(42), '42');
  const mine = new CommandError('InvalidateFailed', 'cannot open /x');
  assert.is(errnoCode(mine), undefined);
  assert.is(reasonOf(mine), 'cannot open /x');
});

E.run();
