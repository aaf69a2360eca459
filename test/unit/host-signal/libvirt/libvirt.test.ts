/**
 * The libvirt module without libvirt: the live XML as libvirt 9 writes it
 * (parsed), the chain as qemu-nbd options, the disk chosen by target, serial
 * or base identity, and virsh's failures turned into errors that say what to
 * do (with a runner standing in for the virsh process). The real libvirtd is
 * the libvirt suite's (test/libvirt).
 */
import { suite } from 'uvu';
import * as assert from 'uvu/assert';
import type { Manifest } from '@vmsubst/common/bundle/schema';
import { existsSync, readFileSync } from 'node:fs';
import {
  agentAddress,
  applyToLibvirt,
  overlayPathFor,
  parseDomainXml,
  selectDisk,
  Virsh,
} from '../../../../host-signal/src/libvirt/index.js';
import { chainImageOpts } from '../../../../host-signal/src/libvirt/apply.js';
import { TargetError } from '../../../../host-signal/src/errors.js';
import { MiB, TempDir, image, sha256 } from '../fixtures.js';

const L = suite('libvirt: the live domain XML, the disk, virsh errors');
const tmp = new TempDir();
L.after(() => tmp.remove());

/** Trimmed from `virsh dumpxml` of a running libvirt 9.0 domain after one apply. */
const LIVE = `<domain type='qemu' id='3'>
  <name>web-1</name>
  <uuid>B01E5F65-4ED0-4EF8-B65C-524B36651CB9</uuid>
  <devices>
    <disk type='file' device='disk'>
      <driver name='qemu' type='qcow2'/>
      <source file='/var/lib/images/web-1.img.vmsubst-1c5d8a90d712.qcow2' index='2'/>
      <backingStore type='file' index='1'>
        <format type='raw'/>
        <source file='/var/lib/images/web-1.img'/>
        <backingStore/>
      </backingStore>
      <target dev='vdb' bus='virtio'/>
      <serial>vmsubst-data</serial>
    </disk>
    <disk type='block' device='disk'>
      <driver name='qemu' type='raw'/>
      <source dev='/dev/vg0/web-1-root' index='3'/>
      <backingStore/>
      <target dev='vda' bus='virtio'/>
      <shareable/>
      <alias name='virtio-disk0'/>
    </disk>
    <disk type='file' device='cdrom'>
      <target dev='sda' bus='sata'/>
      <readonly/>
    </disk>
    <channel type='unix'>
      <source mode='bind' path='/var/lib/libvirt/qemu/channel/target/domain-3-web-1/org.vmsubst.0'/>
      <target type='virtio' name='org.vmsubst.0' state='connected'/>
    </channel>
    <channel type='unix'>
      <source mode='bind' path='/var/lib/libvirt/qemu/channel/target/domain-3-web-1/org.qemu.guest_agent.0'/>
      <target type='virtio' name='org.qemu.guest_agent.0'/>
    </channel>
    <vsock model='virtio'>
      <cid auto='yes' address='3'/>
    </vsock>
  </devices>
</domain>`;

L('the live XML: disks with their chains (top first), the agent channel, the vsock CID', () => {
  const d = parseDomainXml(LIVE);
  assert.is(d.name, 'web-1');
  assert.is(d.id, 3);
  assert.is(d.uuid, 'b01e5f65-4ed0-4ef8-b65c-524b36651cb9');
  assert.equal(d.disks[0], {
    target: 'vdb',
    device: 'disk',
    serial: 'vmsubst-data',
    readOnly: false,
    shareable: false,
    chain: [
      { type: 'file', format: 'qcow2', path: '/var/lib/images/web-1.img.vmsubst-1c5d8a90d712.qcow2' },
      { type: 'file', format: 'raw', path: '/var/lib/images/web-1.img' },
    ],
  });
  assert.equal(d.disks[1]!.chain, [{ type: 'block', format: 'raw', path: '/dev/vg0/web-1-root' }]);
  assert.ok(d.disks[1]!.shareable);
  assert.is(d.disks[1]!.alias, 'virtio-disk0');
  assert.equal(d.disks[2]!.chain, [], 'an empty cdrom has no image');
  assert.ok(d.disks[2]!.readOnly);
  assert.is(d.channelPath, '/var/lib/libvirt/qemu/channel/target/domain-3-web-1/org.vmsubst.0');
  assert.is(d.vsockCid, 3);
  assert.equal(agentAddress(d), { kind: 'serial', path: d.channelPath });
  assert.equal(agentAddress({ ...d, channelPath: undefined } as never), { kind: 'vsock', cid: 3, port: 5252 });
  assert.is(agentAddress({ name: 'x', disks: [] }), undefined);
});

L('XML that is not a domain is an error', () => {
  assert.throws(() => parseDomainXml('<network/>'), /no <domain> element/);
});

L('the chain as qemu-nbd --image-opts: every image named with its format, no locks; commas escaped', () => {
  const d = parseDomainXml(LIVE);
  assert.is(
    chainImageOpts(d.disks[0]!.chain),
    'driver=qcow2,file.driver=file,file.filename=/var/lib/images/web-1.img.vmsubst-1c5d8a90d712.qcow2,' +
      'file.locking=off,backing.driver=raw,backing.file.driver=file,backing.file.filename=/var/lib/images/web-1.img,' +
      'backing.file.locking=off',
  );
  assert.match(chainImageOpts([{ type: 'file', format: 'raw', path: '/a,b' }]), /filename=\/a,,b,/);
});

L('the overlay goes beside the top image, named after the bottom one and the bundle, or in --overlay-dir', () => {
  const d = parseDomainXml(LIVE).disks[0]!;
  const id = 'ab'.repeat(32);
  assert.is(overlayPathFor(d, id), '/var/lib/images/web-1.img.vmsubst-abababababab.qcow2');
  assert.is(overlayPathFor(d, id, '/srv/ov'), '/srv/ov/web-1.img.vmsubst-abababababab.qcow2');
});

/** A manifest of one range over a raw image; its base is `base`. */
function manifest(base: Buffer, patched: Buffer): Manifest {
  return {
    format: 1,
    id: 'cd'.repeat(32),
    'block-size': 4096,
    base: { size: base.length },
    ranges: [
      {
        offset: 4096,
        length: 4096,
        'old-sha256': sha256(base.subarray(4096, 8192)),
        'new-sha256': sha256(patched.subarray(4096, 8192)),
      },
    ],
  } as unknown as Manifest;
}

L(
  'the disk: by target, by serial, or the one that holds the base; none or several is an error listing them',
  async () => {
    const base = image(1 * MiB);
    const patched = Buffer.from(base);
    patched.fill(7, 4096, 8192);
    const other = image(1 * MiB);
    const m = manifest(base, patched);
    const xml = (files: string[]): string =>
      `<domain><name>v</name><devices>${files
        .map(
          (f, i) =>
            `<disk type='file' device='disk'><driver type='raw'/><source file='${f}'/>` +
            `<target dev='vd${'bcd'[i]}'/><serial>s${i}</serial></disk>`,
        )
        .join('')}</devices></domain>`;
    const a = tmp.file('a.img', base);
    const b = tmp.file('b.img', other);
    const c = tmp.file('c.img', patched);
    const one = parseDomainXml(xml([a, b]));
    assert.is((await selectDisk(m, one, {})).target, 'vdb');
    assert.is((await selectDisk(m, one, { target: 'vdc' })).target, 'vdc');
    assert.is((await selectDisk(m, one, { serial: 's1' })).target, 'vdc');
    try {
      await selectDisk(m, one, { target: 'vdz' });
      assert.unreachable();
    } catch (e) {
      assert.instance(e, TargetError);
      assert.match((e as TargetError).message, /no disk with target vdz/);
      assert.match((e as TargetError).hint ?? '', /vdb \(serial s0, .*a\.img\), vdc/);
    }
    // The base and the patched image both hold this bundle's base (old or new content): which one is not guessed.
    await selectDisk(m, parseDomainXml(xml([a, c])), {}).then(
      () => assert.unreachable(),
      (e: Error) => assert.match(e.message, /2 disks of domain v match the bundle's base: vdb .*vdc/),
    );
    await selectDisk(m, parseDomainXml(xml([b])), {}).then(
      () => assert.unreachable(),
      (e: Error) => assert.match(e.message, /no disk of domain v holds the bundle's base/),
    );
  },
);

L("virsh's failures: what failed and what to do", async () => {
  const failing = (message: string): Virsh =>
    new Virsh({ connect: 'qemu:///x', run: () => Promise.reject(new Error(message)) });
  await failing('failed to connect to the hypervisor; Failed to connect socket to /x: No such file or directory')
    .domainState('d')
    .then(
      () => assert.unreachable(),
      (e: TargetError) => {
        assert.match(e.message, /virsh domstate d: cannot reach libvirtd at qemu:\/\/\/x/);
        assert.match(e.hint ?? '', /is libvirtd running/);
      },
    );
  await failing("failed to get domain 'nope'")
    .dumpXml('nope')
    .then(
      () => assert.unreachable(),
      (e: TargetError) => assert.match(e.hint ?? '', /virsh -c qemu:\/\/\/x list --all/),
    );
  const seen: string[][] = [];
  const v = new Virsh({ connect: 'u', run: (args) => (seen.push([...args]), Promise.resolve({ stdout: 'a\nb\n\n' })) });
  assert.equal(await v.runningDomains(), ['a', 'b']);
  await v.snapshotOnto('d', 'vdb', '/o.qcow2', ['vda']);
  assert.equal(seen[1], [
    '-c',
    'u',
    'snapshot-create-as',
    'd',
    '--disk-only',
    '--no-metadata',
    '--reuse-external',
    '--diskspec',
    'vdb,snapshot=external,file=/o.qcow2,driver=qcow2',
    '--diskspec',
    'vda,snapshot=no',
  ]);
});

L('a failure after the overlay is written removes it, resumes the domain, leaves the chain as it was', async () => {
  const base = image(1 * MiB);
  const patched = Buffer.from(base);
  patched.fill(7, 4096, 8192);
  const m = manifest(base, patched);
  const disk = tmp.file('live.img', base);
  const xml =
    `<domain><name>v</name><uuid>b01e5f65-4ed0-4ef8-b65c-524b36651cb9</uuid><devices><disk type='file' device='disk'>` +
    `<driver type='raw'/><source file='${disk}'/><target dev='vdb'/></disk></devices></domain>`;
  const calls: string[] = [];
  const virsh = new Virsh({
    run: (args) => {
      calls.push(args[0]!);
      if (args[0] === 'domstate') return Promise.resolve({ stdout: 'running\n' });
      if (args[0] === 'dumpxml') return Promise.resolve({ stdout: xml });
      if (args[0] === 'snapshot-create-as') return Promise.reject(new Error('unsupported configuration: no'));
      return Promise.resolve({ stdout: '' });
    },
  });
  const bundle = {
    manifest: m,
    verified: true,
    readData: (_r: unknown, from = 0, length = 4096 - from) =>
      Promise.resolve(patched.subarray(4096 + from, 4096 + from + length)),
  };
  const overlay = overlayPathFor(parseDomainXml(xml).disks[0]!, m.id);
  await applyToLibvirt(bundle, 'v', { virsh }).then(
    () => assert.unreachable(),
    (e: Error) => assert.match(e.message, /snapshot-create-as v: unsupported configuration/),
  );
  assert.equal(calls, ['domstate', 'dumpxml', 'suspend', 'snapshot-create-as', 'resume']);
  assert.not.ok(existsSync(overlay), 'the overlay is removed');
  assert.equal(readFileSync(disk), base, 'the disk is untouched');
});

L.run();
