/**
 * `vmsubst report` against the real agent on a unix socket: a full report kept in the agent's
 * state directory (reports/ID.json, larger than one page) comes back whole and equal, as JSON,
 * into a file and as a summary; an id with no kept report is told apart; and where the unix
 * socket is not the hypervisor's side (trust.hypervisorChannels without "unix") an unsigned
 * request reads nothing of it, a signed one reads it whole.
 */
import { suite } from 'uvu';
import * as assert from 'uvu/assert';
import { mkdirSync, mkdtempSync, readdirSync, readFileSync, rmSync, statSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { startAgent, type AgentProcess } from '../../helpers/agent-process.js';
import { vmsubst, vmsubstJson } from '../../helpers/cli.js';
import { withTimeout } from '../../helpers/timeout.js';
import { MAX_REPORT_PAGE_BYTES, type SubstituteReport } from '@vmsubst/common/protocol/schema';

const R = suite('vmsubst report: the full report from the real agent, page by page');
const ID = 'e7'.repeat(32);
const FILES = 3000;
const C = {
  dir: '',
  full: '',
  trusted: undefined as AgentProcess | undefined,
  unprivileged: undefined as AgentProcess | undefined,
};

function bigReport(): SubstituteReport {
  const files = Array.from({ length: FILES }, (_, i) => ({
    path: `/mnt/data/d000/e${String(Math.floor(i / 100)).padStart(2, '0')}/f${String(i).padStart(6, '0')}`,
    ino: 100 + i,
    ranges: [{ offset: i * 4096, length: 4096 }],
    'pages-cached': 1,
    'pages-mapped': 0,
    'pages-dropped': 1,
    'pages-kept': 0,
    mappers: [{ pid: 1000 + i, comm: 'reader' }],
  }));
  return {
    id: ID,
    device: '/dev/vdb',
    'dry-run': false,
    'verified-bytes': FILES * 4096,
    files,
    unmapped: [],
    plan: {
      files: files.map((f) => ({
        path: f.path,
        ino: f.ino,
        mount: '/mnt/data',
        class: 'data' as const,
        policy: 'remap' as const,
        'policy-from': 'default' as const,
        action: 'mapping zapped; the process faults the new content in',
        ranges: f.ranges,
        mappers: f.mappers.map((m) => ({ ...m, 'mapped-bytes': 4096 })),
      })),
      blocks: files.map((f) => ({ ...f.ranges[0]!, class: 'file-data' as const, mount: '/mnt/data' })),
      'restart-required': false,
      reasons: [],
      units: [],
      'pin-bytes': 0,
    },
    'timings-ms': { verify: 12, map: 3, invalidate: 40, total: 60 },
  };
}

/** The agent keeps a full report the way ReportStore.save does: reports/ID.json, 0600, under a 0700 directory. */
function keep(stateDir: string, json: string): void {
  mkdirSync(join(stateDir, 'reports'), { recursive: true, mode: 0o700 });
  writeFileSync(join(stateDir, 'reports', `${ID}.json`), json, { mode: 0o600 });
}

/** A disk serial this machine has (the signed request's target must be a disk of "this guest"). */
function localDiskSerial(): string | undefined {
  for (const d of readdirSync('/sys/block')) {
    try {
      const s = readFileSync(join('/sys/block', d, 'serial'), 'utf8').trim();
      if (/^[\x21-\x7e]{1,64}$/.test(s)) return s;
    } catch {
      /* no serial */
    }
  }
  return undefined;
}

R.before(async () => {
  C.dir = mkdtempSync(join(tmpdir(), 'vmsubst-report-'));
  C.full = JSON.stringify(bigReport());
  assert.ok(C.full.length > 2 * MAX_REPORT_PAGE_BYTES, `the fixture spans several pages (${C.full.length} bytes)`);
  for (const d of ['trusted', 'unprivileged']) {
    mkdirSync(join(C.dir, d));
    keep(join(C.dir, d, 'state'), C.full);
  }
  await vmsubstJson(['keygen', '--out', join(C.dir, 'key')]);
  // Default settings: the agent's own unix socket (0600, root) is the hypervisor's side.
  C.trusted = await startAgent(join(C.dir, 'trusted'), ['--trusted-key-dir', '']);
  // Here the unix socket is an ordinary peer: only a signature opens it.
  const config = join(C.dir, 'unprivileged.json');
  writeFileSync(config, JSON.stringify({ trust: { hypervisorChannels: ['serial'], requireSignature: false } }));
  C.unprivileged = await startAgent(join(C.dir, 'unprivileged'), [
    '--config',
    config,
    '--trusted-key',
    join(C.dir, 'key.pub'),
    '--trusted-key-dir',
    '',
  ]);
});
R.after(() => {
  C.trusted?.kill();
  C.unprivileged?.kill();
  rmSync(C.dir, { recursive: true, force: true });
});

R('--json prints the whole report, byte for byte as the agent kept it', () =>
  withTimeout(30_000, 'json', async () => {
    const r = await vmsubst(['report', ID, '--to', `unix:${C.trusted!.sock}`, '--json']);
    assert.is(r.code, 0, r.stderr);
    assert.is(r.stdout.trimEnd(), C.full);
    const got = JSON.parse(r.stdout) as SubstituteReport;
    assert.is(got.files.length, FILES);
    assert.equal(got, JSON.parse(C.full));
  }),
);

R('-o FILE writes the report (0600) and says how many pages it took', () =>
  withTimeout(30_000, 'output', async () => {
    const out = join(C.dir, 'out.json');
    const r = await vmsubstJson<{ id: string; bytes: number; pages: number; output: string }>([
      'report',
      ID,
      '--to',
      `unix:${C.trusted!.sock}`,
      '-o',
      out,
    ]);
    assert.equal(r, {
      id: ID,
      bytes: C.full.length,
      pages: Math.ceil(C.full.length / MAX_REPORT_PAGE_BYTES),
      output: out,
    });
    assert.is(readFileSync(out, 'utf8'), C.full);
    assert.is(statSync(out).mode & 0o777, 0o600);
  }),
);

R('without --json, a summary of the whole report', () =>
  withTimeout(30_000, 'human', async () => {
    const r = await vmsubst(['report', ID, '--to', `unix:${C.trusted!.sock}`]);
    assert.is(r.code, 0, r.stderr);
    assert.match(
      r.stdout,
      new RegExp(
        `^report of ${ID} from the agent at unix:.* in ${Math.ceil(C.full.length / MAX_REPORT_PAGE_BYTES)} pages\\)`,
      ),
    );
    assert.match(r.stdout, /verified 12 MiB on \/dev\/vdb; 3000 files affected/);
    assert.match(
      r.stdout,
      /\/mnt\/data\/d000\/e29\/f002999: 1 pages dropped, 0 kept \(policy remap\); mapped by reader\[3999\]/,
    );
  }),
);

R('an id the agent kept no report for: an error that says which answers are kept', () =>
  withTimeout(30_000, 'unknown', async () => {
    const r = await vmsubst(['report', '12'.repeat(32), '--to', `unix:${C.trusted!.sock}`]);
    assert.is(r.code, 1);
    assert.match(r.stderr, /no full report is kept for 1212/);
    assert.match(r.stderr, /hint: an answer that was not truncated is whole already/);
  }),
);

R('a malformed id or a missing --to is a usage error (status 2), the agent not asked', async () => {
  const bad = await vmsubst(['report', '../../etc/passwd', '--to', `unix:${C.trusted!.sock}`]);
  assert.is(bad.code, 2);
  assert.match(bad.stderr, /not a substitution id/);
  const noTo = await vmsubst(['report', ID]);
  assert.is(noTo.code, 2);
  assert.match(noTo.stderr, /--to ADDR is required/);
  const noSerial = await vmsubst(['report', ID, '--to', `unix:${C.trusted!.sock}`, '--sign', join(C.dir, 'key.key')]);
  assert.is(noSerial.code, 2);
  assert.match(noSerial.stderr, /--sign needs --disk-serial/);
});

R('an unprivileged channel reads nothing of the report, unsigned', () =>
  withTimeout(30_000, 'unprivileged', async () => {
    const r = await vmsubst(['report', ID, '--to', `unix:${C.unprivileged!.sock}`, '--json']);
    assert.is(r.code, 1, r.stdout);
    assert.match(r.stderr, /Unauthorized/);
    assert.match(r.stderr, /hint: a report names guest paths and processes: .*--sign KEY --disk-serial SERIAL/);
    assert.not.match(r.stdout + r.stderr, /\/mnt\/data|reader|f00/, 'nothing of the report leaks');
    assert.match(C.unprivileged!.log(), /refused an unauthorized request/);
  }),
);

R('the same channel reads it whole when the request is signed by a trusted key', () =>
  withTimeout(30_000, 'signed', async () => {
    const serial = localDiskSerial();
    if (serial === undefined) {
      console.log('  skipped (signed read): this machine has no disk with a serial for the envelope to name');
      return;
    }
    const r = await vmsubst([
      'report',
      ID,
      '--to',
      `unix:${C.unprivileged!.sock}`,
      '--sign',
      join(C.dir, 'key.key'),
      '--disk-serial',
      serial,
      '--json',
    ]);
    assert.is(r.code, 0, r.stderr);
    assert.is(r.stdout.trimEnd(), C.full);
  }),
);

R('--help documents the command, and vmsubst --help lists it', async () => {
  const h = await vmsubst(['report', '--help']);
  assert.is(h.code, 0);
  assert.match(h.stdout, /^Usage: vmsubst report ID --to ADDR/);
  const all = await vmsubst(['--help']);
  assert.match(all.stdout, /report ID --to ADDR/);
});

R.run();
