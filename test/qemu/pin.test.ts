/**
 * Pinning in a real guest: two processes run the same program from the
 * volume; one is pinned while the disk still holds v1; after the host writes
 * v2 and the agent invalidates, the pinned one keeps printing v1 for its whole
 * life, the other switches to v2, a new exec runs v2, and the pinned one's
 * extra memory is reported.
 */
import { suite } from 'uvu';
import * as assert from 'uvu/assert';
import { GuestVm } from '../helpers/vm.js';
import { guestScenario, type Scenario } from '../helpers/scenario.js';
import { guestArtifacts } from '../helpers/paths.js';
import { vmsubstJson } from '../helpers/cli.js';
import { guard } from '../helpers/guard.js';
import { waitFor, withTimeout } from '../helpers/timeout.js';
import type { PinReport } from '../../agent/src/substitution/pin.js';

const art = guestArtifacts();
const Pin = suite('pin: a pinned process keeps v1 while others move to v2');
const G = guard(Pin);
const C = { scenario: undefined as Scenario | undefined, bundle: '', vm: undefined as GuestVm | undefined, pinned: 0, other: 0, pin: undefined as PinReport | undefined };
const PROG = '/mnt/data/bin/vprog';
const pidOf = async (vm: GuestVm, f: string): Promise<number> => Number((await vm.sh(`cat ${f}`)).trim());
const versions = async (vm: GuestVm, f: string): Promise<string[]> =>
  (await vm.sh(`cat ${f}`)).split('\n').filter(Boolean).map((l) => l.replace(/ pid=.*/, ''));

if (typeof art === 'string') {
  console.log(`  skipped: ${art}`);
  Pin.skip('guest artefacts are missing', () => undefined);
} else {
  Pin.before(G.setup(async () => {
    const s = await guestScenario(art, 'pin');
    C.scenario = s;
    C.bundle = s.bundle;
    C.vm = s.vm;
  }));
  Pin.after(() => {
    C.scenario?.close();
  });

  G.test('pinning the running process copies its private mappings and reports the cost', () =>
    withTimeout(120_000, 'pin', async () => {
      const vm = C.vm!;
      await vm.sh(`${PROG} 200 > /tmp/pinned.out 2>&1 & echo $! > /tmp/pinned.pid`);
      C.pinned = await pidOf(vm, '/tmp/pinned.pid');
      await waitFor(30_000, 'pinned prints', async () => ((await versions(vm, '/tmp/pinned.out')).length > 0 ? true : undefined));
      const out = await vm.sh(`node /opt/vmsubst/build/agent/src/main.js pin --json ${PROG}`);
      C.pin = (JSON.parse(out.slice(out.indexOf('['))) as PinReport[])[0];
      const p = C.pin!.processes.find((x) => x.pid === C.pinned);
      assert.ok(p, JSON.stringify(C.pin));
      assert.ok(p['bytes-copied'] > 0 && p['bytes-copied'] % 4096 === 0, `bytes copied: ${p['bytes-copied']}`);
      // Every private mapping reached (the cursor loop ended on its own), none left unpinned.
      assert.is(C.pin!.complete, true, JSON.stringify(C.pin));
      assert.ok(C.pin!.mappings >= 1 && C.pin!.calls >= 1, JSON.stringify(C.pin));
      assert.equal(C.pin!['not-pinned'], [], JSON.stringify(C.pin));
      // The other process starts after the pin: it is not pinned.
      await vm.sh(`${PROG} 200 > /tmp/other.out 2>&1 & echo $! > /tmp/other.pid`);
      C.other = await pidOf(vm, '/tmp/other.pid');
    }),
  );

  G.test('after apply and notify the pinned process still prints v1, the other v2', () =>
    withTimeout(120_000, 'substitute', async () => {
      const vm = C.vm!;
      await vmsubstJson(['apply', C.bundle, '--qmp', vm.qmpSocket, '--device', 'vblk0']);
      // Remap explicitly: the pin under test is the one made by hand above, not the policy's.
      await vmsubstJson(['notify', C.bundle, '--to', `serial:${vm.agentSocket}`, '--disk-serial', 'vmsubst-data', '--policy', '/bin/vprog=remap']);
      await waitFor(20_000, 'other switches to v2', async () => ((await versions(vm, '/tmp/other.out')).at(-1) === 'vprog version v2' ? true : undefined));
      await vm.sh('sleep 2');
      const pinned = await versions(vm, '/tmp/pinned.out');
      assert.ok(pinned.length > 10, 'the pinned process kept printing');
      assert.ok(pinned.every((v) => v === 'vprog version v1'), `pinned process output: ${[...new Set(pinned)]}`);
      assert.is((await vm.run(`kill -0 ${C.pinned}`)).code, 0, 'pinned process alive');
      assert.is((await vm.run(`kill -0 ${C.other}`)).code, 0, 'other process alive');
    }),
  );

  G.test('a new exec runs v2', () =>
    withTimeout(60_000, 'new exec', async () => {
      assert.match(await C.vm!.sh(PROG), /version v2/);
    }),
  );

  G.test('the pinned process never prints v2, to the end of its life', () =>
    withTimeout(60_000, 'whole life', async () => {
      const vm = C.vm!;
      await vm.sh('sleep 3');
      await vm.sh(`kill ${C.pinned}`);
      const pinned = await versions(vm, '/tmp/pinned.out');
      assert.ok(pinned.every((v) => v === 'vprog version v1'), `pinned process output: ${[...new Set(pinned)]}`);
    }),
  );
}

Pin.run();
