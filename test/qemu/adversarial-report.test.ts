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
import { copyFileSync } from 'node:fs';
import { join } from 'node:path';
import { withGuest, type GuestContext } from '../helpers/guest-suite.js';
import { ROOT } from '../helpers/paths.js';
import { vmsubst, vmsubstJson } from '../helpers/cli.js';
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

const R = withGuest(
  suite(`adversarial: a ${FILES}-file substitution answers within one message, the full report in pages`),
  {
    name: 'adv-report',
    patched: null,
    makeDisk({ tmp }, disk) {
      const base = join(tmp, 'base.img');
      const patched = join(tmp, 'patched.img');
      execFileSync(join(ROOT, 'test/fixtures/build-many-files.sh'), [base, String(FILES), '64M'], { stdio: 'ignore' });
      execFileSync(join(ROOT, 'test/fixtures/build-many-files.sh'), [patched, String(FILES), '64M'], {
        stdio: 'ignore',
        env: { ...process.env, MANY_FILES_TAG: 'FILE' },
      });
      copyFileSync(base, disk);
    },
    boot: { bootTimeoutMs: 200_000 },
    bootLimitMs: 240_000,
    async setup({ tmp, vm }) {
      const bundle = join(tmp, 'many.bundle');
      await vmsubstJson(['diff', join(tmp, 'base.img'), join(tmp, 'patched.img'), '-o', bundle]);
      await vmsubstJson(['apply', bundle, '--qmp', vm.qmpSocket, '--device', 'vblk0']);
      return { bundle };
    },
  },
);

/** The substitution asked for over a connection of its own: whether the agent announced `report`, its answer and that answer's size on the wire. */
const answered = (c: GuestContext): Promise<{ supportsReport: boolean; report: SubstituteReport; bytes: number }> =>
  c.once('answered', async () => {
    const conn = await AgentConnection.open(`serial:${c.vm.agentSocket}`, { timeoutMs: 420_000 });
    try {
      const report = await conn.substitute(notificationArgs(await manifestOf(c.bundle), { serial: 'vmsubst-data' }));
      return {
        supportsReport: conn.supports('report'),
        report,
        bytes: Buffer.byteLength(JSON.stringify({ return: report, id: 1 })) + 1,
      };
    } finally {
      conn.close();
    }
  });

R('the answer arrives, under the message cap, truncated with the true counts', (c) =>
  withTimeout(480_000, 'substitute', async () => {
    const { supportsReport, report, bytes } = await answered(c);
    assert.ok(supportsReport, 'the agent announces the report capability');
    assert.ok(bytes < MAX_MESSAGE_BYTES, `${bytes} bytes`);
    assert.ok(report.truncated, 'marked truncated');
    assert.is(report.truncated!.counts['files'], FILES, JSON.stringify(report.truncated!.counts));
    assert.ok(report.files.length < FILES);
    assert.ok(
      report.truncated!['report-bytes'] > MAX_MESSAGE_BYTES,
      `the full report is ${report.truncated!['report-bytes']} bytes`,
    );
    console.log(
      `  answer ${bytes} bytes listing ${report.files.length} of ${FILES} files; full report ${report.truncated!['report-bytes']} bytes`,
    );
    assert.match(await c.vm.sh('head -c 9 /mnt/data/d000/e29/f002999'), /FILE 2999/);
  }),
);

R('the pages of the full report return every file, and a retry gets the same bounded answer', (c) =>
  withTimeout(780_000, 'pages', async () => {
    const { id } = (await answered(c)).report;
    const conn = await AgentConnection.open(`serial:${c.vm.agentSocket}`, { timeoutMs: 120_000 });
    try {
      const full = await conn.fullReport<SubstituteReport>(id);
      assert.is(full.files.length, FILES);
      assert.is(new Set(full.files.map((f) => f.path)).size, FILES);
      assert.ok(full.files.some((f) => f.path === '/mnt/data/d000/e29/f002999'));
      assert.is(full.truncated, undefined);
      const manifest = await manifestOf(c.bundle);
      const again = await conn.substitute(notificationArgs(manifest, { serial: 'vmsubst-data' }));
      assert.is(again.replayed, true);
      assert.is(again.truncated?.counts['files'], FILES);
      const mode = (
        await c.vm.sh(
          `stat -c %a /var/lib/vmsubst/reports/${id}.json 2>/dev/null || find / -name '${id}.json' -exec stat -c %a {} \\; 2>/dev/null`,
        )
      ).trim();
      assert.match(mode, /^600/, `the kept report's mode: ${mode}`);
    } finally {
      conn.close();
    }
  }),
);

R('notify says how to fetch the rest, and vmsubst report fetches every file', (c) =>
  withTimeout(300_000, 'cli', async () => {
    const to = `serial:${c.vm.agentSocket}`;
    const n = await vmsubst(['notify', c.bundle, '--to', to, '--disk-serial', 'vmsubst-data', '--json'], 240_000);
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

R.run();
