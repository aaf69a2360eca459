/**
 * The rollout state file: which VMs a rollout of one bundle has finished, so
 * that an interrupted rollout (Ctrl-C, a crash, a halt) resumes where it
 * stopped. Rewritten atomically (temporary file + rename) after every VM.
 *
 *   { "format": "vmsubst-rollout-state-1", "bundle": "<bundle id>",
 *     "vms": { "web-1": { "status": "applied", "id": "<substitution id>", "at": "<ISO time>" } } }
 */
import { readFile, rename, writeFile } from 'node:fs/promises';
import { Type, type Static } from '@sinclair/typebox';
import { Validator } from '@vmsubst/common/protocol/codec';
import { UsageError } from '../errors.js';
import type { VmOutcome } from './vm.js';

export const STATE_FORMAT = 'vmsubst-rollout-state-1';

const VmRecord = Type.Object(
  {
    status: Type.String(),
    id: Type.String(),
    at: Type.String(),
    error: Type.Optional(Type.String()),
  },
  { additionalProperties: false },
);

export const RolloutState = Type.Object(
  {
    format: Type.Literal(STATE_FORMAT),
    bundle: Type.String(),
    vms: Type.Record(Type.String(), VmRecord),
  },
  { additionalProperties: false },
);
export type RolloutState = Static<typeof RolloutState>;

const validateState = new Validator(RolloutState);

/** Statuses that mean "this VM is done" for a resumed rollout. */
export const DONE: ReadonlySet<string> = new Set(['applied', 'done-before']);

export class StateFile {
  #writes: Promise<void> = Promise.resolve();

  private constructor(
    readonly path: string,
    readonly state: RolloutState,
  ) {}

  /** Opens (or starts) the state of a rollout of `bundleId`; a state file of another bundle is refused. */
  static async open(path: string, bundleId: string): Promise<StateFile> {
    let text: string | undefined;
    try {
      text = await readFile(path, 'utf8');
    } catch (e) {
      if ((e as NodeJS.ErrnoException).code !== 'ENOENT')
        throw new UsageError(`--state ${path}: ${(e as Error).message}`);
    }
    if (text === undefined) return new StateFile(path, { format: STATE_FORMAT, bundle: bundleId, vms: {} });
    let value: unknown;
    try {
      value = JSON.parse(text);
    } catch (e) {
      throw new UsageError(
        `--state ${path}: not a rollout state file (${(e as Error).message})`,
        'give a new path, or remove the file to start over',
      );
    }
    const problems = validateState.problems(value);
    if (problems.length > 0)
      throw new UsageError(
        `--state ${path}: not a rollout state file: ${problems.slice(0, 4).join('; ')}`,
        'give a new path, or remove the file to start over',
      );
    const state = value as RolloutState;
    if (state.bundle !== bundleId) {
      throw new UsageError(
        `--state ${path} records a rollout of bundle ${state.bundle.slice(0, 16)}…, not of this bundle (${bundleId.slice(0, 16)}…)`,
        'use one state file per bundle: give another path, or remove this one to start over',
      );
    }
    return new StateFile(path, state);
  }

  /** Whether an earlier run finished this VM with this substitution id. */
  done(name: string, id: string): boolean {
    const r = this.state.vms[name];
    return r !== undefined && r.id === id && DONE.has(r.status);
  }

  /** Records a VM's outcome and rewrites the file (writes are serialised). */
  record(o: VmOutcome): Promise<void> {
    if (o.status === 'not-started') return this.#writes;
    this.state.vms[o.name] = {
      status: o.status,
      id: o.id,
      at: new Date().toISOString(),
      ...(o.error ? { error: o.error.message } : {}),
    };
    const text = JSON.stringify(this.state, null, 2) + '\n';
    this.#writes = this.#writes.then(async () => {
      const tmp = `${this.path}.tmp-${process.pid}`;
      await writeFile(tmp, text);
      await rename(tmp, this.path);
    });
    return this.#writes;
  }
}
