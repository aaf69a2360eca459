/**
 * The protocol commands and their handlers (agent/src/handlers/): one handler
 * per command of the schema, and a greeting derived from the table.
 */
import { suite } from 'uvu';
import * as assert from 'uvu/assert';
import { CAPABILITIES, handlers } from '../../../../agent/src/handlers/index.js';
import { Commands, Features } from '@vmsubst/common/protocol/schema';

const H = suite('handlers: one per protocol command');

H('every command of the schema has a handler, and every handler a command', () => {
  assert.equal(Object.keys(handlers).sort(), Object.keys(Commands).sort());
});

H('the substitution steps run one at a time; hello, ping and the read-only commands do not queue', () => {
  const exclusive = Object.entries(handlers)
    .filter(([, h]) => h.exclusive)
    .map(([name]) => name)
    .sort();
  assert.equal(exclusive, ['abort', 'commit', 'prepare', 'substitute']);
});

H('the greeting announces every command by its name, then the features', () => {
  assert.equal(CAPABILITIES, [...Object.keys(handlers), ...Object.keys(Features)]);
  for (const name of Object.keys(Features)) assert.not.ok(name in Commands, `feature ${name} is not a command`);
});

H('an older host finds every capability it looks for (two-phase, plan, envelope-v2, elf-code, report, stale)', () => {
  const announcedBefore = [
    'hello',
    'ping',
    'substitute',
    'prepare',
    'commit',
    'abort',
    'two-phase',
    'plan',
    'envelope-v2',
    'report',
    'elf-code',
    'stale',
    'readback',
    'readers',
  ];
  assert.equal([...CAPABILITIES].sort(), announcedBefore.sort());
});

H.run();
