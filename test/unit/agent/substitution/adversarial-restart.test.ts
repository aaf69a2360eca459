/**
 * The `restart` policy restarts only system services: a user's unit that
 * shares a system service's name (user.slice/user@1000.service/app.slice/
 * sshd.service) must not restart the system's sshd, and the agent must never
 * restart its own unit. Each refusal is reported with its reason.
 */
import { suite } from 'uvu';
import * as assert from 'uvu/assert';
import { mkdirSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { buildPlan, restartableUnit, systemdCgroupPath } from '../../../../agent/src/substitution/plan.js';
import { devToMapsField } from '../../../../agent/src/proc/mappers.js';

const R = suite('adversarial: restart policy only restarts system services');
const AGENT = '0::/system.slice/vmsubst-agent.service\n';

R('a system service is restartable', () => {
  assert.equal(restartableUnit('0::/system.slice/sshd.service\n', AGENT), { unit: 'sshd.service' });
  assert.equal(restartableUnit('0::/system.slice/system-getty.slice/getty@tty1.service\n', AGENT), {
    unit: 'getty@tty1.service',
  });
});

R('a delegated subgroup of a system service is its service, not the deepest .service name', () => {
  assert.equal(restartableUnit('0::/system.slice/containerd.service/inner/sshd.service\n', AGENT), {
    unit: 'containerd.service',
  });
});

R('a user unit named like a system service is not restartable, with the reason', () => {
  const v = restartableUnit('0::/user.slice/user-1000.slice/user@1000.service/app.slice/sshd.service\n', AGENT);
  assert.ok(v && 'refused' in v, JSON.stringify(v));
  assert.is(v.unit, 'sshd.service');
  assert.match(v.refused, /not a system service/);
});

R('a session scope is not restartable', () => {
  const v = restartableUnit('0::/user.slice/user-0.slice/session-3.scope\n', AGENT);
  assert.ok(v && 'refused' in v);
  const w = restartableUnit('0::/system.slice/run-r1234.scope\n', AGENT);
  assert.ok(w && 'refused' in w);
  assert.match(w.refused, /scope cannot be restarted/);
});

R("the agent's own unit is never restarted", () => {
  const v = restartableUnit('0::/system.slice/vmsubst-agent.service\n', AGENT);
  assert.ok(v && 'refused' in v);
  assert.match(v.refused, /agent's own unit/);
});

R('cgroup v1: the name=systemd line decides', () => {
  const text =
    '12:memory:/system.slice/foo.service\n1:name=systemd:/user.slice/user-1000.slice/user@1000.service/foo.service\n';
  assert.is(systemdCgroupPath(text), '/user.slice/user-1000.slice/user@1000.service/foo.service');
  const v = restartableUnit(text, AGENT);
  assert.ok(v && 'refused' in v);
});

R('no cgroup, or the root cgroup: no unit', () => {
  assert.is(restartableUnit('', AGENT), undefined);
  assert.is(restartableUnit('0::/\n', AGENT), undefined);
});

R('the plan restarts the system sshd only, and reports the user sshd and the agent as not restartable', async () => {
  const proc = mkdtempSync(join(tmpdir(), 'vmsubst-adv-proc-'));
  try {
    const dev = 0xfd01;
    const ino = 4242;
    const mapsLine = `7f0000000000-7f0000004000 r-xp 00000000 ${devToMapsField(dev)} ${ino} /usr/sbin/sshd\n`;
    const procs: [string, string, string][] = [
      ['100', 'sshd', '0::/system.slice/sshd.service\n'],
      ['200', 'sshd', '0::/user.slice/user-1000.slice/user@1000.service/app.slice/sshd.service\n'],
      ['300', 'node', AGENT],
    ];
    for (const [pid, comm, cg] of procs) {
      mkdirSync(join(proc, pid));
      writeFileSync(join(proc, pid, 'maps'), mapsLine);
      writeFileSync(join(proc, pid, 'comm'), `${comm}\n`);
      writeFileSync(join(proc, pid, 'cgroup'), cg);
    }
    mkdirSync(join(proc, 'self'));
    writeFileSync(join(proc, 'self', 'cgroup'), AGENT);
    const mount = { mountPoint: '/', devNum: '253:1', root: '/', fsType: 'ext4', readOnly: true };
    const file = {
      path: '/usr/sbin/sshd',
      dev,
      ino,
      mount,
      kind: 'file' as const,
      extents: [{ diskStart: 0, fileOffset: 0, length: 4096 }],
    };
    const r = await buildPlan({
      files: [{ file, ranges: [{ offset: 0, length: 4096 }] }],
      unmapped: [],
      metadata: { filesystems: [], ranges: [] },
      changed: [{ offset: 0, length: 4096 }],
      hints: [{ path: '/usr/sbin/sshd', elf: 'code-changed' }],
      policies: { notification: { files: { '/usr/sbin/sshd': 'restart' } } },
      diskPath: '/dev/null',
      read: async () => Buffer.alloc(0),
      procRoot: proc,
    });
    assert.equal(r.plan.units, ['sshd.service'], 'only the system unit');
    const m = r.plan.files[0]!.mappers;
    assert.is(m.find((x) => x.pid === 100)?.['not-restartable'], undefined);
    assert.match(m.find((x) => x.pid === 200)?.['not-restartable'] ?? '', /not a system service/);
    assert.match(m.find((x) => x.pid === 300)?.['not-restartable'] ?? '', /agent's own unit/);
    assert.match(r.plan.files[0]!.action, /not restarted/);
  } finally {
    rmSync(proc, { recursive: true, force: true });
  }
});

R.run();
