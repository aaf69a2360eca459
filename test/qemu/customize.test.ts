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
import { GuestVm } from '../helpers/vm.js';
import { guestScenario, type Scenario } from '../helpers/scenario.js';
import { guestArtifacts } from '../helpers/paths.js';
import { vmsubst, vmsubstJson } from '../helpers/cli.js';
import { guard } from '../helpers/guard.js';
import { withTimeout } from '../helpers/timeout.js';
import type { SubstituteReport } from '@vmsubst/common/protocol/schema';

const art = guestArtifacts();
const Cz = suite('customization carried by a substitution, in the guest');
const G = guard(Cz);
const C = { scenario: undefined as Scenario | undefined, tmp: '', bundle: '', spec: '', vm: undefined as GuestVm | undefined, report: undefined as SubstituteReport | undefined };

if (typeof art === 'string') {
  console.log(`  skipped: ${art}`);
  Cz.skip('guest artefacts are missing', () => undefined);
} else {
  Cz.before(G.setup(async () => {
    const s = await guestScenario(art, 'customize');
    C.scenario = s;
    C.tmp = s.tmp;
    C.bundle = s.bundle;
    C.vm = s.vm;
    C.spec = join(C.tmp, 'customize.json');
    writeFileSync(C.spec, JSON.stringify({
      hostname: 'clone-0042',
      files: [
        { path: '/etc/app/role.conf', content: 'role=web\n', mode: 0o640 },
        { path: '/root/.profile', content: 'nope\n' },
      ],
      sysctl: { 'vm.swappiness': 13 },
    }));
    await vmsubstJson(['apply', C.bundle, '--qmp', C.vm.qmpSocket, '--device', 'vblk0']);
    await vmsubstJson(['keygen', '--out', join(C.tmp, 'host')]);
  }));
  Cz.after(() => {
    C.scenario?.close();
  });

  G.test('adversarial: unsigned customization is refused by default, nothing changed', () =>
    withTimeout(120_000, 'unsigned', async () => {
      const r = await vmsubst(['notify', C.bundle, '--to', `serial:${C.vm!.agentSocket}`, '--customize', C.spec, '--json']);
      assert.is(r.code, 1);
      assert.match(r.stdout + r.stderr, /Unauthorized: customization is accepted only in a signed notification/);
      assert.is.not((await C.vm!.sh('hostname')).trim(), 'clone-0042');
    }),
  );

  G.test('signed, with the kinds allowed in agent.json: the report has one outcome per item', () =>
    withTimeout(180_000, 'notify', async () => {
      const vm = C.vm!;
      await vm.sh('mkdir -p /etc/vmsubst/trusted.d');
      await vm.putFile(join(C.tmp, 'host.pub'), '/etc/vmsubst/trusted.d/host.pub');
      await vm.sh(`echo '{"customization":{"allow":["hostname","file","sysctl"],"fileRoots":["/etc"]}}' > /etc/vmsubst/agent.json`);
      await vm.restartAgent();
      C.report = await vmsubstJson<SubstituteReport>(['notify', C.bundle, '--to', `serial:${vm.agentSocket}`, '--customize', C.spec, '--sign', join(C.tmp, 'host.key'), '--disk-serial', 'vmsubst-data']);
      assert.equal(C.report.customization?.map((o) => [o.kind, o.target, o.status]), [
        ['hostname', 'clone-0042', 'applied'],
        ['file', '/etc/app/role.conf', 'applied'],
        ['file', '/root/.profile', 'refused'],
        ['sysctl', 'vm.swappiness', 'applied'],
      ]);
      assert.ok(C.report.files.some((f) => f.path === '/mnt/data/bin/vprog'), 'the blocks were substituted too');
    }),
  );

  G.test('the settings are live and persisted', () =>
    withTimeout(60_000, 'persisted', async () => {
      const vm = C.vm!;
      assert.is((await vm.sh('hostname')).trim(), 'clone-0042');
      assert.is((await vm.sh('cat /etc/hostname')).trim(), 'clone-0042');
      assert.is((await vm.sh('cat /etc/app/role.conf')).trim(), 'role=web');
      assert.is((await vm.sh('stat -c %a /etc/app/role.conf')).trim(), '640');
      assert.is((await vm.sh('cat /proc/sys/vm/swappiness')).trim(), '13');
      assert.match(await vm.sh('cat /etc/sysctl.d/90-vmsubst.conf'), /vm\.swappiness = 13/);
      assert.is.not((await vm.run('test -e /root/.profile')).code, 0, 'the refused file was not written');
    }),
  );
}

Cz.run();
