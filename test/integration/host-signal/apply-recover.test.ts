/**
 * An apply killed with SIGKILL (VMSUBST_FAULT makes the vmsubst process kill
 * itself at a chosen point, exactly as a kill from outside would) against a
 * real QEMU: what it leaves (a paused VM, the NBD export, server and dirty
 * bitmap, an overlay node) is what QEMU shows, `vmsubst recover` removes it
 * and resumes the VM only when the apply had paused it, and the next apply
 * recovers by itself first and then applies correctly.
 */
import { spawn } from 'node:child_process';
import {
  copyFileSync,
  existsSync,
  mkdirSync,
  readFileSync,
  readdirSync,
  readlinkSync,
  renameSync,
  rmSync,
  writeFileSync,
} from 'node:fs';
import { createServer, type Server } from 'node:net';
import { join } from 'node:path';
import { suite } from 'uvu';
import * as assert from 'uvu/assert';
import { vmsubst, vmsubstJson } from '../../helpers/cli.js';
import { waitFor, withTimeout } from '../../helpers/timeout.js';
import { whyNoQemu } from '../../helpers/firmware-vm.js';
import {
  MiB,
  applyWorld,
  assertNbdServerFree,
  firmwareSuite,
  qemuState,
  rangesNew,
  rejected,
  sha,
  type ApplyWorld,
} from '../../helpers/apply-world.js';
import type { Qemu } from '../../../host-signal/src/qmp/index.js';
import { processStart, StateStore } from '../../../host-signal/src/apply/state-file.js';

const SIZE = 16 * MiB;
const TEST_TIMEOUT = 90_000;
// The first range spans two NBD write requests (256 KiB each): crash-mid-write cuts it part-way.
const EDITS: [number, number][] = [
  [8192, 512 << 10],
  ...Array.from({ length: 7 }, (_, i): [number, number] => [(i + 1) * MiB + 8192, 64 << 10]),
  [SIZE - 1, 1],
];
const CLEAN = { exports: [], nodes: ['disk0', 'file0'], bitmaps: [], jobs: [] };

interface Recovered {
  status: string;
  removed: string[];
  kept: string[];
  resumed: boolean;
  'vm-status': string;
  notes: string[];
  interrupted?: { pid: number; mode: string; phase: string; bundle: { id: string; path?: string } };
  completed?: {
    bundle: string;
    ranges: number;
    'ranges-already-new': number;
    'ranges-written': number;
    'ranges-neither': number;
    written: number;
  };
}

const noQemu = whyNoQemu();
const S = suite('apply killed (SIGKILL) and recovered: vmsubst recover, and the next apply');
const F = firmwareSuite(S, () => applyWorld('recover', SIZE, EDITS));
let W: ApplyWorld;
let stateDir: string;
let n = 0;
S.before.each(() => {
  W = F.world();
  stateDir = join(W.dir, `state-${n++}`);
});

/** Runs apply with the fault injected; asserts the process died of SIGKILL. */
async function killedApply(qmp: string, fault: string, extra: string[] = [], bundlePath = W.bundlePath): Promise<void> {
  const r = await vmsubst(['apply', bundlePath, '--qmp', qmp, ...extra], 60_000, {
    VMSUBST_FAULT: fault,
    VMSUBST_STATE_DIR: stateDir,
  });
  assert.is(r.signal, 'SIGKILL', `apply was to die of SIGKILL at ${fault}; exit ${r.code}: ${r.stderr}`);
}

/** The one state file's record. */
const stateRecord = (): { phase: string; paused: boolean } => {
  const files = readdirSync(stateDir);
  assert.is(files.length, 1, `one state file: ${files.join(', ')}`);
  return JSON.parse(readFileSync(join(stateDir, files[0]!), 'utf8')) as { phase: string; paused: boolean };
};

/**
 * Killed after the first NBD write request (256 KiB of the 512 KiB first range): the VM is left paused,
 * the record says 'writing', the disk holds the first range cut part-way (neither old nor new) and the
 * others old.
 */
async function killedMidWrite(
  vm: { qmpSocket: string; flush(): Promise<void>; status(): Promise<{ status: string }> },
  image: string,
  bundlePath = W.bundlePath,
): Promise<void> {
  await killedApply(vm.qmpSocket, 'crash-mid-write', [], bundlePath);
  assert.is((await vm.status()).status, 'paused', 'left paused by the killed apply');
  const rec = stateRecord();
  assert.is(rec.phase, 'writing');
  assert.ok(rec.paused);
  await vm.flush();
  const disk = readFileSync(image);
  const r0 = W.manifest.ranges[0]!;
  const h0 = sha(disk.subarray(r0.offset, r0.offset + r0.length));
  assert.ok(h0 !== r0['old-sha256'] && h0 !== r0['new-sha256'], 'the first range is half-written');
  assert.equal(
    rangesNew(W.manifest, disk).slice(1),
    W.manifest.ranges.slice(1).map(() => false),
    'the other ranges are old',
  );
}

/** A stand-in agent on a unix socket (two-phase capable): records what it is asked and answers substitute. */
async function fakeAgent(path: string): Promise<{ server: Server; got: { execute: string; id?: string }[] }> {
  const got: { execute: string; id?: string }[] = [];
  const hello = {
    version: '0.1.0',
    protocol: 1,
    capabilities: ['substitute', 'prepare', 'commit', 'abort', 'two-phase'],
  };
  const server = createServer((sock) => {
    sock.write(JSON.stringify({ vmsubst: hello }) + '\n');
    let buf = '';
    sock.on('data', (d) => {
      buf += d.toString();
      let nl: number;
      while ((nl = buf.indexOf('\n')) !== -1) {
        const msg = JSON.parse(buf.slice(0, nl)) as { execute: string; arguments?: { id?: string }; id?: unknown };
        buf = buf.slice(nl + 1);
        got.push({ execute: msg.execute, ...(msg.arguments?.id !== undefined ? { id: msg.arguments.id } : {}) });
        const ret =
          msg.execute === 'hello'
            ? hello
            : {
                id: msg.arguments?.id,
                device: '/dev/vdb',
                'dry-run': false,
                'verified-bytes': 0,
                files: [],
                unmapped: [],
                'timings-ms': { verify: 1, map: 1, invalidate: 1, total: 3 },
              };
        sock.write(JSON.stringify({ return: ret, id: msg.id }) + '\n');
      }
    });
  });
  await new Promise<void>((r) => server.listen(path, r));
  return { server, got };
}

const recover = (qmp: string, dir = stateDir): Promise<Recovered> =>
  vmsubstJson<Recovered>(['recover', '--qmp', qmp, '--state-dir', dir]);

/** QEMU's one NBD server is taken: starting another fails. */
async function assertNbdServerBusy(q: Qemu, dir: string): Promise<void> {
  const e = await rejected(q.nbdServerStartUnix(join(dir, 'probe-busy.sock')));
  assert.match(e.message, /already running/);
}

if (noQemu) {
  console.log(`apply-recover.test: skipped: ${noQemu}`);
  S.skip('recovery (needs QEMU)', () => undefined);
} else {
  S(
    'nbd, killed while the VM is paused: the VM stays paused with the export, server and bitmap; recover removes them and resumes it',
    () =>
      withTimeout(TEST_TIMEOUT, 'nbd kill', async () => {
        const { vm, image, dir } = await F.startVm('nbdkill', W.base);
        await killedApply(vm.qmpSocket, 'crash-while-paused');
        const status = await vm.status();
        assert.is(status.status, 'paused', 'left paused by the killed apply');
        const left = await qemuState(vm.monitor);
        assert.is(left.exports.length, 1, JSON.stringify(left));
        const tag = left.exports[0]!;
        assert.match(tag, /^vmsubst-[0-9a-f]{12}$/);
        assert.equal(left.bitmaps, [`disk0/${tag}`]);
        await assertNbdServerBusy(vm.monitor, dir);
        assert.is(readdirSync(stateDir).length, 1, 'the state file is there');

        const r = await recover(vm.qmpSocket);
        assert.is(r.status, 'recovered');
        assert.is(r.interrupted?.mode, 'nbd');
        assert.is(r.interrupted?.bundle.id, W.manifest.id);
        assert.equal(r.removed.slice(0, 3), [`dirty bitmap disk0/${tag}`, `NBD export ${tag}`, 'NBD server']);
        assert.match(r.removed[3] ?? '', new RegExp(`^socket directory .*${tag}`));
        assert.is(r.removed.length, 4);
        assert.ok(r.resumed, 'resumed: the apply had paused it');
        assert.is(r['vm-status'], 'running');
        assert.is(r.interrupted?.phase, 'verifying');
        assert.is(r.completed, undefined, 'nothing to complete: killed before the first write');
        assert.ok(
          r.notes.some((x) => /the interrupted apply had not changed the disk/.test(x)),
          r.notes.join('\n'),
        );

        assert.ok((await vm.status()).running);
        assert.equal(await qemuState(vm.monitor), CLEAN);
        await assertNbdServerFree(vm.monitor, dir);
        assert.equal(readdirSync(stateDir), [], 'the state file is removed');
        await vm.flush();
        assert.is(sha(readFileSync(image)), sha(W.base), 'killed before the writes: the disk is unchanged');

        const again = await vmsubstJson<{ status: string }>([
          'recover',
          '--qmp',
          vm.qmpSocket,
          '--state-dir',
          stateDir,
        ]);
        assert.is(again.status, 'nothing-to-do', 'a second recover has nothing to do');
      }),
  );

  S(
    'overlay, killed while paused with the overlay node added: the next apply recovers first (and says so), then applies',
    () =>
      withTimeout(TEST_TIMEOUT, 'overlay kill + apply', async () => {
        const { vm, image, dir } = await F.startVm('ovkill', W.base);
        await killedApply(vm.qmpSocket, 'crash-while-paused', ['--mode', 'overlay']);
        assert.is((await vm.status()).status, 'paused');
        const left = await qemuState(vm.monitor);
        const tag = left.exports[0]!;
        assert.equal(
          left.nodes,
          ['disk0', 'file0', `${tag}-overlay`],
          'the half-done overlay node is there, not in use',
        );
        const overlayFile = join(dir, `disk.img.vmsubst-${W.manifest.id.slice(0, 12)}.qcow2`);
        assert.ok(existsSync(overlayFile));

        const human = await vmsubst(['apply', W.bundlePath, '--qmp', vm.qmpSocket], 60_000, {
          VMSUBST_STATE_DIR: stateDir,
        });
        assert.is(human.code, 0, human.stderr);
        assert.match(human.stdout, /^recovered first: .* an apply of bundle [0-9a-f]{12} \(pid \d+, overlay mode/m);
        assert.match(
          human.stdout,
          new RegExp(`removed: overlay node ${tag}-overlay, overlay file ${overlayFile.replace(/[.]/g, '\\.')}`),
        );
        assert.match(human.stdout, /resumed the VM \(the apply had paused it\)/);
        assert.match(human.stdout, /nbd: wrote 9 ranges/);

        assert.ok((await vm.status()).running);
        assert.equal(await qemuState(vm.monitor), CLEAN);
        await assertNbdServerFree(vm.monitor, dir);
        assert.not.ok(existsSync(overlayFile), 'the unused overlay file is removed');
        assert.equal(readdirSync(stateDir), []);
        await vm.flush();
        assert.is(sha(readFileSync(image)), sha(W.patched), 'the disk is the patched image');
      }),
  );

  S('nbd, killed in the middle of its write: recover completes the write while the VM is paused, then resumes it', () =>
    withTimeout(TEST_TIMEOUT, 'mid-write + recover', async () => {
      const { vm, image, dir } = await F.startVm('midwrite', W.base);
      await killedMidWrite(vm, image);
      const r = await recover(vm.qmpSocket);
      assert.is(r.status, 'recovered');
      assert.is(r.interrupted?.phase, 'writing');
      assert.equal(r.completed, {
        ...r.completed!,
        bundle: W.bundlePath,
        ranges: W.manifest.ranges.length,
        'ranges-already-new': 0,
        'ranges-written': W.manifest.ranges.length,
        'ranges-neither': 1,
        written: W.changedBytes,
      });
      assert.ok(r.resumed);
      assert.is(r['vm-status'], 'running');
      assert.ok(
        r.notes.some((x) =>
          /recovery completed the write before resuming: 9 of 9 ranges written .*1 of them cut part-way/.test(x),
        ),
        r.notes.join('\n'),
      );
      assert.ok((await vm.status()).running);
      assert.equal(await qemuState(vm.monitor), CLEAN);
      await assertNbdServerFree(vm.monitor, dir);
      assert.equal(readdirSync(stateDir), [], 'the state file is removed');
      await vm.flush();
      assert.is(sha(readFileSync(image)), sha(W.patched), 'the disk is the patched image');
    }),
  );

  S(
    'nbd, killed mid-write with its bundle gone: recover refuses and leaves the VM paused with its record; --bundle PATH completes it',
    () =>
      withTimeout(TEST_TIMEOUT, 'mid-write, bundle gone', async () => {
        const { vm, image, dir } = await F.startVm('midgone', W.base);
        const mine = join(dir, 'mine.vsb');
        copyFileSync(W.bundlePath, mine);
        await killedMidWrite(vm, image, mine);
        const moved = join(dir, 'moved.vsb');
        renameSync(mine, moved);
        const recordBefore = readFileSync(join(stateDir, readdirSync(stateDir)[0]!), 'utf8');
        const left = await qemuState(vm.monitor);

        const r = await vmsubst(['recover', '--qmp', vm.qmpSocket, '--state-dir', stateDir, '--json']);
        assert.is(r.code, 1, r.stderr);
        const doc = JSON.parse(r.stdout) as { error: { code: string; message: string; hint: string } };
        assert.is(doc.error.code, 'E_VMSUBST_TARGET');
        assert.match(
          doc.error.message,
          /killed while it wrote, and recovery cannot complete the write: the bundle recorded cannot be used: .*mine\.vsb.*(ENOENT|no such file)/,
        );
        assert.match(doc.error.message, /the VM is left paused and the state file .* is kept/);
        assert.match(
          doc.error.hint,
          new RegExp(`vmsubst recover --qmp ${vm.qmpSocket.replace(/[.]/g, '\\.')} --state-dir .* --bundle PATH`),
        );
        assert.match(doc.error.hint, /DANGEROUS, .*--resume-anyway/);
        assert.is((await vm.status()).status, 'paused', 'not resumed on a half-written disk');
        assert.is(
          readFileSync(join(stateDir, readdirSync(stateDir)[0]!), 'utf8'),
          recordBefore,
          'the state file is kept as it was',
        );
        assert.equal(await qemuState(vm.monitor), left, 'nothing was changed in QEMU');

        // Another bundle is refused by its id.
        const other = await applyWorld('recover-other', SIZE, [[0, 4096]]);
        await other.bundle.close();
        const wrong = await vmsubst([
          'recover',
          '--qmp',
          vm.qmpSocket,
          '--state-dir',
          stateDir,
          '--bundle',
          other.bundlePath,
        ]);
        rmSync(other.dir, { recursive: true, force: true });
        assert.is(wrong.code, 1);
        assert.match(
          wrong.stderr,
          new RegExp(`is bundle ${other.manifest.id.slice(0, 12)}, not the recorded ${W.manifest.id.slice(0, 12)}`),
        );
        assert.is((await vm.status()).status, 'paused');
        assert.ok(existsSync(join(stateDir, readdirSync(stateDir)[0]!)));

        const usage = await vmsubst(['recover', '--qmp', vm.qmpSocket, '--bundle', moved, '--resume-anyway']);
        assert.is(usage.code, 2, usage.stderr);

        const ok = await vmsubstJson<Recovered>([
          'recover',
          '--qmp',
          vm.qmpSocket,
          '--state-dir',
          stateDir,
          '--bundle',
          moved,
        ]);
        assert.is(ok.completed?.bundle, moved);
        assert.is(ok.completed?.['ranges-written'], W.manifest.ranges.length);
        assert.ok(ok.resumed);
        assert.ok((await vm.status()).running);
        assert.equal(await qemuState(vm.monitor), CLEAN);
        assert.equal(readdirSync(stateDir), []);
        await vm.flush();
        assert.is(sha(readFileSync(image)), sha(W.patched));
      }),
  );

  S('nbd, killed mid-write: --resume-anyway resumes on the disk as it is and says it is dangerous', () =>
    withTimeout(TEST_TIMEOUT, 'mid-write, resume anyway', async () => {
      const { vm, image } = await F.startVm('midanyway', W.base);
      await killedMidWrite(vm, image);
      const r = await vmsubstJson<Recovered>([
        'recover',
        '--qmp',
        vm.qmpSocket,
        '--state-dir',
        stateDir,
        '--resume-anyway',
      ]);
      assert.is(r.completed, undefined);
      assert.ok(r.resumed);
      assert.ok(
        r.notes.some((x) => /^DANGER: .*NOT completed \(--resume-anyway\)/.test(x)),
        r.notes.join('\n'),
      );
      assert.equal(await qemuState(vm.monitor), CLEAN);
      assert.equal(readdirSync(stateDir), []);
      await vm.flush();
      assert.not.equal(sha(readFileSync(image)), sha(W.patched), 'the write was not completed');
    }),
  );

  S(
    'nbd, killed mid-write: the next apply --notify completes the write while paused, finds every range new and tells the agent',
    () =>
      withTimeout(TEST_TIMEOUT, 'mid-write + apply', async () => {
        const { vm, image, dir } = await F.startVm('midapply', W.base);
        await killedMidWrite(vm, image);
        const agent = await fakeAgent(join(dir, 'agent.sock'));
        try {
          const r = await vmsubstJson<{
            status: string;
            recovered: Recovered;
            'ranges-written': number;
            'ranges-already-new': number;
            'pause-ms': number | null;
            agent: { told: boolean; mode?: string };
          }>(['apply', W.bundlePath, '--qmp', vm.qmpSocket, '--notify', `unix:${join(dir, 'agent.sock')}`], 60_000, {
            VMSUBST_STATE_DIR: stateDir,
          });
          assert.is(r.recovered.status, 'recovered');
          assert.is(r.recovered.completed?.['ranges-written'], W.manifest.ranges.length);
          assert.is(r.recovered.completed?.['ranges-neither'], 1);
          assert.ok(r.recovered.resumed);
          assert.is(r.status, 'already-applied');
          assert.is(r['ranges-written'], 0);
          assert.is(r['ranges-already-new'], W.manifest.ranges.length);
          assert.is(r['pause-ms'], null, 'nothing left to write: no second pause');
          assert.ok(r.agent.told, 'the agent was told');
          assert.is(r.agent.mode, 'substitute');
          assert.equal(agent.got, [{ execute: 'hello' }, { execute: 'substitute', id: W.manifest.id }]);
        } finally {
          agent.server.close();
        }
        assert.ok((await vm.status()).running);
        assert.equal(await qemuState(vm.monitor), CLEAN);
        assert.equal(readdirSync(stateDir), []);
        await vm.flush();
        assert.is(sha(readFileSync(image)), sha(W.patched));
      }),
  );

  S('nbd, killed while paused: the next apply --json recovers, resumes and completes the substitution', () =>
    withTimeout(TEST_TIMEOUT, 'nbd kill + apply', async () => {
      const { vm, image, dir } = await F.startVm('nbdapply', W.base);
      await killedApply(vm.qmpSocket, 'crash-while-paused');
      assert.is((await vm.status()).status, 'paused');
      const r = await vmsubstJson<{ status: string; recovered: Recovered; 'ranges-written': number; resumed: boolean }>(
        ['apply', W.bundlePath, '--qmp', vm.qmpSocket],
        60_000,
        { VMSUBST_STATE_DIR: stateDir },
      );
      assert.is(r.recovered.status, 'recovered');
      assert.ok(r.recovered.resumed);
      assert.is(r.recovered.removed.length, 4, r.recovered.removed.join(', '));
      assert.is(r.status, 'applied');
      assert.is(r['ranges-written'], W.manifest.ranges.length);
      assert.ok(r.resumed);
      assert.ok((await vm.status()).running);
      assert.equal(await qemuState(vm.monitor), CLEAN);
      await assertNbdServerFree(vm.monitor, dir);
      await vm.flush();
      assert.is(sha(readFileSync(image)), sha(W.patched));
    }),
  );

  S(
    'killed before the pause, with the overlay node added: recover removes it and does not resume a VM it did not pause',
    () =>
      withTimeout(TEST_TIMEOUT, 'overlay add kill', async () => {
        const { vm, dir } = await F.startVm('ovadd', W.base);
        await killedApply(vm.qmpSocket, 'crash-after-overlay-add', ['--mode', 'overlay']);
        assert.ok((await vm.status()).running, 'not paused yet');
        const tag = (await qemuState(vm.monitor)).exports[0]!;
        // Someone pauses the VM after the crash: recover must leave it paused.
        await vm.monitor.stop();
        const r = await recover(vm.qmpSocket);
        assert.ok(r.removed.includes(`overlay node ${tag}-overlay`), r.removed.join(', '));
        assert.is(r.resumed, false);
        assert.is((await vm.status()).status, 'paused', 'left as it is');
        assert.equal(await qemuState(vm.monitor), CLEAN);
        await assertNbdServerFree(vm.monitor, dir);
        assert.equal(
          readdirSync(dir).filter((f) => f.endsWith('.qcow2') || f.endsWith('.tmp')),
          [],
        );
      }),
  );

  S('a VM that was paused before the apply stays paused after recovery', () =>
    withTimeout(TEST_TIMEOUT, 'paused before', async () => {
      const { vm } = await F.startVm('pausedbefore', W.base, { paused: true });
      await killedApply(vm.qmpSocket, 'crash-while-paused');
      assert.is((await qemuState(vm.monitor)).exports.length, 1);
      const r = await recover(vm.qmpSocket);
      assert.is(r.status, 'recovered');
      assert.is(r.resumed, false);
      assert.is((await vm.status()).status, 'prelaunch');
      assert.equal(await qemuState(vm.monitor), CLEAN);
    }),
  );

  S(
    "recover for another VM does not touch this VM's state file; with no state file it has nothing to do (exit 0)",
    () =>
      withTimeout(TEST_TIMEOUT, 'other vm', async () => {
        const { vm: a } = await F.startVm('vma', W.base);
        const { vm: b } = await F.startVm('vmb', W.base);
        await killedApply(a.qmpSocket, 'crash-while-paused');
        const files = readdirSync(stateDir);
        assert.is(files.length, 1);
        const before = readFileSync(join(stateDir, files[0]!), 'utf8');
        const rb = await vmsubst(['recover', '--qmp', b.qmpSocket, '--state-dir', stateDir]);
        assert.is(rb.code, 0, rb.stderr);
        assert.match(rb.stdout, /no interrupted apply recorded .*: nothing to do/);
        assert.is(readFileSync(join(stateDir, files[0]!), 'utf8'), before, "A's state file untouched");
        assert.is((await a.status()).status, 'paused', 'A is still paused');
        assert.is((await qemuState(a.monitor)).exports.length, 1);
        assert.ok((await b.status()).running);
        const ra = await recover(a.qmpSocket);
        assert.ok(ra.resumed);
        assert.equal(readdirSync(stateDir), []);
      }),
  );

  S('an apply still running on the VM is not recovered under it: refused with the pid', () =>
    withTimeout(TEST_TIMEOUT, 'live', async () => {
      const { vm, dir } = await F.startVm('live', W.base);
      // A live process stands for the running apply: its pid and start time go into the record.
      const holder = spawn('sleep', ['60'], { stdio: 'ignore' });
      try {
        const pid = holder.pid!;
        await waitFor(
          5000,
          'sleep started',
          () =>
            processStart(pid) !== undefined && readlinkSync(`/proc/${pid}/exe`).endsWith('sleep') ? true : undefined,
          20,
        );
        const store = new StateStore(stateDir);
        const file = await store.fileFor(vm.qmpSocket);
        mkdirSync(stateDir, { recursive: true });
        const record = {
          format: 1,
          pid,
          'pid-start': processStart(pid)!,
          'started-at': new Date().toISOString(),
          qmp: vm.qmpSocket,
          uuid: await vm.monitor.queryUuid(),
          bundle: { id: W.manifest.id },
          mode: 'nbd',
          node: 'disk0',
          'socket-dir': join(dir, 'x.d'),
          'nbd-socket': join(dir, 'x.d', 'nbd.sock'),
          export: 'vmsubst-000000000000',
          bitmap: 'vmsubst-000000000000',
          'was-running': true,
          paused: true,
          phase: 'writing',
        };
        writeFileSync(file, JSON.stringify(record));
        const r = await vmsubst(['recover', '--qmp', vm.qmpSocket, '--state-dir', stateDir, '--json']);
        assert.is(r.code, 1, r.stderr);
        const doc = JSON.parse(r.stdout) as { error: { code: string; message: string; hint: string } };
        assert.is(doc.error.code, 'E_VMSUBST_TARGET');
        assert.match(doc.error.message, new RegExp(`an apply \\(pid ${pid}, .*\\) is still working on the VM`));
        assert.match(doc.error.hint, /wait for it to finish/);
        const ap = await vmsubst(['apply', W.bundlePath, '--qmp', vm.qmpSocket], 60_000, {
          VMSUBST_STATE_DIR: stateDir,
        });
        assert.is(ap.code, 1);
        assert.match(ap.stderr, /is still working on the VM/);
        assert.ok(existsSync(file), 'the record stays');
        assert.ok((await vm.status()).running, 'nothing was done to the VM');
      } finally {
        holder.kill('SIGKILL');
      }
    }),
  );
}

const U = suite('recover: usage');
U('recover --help describes it; --qmp is required (exit 2)', async () => {
  const h = await vmsubst(['recover', '--help']);
  assert.is(h.code, 0);
  assert.match(h.stdout, /resumes the VM if the apply had paused it, and only then/);
  const r = await vmsubst(['recover']);
  assert.is(r.code, 2);
  assert.match(r.stderr, /--qmp SOCK is required/);
  const top = await vmsubst(['--help']);
  assert.match(top.stdout, /recover --qmp SOCK/);
});

S.run();
U.run();
