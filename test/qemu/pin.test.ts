/**
 * Pinning in a real guest: two processes run the same program from the
 * volume; one is pinned while the disk still holds v1; after the host writes
 * v2 and the agent invalidates, the pinned one keeps printing v1 for its whole
 * life, the other switches to v2, a new exec runs v2, and the pinned one's
 * extra memory is reported.
 */
import { suite } from 'uvu';
import * as assert from 'uvu/assert';
import { startProgram, versions, withGuest, type GuestContext } from '../helpers/guest-suite.js';
import { vmsubstJson } from '../helpers/cli.js';
import { waitFor, withTimeout } from '../helpers/timeout.js';
import type { PinReport } from '../../agent/src/substitution/pin.js';

const PROG = '/mnt/data/bin/vprog';

/** A process pinned by hand while the disk holds v1, and one started after the pin. */
const pinned = (c: GuestContext): Promise<{ pin: PinReport; pinned: number; other: number }> =>
  c.once('pinned', async () => {
    const { vm } = c;
    const pid = await startProgram(vm, 'pinned', `${PROG} 200`);
    const out = await vm.sh(`node /opt/vmsubst/build/agent/src/main.js pin --json ${PROG}`);
    const pin = (JSON.parse(out.slice(out.indexOf('['))) as PinReport[])[0]!;
    // The other process starts after the pin: it is not pinned.
    await vm.sh(`${PROG} 200 > /tmp/other.out 2>&1 & echo $! > /tmp/other.pid`);
    const other = Number((await vm.sh('cat /tmp/other.pid')).trim());
    return { pin, pinned: pid, other };
  });

/** Pinned, then v2 applied and the agent told (remapping explicitly: the pin under test is the one made by hand). */
const substituted = (c: GuestContext): Promise<{ pinned: number; other: number }> =>
  c.once('substituted', async () => {
    const p = await pinned(c);
    await vmsubstJson(['apply', c.bundle, '--qmp', c.vm.qmpSocket, '--device', 'vblk0']);
    await vmsubstJson([
      'notify',
      c.bundle,
      '--to',
      `serial:${c.vm.agentSocket}`,
      '--disk-serial',
      'vmsubst-data',
      '--policy',
      '/bin/vprog=remap',
    ]);
    return p;
  });

const Pin = withGuest(suite('pin: a pinned process keeps v1 while others move to v2'), { name: 'pin' });

Pin('pinning the running process copies its private mappings and reports the cost', (c) =>
  withTimeout(120_000, 'pin', async () => {
    const { pin, pinned: pid } = await pinned(c);
    const p = pin.processes.find((x) => x.pid === pid);
    assert.ok(p, JSON.stringify(pin));
    assert.ok(p['bytes-copied'] > 0 && p['bytes-copied'] % 4096 === 0, `bytes copied: ${p['bytes-copied']}`);
    // Every private mapping reached (the cursor loop ended on its own), none left unpinned.
    assert.is(pin.complete, true, JSON.stringify(pin));
    assert.ok(pin.mappings >= 1 && pin.calls >= 1, JSON.stringify(pin));
    assert.equal(pin['not-pinned'], [], JSON.stringify(pin));
  }),
);

Pin('after apply and notify the pinned process still prints v1, the other v2', (c) =>
  withTimeout(240_000, 'substitute', async () => {
    const { vm } = c;
    const p = await substituted(c);
    await waitFor(20_000, 'other switches to v2', async () =>
      (await versions(vm, '/tmp/other.out')).at(-1) === 'vprog version v2' ? true : undefined,
    );
    await vm.sh('sleep 2');
    const out = await versions(vm, '/tmp/pinned.out');
    assert.ok(out.length > 10, 'the pinned process kept printing');
    assert.ok(
      out.every((v) => v === 'vprog version v1'),
      `pinned process output: ${[...new Set(out)]}`,
    );
    assert.is((await vm.run(`kill -0 ${p.pinned}`)).code, 0, 'pinned process alive');
    assert.is((await vm.run(`kill -0 ${p.other}`)).code, 0, 'other process alive');
  }),
);

Pin('a new exec runs v2', (c) =>
  withTimeout(240_000, 'new exec', async () => {
    await substituted(c);
    assert.match(await c.vm.sh(PROG), /version v2/);
  }),
);

Pin('the pinned process never prints v2, to the end of its life', (c) =>
  withTimeout(240_000, 'whole life', async () => {
    const { vm } = c;
    const p = await substituted(c);
    await vm.sh('sleep 3');
    await vm.sh(`kill ${p.pinned}`);
    const out = await versions(vm, '/tmp/pinned.out');
    assert.ok(
      out.every((v) => v === 'vprog version v1'),
      `pinned process output: ${[...new Set(out)]}`,
    );
  }),
);

Pin.run();
