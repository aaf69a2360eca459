/**
 * The collection's role against a real guest with its agent (the firmware fleet suite has VMs with
 * no guest OS): one "hypervisor host" (ansible_connection=local) running the test guest, reached
 * over virtio-serial, with a program running from the test volume.
 *   forward   the bundle v1 → v2 with the default policies: the VM is `applied` and told, the
 *             running program prints v2, nothing is left on old code; a rerun is `changed: false`;
 *   back      the reverse bundle (rolling back) with the policy `pin` for ELF files: the running
 *             program stays on its image and the module lists it as a process still on old code,
 *             while a new exec runs the rolled-back v1.
 */
import { join } from 'node:path';
import { readFileSync, writeFileSync } from 'node:fs';
import { suite, type Test } from 'uvu';
import * as assert from 'uvu/assert';
import { Ansible, whyNoAnsible, type AnsibleRun } from '../helpers/ansible.js';
import { vmsubstJson } from '../helpers/cli.js';
import { startProgram, versions, withGuest, type GuestContext } from '../helpers/guest-suite.js';
import { CLI } from '../helpers/paths.js';
import { waitFor, withTimeout } from '../helpers/timeout.js';

const PROG = '/mnt/data/bin/vprog';

interface VmResult {
  name: string;
  result: string;
  written: number;
  told: boolean;
  agent: { mode?: string; files?: string[] };
  stale: { pid: number; comm: string; path: string; why: string }[];
}
interface Result {
  changed: boolean;
  ok: boolean;
  vms: VmResult[];
}

interface Extra {
  ansible: Ansible;
  /** The reverse bundle, v2 → v1. */
  reverse: string;
  /** The program started before the rollouts, running from the test volume. */
  pid: number;
  playbook: string;
}
type Ctx = GuestContext & Extra;

const why = whyNoAnsible();
const G: Test<Ctx> = why
  ? suite<Ctx>('fleet-guest: the rollout role against a real guest')
  : withGuest<Extra>(suite('fleet-guest: the rollout role against a real guest (agent over virtio-serial)'), {
      name: 'fleet-guest',
      bootLimitMs: 480_000,
      async setup(c) {
        const ansible = new Ansible(join(c.tmp, 'ansible'));
        await ansible.install();
        const reverse = join(c.tmp, 'v1.bundle');
        await vmsubstJson(['diff', join(c.art.disks, 'patched.img'), join(c.art.disks, 'base.img'), '-o', reverse]);
        const pid = await startProgram(c.vm, 'running', `${PROG} 300`);
        const playbook = join(c.tmp, 'play.yml');
        writeFileSync(
          playbook,
          [
            '- hosts: hypervisors',
            '  gather_facts: false',
            '  roles: [vmsubst.fleet.rollout]',
            '  post_tasks:',
            '    - ansible.builtin.copy:',
            '        content: "{{ vmsubst_rollout_result | to_json }}"',
            '        dest: "{{ result_file }}"',
            '      changed_when: false',
            '',
          ].join('\n'),
        );
        return { ansible, reverse, pid, playbook };
      },
    });

if (why) {
  console.log(`fleet-guest.test: skipped: ${why}`);
  G.skip('the rollout role against a real guest (needs ansible-core)', () => undefined);
}

/** The role over the one host with `policies` for the VM; the module's result and the run. */
async function run(
  c: Ctx,
  bundle: string,
  tag: string,
  policies?: Record<string, string>,
): Promise<{ r: AnsibleRun; result: Result; vm: VmResult }> {
  const inventory = join(c.tmp, `inventory-${tag}.json`);
  const resultFile = join(c.tmp, `result-${tag}.json`);
  const vm = {
    name: 'guest',
    qmp: c.vm.qmpSocket,
    agent: `serial:${c.vm.agentSocket}`,
    device: 'vblk0',
    disk: { serial: 'vmsubst-data' },
    ...(policies ? { policies } : {}),
  };
  const host = {
    ansible_connection: 'local',
    vmsubst_path: CLI,
    vmsubst_vms: [vm],
    vmsubst_state_dir: join(c.tmp, 'state'),
    vmsubst_bundle_dir: join(c.tmp, 'bundles') + '/',
    vmsubst_on_no_agent: 'fail',
    result_file: resultFile,
  };
  writeFileSync(inventory, JSON.stringify({ all: { children: { hypervisors: { hosts: { hv: host } } } } }));
  const r = await c.ansible.run(['ansible-playbook', '-i', inventory, c.playbook, '-e', `vmsubst_bundle=${bundle}`]);
  assert.is(r.code, 0, r.out);
  const result = JSON.parse(readFileSync(resultFile, 'utf8')) as Result;
  return { r, result, vm: result.vms[0]! };
}

if (!why) {
  G(
    'forward: applied and told, the running program prints v2, nothing left on old code; a rerun changes nothing',
    (c) =>
      withTimeout(900_000, 'forward', async () => {
        const { r, result, vm } = await run(c, c.bundle, 'forward');
        assert.is(result.changed, true);
        assert.is(vm.result, 'applied', JSON.stringify(vm));
        assert.ok(vm.written > 0);
        assert.is(vm.told, true);
        assert.ok(vm.agent.files?.includes(PROG), JSON.stringify(vm.agent));
        assert.equal(vm.stale, []);
        assert.match(r.out, /hv\s+guest\s+applied\s+[\d.]+ KiB\s+told/);
        await waitFor(60_000, 'the running program prints v2', async () =>
          (await versions(c.vm, '/tmp/running.out')).at(-1) === 'vprog version v2' ? true : undefined,
        );
        assert.match(await c.vm.sh(PROG), /version v2/);

        const again = await run(c, c.bundle, 'again');
        assert.is(again.result.changed, false);
        assert.is(again.vm.result, 'already-applied', JSON.stringify(again.vm));
        assert.is(again.r.recap['hv']?.['changed'], 0, JSON.stringify(again.r.recap));
      }),
  );

  G('back: the reverse bundle with `pin`: the running program is listed as still on old code', (c) =>
    withTimeout(900_000, 'back', async () => {
      const { result, vm } = await run(c, c.reverse, 'back', {
        'elf-code-unchanged': 'pin',
        'elf-code-changed': 'pin',
      });
      assert.is(result.changed, true);
      assert.is(vm.result, 'applied', JSON.stringify(vm));
      assert.ok(
        vm.stale.some((p) => p.pid === c.pid && p.why === 'pinned' && p.path === PROG),
        JSON.stringify(vm.stale),
      );
      assert.match(await c.vm.sh(PROG), /version v1/, 'a new exec runs the rolled-back program');
      await c.vm.sh('sleep 1');
      assert.is(
        (await versions(c.vm, '/tmp/running.out')).at(-1),
        'vprog version v2',
        'the pinned one keeps its image',
      );
    }),
  );
}

G.run();
