/**
 * The Ansible collection vmsubst.fleet with a real ansible-core: its tarball installed the way a
 * user installs it (`ansible-galaxy collection install TARBALL -p DIR`), the collection's own
 * playbook (`vmsubst.fleet.rollout`: serial [1, "25%", "100%"], max_fail_percentage 0) run by
 * ansible-playbook over an inventory of three "hypervisor hosts" (ansible_connection=local), each
 * with its own two running firmware-only QEMU VMs and its own state and bundle directories, and the
 * real vmsubst CLI. A VM's new content is in use when its disk holds the patched image (these VMs
 * have no agent: each is reported written but not told, as the firmware rollout suite asserts).
 *
 * The tests run in order on one fleet: check mode, a diverged disk on the second host (it fails,
 * the third host's batch never starts), the fix and the rerun that finishes, an idempotent rerun,
 * and the rollback with the reverse bundle.
 */
import { createHash } from 'node:crypto';
import { existsSync, mkdirSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { suite } from 'uvu';
import * as assert from 'uvu/assert';
import { FirmwareVm, firmwareImages, whyNoQemu } from '../helpers/firmware-vm.js';
import { CLI, ROOT } from '../helpers/paths.js';
import { vmsubstJson } from '../helpers/cli.js';
import { Ansible, whyNoAnsible, type AnsibleRun as Run } from '../helpers/ansible.js';
import { withTimeout } from '../helpers/timeout.js';

const MiB = 1 << 20;
const SIZE = 8 * MiB;
const HOSTS = ['hv1', 'hv2', 'hv3'] as const;
const VMS = ['vm-a', 'vm-b'] as const;
const PLAY_MS = 600_000;

type Host = (typeof HOSTS)[number];
interface Vm {
  host: Host;
  name: string;
  image: string;
  vm: FirmwareVm;
}
const sha = (b: Buffer): string => createHash('sha256').update(b).digest('hex');

const W = {
  dir: '',
  ansible: undefined as unknown as Ansible,
  inventory: '',
  bundle: '',
  reverse: '',
  base: Buffer.alloc(0),
  patched: Buffer.alloc(0),
  /** Offset of a byte inside the bundle's second range. */
  inRange: MiB + 5,
  vms: [] as Vm[],
};

const ansible = (args: string[], timeoutMs = PLAY_MS): Promise<Run> => W.ansible.run(args, timeoutMs);

const play = (extra: string[] = [], bundle = W.bundle): Promise<Run> =>
  ansible(['ansible-playbook', '-i', W.inventory, 'vmsubst.fleet.rollout', '-e', `vmsubst_bundle=${bundle}`, ...extra]);

async function disk(v: Vm): Promise<Buffer> {
  await v.vm.flush();
  return readFileSync(v.image);
}
const vmsOf = (h: Host): Vm[] => W.vms.filter((v) => v.host === h);
const find = (h: Host, n: string): Vm => W.vms.find((v) => v.host === h && v.name === n)!;

async function assertDisks(hosts: readonly Host[], want: Buffer, what: string): Promise<void> {
  for (const h of hosts)
    for (const v of vmsOf(h)) assert.ok((await disk(v)).equals(want), `${h}/${v.name} holds the ${what} image`);
}

/** "what the output says about VM", the summary callback's line for it. */
function summaryLine(out: string, host: Host, vm: string): string {
  const at = out.lastIndexOf('VMSUBST SUMMARY');
  assert.ok(at >= 0, `the run ends with the per-VM summary:\n${out.slice(-3000)}`);
  const line = out
    .slice(at)
    .split('\n')
    .find((l) => new RegExp(`^${host}\\s+${vm}\\s`).test(l));
  assert.ok(line, `the summary has a line for ${host} ${vm}:\n${out.slice(at)}`);
  return line;
}

const Fleet = suite('fleet: the Ansible collection vmsubst.fleet over three hypervisor hosts (ansible-playbook)');
const why = whyNoQemu() ?? whyNoAnsible();

Fleet.before(async () => {
  if (why) return;
  W.dir = mkdtempSync(join(tmpdir(), 'vmsubst-fleet-'));
  W.ansible = new Ansible(W.dir);
  await W.ansible.install();

  ({ base: W.base, patched: W.patched } = firmwareImages(SIZE));
  writeFileSync(join(W.dir, 'base.img'), W.base);
  writeFileSync(join(W.dir, 'patched.img'), W.patched);
  W.bundle = join(W.dir, 'v2.vsb');
  W.reverse = join(W.dir, 'v1.vsb');
  await vmsubstJson(['diff', join(W.dir, 'base.img'), join(W.dir, 'patched.img'), '-o', W.bundle]);
  await vmsubstJson(['diff', join(W.dir, 'patched.img'), join(W.dir, 'base.img'), '-o', W.reverse]);

  const hosts: Record<string, unknown> = {};
  for (const h of HOSTS) {
    const hd = join(W.dir, h);
    mkdirSync(hd);
    const vms: Record<string, string>[] = [];
    for (const n of VMS) {
      const vd = join(hd, n);
      mkdirSync(vd);
      const image = join(vd, 'disk.img');
      writeFileSync(image, W.base);
      const vm = await FirmwareVm.start({ image, dir: vd });
      W.vms.push({ host: h, name: n, image, vm });
      vms.push({ name: n, qmp: vm.qmpSocket });
    }
    hosts[h] = {
      ansible_connection: 'local',
      vmsubst_path: CLI,
      vmsubst_vms: vms,
      vmsubst_vm_defaults: { device: 'vblk0' },
      vmsubst_state_dir: join(hd, 'state'),
      vmsubst_bundle_dir: join(hd, 'bundles') + '/',
    };
  }
  W.inventory = join(W.dir, 'inventory.json');
  writeFileSync(W.inventory, JSON.stringify({ all: { children: { hypervisors: { hosts } } } }, null, 2));
});

Fleet.after(() => {
  for (const v of W.vms) v.vm.kill();
  if (W.dir) rmSync(W.dir, { recursive: true, force: true });
});

if (why) {
  console.log(`fleet.test: skipped: ${why}`);
  Fleet.skip('the collection over three hypervisor hosts (needs QEMU and ansible-core)', () => undefined);
} else {
  Fleet('ansible-doc documents every module; validate-modules and the offline ansible-test sanity tests pass', () =>
    withTimeout(300_000, 'sanity', async () => {
      for (const m of ['vmsubst_rollout', 'vmsubst_bundle', 'vmsubst_facts']) {
        const r = await ansible(['ansible-doc', `vmsubst.fleet.${m}`], 60_000);
        assert.is(r.code, 0, r.out);
        assert.match(r.out, /OPTIONS/);
        assert.match(r.out, /EXAMPLES/);
        assert.match(r.out, /RETURN VALUES/);
      }
      const role = await ansible(['ansible-doc', '-t', 'role', 'vmsubst.fleet.rollout'], 60_000);
      assert.is(role.code, 0, role.out);
      assert.match(role.out, /vmsubst_on_no_agent/);
      const r = await ansible(['bash', join(ROOT, 'test/fleet/sanity.sh'), W.ansible.collections]);
      assert.is(r.code, 0, r.out);
      assert.match(r.out, /validate-modules: 0 errors/);
    }),
  );

  Fleet('module argument errors are clear', () =>
    withTimeout(120_000, 'arguments', async () => {
      const adhoc = (args: string): Promise<Run> =>
        ansible(['ansible', 'hv1', '-i', W.inventory, '-m', 'vmsubst.fleet.vmsubst_rollout', '-a', args], 60_000);
      const choice = await adhoc(`bundle=${W.bundle} on_no_agent=maybe libvirt_all=true`);
      assert.is.not(choice.code, 0);
      assert.match(choice.out, /on_no_agent must be one of: fail, warn, reset, got: maybe/);
      const none = await adhoc(`bundle=${W.bundle}`);
      assert.is.not(none.code, 0);
      assert.match(none.out, /give the VMs of this host \(vms\) or libvirt_all: true/);
      const missing = await adhoc('libvirt_all=true');
      assert.match(missing.out, /missing required arguments: bundle/);
      const notInt = await adhoc(`bundle=${W.bundle} libvirt_all=true concurrency=many`);
      assert.match(notInt.out, /concurrency.*cannot be converted to an int/);
      const bundle = await ansible(
        ['ansible', 'hv1', '-i', W.inventory, '-m', 'vmsubst.fleet.vmsubst_bundle', '-a'].concat(
          `src=${W.bundle} dest=${join(W.dir, 'x')}/ id=${'0'.repeat(64)} vmsubst_path=${CLI}`,
        ),
        60_000,
      );
      assert.is.not(bundle.code, 0);
      assert.match(bundle.out, /has id [0-9a-f]{64}, not the id given \(0{64}\)/);
      assert.not.ok(existsSync(join(W.dir, 'x')), 'nothing was copied');
    }),
  );

  Fleet('vmsubst_bundle checks the signature against trusted_keys and is idempotent', () =>
    withTimeout(180_000, 'bundle', async () => {
      const keys = join(W.dir, 'release');
      await vmsubstJson(['keygen', '--out', keys]);
      const signed = join(W.dir, 'signed.vsb');
      await vmsubstJson(['sign', W.bundle, '--key', `${keys}.key`, '-o', signed]);
      const dest = join(W.dir, 'signed-dest') + '/';
      const put = (src: string): Promise<Run> =>
        ansible(
          ['ansible', 'hv1', '-i', W.inventory, '-m', 'vmsubst.fleet.vmsubst_bundle', '-a'].concat(
            `src=${src} dest=${dest} trusted_keys=${keys}.pub vmsubst_path=${CLI}`,
          ),
          60_000,
        );
      const unsigned = await put(W.bundle);
      assert.is.not(unsigned.code, 0, unsigned.out);
      assert.match(unsigned.out, /sign/i);
      assert.not.ok(existsSync(dest), 'an unsigned bundle is not copied');
      const first = await put(signed);
      assert.is(first.code, 0, first.out);
      assert.match(first.out, /CHANGED/);
      assert.match(first.out, /"status": "valid"/);
      const second = await put(signed);
      assert.is(second.code, 0, second.out);
      assert.match(second.out, /SUCCESS/, 'the same bundle again: changed false');
      assert.match(second.out, /"changed": false/);
    }),
  );

  Fleet('--check writes nothing (disks, bundles, state) and reports what would change', () =>
    withTimeout(PLAY_MS, 'check', async () => {
      const r = await play(['--check']);
      assert.is(r.code, 0, r.out);
      await assertDisks(HOSTS, W.base, 'base');
      for (const h of HOSTS) {
        assert.not.ok(existsSync(join(W.dir, h, 'bundles')), `${h}: no bundle was put there`);
        assert.not.ok(existsSync(join(W.dir, h, 'state')), `${h}: no state was written`);
        assert.ok((r.recap[h]?.['changed'] ?? 0) >= 1, `${h} would change: ${JSON.stringify(r.recap)}`);
        for (const n of VMS) assert.match(summaryLine(r.out, h, n), /would-apply/);
      }
      assert.match(r.out, /VMSUBST SUMMARY \(check mode: nothing written\)/);

      // With the bundle distributed first (--tags vmsubst_bundle), check mode asks each agent for its
      // plan (vmsubst plan): these guests have none.
      const put = await play(['--tags', 'vmsubst_bundle']);
      assert.is(put.code, 0, put.out);
      const planned = await play(['--check']);
      assert.is(planned.code, 0, planned.out);
      await assertDisks(HOSTS, W.base, 'base');
      for (const h of HOSTS) {
        assert.ok(existsSync(join(W.dir, h, 'bundles')), `${h}: the bundle was put there`);
        assert.not.ok(existsSync(join(W.dir, h, 'state')), `${h}: no state was written`);
        for (const n of VMS) assert.match(summaryLine(planned.out, h, n), /would-apply.*plan: no-agent/);
      }
    }),
  );

  Fleet("a diverged VM on the second host fails it: the third host's batch never starts, the first stays applied", () =>
    withTimeout(PLAY_MS, 'diverged', async () => {
      const bad = find('hv2', 'vm-b');
      const diverged = Buffer.from(W.base);
      diverged[W.inRange] = diverged[W.inRange]! ^ 1;
      writeFileSync(bad.image, diverged);
      const r = await play();
      assert.is.not(r.code, 0, 'the play failed');
      // Batches in order, one host each: [1, "25%", "100%"] of three hosts.
      const batches = [...r.out.matchAll(/vmsubst batch: ([\w, -]+?) \(/g)].map((m) => m[1]);
      assert.equal(batches, ['hv1', 'hv2'], r.out);
      assert.is(r.recap['hv1']?.['failed'], 0, JSON.stringify(r.recap));
      assert.ok((r.recap['hv1']?.['changed'] ?? 0) >= 1);
      assert.is(r.recap['hv2']?.['failed'], 1, JSON.stringify(r.recap));
      assert.ok(!r.recap['hv3'] || r.recap['hv3']['ok'] === 0, `hv3 never ran: ${JSON.stringify(r.recap)}`);
      await assertDisks(['hv1'], W.patched, 'patched');
      await assertDisks(['hv3'], W.base, 'base');
      assert.ok((await disk(bad)).equals(diverged), 'the diverged disk was not written');
      assert.match(summaryLine(r.out, 'hv2', 'vm-b'), /refused/);
      assert.match(summaryLine(r.out, 'hv2', 'vm-b'), /not based on this bundle's base/);
      assert.match(summaryLine(r.out, 'hv3', '-'), /not reached/);
      assert.match(summaryLine(r.out, 'hv1', 'vm-a'), /no-agent\s+[\d.]+ K?i?B\s+not told/);

      // The fix: the VM's disk back to the bundle's base. The rerun continues where it stopped.
      writeFileSync(bad.image, W.base);
      const again = await play();
      assert.is(again.code, 0, again.out);
      assert.equal(
        [...again.out.matchAll(/vmsubst batch: ([\w, -]+?) \(/g)].map((m) => m[1]),
        ['hv1', 'hv2', 'hv3'],
      );
      assert.is(again.recap['hv1']?.['changed'], 0, `hv1 was done: ${JSON.stringify(again.recap)}`);
      for (const h of ['hv2', 'hv3'] as const) {
        assert.is(again.recap[h]?.['failed'], 0);
        assert.ok((again.recap[h]?.['changed'] ?? 0) >= 1, JSON.stringify(again.recap));
      }
      await assertDisks(HOSTS, W.patched, 'patched');
      for (const n of VMS) assert.match(summaryLine(again.out, 'hv1', n), /already-applied\s+0 B\s/);
      assert.match(summaryLine(again.out, 'hv2', 'vm-b'), /no-agent\s+[\d.]+ K?i?B\s+not told/);
      assert.match(summaryLine(again.out, 'hv3', 'vm-a'), /no-agent\s+[\d.]+ K?i?B\s+not told/);
    }),
  );

  Fleet('the whole fleet applied: a rerun with the same bundle changes nothing; vmsubst_facts names it', () =>
    withTimeout(PLAY_MS, 'idempotent', async () => {
      const r = await play();
      assert.is(r.code, 0, r.out);
      for (const h of HOSTS) {
        assert.equal([r.recap[h]?.['changed'], r.recap[h]?.['failed']], [0, 0], `${h}: ${JSON.stringify(r.recap)}`);
        for (const n of VMS) assert.match(summaryLine(r.out, h, n), /already-applied/);
      }
      assert.match(r.out, /VMs: 6 already-applied/);
      const id = (await vmsubstJson<{ manifest: { id: string } }>(['inspect', W.bundle])).manifest.id;
      const facts = await ansible(
        ['ansible', 'hv2', '-i', W.inventory, '-m', 'vmsubst.fleet.vmsubst_facts', '-a'].concat(
          `state_dir=${join(W.dir, 'hv2', 'state')} vmsubst_path=${CLI}`,
        ),
        60_000,
      );
      assert.is(facts.code, 0, facts.out);
      const doc = JSON.parse(facts.out.slice(facts.out.indexOf('{'))) as {
        ansible_facts: { vmsubst: { version: string; vms: { name: string; last_bundle?: { id: string } }[] } };
      };
      assert.match(doc.ansible_facts.vmsubst.version, /^\d+\.\d+\.\d+/);
      assert.equal(
        doc.ansible_facts.vmsubst.vms.map((v) => [v.name, v.last_bundle?.id]),
        VMS.map((n) => [n, id]),
      );
    }),
  );

  Fleet('rolling back is the reverse bundle through the same role', () =>
    withTimeout(PLAY_MS, 'rollback', async () => {
      const r = await play([], W.reverse);
      assert.is(r.code, 0, r.out);
      for (const h of HOSTS) assert.ok((r.recap[h]?.['changed'] ?? 0) >= 1, JSON.stringify(r.recap));
      await assertDisks(HOSTS, W.base, 'base');
      assert.ok(sha(await disk(find('hv3', 'vm-b'))) === sha(W.base));
    }),
  );
}

Fleet.run();
