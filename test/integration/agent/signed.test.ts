/**
 * Signed notifications with the real CLI and the real agent on a unix
 * socket: with a trusted key configured, unsigned, foreign-signed and
 * tampered notifications are refused as Unauthorized (and logged), and a
 * correctly signed one is accepted (it then fails later, honestly: no disk
 * here holds the bundle's blocks).
 */
import { suite } from 'uvu';
import * as assert from 'uvu/assert';
import { createPrivateKey } from 'node:crypto';
import { mkdtempSync, readFileSync, rmSync, statSync, writeFileSync } from 'node:fs';
import { connect } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { startAgent, type AgentProcess } from '../../helpers/agent-process.js';
import { vmsubst, vmsubstJson } from '../../helpers/cli.js';
import { withTimeout } from '../../helpers/timeout.js';
import { AgentClient } from '../../../host-signal/src/notify/client.js';
import { signArgs } from '@vmsubst/common/protocol/signature';

const S = suite('signed notifications: trusted keys');
const C = { dir: '', sock: '', bundle: '', agent: undefined as AgentProcess | undefined };

S.before(async () => {
  C.dir = mkdtempSync(join(tmpdir(), 'vmsubst-signed-'));
  const a = Buffer.alloc(1 << 20, 1);
  const b = Buffer.from(a);
  b.fill(2, 8192, 12288);
  writeFileSync(join(C.dir, 'a.img'), a);
  writeFileSync(join(C.dir, 'b.img'), b);
  C.bundle = join(C.dir, 'x.bundle');
  await vmsubstJson(['diff', join(C.dir, 'a.img'), join(C.dir, 'b.img'), '-o', C.bundle]);
  await vmsubstJson(['keygen', '--out', join(C.dir, 'trusted')]);
  await vmsubstJson(['keygen', '--out', join(C.dir, 'other')]);
  C.agent = await startAgent(C.dir, [
    '--trusted-key',
    join(C.dir, 'trusted.pub'),
    '--require-signature',
    '--trusted-key-dir',
    '',
  ]);
  C.sock = C.agent.sock;
});
S.after(() => {
  C.agent?.kill();
  rmSync(C.dir, { recursive: true, force: true });
});

S('keygen writes a private key only its owner can read', () => {
  assert.match(readFileSync(join(C.dir, 'trusted.key'), 'utf8'), /BEGIN PRIVATE KEY/);
  assert.is(statSync(join(C.dir, 'trusted.key')).mode & 0o777, 0o600);
});

S('an unsigned notification is refused and the refusal logged', () =>
  withTimeout(20_000, 'unsigned', async () => {
    const r = await vmsubst(['notify', C.bundle, '--to', `unix:${C.sock}`, '--json']);
    assert.is(r.code, 1);
    assert.match(r.stderr + r.stdout, /Unauthorized.*not signed/);
    assert.match(C.agent!.log(), /refused an unauthorized request/);
  }),
);

S('a notification signed by an untrusted key is refused', () =>
  withTimeout(20_000, 'other key', async () => {
    const r = await vmsubst([
      'notify',
      C.bundle,
      '--to',
      `unix:${C.sock}`,
      '--disk-serial',
      'vmsubst-data',
      '--sign',
      join(C.dir, 'other.key'),
      '--json',
    ]);
    assert.is(r.code, 1);
    assert.match(r.stderr + r.stdout, /does not trust/);
  }),
);

S('a signed notification altered after signing is refused', () =>
  withTimeout(20_000, 'tampered', async () => {
    const key = createPrivateKey(readFileSync(join(C.dir, 'trusted.key')));
    const args = signArgs(
      'substitute',
      { id: 'ab'.repeat(32), disk: {}, ranges: [{ offset: 8192, length: 4096, sha256: '0'.repeat(64) }] },
      key,
      { target: { 'disk-serial': 'x' } },
    );
    const client = new AgentClient(connect(C.sock));
    await client.hello();
    const err = await client
      .execute('substitute', { ...args, ranges: [{ offset: 0, length: 4096, sha256: '0'.repeat(64) }] })
      .catch((e: Error) => e);
    assert.match(String(err), /Unauthorized: bad signature/);
    client.close();
  }),
);

S('a notification signed by the trusted key is accepted', () =>
  withTimeout(20_000, 'trusted', async () => {
    // This machine has no disk with a serial, so the envelope names a VM UUID: the agent must
    // refuse it as another VM's unless it is this machine's own.
    const r = await vmsubst([
      'notify',
      C.bundle,
      '--to',
      `unix:${C.sock}`,
      '--disk-serial',
      'vmsubst-data',
      '--sign',
      join(C.dir, 'trusted.key'),
      '--json',
    ]);
    assert.is(r.code, 1);
    assert.match(
      r.stderr + r.stdout,
      /Unauthorized: the envelope is for disk serial 'vmsubst-data', which this guest does not have/,
    );
  }),
);

S.run();
