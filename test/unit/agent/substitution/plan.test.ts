/** Which policy a changed file gets: per path before per class, the notification before the configuration. */
import { test } from 'uvu';
import * as assert from 'uvu/assert';
import { choosePolicy, DEFAULT_POLICIES, hintClass } from '../../../../agent/src/substitution/plan.js';

test('defaults: remap for data and ELF files whose code is unchanged, pin for ELF files whose code changed', () => {
  assert.equal(DEFAULT_POLICIES, { data: 'remap', 'elf-code-unchanged': 'remap', 'elf-code-changed': 'pin' });
  assert.equal(choosePolicy('/mnt/bin/a', '/bin/a', 'elf-code-changed', {}), { policy: 'pin', from: 'default' });
  assert.equal(choosePolicy('/mnt/bin/a', '/bin/a', 'elf-code-unchanged', {}), { policy: 'remap', from: 'default' });
  assert.equal(choosePolicy('/mnt/bin/a', '/bin/a', 'data', {}), { policy: 'remap', from: 'default' });
});

test("the hint's class: only code-unchanged is remap's class; an older host's same-layout is taken as code-changed", () => {
  assert.is(hintClass({ path: '/lib/libvx.so', elf: 'code-unchanged' }), 'elf-code-unchanged');
  assert.is(hintClass({ path: '/lib/libvx.so', elf: 'code-changed' }), 'elf-code-changed');
  assert.is(hintClass({ path: '/lib/libvx.so', elf: 'same-layout' }), 'elf-code-changed');
  assert.is(hintClass({ path: '/lib/libvx.so', elf: 'new-layout' }), 'elf-code-changed');
  assert.is(hintClass({ path: '/etc/motd' }), 'data');
});

test('a class policy from the configuration replaces the default; the notification beats both', () => {
  assert.equal(choosePolicy('/a', '/a', 'data', { config: { data: 'report' } }), { policy: 'report', from: 'config' });
  assert.equal(choosePolicy('/a', '/a', 'data', { config: { data: 'report' }, notification: { data: 'restart' } }), {
    policy: 'restart',
    from: 'notification',
  });
});

test('the older class names apply where the new name is not given: elf-new-layout to code-changed, elf-same-layout to code-unchanged', () => {
  const older = { 'elf-same-layout': 'remap' as const, 'elf-new-layout': 'restart' as const };
  assert.equal(choosePolicy('/a', '/a', 'elf-code-changed', { config: older }), { policy: 'restart', from: 'config' });
  assert.equal(choosePolicy('/a', '/a', 'elf-code-unchanged', { config: older }), { policy: 'remap', from: 'config' });
  // An older `elf-same-layout: remap` never reaches a file whose code changed.
  assert.equal(choosePolicy('/a', '/a', 'elf-code-changed', { config: { 'elf-same-layout': 'remap' } }), {
    policy: 'pin',
    from: 'default',
  });
  assert.equal(choosePolicy('/a', '/a', 'elf-code-changed', { config: { ...older, 'elf-code-changed': 'pin' } }), {
    policy: 'pin',
    from: 'config',
  });
});

test('a path policy beats every class policy, by absolute or filesystem-relative path', () => {
  const config = { files: { '/bin/a': 'restart' as const } };
  const notification = { 'elf-code-changed': 'remap' as const };
  assert.equal(choosePolicy('/mnt/bin/a', '/bin/a', 'elf-code-changed', { config, notification }), {
    policy: 'restart',
    from: 'config',
  });
  assert.equal(
    choosePolicy('/mnt/bin/a', '/bin/a', 'elf-code-changed', {
      notification: { files: { '/mnt/bin/a': 'report' } },
      config,
    }),
    { policy: 'report', from: 'notification' },
  );
  assert.equal(choosePolicy('/mnt/bin/b', '/bin/b', 'elf-code-changed', { config, notification }), {
    policy: 'remap',
    from: 'notification',
  });
});

test.run();
