import { suite } from 'uvu';
import * as assert from 'uvu/assert';
import { writeFileSync } from 'node:fs';
import { fleetFromJson, loadFleet, StateFile } from '../../../../host-signal/src/rollout/index.js';
import { UsageError } from '../../../../host-signal/src/errors.js';
import type { VmOutcome } from '../../../../host-signal/src/rollout/index.js';
import { TempDir } from '../fixtures.js';

const Fleet = suite('rollout: fleet file');

Fleet('defaults apply, relative paths are taken from the fleet file, addresses parse', () => {
  const f = fleetFromJson(
    {
      defaults: { device: 'vblk0', disk: { serial: 'vmsubst-data' } },
      vms: [
        { name: 'web-1', qmp: 'vm1/qmp.sock', agent: 'serial:vm1/agent.sock' },
        {
          name: 'web-2',
          qmp: '/run/vm2/qmp.sock',
          node: 'disk0',
          agent: 'hvsock:/run/vm2/v.sock:5252',
          policies: { 'elf-code-changed': 'pin' },
        },
        { name: 'web-3', qmp: '/run/vm3/qmp.sock', agent: 'vsock:7:5252', customization: { hostname: 'web-3' } },
      ],
    },
    '/etc/fleets',
  );
  assert.equal(f[0], {
    name: 'web-1',
    qmp: '/etc/fleets/vm1/qmp.sock',
    device: 'vblk0',
    disk: { serial: 'vmsubst-data' },
    agent: { kind: 'serial', path: '/etc/fleets/vm1/agent.sock' },
  });
  assert.is(f[1]!.node, 'disk0');
  assert.is(f[1]!.device, undefined, "a VM's node overrides the default device");
  assert.equal(f[1]!.agent, { kind: 'hvsock', path: '/run/vm2/v.sock', port: 5252 });
  assert.equal(f[1]!.policies, { 'elf-code-changed': 'pin' });
  assert.equal(f[2]!.agent, { kind: 'vsock', cid: 7, port: 5252 });
  assert.equal(f[2]!.customization, { hostname: 'web-3' });
});

Fleet('libvirt domains by name, with an optional connection URI; device is the disk target', () => {
  const f = fleetFromJson(
    {
      defaults: { disk: { serial: 'vmsubst-data' } },
      vms: [
        { name: 'web-1', libvirt: 'web-1' },
        { name: 'db-1', libvirt: 'db', connect: 'qemu+ssh://h2/system', device: 'vdb' },
      ],
    },
    '/',
  );
  assert.equal(f[0], { name: 'web-1', libvirt: { domain: 'web-1' }, disk: { serial: 'vmsubst-data' } });
  assert.equal(f[1]!.libvirt, { domain: 'db', connect: 'qemu+ssh://h2/system' });
  assert.is(f[1]!.device, 'vdb');
  assert.is(f[1]!.qmp, undefined);
});

Fleet('a VM without an agent address is allowed (an unenlightened guest)', () => {
  const f = fleetFromJson({ vms: [{ name: 'old', qmp: '/q' }] }, '/');
  assert.is(f[0]!.agent, undefined);
  assert.equal(f[0]!.disk, {});
});

Fleet('bad fleets are usage errors that say where', () => {
  const cases: [unknown, RegExp][] = [
    [{ vms: [] }, /\/vms: must NOT have fewer than 1 items/],
    [{ vms: [{ name: 'a' }] }, /\/vms\/0: give qmp \(a QEMU's QMP socket\) or libvirt \(a domain\)/],
    [{ vms: [{ name: 'a', qmp: '/q', libvirt: 'd' }] }, /give qmp .* or libvirt .*, one of them/],
    [{ vms: [{ name: 'a', qmp: '/q', connect: 'qemu:///system' }] }, /\/vms\/0\/connect: goes with libvirt/],
    [{ vms: [{ name: 'a', qmp: '/q', colour: 'red' }] }, /unknown field 'colour'/],
    [
      {
        vms: [
          { name: 'a', qmp: '/q' },
          { name: 'a', qmp: '/r' },
        ],
      },
      /'a' appears twice/,
    ],
    [{ vms: [{ name: 'a', qmp: '/q', agent: 'tcp:1:2' }] }, /\/vms\/0\/agent: 'tcp:1:2': unknown agent address/],
    [{ vms: [{ name: 'a b', qmp: '/q' }] }, /\/vms\/0\/name/],
    [{ vms: [{ name: 'a', qmp: '/q', device: 'x', node: 'y' }] }, /device or node, not both/],
  ];
  for (const [value, re] of cases) {
    assert.throws(
      () => fleetFromJson(value, '/'),
      (e: unknown) => e instanceof UsageError && re.test((e as Error).message),
      JSON.stringify(value),
    );
  }
});

Fleet('loadFleet names the file in its errors', async () => {
  const t = new TempDir();
  try {
    const p = t.file('f.json', Buffer.from('{"vms": [}'));
    const e = await loadFleet(p).catch((x: unknown) => x);
    assert.instance(e, UsageError);
    assert.match((e as Error).message, /fleet file .*f\.json: not JSON/);
    const missing = await loadFleet(t.file('none.json')).catch((x: unknown) => x);
    assert.match((missing as Error).message, /no such file/);
  } finally {
    t.remove();
  }
});

const State = suite('rollout: state file');

const outcome = (name: string, status: VmOutcome['status'], id = 'a'.repeat(64)): VmOutcome => ({
  name,
  status,
  id,
  agent: { told: true, resends: 0, retries: 0 },
  reset: false,
  notes: [],
  elapsedMs: 1,
});

State('records outcomes, and a reopened state knows which VMs are done with which id', async () => {
  const t = new TempDir();
  try {
    const p = t.file('s.json');
    const s = await StateFile.open(p, 'b'.repeat(64));
    await s.record(outcome('web-1', 'applied'));
    await s.record(outcome('web-2', 'refused'));
    await s.record(outcome('web-3', 'not-started'));
    const again = await StateFile.open(p, 'b'.repeat(64));
    assert.ok(again.done('web-1', 'a'.repeat(64)));
    assert.not.ok(again.done('web-1', 'c'.repeat(64)), 'another substitution id (other customization) is not done');
    assert.not.ok(again.done('web-2', 'a'.repeat(64)), 'refused is not done');
    assert.not.ok(again.done('web-3', 'a'.repeat(64)), 'not-started is not recorded');
  } finally {
    t.remove();
  }
});

State('a state file of another bundle, or not a state file, is refused', async () => {
  const t = new TempDir();
  try {
    const p = t.file('s.json');
    await (await StateFile.open(p, 'b'.repeat(64))).record(outcome('web-1', 'applied'));
    const e = await StateFile.open(p, 'd'.repeat(64)).catch((x: unknown) => x);
    assert.instance(e, UsageError);
    assert.match((e as Error).message, /records a rollout of bundle b{16}…, not of this bundle/);
    writeFileSync(p, '{"hello": 1}');
    const e2 = await StateFile.open(p, 'b'.repeat(64)).catch((x: unknown) => x);
    assert.match((e2 as Error).message, /not a rollout state file/);
  } finally {
    t.remove();
  }
});

Fleet.run();
State.run();
