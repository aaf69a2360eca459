/** `vmsubst recover`. */
import { recoverVm, StateStore, stateDir, type RecoveryReport } from '../../apply/index.js';
import { Qemu, QmpClient } from '../../qmp/index.js';
import { UsageError } from '../../errors.js';
import { formatBytes } from '../format.js';
import { Output, helpRequested, parse, positionals, type Command } from '../common.js';
import type { RecoverOutput } from '../output.js';

const HELP = `Usage: vmsubst recover --qmp SOCK [--state-dir DIR] [--bundle PATH | --resume-anyway] [--json]

Cleans up after a 'vmsubst apply' that was killed while it worked on the VM
at SOCK (its QMP unix socket). Before it makes anything in a VM, an apply
writes a state file saying what it is about to make: a private NBD server,
an export of the drive, a dirty bitmap, in overlay mode an overlay file and
block node; just before it pauses the VM, that it is pausing it; and (nbd
mode) just before its first write request, that it is writing. The apply
removes the file when it ends. recover reads the file left behind and:

  - if the apply was killed while it wrote (the disk may hold some of the
    bundle's new ranges, some old, one cut part-way), completes the write
    first, the VM still paused: opens the recorded bundle, checks that it is
    the recorded one, writes the bundle's new bytes into every range that
    does not hold them yet (through a private NBD export, as apply does),
    flushes, and checks that every range now holds the new content. If the
    bundle is gone or is not the recorded one, it does nothing else: the VM
    stays paused, the state file stays, exit status 1 (see --bundle,
    --resume-anyway);
  - removes exactly what is still there of those things (an overlay that
    already is the drive's top layer stays: the switch had completed);
  - resumes the VM if the apply had paused it, and only then (a VM that was
    paused before the apply, or was resumed since, is left as it is);
  - removes the state file, and reports what it did.

With no state file for this VM there is nothing to do (exit status 0).
'vmsubst apply' runs the same recovery first, by itself, and says so.
The guest is not told by recover: after a completed write, apply the same
bundle again (with --notify): it finds every range new, writes nothing and
tells the agent. Or use 'vmsubst notify'.

  --qmp SOCK        the VM's QMP socket (as given to the apply)
  --state-dir DIR   where apply wrote its state files (default
                    $VMSUBST_STATE_DIR, else /run/vmsubst)
  --bundle PATH     the bundle to complete an interrupted write with, when
                    the recorded path is gone or moved (it must be the
                    recorded bundle: same id)
  --resume-anyway   DANGEROUS: do not complete an interrupted write; clean
                    up and resume the VM with the disk as it is. The running
                    guest can then read a mix of old and new content, and a
                    range cut part-way makes the next apply refuse the disk.
  --json            print the report as JSON

Exit status: 0 recovered or nothing to do; 1 an apply is still running on
this VM, an interrupted write could not be completed (the VM stays paused),
or something could not be removed (the state file is kept in both cases).
`;

async function run(args: string[]): Promise<void> {
  const { values, positionals: pos } = parse('recover', args, {
    qmp: { type: 'string' },
    'state-dir': { type: 'string' },
    bundle: { type: 'string' },
    'resume-anyway': { type: 'boolean' },
  });
  if (helpRequested(HELP, values)) return;
  positionals('recover', pos, []);
  if (values.qmp === undefined) throw new UsageError('recover: --qmp SOCK is required', "see 'vmsubst recover --help'");
  if (values.bundle !== undefined && values['resume-anyway']) {
    throw new UsageError(
      'recover: give --bundle PATH (complete the write) or --resume-anyway (do not), not both',
      "see 'vmsubst recover --help'",
    );
  }
  const o = new Output(values.json === true);
  const store = new StateStore(stateDir(values['state-dir']));
  let report: RecoveryReport;
  if (!(await store.read(values.qmp))) {
    // Nothing recorded: QEMU need not even be asked.
    report = {
      status: 'nothing-to-do',
      qmp: values.qmp,
      stateFile: await store.fileFor(values.qmp),
      removed: [],
      kept: [],
      resumed: false,
      notes: [],
    };
  } else {
    const qmp = await QmpClient.connect(values.qmp);
    try {
      report = await recoverVm(new Qemu(qmp), values.qmp, store, {
        ...(values.bundle !== undefined ? { bundlePath: values.bundle } : {}),
        ...(values['resume-anyway'] ? { resumeAnyway: true } : {}),
      });
    } finally {
      qmp.close();
    }
  }
  o.result<typeof RecoverOutput>(recoveryJson(report), () => recoveryHuman(report));
}

export function recoveryJson(r: RecoveryReport): RecoverOutput {
  return {
    status: r.status,
    qmp: r.qmp,
    'state-file': r.stateFile,
    ...(r.interrupted
      ? {
          interrupted: {
            pid: r.interrupted.pid,
            'started-at': r.interrupted.startedAt,
            bundle: r.interrupted.bundle,
            mode: r.interrupted.mode,
            node: r.interrupted.node,
            phase: r.interrupted.phase,
          },
        }
      : {}),
    ...(r.completed
      ? {
          completed: {
            bundle: r.completed.bundle,
            ranges: r.completed.ranges,
            'ranges-already-new': r.completed.rangesAlreadyNew,
            'ranges-written': r.completed.rangesWritten,
            'ranges-neither': r.completed.rangesNeither,
            written: r.completed.bytesWritten,
            'verified-bytes': r.completed.verifiedBytes,
            ms: r.completed.ms,
          },
        }
      : {}),
    removed: r.removed,
    kept: r.kept,
    resumed: r.resumed,
    ...(r.vmStatus !== undefined ? { 'vm-status': r.vmStatus } : {}),
    notes: r.notes,
  };
}

export function recoveryHuman(r: RecoveryReport): string {
  if (r.status === 'nothing-to-do') return `${r.qmp}: no interrupted apply recorded (${r.stateFile}): nothing to do`;
  const i = r.interrupted!;
  const lines = [
    `${r.qmp}: an apply of bundle ${i.bundle.id.slice(0, 12)} (pid ${i.pid}, ${i.mode} mode, started ` +
      `${i.startedAt}, ${i.phase}) was interrupted`,
  ];
  const c = r.completed;
  if (c) {
    lines.push(
      `  completed the write with ${c.bundle}: ${c.rangesWritten} of ${c.ranges} ranges written ` +
        `(${formatBytes(c.bytesWritten)}${c.rangesNeither ? `, ${c.rangesNeither} cut part-way` : ''}), ` +
        `${c.rangesAlreadyNew} already new; every range verified new`,
    );
  }
  lines.push(r.removed.length > 0 ? `  removed: ${r.removed.join(', ')}` : '  nothing of it was left in the VM');
  for (const k of r.kept) lines.push(`  kept: ${k}`);
  lines.push(
    r.resumed
      ? '  resumed the VM (the apply had paused it)'
      : `  the VM was not resumed by recover (it is ${r.vmStatus ?? '?'})`,
  );
  for (const n of r.notes) lines.push(`  ${n}`);
  return lines.join('\n');
}

export const recoverCommand: Command = { help: HELP, run };
