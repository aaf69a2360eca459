/**
 * Removing what an apply created in a VM: how each object is removed
 * (deferRemoval, registered on the apply's UndoStack, undo.ts, the moment
 * the object exists, and run at the end of every apply), and recovery after
 * an apply that died (recoverVm: the same removals, of what QEMU and the host
 * show is still there of what the state file says it was about to make).
 *
 * What an apply makes, in order: the socket directory, QEMU's NBD server on a
 * socket in it, the export, the dirty bitmap on the drive's node, and in
 * overlay mode the overlay file and its block node; then, around the change,
 * it pauses the VM. Recovery removes, last made first:
 *
 *   overlay node   blockdev-del, only when no device uses it (once
 *                  blockdev-snapshot has run it is the drive's top layer: the
 *                  substitution is in place and the overlay stays)
 *   overlay file   when its node is gone and no process has it open; and the
 *                  writer's temporary file beside it
 *   bitmap         block-dirty-bitmap-remove, when the node has it
 *   export         block-export-del (hard), when QEMU lists it
 *   NBD server     nbd-server-stop, when its socket is in vmsubst's directory
 *                  (QEMU has one server: another job's is never stopped)
 *   socket dir     rm -r
 *
 * and resumes the VM only when the record says the apply paused it (it was
 * running, and `stop` was about to be sent) and QEMU says it is paused.
 *
 * Before any of that, an nbd apply killed while it wrote (the record's phase
 * is `writing`) is completed, the VM still paused: the recorded bundle (or
 * the one given) is opened and checked to be the recorded id; the recorded
 * NBD server and export are made again (same names, so a recovery killed in
 * turn leaves nothing the record does not list); every range is read: new
 * content → nothing, old or neither (a range cut between two write requests)
 * → the bundle's new bytes are written; flush; every range must then hold
 * the new content. Without a usable bundle nothing is done: the VM stays
 * paused and the record stays, and the error says how to go on (--bundle, or
 * the dangerous --resume-anyway). The guest is told separately: applying the
 * same bundle again finds every range new and notifies the agent.
 */
import { chown, lstat, mkdir, readdir, rm, unlink } from 'node:fs/promises';
import { basename, dirname, join } from 'node:path';
import { performance } from 'node:perf_hooks';
import { Bundle } from '../bundle/reader.js';
import { QmpError, TargetError } from '../errors.js';
import { NbdClient } from '../nbd/client.js';
import { MIGRATION_STATES, type Qemu } from '../qmp/commands.js';
import {
  checkTargetSize,
  inspectTarget,
  ms,
  writeRanges,
  type BlockTarget,
  type BundleData,
  type RangeState,
} from './core.js';
import { fileOpeners } from './locks.js';
import { stateDir, type ApplyRecord, type StateStore } from './state-file.js';
import { UndoStack, type Removal } from './undo.js';

/** Which of an apply's objects exist, so are to be removed. */
export interface Present {
  overlayNode: boolean;
  overlayFile: boolean;
  bitmap: boolean;
  export: boolean;
  nbdServer: boolean;
  socketDir: boolean;
}

/** The names an apply records for what it makes (see state-file.ts). */
export type RecordedNames = Pick<ApplyRecord, 'node' | 'socket-dir' | 'nbd-socket' | 'export' | 'bitmap' | 'overlay'>;

/** The objects an apply makes, in the order it makes them. */
const MADE_IN_ORDER: readonly (keyof Present)[] = [
  'socketDir',
  'nbdServer',
  'export',
  'bitmap',
  'overlayFile',
  'overlayNode',
];

/**
 * Registers with `undo` how one of the recorded objects is removed, once it
 * exists (an overlay object only when the record names an overlay). Returns
 * the function that forgets it again (UndoStack.defer).
 */
export function deferRemoval(
  undo: UndoStack,
  qemu: Qemu,
  rec: Omit<RecordedNames, 'nbd-socket'>,
  made: keyof Present,
): () => void {
  const ov = rec.overlay;
  const dir = rec['socket-dir'];
  switch (made) {
    case 'overlayNode':
      return ov ? undo.defer(`overlay node ${ov.node}`, () => qemu.blockdevDel(ov.node)) : () => undefined;
    case 'overlayFile':
      return ov ? undo.defer(`overlay file ${ov.path}`, () => removeOverlayFile(ov.path)) : () => undefined;
    case 'bitmap':
      return undo.defer(`dirty bitmap ${rec.node}/${rec.bitmap}`, () => qemu.dirtyBitmapRemove(rec.node, rec.bitmap));
    case 'export':
      return undo.defer(`NBD export ${rec.export}`, () => qemu.blockExportDel(rec.export, 'hard'));
    case 'nbdServer':
      return undo.defer('NBD server', () => qemu.nbdServerStop());
    case 'socketDir':
      return undo.defer(`socket directory ${dir}`, () => rm(dir, { recursive: true, force: true }));
  }
}

/** Removes the objects marked present, last made first. Never throws: failures are listed. */
export async function removeLeftovers(
  qemu: Qemu,
  rec: Omit<RecordedNames, 'nbd-socket'>,
  present: Present,
): Promise<Removal> {
  const undo = new UndoStack();
  for (const made of MADE_IN_ORDER) if (present[made]) deferRemoval(undo, qemu, rec, made);
  return undo.unwind();
}

/** What QEMU's errors at the export mean, for the caller's operator. */
export interface ExportErrors {
  /** nbd-server-start failed: QEMU has one NBD server, and another job holds it. */
  busy: (e: QmpError) => Error;
  /** block-export-add was refused (a writable export needs share-rw=on); default: QEMU's error as it is. */
  refused?: (e: QmpError) => Error;
}

/**
 * Makes the recorded socket directory, starts QEMU's NBD server on the
 * recorded socket in it and exports the recorded node under the recorded
 * name; each registers its removal with `undo` the moment it exists.
 */
export async function openExport(
  qemu: Qemu,
  rec: RecordedNames,
  undo: UndoStack,
  writable: boolean,
  errors: ExportErrors,
  /** Who creates the socket in the directory: QEMU's user, when QEMU does not run as this process's. */
  owner?: { uid: number; gid: number },
): Promise<void> {
  await mkdir(rec['socket-dir'], { mode: 0o700 });
  if (owner) await chown(rec['socket-dir'], owner.uid, owner.gid);
  deferRemoval(undo, qemu, rec, 'socketDir');
  try {
    await qemu.nbdServerStartUnix(rec['nbd-socket']);
  } catch (e) {
    if (e instanceof QmpError && /already running/i.test(e.desc)) throw errors.busy(e);
    throw e;
  }
  deferRemoval(undo, qemu, rec, 'nbdServer');
  try {
    await qemu.blockExportAdd({ id: rec.export, nodeName: rec.node, name: rec.export, writable });
  } catch (e) {
    if (errors.refused && e instanceof QmpError && /permission|conflict|share-rw/i.test(e.desc))
      throw errors.refused(e);
    throw e;
  }
  deferRemoval(undo, qemu, rec, 'export');
}

/** The overlay, and the qcow2 writer's temporary file beside it (.NAME.XXXXXXXX.tmp) if a build was cut short. */
async function removeOverlayFile(path: string): Promise<void> {
  await unlink(path).catch((e: NodeJS.ErrnoException) => {
    if (e.code !== 'ENOENT') throw e;
  });
  for (const tmp of await writerTemporaries(path)) await unlink(tmp);
}

/** The qcow2 writer's temporary files for `path` (host-signal/src/qcow2/writer.ts names them .NAME.XXXXXXXX.tmp). */
async function writerTemporaries(path: string): Promise<string[]> {
  const prefix = `.${basename(path)}.`;
  const names = await readdir(dirname(path)).catch(() => [] as string[]);
  return names
    .filter((n) => n.startsWith(prefix) && /^[0-9a-f]{8}\.tmp$/.test(n.slice(prefix.length)))
    .map((n) => join(dirname(path), n));
}

const exists = (path: string): Promise<boolean> =>
  lstat(path).then(
    () => true,
    () => false,
  );
const isSocket = (path: string): Promise<boolean> =>
  lstat(path).then(
    (s) => s.isSocket(),
    () => false,
  );

/** What of the record's objects QEMU and the host still show; `kept` says what stays on purpose, and why. */
export async function findLeftovers(
  qemu: Qemu,
  rec: ApplyRecord,
): Promise<{ present: Present; kept: string[]; switched: boolean }> {
  const kept: string[] = [];
  const nodes = await qemu.queryNamedBlockNodes();
  const exportsNow = await qemu.queryBlockExports();
  const drive = nodes.find((n) => n['node-name'] === rec.node);
  const present: Present = {
    overlayNode: false,
    overlayFile: false,
    bitmap: drive?.['dirty-bitmaps']?.some((b) => b.name === rec.bitmap) ?? false,
    export: exportsNow.some((e) => e.id === rec.export),
    nbdServer: await isSocket(rec['nbd-socket']),
    socketDir: await exists(rec['socket-dir']),
  };
  let switched = false;
  const ov = rec.overlay;
  if (ov) {
    const inUse = (await qemu.queryBlock()).some((b) => b.inserted?.['node-name'] === ov.node);
    if (inUse) {
      switched = true;
      kept.push(
        `overlay node ${ov.node} (${ov.path}): it is the drive's top layer (the switch completed), so it stays; ` +
          `commit it as after any overlay apply (docs/apply-modes.md)`,
      );
    } else {
      present.overlayNode = nodes.some((n) => n['node-name'] === ov.node);
      // QEMU holds the file while the node exists; anyone else holding it keeps it.
      const held = (await exists(ov.path))
        ? (await fileOpeners(ov.path)).filter((o) => !(present.overlayNode && o.comm.startsWith('qemu')))
        : [];
      if (held.length > 0)
        kept.push(`overlay file ${ov.path}: open in ${held.map((o) => `${o.comm}[${o.pid}]`).join(', ')}, so it stays`);
      else present.overlayFile = (await exists(ov.path)) || (await writerTemporaries(ov.path)).length > 0;
    }
  }
  return { present, kept, switched };
}

/** An interrupted write, completed by recovery. */
export interface Completion {
  /** The bundle used: its path ('the apply's bundle' when the next apply's own was the recorded one). */
  bundle: string;
  ranges: number;
  /** Ranges that held the new content already (written before the crash). */
  rangesAlreadyNew: number;
  /** Ranges written now: those holding the old content, and those holding neither (cut part-way). */
  rangesWritten: number;
  /** Of rangesWritten, those that held neither content (a range cut between two write requests). */
  rangesNeither: number;
  bytesWritten: number;
  verifiedBytes: number;
  ms: number;
}

export interface RecoverOptions {
  /**
   * The bundle to complete an interrupted write with, when it is the recorded one (the next apply's own, already open
   * and verified).
   */
  bundle?: BundleData;
  /** Where the recorded bundle is, instead of the path in the record. */
  bundlePath?: string;
  /**
   * Do not complete an interrupted write: clean up and resume with the disk as it is (it may hold a mix). Dangerous.
   */
  resumeAnyway?: boolean;
}

export interface RecoveryReport {
  /**
   * nothing-to-do: no record; recovered: leftovers removed (or none found) and the record removed; stale: the record
   * was for a VM no longer at this socket.
   */
  status: 'nothing-to-do' | 'recovered' | 'stale';
  qmp: string;
  stateFile: string;
  /** The interrupted apply, as recorded. */
  interrupted?: {
    pid: number;
    startedAt: string;
    bundle: { id: string; path?: string };
    mode: 'nbd' | 'overlay';
    node: string;
    phase: ApplyRecord['phase'];
  };
  /** The interrupted write, completed before the VM was resumed. */
  completed?: Completion;
  removed: string[];
  kept: string[];
  /** `cont` was sent: the apply had paused the VM and it was still paused. */
  resumed: boolean;
  /** query-status after recovery. */
  vmStatus?: string;
  notes: string[];
}

/**
 * Reads the VM's state file and undoes what the apply that wrote it left: see
 * the module comment. Over `qemu`, a connection to the VM at `qmpPath` (QEMU
 * serves one client per monitor socket, so an apply recovers on its own
 * connection). Throws TargetError when that apply is still running, or when
 * something could not be removed (the record is then kept, for another try).
 */
export async function recoverVm(
  qemu: Qemu,
  qmpPath: string,
  store: StateStore,
  options: RecoverOptions = {},
): Promise<RecoveryReport> {
  const found = await store.read(qmpPath);
  const report: RecoveryReport = {
    status: 'nothing-to-do',
    qmp: qmpPath,
    stateFile: found?.file ?? (await store.fileFor(qmpPath)),
    removed: [],
    kept: [],
    resumed: false,
    notes: [],
  };
  if (!found) return report;
  const { file, record: rec } = found;
  report.interrupted = {
    pid: rec.pid,
    startedAt: rec['started-at'],
    bundle: rec.bundle,
    mode: rec.mode,
    node: rec.node,
    phase: rec.phase,
  };
  if (store.isLive(file, rec)) {
    throw new TargetError(
      `an apply (pid ${rec.pid}, started ${rec['started-at']}) is still working on the VM at ${qmpPath}`,
      'wait for it to finish: it removes what it made itself. Recover only after it has ended (or was killed)',
    );
  }
  const uuid = await qemu.queryUuid();
  if (uuid !== rec.uuid) {
    await store.remove(file);
    report.status = 'stale';
    report.vmStatus = (await qemu.queryStatus()).status;
    report.notes.push(
      `the VM at this socket (UUID ${uuid}) is not the one the interrupted apply worked on (UUID ${rec.uuid}): ` +
        `what it made went with that VM; the state file was removed`,
    );
    return report;
  }
  report.status = 'recovered';
  // An interrupted write is completed first, the VM still held; a failure leaves it held, with the record.
  const interruptedWrite = rec.mode === 'nbd' && rec.phase === 'writing';
  if (interruptedWrite && !options.resumeAnyway) {
    report.completed = await completeWrite(qemu, qmpPath, file, store, rec, options);
  }
  let removal: Removal = { removed: [], failed: [] };
  let switched = false;
  try {
    const left = await findLeftovers(qemu, rec);
    report.kept = left.kept;
    switched = left.switched;
    removal = await removeLeftovers(qemu, rec, left.present);
    report.removed = removal.removed;
  } finally {
    // Resumed whatever the removal did: a paused guest is the worst thing to leave.
    const status = await qemu.queryStatus();
    if (rec.paused && rec['was-running'] && status.status === 'paused') {
      await qemu.cont();
      report.resumed = true;
    } else if (rec.paused && rec['was-running']) {
      report.notes.push(
        `the apply had paused the VM; it is '${status.status}' now (resumed by someone else), so it was left as it is`,
      );
    }
    report.vmStatus = (await qemu.queryStatus()).status;
  }
  const again =
    rec.bundle.path !== undefined
      ? `apply ${rec.bundle.path} (bundle ${rec.bundle.id.slice(0, 12)}) again`
      : `apply bundle ${rec.bundle.id.slice(0, 12)} again`;
  const tell =
    `tell the guest: ${again} (it finds every range new, writes nothing and notifies the agent with ` +
    `--notify), or vmsubst notify`;
  if (report.completed) {
    const c = report.completed;
    report.notes.push(
      `the apply was killed while it wrote: recovery completed the write before resuming: ${c.rangesWritten} of ` +
        `${c.ranges} ranges written (${c.bytesWritten} ` +
        `bytes${c.rangesNeither ? `, ${c.rangesNeither} of them cut part-way` : ''}), ${c.rangesAlreadyNew} ` +
        `already new; every range now holds the bundle's new content; ${tell}`,
    );
  } else if (interruptedWrite) {
    report.notes.push(
      `DANGER: the apply was killed while it wrote and the write was NOT completed (--resume-anyway): the disk may ` +
        `hold some of the bundle's new ranges, some old ones and one cut part-way, and the running guest can read ` +
        `a mix of them. ${again} completes it if no range holds neither content; otherwise restart the VM from a ` +
        `good image`,
    );
  } else if (rec.mode === 'nbd' && rec.phase === 'written') {
    report.notes.push(
      `the apply had written and flushed every range before it was killed: the disk holds the bundle's new ` +
        `content; ${tell}`,
    );
  } else if (switched) {
    report.notes.push(
      "the overlay switch had completed: the bundle's blocks are in place; tell the guest (vmsubst notify)",
    );
  } else {
    report.notes.push('the interrupted apply had not changed the disk');
  }
  if (removal.failed.length > 0) {
    throw new TargetError(
      `recovery of the VM at ${qmpPath} could not remove: ${removal.failed.join('; ')}` +
        (report.removed.length ? ` (removed: ${report.removed.join(', ')})` : '') +
        (report.resumed ? '; the VM was resumed' : ''),
      `the state file ${file} is kept: fix the cause and run 'vmsubst recover --qmp ${qmpPath}' again`,
    );
  }
  await store.remove(file);
  return report;
}

/** The error that leaves the VM held and the record kept, with the ways on (the bundle, or the dangerous resume). */
function cannotComplete(
  qmpPath: string,
  file: string,
  store: StateStore,
  rec: ApplyRecord,
  vmStatus: string,
  why: string,
): TargetError {
  const dir = store.dir !== stateDir() ? ` --state-dir ${store.dir}` : '';
  return new TargetError(
    `the apply of bundle ${rec.bundle.id.slice(0, 12)} on ${qmpPath} was killed while it wrote, and recovery ` +
      `cannot complete the write: ${why}. Nothing was changed: the VM is left ${vmStatus} and the state file ` +
      `${file} is kept`,
    `give the bundle (id ${rec.bundle.id}): 'vmsubst recover --qmp ${qmpPath}${dir} --bundle PATH'; or, DANGEROUS, ` +
      `'vmsubst recover --qmp ${qmpPath}${dir} --resume-anyway' resumes the guest on a disk that may hold a mix of ` +
      `old and new content, which it can read inconsistently`,
  );
}

/**
 * The recorded bundle: the caller's own when it is the recorded one, else opened (data verified) from --bundle or the
 * recorded path, and checked to be the recorded id.
 */
async function recordedBundle(
  rec: ApplyRecord,
  options: RecoverOptions,
  refuse: (why: string) => TargetError,
): Promise<{ bundle: BundleData; label: string; close(): Promise<void> }> {
  const id = rec.bundle.id;
  if (options.bundle && options.bundlePath === undefined && options.bundle.manifest.id === id) {
    return { bundle: options.bundle, label: options.bundle.path ?? "the apply's bundle", close: async () => undefined };
  }
  const path = options.bundlePath ?? rec.bundle.path;
  if (path === undefined) throw refuse('the state file records no bundle path');
  let b: Bundle;
  try {
    b = await Bundle.open(path);
  } catch (e) {
    throw refuse(
      `the bundle ${options.bundlePath !== undefined ? 'given' : 'recorded'} cannot be used: ${(e as Error).message}`,
    );
  }
  if (b.manifest.id !== id) {
    await b.close();
    throw refuse(`${path} is bundle ${b.manifest.id.slice(0, 12)}, not the recorded ${id.slice(0, 12)}`);
  }
  return { bundle: b, label: path, close: () => b.close() };
}

/**
 * Completes an nbd write the apply was killed in, with the VM held (paused,
 * or never started): see the module comment. A VM found running (resumed by
 * someone since) is only checked: every range new (the apply had finished
 * writing) is accepted and flushed; otherwise it is refused, since vmsubst
 * never writes under a running guest. Throws with the record kept on any
 * failure; what it made in the VM is removed again.
 */
async function completeWrite(
  qemu: Qemu,
  qmpPath: string,
  file: string,
  store: StateStore,
  rec: ApplyRecord,
  options: RecoverOptions,
): Promise<Completion> {
  const t0 = performance.now();
  const status = await qemu.queryStatus();
  const refuse = (why: string): TargetError => cannotComplete(qmpPath, file, store, rec, status.status, why);
  if (MIGRATION_STATES.has(status.status))
    throw refuse(`the VM is in state '${status.status}': its disk must not be written now`);
  const { bundle, label, close } = await recordedBundle(rec, options, refuse);
  const { manifest } = bundle;
  try {
    // What the killed apply left (export, server, bitmap, directory) goes; the export is made again under the same
    // names.
    const left = await findLeftovers(qemu, rec);
    const cleared = await removeLeftovers(qemu, rec, left.present);
    if (cleared.failed.length > 0)
      throw refuse(`what the apply left could not be removed: ${cleared.failed.join('; ')}`);
    const made = new UndoStack();
    try {
      const busy = (): Error =>
        refuse(
          'another NBD server is running in this QEMU (QEMU has only one): stop it (nbd-server-stop) once its job ' +
            'is done',
        );
      await openExport(qemu, rec, made, true, { busy });
      const nbd = await NbdClient.connect(rec['nbd-socket'], { exportName: rec.export });
      made.defer('NBD connection', () => nbd.disconnect().catch(() => nbd.close()));
      checkTargetSize(manifest, nbd.size, `the NBD export of node ${rec.node}`);
      return await completeOver(bundle, nbdTarget(nbd), status.running, refuse, {
        label,
        t0,
        flush: () => nbd.flush(),
      });
    } finally {
      // Removed again in any case; a failure here is found and reported by the clean-up that follows.
      await made.unwind();
    }
  } finally {
    await close();
  }
}

/** A BlockTarget over an NBD connection. */
export function nbdTarget(nbd: NbdClient): BlockTarget {
  return { size: nbd.size, read: (o, l) => nbd.read(o, l), write: (o, d) => nbd.write(o, d), flush: () => nbd.flush() };
}

/**
 * The write of completeWrite, over the re-made export: every range that does
 * not hold the new content yet gets it (a running VM is refused), then every
 * range must hold it.
 */
async function completeOver(
  bundle: BundleData,
  target: BlockTarget,
  running: boolean,
  refuse: (why: string) => TargetError,
  c: { label: string; t0: number; flush: () => Promise<void> },
): Promise<Completion> {
  const { manifest } = bundle;
  const { states, verifiedBytes } = await inspectTarget(manifest, target);
  const alreadyNew = states.filter((s) => s === 'new').length;
  const neither = states.filter((s) => s === 'neither').length;
  const todo = states.length - alreadyNew;
  if (todo > 0 && running) {
    throw refuse(
      `the VM is running (it was resumed after the apply was killed) and ${todo} of ${states.length} ranges ` +
        'do not hold the new content: vmsubst never writes under a running guest; ' +
        'pause it ({"execute":"stop"}) and recover again to complete the write',
    );
  }
  // A range holding neither content was cut between two write requests: it is the bundle's to write too.
  const written =
    todo > 0
      ? await writeRanges(
          bundle,
          target,
          states.map((s): RangeState => (s === 'new' ? 'new' : 'old')),
        )
      : // The apply may have died before its flush.
        await c.flush().then(() => ({ rangesWritten: 0, bytesWritten: 0 }));
  const after = await inspectTarget(manifest, target);
  const bad = after.states.filter((s) => s !== 'new').length;
  if (bad > 0) {
    throw refuse(
      `after writing, ${bad} of ${states.length} ranges still do not hold the new content (the disk is not what ` +
        `the record says)`,
    );
  }
  return {
    bundle: c.label,
    ranges: states.length,
    rangesAlreadyNew: alreadyNew,
    rangesWritten: written.rangesWritten,
    rangesNeither: neither,
    bytesWritten: written.bytesWritten,
    verifiedBytes: verifiedBytes + after.verifiedBytes,
    ms: ms(performance.now() - c.t0),
  };
}
