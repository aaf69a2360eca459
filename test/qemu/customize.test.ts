/**
 * Customization in a real guest: off by default and accepted only signed; once
 * the guest's agent.json allows it and trusts the host's key, a signed
 * substitution that carries a hostname, a file and a sysctl value applies them
 * after the blocks, persists them where the OS keeps them, reports each item,
 * and refuses a file outside /etc.
 */
import { suite } from 'uvu';
import * as assert from 'uvu/assert';
import { writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { trustHostKey, withGuest, type GuestContext } from '../helpers/guest-suite.js';
import { vmsubst, vmsubstJson } from '../helpers/cli.js';
import { withTimeout } from '../helpers/timeout.js';
import type { SubstituteReport } from '@vmsubst/common/protocol/schema';

type Ctx = GuestContext & { spec: string };

/** The host's key trusted, customization allowed in agent.json, the agent restarted, and the signed notification's report. */
const signed = (c: Ctx): Promise<SubstituteReport> =>
  c.once('signed', async () => {
    const { vm } = c;
    const { key } = await trustHostKey(c);
    await vm.sh(
      `echo '{"customization":{"allow":["hostname","file","sysctl"],"fileRoots":["/etc"]}}' > /etc/vmsubst/agent.json`,
    );
    await vm.restartAgent();
    return vmsubstJson<SubstituteReport>([
      'notify',
      c.bundle,
      '--to',
      `serial:${vm.agentSocket}`,
      '--customize',
      c.spec,
      '--sign',
      key,
      '--disk-serial',
      'vmsubst-data',
    ]);
  });

const Cz = withGuest(suite('customization carried by a substitution, in the guest'), {
  name: 'customize',
  async setup({ tmp, vm, bundle }) {
    const spec = join(tmp, 'customize.json');
    writeFileSync(
      spec,
      JSON.stringify({
        hostname: 'clone-0042',
        files: [
          { path: '/etc/app/role.conf', content: 'role=web\n', mode: 0o640 },
          { path: '/root/.profile', content: 'nope\n' },
        ],
        sysctl: { 'vm.swappiness': 13 },
      }),
    );
    await vmsubstJson(['apply', bundle, '--qmp', vm.qmpSocket, '--device', 'vblk0']);
    return { spec };
  },
});

Cz('adversarial: unsigned customization is refused by default, nothing changed', (c) =>
  withTimeout(120_000, 'unsigned', async () => {
    const r = await vmsubst([
      'notify',
      c.bundle,
      '--to',
      `serial:${c.vm.agentSocket}`,
      '--customize',
      c.spec,
      '--json',
    ]);
    assert.is(r.code, 1);
    assert.match(r.stdout + r.stderr, /Unauthorized: customization is accepted only in a signed notification/);
    assert.is.not((await c.vm.sh('hostname')).trim(), 'clone-0042');
  }),
);

Cz('signed, with the kinds allowed in agent.json: the report has one outcome per item', (c) =>
  withTimeout(180_000, 'notify', async () => {
    const report = await signed(c);
    assert.equal(
      report.customization?.map((o) => [o.kind, o.target, o.status]),
      [
        ['hostname', 'clone-0042', 'applied'],
        ['file', '/etc/app/role.conf', 'applied'],
        ['file', '/root/.profile', 'refused'],
        ['sysctl', 'vm.swappiness', 'applied'],
      ],
    );
    assert.ok(
      report.files.some((f) => f.path === '/mnt/data/bin/vprog'),
      'the blocks were substituted too',
    );
  }),
);

Cz('the settings are live and persisted', (c) =>
  withTimeout(240_000, 'persisted', async () => {
    const { vm } = c;
    await signed(c);
    assert.is((await vm.sh('hostname')).trim(), 'clone-0042');
    assert.is((await vm.sh('cat /etc/hostname')).trim(), 'clone-0042');
    assert.is((await vm.sh('cat /etc/app/role.conf')).trim(), 'role=web');
    assert.is((await vm.sh('stat -c %a /etc/app/role.conf')).trim(), '640');
    assert.is((await vm.sh('cat /proc/sys/vm/swappiness')).trim(), '13');
    assert.match(await vm.sh('cat /etc/sysctl.d/90-vmsubst.conf'), /vm\.swappiness = 13/);
    assert.is.not((await vm.run('test -e /root/.profile')).code, 0, 'the refused file was not written');
  }),
);

Cz.run();
