/** Which policy a changed file gets: per path before per class, the notification before the configuration. */
import { test } from 'uvu';
import * as assert from 'uvu/assert';
import { choosePolicy, DEFAULT_POLICIES } from '../../../agent/src/commands/plan.js';

test('defaults: remap for data and same-layout ELF, pin for ELF whose layout changed', () => {
  assert.equal(DEFAULT_POLICIES, { data: 'remap', 'elf-same-layout': 'remap', 'elf-new-layout': 'pin' });
  assert.equal(choosePolicy('/mnt/bin/a', '/bin/a', 'elf-new-layout', {}), { policy: 'pin', from: 'default' });
  assert.equal(choosePolicy('/mnt/bin/a', '/bin/a', 'data', {}), { policy: 'remap', from: 'default' });
});

test('a class policy from the configuration replaces the default; the notification beats both', () => {
  assert.equal(choosePolicy('/a', '/a', 'data', { config: { data: 'report' } }), { policy: 'report', from: 'config' });
  assert.equal(choosePolicy('/a', '/a', 'data', { config: { data: 'report' }, notification: { data: 'restart' } }), { policy: 'restart', from: 'notification' });
});

test('a path policy beats every class policy, by absolute or filesystem-relative path', () => {
  const config = { files: { '/bin/a': 'restart' as const } };
  const notification = { 'elf-new-layout': 'remap' as const };
  assert.equal(choosePolicy('/mnt/bin/a', '/bin/a', 'elf-new-layout', { config, notification }), { policy: 'restart', from: 'config' });
  assert.equal(choosePolicy('/mnt/bin/a', '/bin/a', 'elf-new-layout', { notification: { files: { '/mnt/bin/a': 'report' } }, config }), { policy: 'report', from: 'notification' });
  assert.equal(choosePolicy('/mnt/bin/b', '/bin/b', 'elf-new-layout', { config, notification }), { policy: 'remap', from: 'notification' });
});

test.run();
