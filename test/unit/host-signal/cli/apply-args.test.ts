import { suite } from 'uvu';
import * as assert from 'uvu/assert';
import { APPLY_OPTIONS, applyRequest, type ApplyRequest } from '../../../../host-signal/src/cli/commands/apply.js';
import { parse } from '../../../../host-signal/src/cli/common.js';
import { UsageError } from '../../../../host-signal/src/errors.js';

const Args = suite('apply: the command line, checked');

function request(args: string[]): ApplyRequest {
  const { values, positionals } = parse('apply', args, APPLY_OPTIONS);
  return applyRequest(values, positionals);
}

function refused(args: string[], message: RegExp): void {
  try {
    request(args);
  } catch (e) {
    assert.instance(e, UsageError, args.join(' '));
    const u = e as UsageError;
    assert.is(u.code, 'E_VMSUBST_USAGE');
    assert.match(u.message, message);
    assert.is(u.hint, "see 'vmsubst apply --help'");
    return;
  }
  assert.unreachable(`${args.join(' ')} was accepted`);
}

Args('--qmp: the nbd mode by default, the drive selector and state directory passed on', () => {
  assert.equal(request(['b.vsb', '--qmp', 'q.sock', '--device', 'vblk0', '--state-dir', '/s']), {
    bundlePath: 'b.vsb',
    target: { kind: 'qemu', qmp: 'q.sock', options: { mode: 'nbd', device: 'vblk0', stateDir: '/s' }, commit: false },
    onNoAgent: 'warn',
    trustedKeys: [],
    json: false,
  });
});

Args('--mode overlay takes --overlay and --commit', () => {
  const r = request([
    'b.vsb',
    '--qmp',
    'q',
    '--mode',
    'overlay',
    '--node',
    'disk0',
    '--overlay',
    '/o.qcow2',
    '--commit',
    '--json',
  ]);
  assert.equal(r.target, {
    kind: 'qemu',
    qmp: 'q',
    options: { mode: 'overlay', node: 'disk0', overlayPath: '/o.qcow2' },
    commit: true,
  });
  assert.ok(r.json);
});

Args('--image: the raw-file mode, with the writers allowed', () => {
  const r = request([
    'b.vsb',
    '--image',
    'd.img',
    '--allow-writer',
    '42',
    '--allow-writer',
    '7',
    '--trusted-key',
    'k.pub',
  ]);
  assert.equal(r.target, { kind: 'image', path: 'd.img', allowWriters: [42, 7] });
  assert.equal(r.trustedKeys, ['k.pub']);
});

Args('--notify: the agent address parsed, the disk, key, customization, force and timeout gathered', () => {
  const r = request([
    'b.vsb',
    '--qmp',
    'q',
    '--notify',
    'serial:/a.sock',
    '--disk-serial',
    'data',
    '--sign',
    'k.key',
    '--customize',
    'c.json',
    '--force',
    '--timeout',
    '1.5',
    '--on-no-agent',
    'reset',
  ]);
  assert.equal(r.notify, {
    agent: { kind: 'serial', path: '/a.sock' },
    disk: { serial: 'data' },
    signKey: 'k.key',
    customize: 'c.json',
    force: true,
    timeoutMs: 1500,
  });
  assert.is(r.onNoAgent, 'reset');
});

Args('wrong combinations are usage errors with a hint', () => {
  refused(['b.vsb'], /exactly one of --qmp SOCK, --image PATH or --libvirt DOMAIN/);
  refused(['b.vsb', '--qmp', 'q', '--image', 'i'], /exactly one of/);
  refused(['b.vsb', '--qmp', 'q', '--mode', 'bogus'], /--mode bogus: expected one of nbd, overlay, raw-file/);
  refused(['b.vsb', '--qmp', 'q', '--mode', 'raw-file'], /--mode raw-file writes an image file/);
  refused(['b.vsb', '--image', 'i', '--mode', 'nbd'], /--mode nbd writes through QEMU/);
  refused(['b.vsb', '--image', 'i', '--device', 'd'], /--device and --node go with --qmp/);
  refused(['b.vsb', '--qmp', 'q', '--device', 'd', '--node', 'n'], /give --device or --node, not both/);
  refused(['b.vsb', '--image', 'i', '--state-dir', 's'], /--state-dir goes with --qmp/);
  refused(['b.vsb', '--qmp', 'q', '--allow-writer', '1'], /--allow-writer goes with --image/);
  refused(['b.vsb', '--image', 'i', '--allow-writer', '0x1'], /--allow-writer 0x1: expected a process id/);
  refused(['b.vsb', '--qmp', 'q', '--commit'], /--overlay and --commit go with --mode overlay/);
  refused(['b.vsb', '--image', 'i', '--overlay', 'o'], /--overlay and --commit go with --mode overlay/);
  refused(['b.vsb', '--qmp', 'q', '--sign', 'k'], /--sign goes with --notify ADDR/);
  refused(
    ['b.vsb', '--qmp', 'q', '--notify', 'unix:/a', '--disk-serial', 's', '--disk-path', 'p'],
    /--disk-serial or --disk-path/,
  );
  refused(['b.vsb', '--qmp', 'q', '--notify', 'unix:/a', '--timeout', '0'], /--timeout 0: expected a positive number/);
  refused(['b.vsb', '--qmp', 'q', '--on-no-agent', 'shrug'], /--on-no-agent shrug: expected fail, warn or reset/);
  refused(
    ['b.vsb', '--image', 'i', '--on-no-agent', 'reset'],
    /--on-no-agent=reset restarts the VM with QMP system_reset/,
  );
  refused(['--qmp', 'q'], /apply: missing BUNDLE/);
});

Args('a malformed agent address is a usage error', () => {
  assert.throws(
    () => request(['b.vsb', '--qmp', 'q', '--notify', 'tcp:1.2.3.4:5']),
    (e: unknown) => e instanceof UsageError,
  );
});

Args('--libvirt: the overlay mode, the disk and connection passed on, the agent read from the domain', () => {
  assert.equal(
    request([
      'b.vsb',
      '--libvirt',
      'web-1',
      '--connect',
      'qemu:///system',
      '--disk-serial',
      'vmsubst-data',
      '--commit',
    ]),
    {
      bundlePath: 'b.vsb',
      target: {
        kind: 'libvirt',
        domain: 'web-1',
        options: { connect: 'qemu:///system', serial: 'vmsubst-data' },
        commit: true,
      },
      notify: { agent: 'auto', disk: { serial: 'vmsubst-data' }, force: false },
      onNoAgent: 'warn',
      trustedKeys: [],
      json: false,
    },
  );
  const r = request([
    'b.vsb',
    '--libvirt',
    'web-1',
    '--disk',
    'vdb',
    '--overlay-dir',
    '/srv',
    '--notify',
    'vsock:3:5252',
  ]);
  assert.equal(r.target, {
    kind: 'libvirt',
    domain: 'web-1',
    options: { target: 'vdb', overlayDir: '/srv' },
    commit: false,
  });
  assert.equal(r.notify?.agent, { kind: 'vsock', cid: 3, port: 5252 });
});

Args('--libvirt refuses what it cannot do, and the nbd mode unless the taint is accepted', () => {
  refused(['b', '--libvirt', 'd', '--qmp', 'q'], /exactly one of --qmp SOCK, --image PATH or --libvirt DOMAIN/);
  refused(['b', '--libvirt', 'd', '--mode', 'nbd'], /tainted 'custom-monitor'.*--allow-taint/);
  refused(['b', '--libvirt', 'd', '--mode', 'raw-file'], /raw-file/);
  refused(
    ['b', '--libvirt', 'd', '--mode', 'nbd', '--allow-taint', '--commit'],
    /--mode nbd writes into the disk in place/,
  );
  refused(['b', '--libvirt', 'd', '--allow-taint'], /--allow-taint goes with --mode nbd/);
  refused(['b', '--libvirt', 'd', '--state-dir', '/s'], /--state-dir goes with --mode nbd/);
  assert.equal(request(['b', '--libvirt', 'd', '--mode', 'nbd', '--allow-taint', '--disk', 'vdb']).target, {
    kind: 'libvirt',
    domain: 'd',
    options: { target: 'vdb' },
    commit: false,
    taint: true,
  });
  refused(['b', '--libvirt', 'd', '--device', 'vblk0'], /--disk TARGET or --disk-serial/);
  refused(['b', '--libvirt', 'd', '--disk', 'vdb', '--disk-serial', 's'], /not both/);
  refused(['b', '--libvirt', 'd', '--overlay', '/x.qcow2'], /--overlay-dir/);
  refused(['b', '--qmp', 'q', '--connect', 'qemu:///system'], /--connect goes with --libvirt/);
  refused(['b', '--qmp', 'q', '--notify', 'auto'], /--notify auto reads the address from a libvirt domain/);
});

Args.run();
