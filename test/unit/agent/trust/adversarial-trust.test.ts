/**
 * The trust model, tried the way an attacker on the host would: an unprivileged vsock peer, forged,
 * replayed, expired, misdirected and repurposed envelopes, a stolen commit. The Gate and the Grants
 * file are the real ones; the peers and the guest's identity are given.
 */
import { suite } from 'uvu';
import * as assert from 'uvu/assert';
import { generateKeyPairSync } from 'node:crypto';
import { mkdtempSync, readFileSync, rmSync, writeFileSync, appendFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { Gate, hypervisorSide, HYPERVISOR_CHANNELS } from '../../../../agent/src/trust/gate.js';
import { Grants } from '../../../../agent/src/trust/grants.js';
import { keyId, signArgs, MAX_ENVELOPE_LIFETIME_SEC } from '@vmsubst/common/protocol/signature';
import type { Peer } from '../../../../agent/src/transport/transport.js';
import { ConfigError, DEFAULTS, describeTrust, parseCli } from '../../../../agent/src/config.js';
import { argsValidator } from '@vmsubst/common/protocol/codec';

const T = suite('adversarial: trust (gate, envelopes, replays)');

const { privateKey, publicKey } = generateKeyPairSync('ed25519');
const other = generateKeyPairSync('ed25519');
const trusted = new Map([[keyId(publicKey), publicKey]]);
const UUID = '6f1c2a3b-4d5e-4f60-8a7b-9c0d1e2f3a4b';
const identity = { vmUuid: UUID, diskSerials: new Set(['vmsubst-data']) };
const NOW = 1_800_000_000;

const vsockPeer = (port: number): Peer => ({
  transport: 'vsock',
  description: `vsock 2:${port}`,
  greets: true,
  cid: 2,
  port,
});
const serial: Peer = { transport: 'serial', description: 'serial /dev/virtio-ports/org.vmsubst.0', greets: false };
const args = (id = 'ab'.repeat(32)) => ({
  id,
  disk: { serial: 'vmsubst-data' },
  ranges: [{ offset: 8192, length: 4096, sha256: '0'.repeat(64) }],
});

let dir = '';
const gate = (over: Partial<ConstructorParameters<typeof Gate>[0]> = {}): Gate =>
  new Gate({
    trusted,
    hypervisorChannels: HYPERVISOR_CHANNELS,
    requireSignature: false,
    grants: new Grants(dir, () => NOW),
    identity: () => identity,
    nowSec: () => NOW,
    ...over,
  });
const refused = (f: () => unknown, re: RegExp): void => {
  try {
    f();
  } catch (e) {
    assert.is((e as { errorClass?: string }).errorClass, 'Unauthorized');
    assert.match((e as Error).message, re);
    return;
  }
  assert.unreachable('was accepted');
};

T.before.each(() => {
  dir = mkdtempSync(join(tmpdir(), 'vmsubst-trust-'));
});
T.after.each(() => rmSync(dir, { recursive: true, force: true }));

T('a vsock peer is the hypervisor side only from a source port below 1024', () => {
  assert.ok(hypervisorSide(vsockPeer(1023), HYPERVISOR_CHANNELS));
  assert.not.ok(hypervisorSide(vsockPeer(1024), HYPERVISOR_CHANNELS));
  assert.not.ok(hypervisorSide(vsockPeer(49152), HYPERVISOR_CHANNELS));
  assert.ok(hypervisorSide(serial, HYPERVISOR_CHANNELS));
  assert.not.ok(hypervisorSide(serial, ['vsock-privileged-port']), 'a channel struck from the list is not trusted');
});

T('an unprivileged peer may hello and ping, nothing else, unsigned', () => {
  const g = gate({ trusted: new Map() });
  assert.is(g.whyNot('hello', vsockPeer(40000)), undefined);
  assert.is(g.whyNot('ping', vsockPeer(40000)), undefined);
  for (const c of ['substitute', 'prepare', 'commit', 'abort', 'report'])
    assert.match(g.whyNot(c, vsockPeer(40000)) ?? '', /not the hypervisor's side.*only hello and ping/, c);
  assert.match(
    gate({ trusted: new Map(), requireSignature: true }).whyNot('substitute', serial) ?? '',
    /every change must be signed and this agent trusts no key/,
  );
  refused(
    () => g.admit('substitute', { ...args(), 'dry-run': true } as never, vsockPeer(40000)),
    /not the hypervisor's side.*only hello and ping/,
  );
  assert.ok(g.admit('substitute', args(), vsockPeer(700)), 'root on the host (a privileged port) is');
});

T('unsigned customization is refused even from the hypervisor side', () => {
  refused(
    () => gate().admit('substitute', { ...args(), customization: { hostname: 'x' } } as never, serial),
    /customization is accepted only in a signed/,
  );
});

T('requireSignature refuses unsigned requests on every channel', () => {
  refused(
    () => gate({ requireSignature: true }).admit('prepare', args(), serial),
    /requires a signature on every channel/,
  );
});

T('a good envelope is accepted from any peer, once', () => {
  const g = gate();
  const signed = signArgs('substitute', args(), privateKey, {
    target: { 'vm-uuid': UUID, 'disk-serial': 'vmsubst-data' },
    now: NOW,
  });
  const a = g.admit('substitute', signed, vsockPeer(40000));
  assert.is(a.signedBy, keyId(publicKey));
  assert.is(a.replayOf, undefined);
  a.commit();
  const again = g.admit('substitute', signed, vsockPeer(40000));
  assert.equal(again.replayOf, { id: signed.id, command: 'substitute' }, 'the second use is known as a replay');
});

T('the replay record survives a restart and a torn last line', () => {
  const signed = signArgs('prepare', args(), privateKey, { target: { 'disk-serial': 'vmsubst-data' }, now: NOW });
  const g1 = new Grants(dir, () => NOW);
  gate({ grants: g1 }).admit('prepare', signed, serial).commit();
  g1.setToken(signed.id, 'f'.repeat(32));
  g1.close();
  appendFileSync(join(dir, 'grants.jsonl'), '{"k":"nonce","nonce":"tor');
  const g2 = new Grants(dir, () => NOW);
  assert.ok(g2.seen(signed.signature.nonce), 'nonce remembered');
  assert.ok(g2.tokenMatches(signed.id, 'f'.repeat(32)));
  assert.not.ok(g2.tokenMatches(signed.id, 'e'.repeat(32)));
  g2.setToken(signed.id, 'd'.repeat(32));
  assert.ok(g2.tokenMatches(signed.id, 'd'.repeat(32)), 'a retried prepare gets a token of its own');
  assert.ok(g2.tokenMatches(signed.id, 'f'.repeat(32)), 'and the first stays valid');
  g2.setToken('cd'.repeat(32), 'a'.repeat(32));
  g2.close();
  const g3 = new Grants(dir, () => NOW);
  assert.ok(g3.tokenMatches('cd'.repeat(32), 'a'.repeat(32)), 'the record after the torn line is read back');
  assert.equal(g3.corrupt, []);
  g3.close();
  assert.ok(readFileSync(join(dir, 'grants.jsonl'), 'utf8').endsWith('\n'));
});

T('a corrupt line in the replay record is counted, not hidden', () => {
  writeFileSync(join(dir, 'grants.jsonl'), 'garbage\n{"k":"token","id":"x","sha256":"y"}\n');
  const g = new Grants(dir, () => NOW);
  assert.equal(g.corrupt, [1]);
  g.close();
});

T('an expired, future, or overlong envelope is refused', () => {
  const t = { target: { 'disk-serial': 'vmsubst-data' } };
  refused(
    () =>
      gate().admit(
        'substitute',
        signArgs('substitute', args(), privateKey, { ...t, now: NOW - 7200, lifetimeSec: 3600 }),
        serial,
      ),
    /expired 3600 s ago/,
  );
  refused(
    () => gate().admit('substitute', signArgs('substitute', args(), privateKey, { ...t, now: NOW + 3600 }), serial),
    /issued in the future/,
  );
  const long = signArgs('substitute', args(), privateKey, { ...t, now: NOW });
  long.signature['expires-at'] = NOW + MAX_ENVELOPE_LIFETIME_SEC * 2;
  refused(() => gate().admit('substitute', long, serial), /bad signature/);
});

T("another VM's envelope is refused", () => {
  refused(
    () =>
      gate().admit(
        'substitute',
        signArgs('substitute', args(), privateKey, {
          target: { 'vm-uuid': '00112233-4455-4677-8899-aabbccddeeff' },
          now: NOW,
        }),
        serial,
      ),
    /is for VM 00112233/,
  );
  refused(
    () =>
      gate().admit(
        'substitute',
        signArgs('substitute', args(), privateKey, { target: { 'disk-serial': 'other-disk' }, now: NOW }),
        serial,
      ),
    /disk serial 'other-disk'/,
  );
  const mixed = signArgs('substitute', { ...args(), disk: { serial: 'vmsubst-root' } }, privateKey, {
    target: { 'disk-serial': 'vmsubst-data' },
    now: NOW,
  });
  refused(() => gate().admit('substitute', mixed, serial), /request names 'vmsubst-root'/);
});

T('a prepare signature is not a substitute one, and back', () => {
  const t = { target: { 'disk-serial': 'vmsubst-data' }, now: NOW };
  refused(
    () => gate().admit('substitute', signArgs('prepare', args(), privateKey, t), serial),
    /bad signature.*another command than 'substitute'/,
  );
  refused(
    () => gate().admit('prepare', signArgs('substitute', args(), privateKey, t), serial),
    /bad signature.*'prepare'/,
  );
  refused(() => gate().admit('commit', signArgs('abort', { id: args().id }, privateKey, t), serial), /bad signature/);
});

T('an untrusted key, an altered request and a signature with no trusted keys are refused', () => {
  const t = { target: { 'disk-serial': 'vmsubst-data' }, now: NOW };
  refused(
    () => gate().admit('substitute', signArgs('substitute', args(), other.privateKey, t), serial),
    /does not trust/,
  );
  const s = signArgs('substitute', args(), privateKey, t);
  refused(
    () =>
      gate().admit(
        'substitute',
        { ...s, ranges: [{ offset: 0, length: 4096, sha256: '1'.repeat(64) }] } as typeof s,
        serial,
      ),
    /bad signature/,
  );
  refused(() => gate({ trusted: new Map() }).admit('substitute', s, serial), /trusts no key/);
});

T('ranges smaller than a 4 KiB block, or off its boundary, are invalid arguments', () => {
  const v = argsValidator('substitute');
  assert.ok(v.is(args()));
  assert.not.ok(v.is({ ...args(), ranges: [{ offset: 8192, length: 1, sha256: '0'.repeat(64) }] }));
  assert.not.ok(v.is({ ...args(), ranges: [{ offset: 8193, length: 4096, sha256: '0'.repeat(64) }] }));
});

T('defaults: customization off, unsigned changes only from the hypervisor side; --print-config says so', () => {
  assert.equal(DEFAULTS.customization.allow, []);
  assert.equal(DEFAULTS.trust, {
    hypervisorChannels: ['serial', 'vsock-privileged-port', 'unix'],
    requireSignature: false,
  });
  const c = parseCli(['--require-signature', '--trusted-key-dir', ''], () => undefined).config;
  assert.is(c.trust.requireSignature, true);
  assert.is(c.trustedKeyDir, null);
  const words = describeTrust(DEFAULTS, []).join('\n');
  assert.match(words, /source port below 1024/);
  assert.match(words, /customization: off/);
  assert.match(words, /no key is trusted/);
  assert.throws(
    () => parseCli(['--config', '/x'], () => '{"trust":{"hypervisorChannels":["tcp"],"requireSignature":false}}'),
    (e: ConfigError) => /hypervisorChannels/.test(e.problems.join()),
  );
});

T.run();
