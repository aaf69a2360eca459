/**
 * The apply's record of what it is about to create in a VM, kept on the host
 * so that an apply killed half-way (SIGKILL, a host process crash) leaves
 * nothing that cannot be found again: `vmsubst recover`, and the next apply
 * on the same VM, read it and remove exactly what was left (recover.ts).
 *
 * One file per VM, keyed by the QMP socket's real path, in a directory that is
 * `/run/vmsubst` unless VMSUBST_STATE_DIR or `--state-dir` says otherwise
 * (/run is a tmpfs: a record does not outlive the host's boot, and neither does
 * the QEMU it describes). Written whole to a temporary name and renamed: a
 * reader sees the old record or the new one, never a torn one (StateStore.write).
 * The file is 0600 in a 0700 directory.
 */
import { createHash } from 'node:crypto';
import { mkdirSync, readFileSync, renameSync, unlinkSync, writeFileSync } from 'node:fs';
import { readFile, realpath } from 'node:fs/promises';
import { join, resolve } from 'node:path';
import { Type, type Static } from '@sinclair/typebox';
import { Validator } from '@vmsubst/common/protocol/codec';
import { TargetError } from '../errors.js';

export const DEFAULT_STATE_DIR = '/run/vmsubst';

/** The state directory: the option, else VMSUBST_STATE_DIR, else /run/vmsubst. */
export function stateDir(option?: string): string {
  return option ?? process.env['VMSUBST_STATE_DIR'] ?? DEFAULT_STATE_DIR;
}

export const ApplyRecord = Type.Object(
  {
    format: Type.Literal(1),
    /**
     * The vmsubst process that wrote it, and that process's start time (/proc/PID/stat field 22), so a reused pid is
     * not taken for it.
     */
    pid: Type.Integer({ minimum: 1 }),
    'pid-start': Type.String(),
    'started-at': Type.String(),
    qmp: Type.String(),
    /** query-uuid of the VM (all zeros when QEMU was started without -uuid). */
    uuid: Type.String(),
    bundle: Type.Object({ id: Type.String(), path: Type.Optional(Type.String()) }, { additionalProperties: false }),
    mode: Type.Union([Type.Literal('nbd'), Type.Literal('overlay')]),
    /** The drive's node: the export's node and the bitmap's. */
    node: Type.String(),
    /** The private directory of the NBD server's socket; the server is vmsubst's when its socket is there. */
    'socket-dir': Type.String(),
    'nbd-socket': Type.String(),
    export: Type.String(),
    bitmap: Type.String(),
    overlay: Type.Optional(Type.Object({ node: Type.String(), path: Type.String() }, { additionalProperties: false })),
    /** query-status said running before the apply. */
    'was-running': Type.Boolean(),
    /** Written just before `stop` and cleared after `cont`: the apply has the VM paused. */
    paused: Type.Boolean(),
    /**
     * Where the nbd mode's write is: `verifying` until the write begins (nothing of the disk
     * changed yet); `writing` from just before the first write request (inside the pause): the
     * disk may hold a mix of old and new ranges; `written` once every range is written and
     * flushed. Recovery completes a `writing` apply before it resumes the VM (recover.ts). The
     * overlay mode stays `verifying`: QEMU's block graph says whether its switch happened.
     */
    phase: Type.Union([Type.Literal('verifying'), Type.Literal('writing'), Type.Literal('written')]),
  },
  { additionalProperties: false },
);
export type ApplyRecord = Static<typeof ApplyRecord>;
export type ApplyRecordPhase = ApplyRecord['phase'];

const validate = new Validator(ApplyRecord);

/** /proc/PID/stat's start time (field 22), or undefined when the process does not exist. */
export function processStart(pid: number): string | undefined {
  try {
    const stat = readFileSync(`/proc/${pid}/stat`, 'utf8');
    // comm (field 2) is in parentheses and may hold spaces: count from the last ')'.
    return stat.slice(stat.lastIndexOf(')') + 2).split(' ')[19];
  } catch {
    return undefined;
  }
}

/** Records of this process's applies in progress, by file: a record with this pid is live only while its apply runs. */
const activeHere = new Set<string>();

export class StateStore {
  constructor(readonly dir: string = stateDir()) {}

  /** The record's file for the VM at `qmpPath` (the socket's real path, so two spellings of it are one VM). */
  async fileFor(qmpPath: string): Promise<string> {
    const real = await realpath(qmpPath).catch(() => resolve(qmpPath));
    return join(this.dir, `qmp-${createHash('sha256').update(real).digest('hex').slice(0, 16)}.json`);
  }

  /** The record left for this VM, or undefined. A record that is not valid is an error: it is never guessed at. */
  async read(qmpPath: string): Promise<{ file: string; record: ApplyRecord } | undefined> {
    const file = await this.fileFor(qmpPath);
    let text: string;
    try {
      text = await readFile(file, 'utf8');
    } catch (e) {
      if ((e as NodeJS.ErrnoException).code === 'ENOENT') return undefined;
      throw new TargetError(
        `cannot read the apply state file ${file}: ${(e as Error).message}`,
        'run as the user that runs vmsubst apply (root), or give the same --state-dir',
        { cause: e },
      );
    }
    let value: unknown;
    try {
      value = JSON.parse(text);
    } catch (e) {
      throw new TargetError(
        `the apply state file ${file} is not JSON: ${(e as Error).message}`,
        'it was not written by vmsubst: look at it, check the VM by hand (query-block-exports, query-status), then ' +
          'remove it',
      );
    }
    const problems = validate.problems(value);
    if (problems.length > 0) {
      throw new TargetError(
        `the apply state file ${file} is not valid: ${problems.slice(0, 3).join('; ')}`,
        'it was written by another vmsubst version or by hand: check the VM by hand (query-block-exports, ' +
          'query-status), then remove it',
      );
    }
    const record = value as ApplyRecord;
    if (record.qmp !== (await realpath(qmpPath).catch(() => resolve(qmpPath)))) {
      throw new TargetError(
        `the apply state file ${file} is for ${record.qmp}, not ${qmpPath}`,
        'two QMP sockets hash to one name, or the file was copied: check it by hand, then remove it',
      );
    }
    return { file, record };
  }

  /** Is the apply that wrote `record` still running (in this process, or another one)? */
  isLive(file: string, record: ApplyRecord): boolean {
    if (record.pid === process.pid) return activeHere.has(file);
    return processStart(record.pid) === record['pid-start'];
  }

  /**
   * Writes the record atomically: a temporary file, renamed over the record, so that a reader sees
   * the old record or the new one, never a torn one. Not fsync'd: a killed process's writes are in
   * the page cache, which is all recover needs; only a crash of the host could lose them, and that
   * also ends the QEMU the record is about. Synchronous: a few hundred bytes on a tmpfs, where each
   * step through the thread pool cost the apply more than the step itself (about 4 ms a record,
   * five records an apply, on the path of the guest's pause).
   */
  async write(file: string, record: ApplyRecord): Promise<void> {
    try {
      mkdirSync(this.dir, { recursive: true, mode: 0o700 });
    } catch (e) {
      throw new TargetError(
        `cannot create the apply state directory ${this.dir}: ${(e as Error).message}`,
        'an apply records what it creates in the VM there, so a crash leaves nothing unknown: run as root, or set ' +
          'VMSUBST_STATE_DIR (or --state-dir) to a directory you can write',
        { cause: e },
      );
    }
    const tmp = `${file}.${process.pid}.tmp`;
    writeFileSync(tmp, JSON.stringify(record, null, 2) + '\n', { mode: 0o600 });
    renameSync(tmp, file);
    activeHere.add(file);
    return Promise.resolve();
  }

  async remove(file: string): Promise<void> {
    activeHere.delete(file);
    try {
      unlinkSync(file);
    } catch (e) {
      if ((e as NodeJS.ErrnoException).code !== 'ENOENT') throw e;
    }
    return Promise.resolve();
  }

  /** Forgets that this process is applying (the file stays, for recover). */
  release(file: string): void {
    activeHere.delete(file);
  }
}
