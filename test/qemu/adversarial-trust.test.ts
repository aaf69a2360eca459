/**
 * The trust model in a real guest, tried as an attacker on the host would: an unprivileged vsock
 * peer (a process that is not root: its source port is above 1024) gets no dry run, no
 * substitution and no hash; only root can bind the privileged port the host CLI uses; 1-byte ranges
 * are refused and a mismatch names ranges only; a replayed, expired, other-VM and repurposed
 * envelope are each refused against the guest's real SMBIOS UUID and disk serial; commit and abort
 * need prepare's token. vsock is the guest's own loopback (CID 1): this host has no vhost-vsock.
 */
import { suite } from 'uvu';
import * as assert from 'uvu/assert';
import { createHash, createPrivateKey, randomUUID, type KeyObject } from 'node:crypto';
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { connect } from 'node:net';
import { trustHostKey, withGuest, type GuestContext } from '../helpers/guest-suite.js';
import { vmsubstJson } from '../helpers/cli.js';
import { waitFor, withTimeout } from '../helpers/timeout.js';
import { AgentConnection, notificationArgs } from '../../host-signal/src/notify/index.js';
import { Bundle, type Manifest } from '../../host-signal/src/bundle/index.js';
import { signArgs } from '@vmsubst/common/protocol/signature';
import type { SubstituteArgs, SubstituteReport } from '@vmsubst/common/protocol/schema';

const DISK = { serial: 'vmsubst-data' };
const GUEST_CLI = '/opt/vmsubst/build/host-signal/src/cli.js';
type Ctx = GuestContext & { key: KeyObject; fwd: Manifest; rev: Manifest; reverse: string };
const sha = (p: string): string => createHash('sha256').update(readFileSync(p)).digest('hex');
const manifestOf = async (path: string): Promise<Manifest> => {
  const b = await Bundle.open(path, { verifyData: false });
  try {
    return b.manifest;
  } finally {
    await b.close();
  }
};
/** Runs the guest's vmsubst CLI as nobody: no CAP_NET_BIND_SERVICE, so an ephemeral source port. */
const asNobody = (args: string): string =>
  `node --input-type=module -e "process.setgid(65534); process.setuid(65534); process.argv.splice(1, 0, 'vmsubst'); await import('${GUEST_CLI}')" ${args}`;
const serial = (c: Ctx): Promise<AgentConnection> => AgentConnection.open(`serial:${c.vm.agentSocket}`);
const refusal = async (f: () => Promise<unknown>): Promise<string> => {
  try {
    await f();
  } catch (e) {
    return String(e);
  }
  assert.unreachable('was accepted');
  return '';
};

/** v2 written under the guest, then substituted by root in the guest over vsock (a privileged port): the report. */
const rootSubstituted = (c: Ctx): Promise<SubstituteReport> =>
  c.once('root over vsock', async () => {
    await vmsubstJson(['apply', c.bundle, '--qmp', c.vm.qmpSocket, '--device', 'vblk0']);
    const out = await c.vm.sh(
      `node ${GUEST_CLI} notify /tmp/fwd.bundle --to vsock:1:5252 --disk-serial vmsubst-data --json`,
      120_000,
    );
    return JSON.parse(out.slice(out.indexOf('{'))) as SubstituteReport;
  });

/** After that, a signed envelope for this VM (its SMBIOS UUID and disk) sent twice over virtio-serial: the envelope and both answers. */
const signedTwice = (c: Ctx): Promise<{ first: SubstituteArgs; report: SubstituteReport; again: SubstituteReport }> =>
  c.once('signed', async () => {
    await rootSubstituted(c);
    const first = signArgs('substitute', notificationArgs(c.fwd, DISK), c.key, {
      target: { 'vm-uuid': c.vm.uuid, 'disk-serial': 'vmsubst-data' },
    });
    const conn = await serial(c);
    try {
      return {
        first,
        report: await conn.client.execute('substitute', first),
        again: await conn.client.execute('substitute', first),
      };
    } finally {
      conn.close();
    }
  });

const A = withGuest(suite('adversarial: trust in a real guest (vsock ports, envelopes, tokens, no oracle)'), {
  name: 'adversarial-trust',
  boot: { agentArgs: ['--allow-cid', '1'] },
  async setup(c) {
    const { vm, tmp, bundle } = c;
    const fwd = await manifestOf(bundle);
    const reverse = join(tmp, 'rev.bundle');
    await vmsubstJson(['diff', join(c.art.disks, 'patched.img'), join(c.art.disks, 'base.img'), '-o', reverse]);
    const rev = await manifestOf(reverse);
    const key = createPrivateKey(readFileSync((await trustHostKey(c)).key));
    await vm.putFile(bundle, '/tmp/fwd.bundle');
    await vm.sh('chmod 0644 /tmp/fwd.bundle');
    await vm.restartAgent(['--allow-cid', '1']);
    return { fwd, rev, reverse, key };
  },
});

A('an unprivileged vsock peer gets neither a dry run nor a substitution; the disk is untouched', (c) =>
  withTimeout(180_000, 'unprivileged', async () => {
    const vm = c.vm;
    const before = sha(c.disk);
    const plan = await vm.run(
      asNobody('notify /tmp/fwd.bundle --to vsock:1:5252 --disk-serial vmsubst-data --dry-run --json'),
      120_000,
    );
    assert.is.not(plan.code, 0, plan.out);
    assert.match(plan.out, /Unauthorized: vsock 1:\d+ is not the hypervisor's side/);
    assert.not.match(plan.out, /\/mnt\/data/, 'no path of the guest in the answer');
    const sub = await vm.run(
      asNobody('notify /tmp/fwd.bundle --to vsock:1:5252 --disk-serial vmsubst-data --json'),
      120_000,
    );
    assert.is.not(sub.code, 0, sub.out);
    assert.match(sub.out, /Unauthorized/);
    assert.match(await vm.sh('cat /tmp/agent.log'), /refused an unauthorized request/);
    assert.is(sha(c.disk), before);
  }),
);

A('only root binds the privileged source port the host CLI uses', (c) =>
  withTimeout(120_000, 'reserved port', async () => {
    const script = (user: string): string =>
      `node --input-type=module -e "${user} const n = await import('/opt/vmsubst/build/host-signal/src/native/index.js'); ` +
      `try { const s = await n.vsockConnect(1, 5252, { localPort: 'reserved' }); console.log('port', s.localPort); s.destroy(); } catch (e) { console.log('error', e.code); }"`;
    assert.match(await c.vm.sh(script('process.setgid(65534); process.setuid(65534);')), /error EACCES/);
    const root = await c.vm.sh(script(''));
    const port = Number(/port (\d+)/.exec(root)?.[1]);
    assert.ok(port >= 512 && port < 1024, root);
  }),
);

A('a flood of unprivileged connections: bounded memory, refused beyond the limit, the host still served', (c) =>
  withTimeout(240_000, 'flood', async () => {
    const vm = c.vm;
    const rss = async (): Promise<number> =>
      Number(/VmRSS:\s+(\d+)/.exec(await vm.sh('cat /proc/$(cat /run/vmsubst-agent.pid)/status'))![1]) / 1024;
    const before = await rss();
    const flood =
      `const n = await import('/opt/vmsubst/build/host-signal/src/native/index.js'); const keep = []; let ok = 0, failed = 0; ` +
      `for (let i = 0; i < 200; i++) { try { const s = await n.vsockConnect(1, 5252, { timeoutMs: 5000 }); s.on('error', () => {}); s.on('data', () => {}); ` +
      `s.write(Buffer.alloc(512 * 1024, 0x61)); keep.push(s); ok++; } catch { failed++; } } console.log('opened', ok, failed); setTimeout(() => process.exit(0), 120000);`;
    await vm.sh(
      `node --input-type=module -e "process.setgid(65534); process.setuid(65534); ${flood}" > /tmp/flood.out 2>&1 & echo $! > /tmp/flood.pid`,
    );
    await waitFor(
      120_000,
      'flood opened',
      async () => (/opened/.test(await vm.sh('cat /tmp/flood.out')) ? true : undefined),
      500,
    );
    const during = await rss();
    console.log(
      `  flood: 200 connections of 512 KiB each from nobody; agent RSS ${before.toFixed(0)} MiB → ${during.toFixed(0)} MiB`,
    );
    assert.ok(during - before < 64, `RSS grew by ${(during - before).toFixed(0)} MiB`);
    assert.match(await vm.sh('cat /tmp/agent.log'), /too many open/);
    const out = await vm.sh(
      `node ${GUEST_CLI} notify /tmp/fwd.bundle --to vsock:1:5252 --disk-serial vmsubst-data --dry-run --json`,
      120_000,
    );
    assert.match(out, /"dry-run": true/, 'root on vsock is still served');
    const conn = await serial(c);
    try {
      assert.ok(conn.agent.capabilities.includes('envelope-v2'), 'the virtio-serial channel is still served');
    } finally {
      conn.close();
      await vm.sh('kill $(cat /tmp/flood.pid) 2>/dev/null; true');
    }
  }),
);

A('root on the vsock channel (a privileged port) may substitute', (c) =>
  withTimeout(180_000, 'privileged', async () => {
    const report = await rootSubstituted(c);
    assert.ok(report.files.some((f) => f.path === '/mnt/data/bin/vprog'));
    assert.match(await c.vm.sh('/mnt/data/bin/vprog'), /version v2/);
  }),
);

A('no oracle: 1-byte ranges are invalid, a mismatch names ranges and nothing they hold', (c) =>
  withTimeout(120_000, 'oracle', async () => {
    const conn = await serial(c);
    try {
      const args = notificationArgs(c.fwd, DISK);
      const tiny = await refusal(() =>
        conn.client.execute('substitute', {
          ...args,
          id: 'ee'.repeat(32),
          ranges: [{ offset: 0, length: 1, sha256: '0'.repeat(64) }],
        }),
      );
      assert.match(tiny, /InvalidArguments.*multiple of 4096|InvalidArguments.*>= 4096/);
      const r0 = args.ranges[0]!;
      const err = (await conn.client
        .execute('substitute', { ...args, id: 'ef'.repeat(32), ranges: [{ ...r0, sha256: '0'.repeat(64) }] })
        .catch((e: unknown) => e)) as { errorClass?: string; data?: unknown };
      assert.is(err.errorClass, 'VerifyMismatch', String(err));
      assert.equal(err.data, { mismatches: [{ offset: r0.offset, length: r0.length }] });
      assert.not.match(JSON.stringify(err), /[0-9a-f]{64}/, 'no hash in the answer');
    } finally {
      conn.close();
    }
  }),
);

A('a signed envelope for this VM (its real SMBIOS UUID and disk) is accepted', (c) =>
  withTimeout(300_000, 'signed', async () => {
    assert.is((await c.vm.sh('cat /sys/class/dmi/id/product_uuid')).trim().toLowerCase(), c.vm.uuid);
    const { report, again } = await signedTwice(c);
    assert.ok(report.files.length > 0);
    assert.is(again.replayed, true, 'a repeat of the latest step is answered from the journal, nothing done');
  }),
);

A('a replayed envelope is refused once the guest moved on; expired, other-VM and repurposed ones too', (c) =>
  withTimeout(480_000, 'envelopes', async () => {
    const { first } = await signedTwice(c);
    await vmsubstJson([
      'apply',
      c.reverse,
      '--qmp',
      c.vm.qmpSocket,
      '--device',
      'vblk0',
      '--notify',
      `serial:${c.vm.agentSocket}`,
      '--disk-serial',
      'vmsubst-data',
    ]);
    assert.match(await c.vm.sh('/mnt/data/bin/vprog'), /version v1/);
    const conn = await serial(c);
    try {
      const target = { 'vm-uuid': c.vm.uuid };
      assert.match(await refusal(() => conn.client.execute('substitute', first)), /Unauthorized: replayed envelope/);
      const revArgs = notificationArgs(c.rev, DISK);
      const old = Math.floor(Date.now() / 1000) - 7200;
      assert.match(
        await refusal(() =>
          conn.client.execute(
            'substitute',
            signArgs('substitute', revArgs, c.key, { target, now: old, lifetimeSec: 3600 }),
          ),
        ),
        /Unauthorized: the envelope expired/,
      );
      assert.match(
        await refusal(() =>
          conn.client.execute(
            'substitute',
            signArgs('substitute', revArgs, c.key, { target: { 'vm-uuid': randomUUID() } }),
          ),
        ),
        /Unauthorized: the envelope is for VM/,
      );
      const { 'dry-run': _d, ...prepareArgs } = revArgs;
      const forPrepare = signArgs('prepare', prepareArgs, c.key, { target });
      assert.match(
        await refusal(() => conn.client.execute('substitute', forPrepare)),
        /Unauthorized: bad signature.*'substitute'/,
      );
    } finally {
      conn.close();
    }
    assert.match(await c.vm.sh('/mnt/data/bin/vprog'), /version v1/, 'nothing was substituted by them');
  }),
);

A('nothing lost: a request sent the moment the host reconnects is answered (the port stays open)', (c) =>
  withTimeout(120_000, 'serial reconnect', async () => {
    // Without resends: each connection writes its request at once and waits. Were the port closed
    // between two host connections, the guest's driver would drop the request.
    for (let i = 0; i < 6; i++) {
      const sock = connect(c.vm.agentSocket);
      const reply = new Promise<string>((resolve, reject) => {
        let got = '';
        sock.on('data', (d: Buffer) => {
          got += d.toString();
          if (got.includes(`"id":"r${i}"`)) resolve(got);
        });
        sock.on('error', reject);
        setTimeout(() => reject(new Error(`no answer to r${i} within 30 s; got ${JSON.stringify(got)}`)), 30_000);
      });
      sock.write(`{"execute":"ping","id":"r${i}"}\n`);
      try {
        assert.match(await reply, /"return":\{\}/);
      } catch (e) {
        throw new Error(`${(e as Error).message}\nagent log:\n${(await c.vm.sh('tail -n 30 /tmp/agent.log')).trim()}`);
      } finally {
        sock.destroy();
      }
    }
  }),
);

A("commit and abort from another connection need prepare's token", (c) =>
  withTimeout(180_000, 'tokens', async () => {
    const { 'dry-run': _d, ...prepareArgs } = notificationArgs(c.fwd, DISK);
    const a = await serial(c);
    let token = '';
    try {
      token = (await a.prepare(prepareArgs)).token;
      assert.match(token, /^[0-9a-f]{32}$/);
    } finally {
      a.close();
    }
    const b = await serial(c);
    try {
      assert.match(await refusal(() => b.commit(prepareArgs.id)), /Unauthorized: commit must carry the token/);
      assert.match(
        await refusal(() => b.abort(prepareArgs.id, 'f'.repeat(32))),
        /Unauthorized: the token does not belong/,
      );
      const r = await b.abort(prepareArgs.id, token);
      assert.is(r.status, 'aborted');
    } finally {
      b.close();
    }
  }),
);
A.run();
