/**
 * A substitution that touches 3,000 files in a real guest: its report is
 * larger than one message (MAX_MESSAGE_BYTES), which used to fail after the
 * work was done and journaled. The answer now arrives, is under the cap, says
 * `truncated` with the true counts, and the `report` command's pages return
 * every file.
 */
import { suite } from 'uvu';
import * as assert from 'uvu/assert';
import { execFileSync } from 'node:child_process';
import { copyFileSync, mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { GuestVm } from '../helpers/vm.js';
import { guestArtifacts, ROOT } from '../helpers/paths.js';
import { vmsubst, vmsubstJson } from '../helpers/cli.js';
import { guard } from '../helpers/guard.js';
import { withTimeout } from '../helpers/timeout.js';
import { AgentConnection } from '../../host-signal/src/notify/index.js';
import { notificationArgs } from '../../host-signal/src/notify/index.js';
import { Bundle } from '../../host-signal/src/bundle/index.js';
import { MAX_MESSAGE_BYTES, type SubstituteReport } from '@vmsubst/common/protocol/schema';

const FILES = 3000;

async function manifestOf(path: string): Promise<Bundle['manifest']> {
  const b = await Bundle.open(path);
  try {
    return b.manifest;
  } finally {
    await b.close();
  }
}
const art = guestArtifacts();
const R = suite(`adversarial: a ${FILES}-file substitution answers within one message, the full report in pages`);
const G = guard(R);
const C = { tmp: '', bundle: '', vm: undefined as GuestVm | undefined, answer: undefined as SubstituteReport | undefined, answerBytes: 0 };

if (typeof art === 'string') {
  console.log(`  skipped: ${art}`);
  R.skip('guest artefacts are missing', () => undefined);
} else {
  R.before(G.setup(async () => {
    C.tmp = mkdtempSync(join(tmpdir(), 'vmsubst-adv-report-'));
    const base = join(C.tmp, 'base.img');
    const patched = join(C.tmp, 'patched.img');
    execFileSync(join(ROOT, 'test/fixtures/build-many-files.sh'), [base, String(FILES), '64M'], { stdio: 'ignore' });
    execFileSync(join(ROOT, 'test/fixtures/build-many-files.sh'), [patched, String(FILES), '64M'], { stdio: 'ignore', env: { ...process.env, MANY_FILES_TAG: 'FILE' } });
    const disk = join(C.tmp, 'disk.img');
    copyFileSync(base, disk);
    C.bundle = join(C.tmp, 'many.bundle');
    await vmsubstJson(['diff', base, patched, '-o', C.bundle]);
    C.vm = await withTimeout(240_000, 'boot', () => GuestVm.boot({ disk, bootTimeoutMs: 200_000 }));
    await vmsubstJson(['apply', C.bundle, '--qmp', C.vm.qmpSocket, '--device', 'vblk0']);
  }));
  R.after(() => {
    C.vm?.kill();
    rmSync(C.tmp, { recursive: true, force: true });
  });

  G.test('the answer arrives, under the message cap, truncated with the true counts', () =>
    withTimeout(480_000, 'substitute', async () => {
      const conn = await AgentConnection.open(`serial:${C.vm!.agentSocket}`, { timeoutMs: 420_000 });
      try {
        assert.ok(conn.supports('report'), 'the agent announces the report capability');
        const manifest = await manifestOf(C.bundle);
        const report = await conn.substitute(notificationArgs(manifest, { serial: 'vmsubst-data' }));
        C.answer = report;
        C.answerBytes = Buffer.byteLength(JSON.stringify({ return: report, id: 1 })) + 1;
        assert.ok(C.answerBytes < MAX_MESSAGE_BYTES, `${C.answerBytes} bytes`);
        assert.ok(report.truncated, 'marked truncated');
        assert.is(report.truncated!.counts['files'], FILES, JSON.stringify(report.truncated!.counts));
        assert.ok(report.files.length < FILES);
        assert.ok(report.truncated!['report-bytes'] > MAX_MESSAGE_BYTES, `the full report is ${report.truncated!['report-bytes']} bytes`);
        console.log(`  answer ${C.answerBytes} bytes listing ${report.files.length} of ${FILES} files; full report ${report.truncated!['report-bytes']} bytes`);
        assert.match(await C.vm!.sh('head -c 9 /mnt/data/d000/e29/f002999'), /FILE 2999/);
      } finally {
        conn.close();
      }
    }),
  );

  G.test('the pages of the full report return every file, and a retry gets the same bounded answer', () =>
    withTimeout(300_000, 'pages', async () => {
      const conn = await AgentConnection.open(`serial:${C.vm!.agentSocket}`, { timeoutMs: 120_000 });
      try {
        const full = await conn.fullReport<SubstituteReport>(C.answer!.id);
        assert.is(full.files.length, FILES);
        assert.is(new Set(full.files.map((f) => f.path)).size, FILES);
        assert.ok(full.files.some((f) => f.path === '/mnt/data/d000/e29/f002999'));
        assert.is(full.truncated, undefined);
        const manifest = await manifestOf(C.bundle);
        const again = await conn.substitute(notificationArgs(manifest, { serial: 'vmsubst-data' }));
        assert.is(again.replayed, true);
        assert.is(again.truncated?.counts['files'], FILES);
        const mode = (await C.vm!.sh(`stat -c %a /var/lib/vmsubst/reports/${C.answer!.id}.json 2>/dev/null || find / -name '${C.answer!.id}.json' -exec stat -c %a {} \\; 2>/dev/null`)).trim();
        assert.match(mode, /^600/, `the kept report's mode: ${mode}`);
      } finally {
        conn.close();
      }
    }),
  );

  G.test('notify says how to fetch the rest, and vmsubst report fetches every file', () =>
    withTimeout(300_000, 'cli', async () => {
      const to = `serial:${C.vm!.agentSocket}`;
      const n = await vmsubst(['notify', C.bundle, '--to', to, '--disk-serial', 'vmsubst-data', '--json'], 240_000);
      assert.is(n.code, 0, n.stderr);
      const answer = JSON.parse(n.stdout) as SubstituteReport;
      assert.is(answer.truncated?.counts['files'], FILES);
      const command = `vmsubst report ${answer.id} --to ${to}`;
      assert.ok(n.stderr.includes(`fetch it with: ${command}\n`), n.stderr);
      const r = await vmsubst(['report', answer.id, '--to', to, '--json'], 240_000);
      assert.is(r.code, 0, r.stderr);
      const full = JSON.parse(r.stdout) as SubstituteReport;
      assert.is(full.files.length, FILES);
      assert.is(full.truncated, undefined);
    }),
  );
}

R.run();
