/**
 * The substitution journal: append-only JSON lines, fsync'd after every
 * record, so that a repeated substitution id is answered from it instead of
 * acting twice, and a substitution cut short by a crash is known at restart.
 *
 * Records: `begin` (before anything is changed), then `done` (with the
 * report) or `failed` (with the error). An id whose last record is `begin`
 * was interrupted; the host's retry runs it again, which is safe because
 * every step of a substitution can be repeated (verify, drop caches).
 * A two-phase substitution first writes `prepared` (its arguments and answer),
 * then `begin` (with the arguments again) at commit, or `aborted`.
 */
import { closeSync, fsyncSync, mkdirSync, openSync, readFileSync, renameSync, writeSync, existsSync } from 'node:fs';
import { dirname, join } from 'node:path';

export type JournalRecord =
  | { t: string; id: string; phase: 'prepared'; peer: string; args: unknown; report: unknown }
  | { t: string; id: string; phase: 'aborted' }
  /** `args` is kept when a prepared substitution is committed, so an interrupted commit can be completed. */
  | { t: string; id: string; phase: 'begin'; peer: string; args?: unknown }
  | { t: string; id: string; phase: 'done'; report: unknown }
  | { t: string; id: string; phase: 'failed'; error: { class: string; desc: string } };

export interface JournalEntry {
  id: string;
  state: 'interrupted' | 'done' | 'failed' | 'running' | 'prepared' | 'aborted';
  last: JournalRecord;
}

/** Records kept when the file is compacted; older ids are forgotten. */
export const KEEP_IDS = 1000;
/** Compact once the file holds this many records. */
const COMPACT_AT = 4 * KEEP_IDS;

export class Journal {
  readonly path: string;
  readonly #entries = new Map<string, JournalEntry>();
  #fd: number;
  #records = 0;
  /** Ids found interrupted when the journal was opened. */
  readonly interrupted: string[] = [];

  private constructor(path: string) {
    this.path = path;
    mkdirSync(dirname(path), { recursive: true, mode: 0o700 });
    if (existsSync(path)) this.#load(readFileSync(path, 'utf8'));
    this.#fd = openSync(path, 'a', 0o600);
  }

  static open(stateDir: string): Journal {
    return new Journal(join(stateDir, 'journal.jsonl'));
  }

  #load(text: string): void {
    for (const line of text.split('\n')) {
      if (line.trim() === '') continue;
      let rec: JournalRecord;
      try {
        rec = JSON.parse(line) as JournalRecord;
      } catch {
        continue; // a torn last line from a crash mid-write
      }
      if (typeof rec?.id !== 'string') continue;
      this.#apply(rec);
      this.#records++;
    }
    for (const e of this.#entries.values()) {
      if (e.state === 'running') {
        e.state = 'interrupted';
        this.interrupted.push(e.id);
      }
    }
  }

  #apply(rec: JournalRecord): void {
    const state = rec.phase === 'begin' ? 'running' : rec.phase;
    this.#entries.delete(rec.id); // keep insertion order = recency
    this.#entries.set(rec.id, { id: rec.id, state, last: rec });
  }

  get(id: string): JournalEntry | undefined {
    return this.#entries.get(id);
  }

  /** The newest entry of all: a repeat of its id is a retry, not a re-application. */
  latest(): JournalEntry | undefined {
    let last: JournalEntry | undefined;
    for (const e of this.#entries.values()) last = e;
    return last;
  }

  /** The most recent entries, newest first. */
  recent(n: number): JournalEntry[] {
    return [...this.#entries.values()].slice(-n).reverse();
  }

  begin(id: string, peer: string, args?: unknown): void {
    this.#append({ t: new Date().toISOString(), id, phase: 'begin', peer, ...(args !== undefined ? { args } : {}) });
  }
  prepared(id: string, peer: string, args: unknown, report: unknown): void {
    this.#append({ t: new Date().toISOString(), id, phase: 'prepared', peer, args, report });
  }
  aborted(id: string): void {
    this.#append({ t: new Date().toISOString(), id, phase: 'aborted' });
  }
  done(id: string, report: unknown): void {
    this.#append({ t: new Date().toISOString(), id, phase: 'done', report });
  }
  failed(id: string, error: { class: string; desc: string }): void {
    this.#append({ t: new Date().toISOString(), id, phase: 'failed', error });
  }

  #append(rec: JournalRecord): void {
    writeSync(this.#fd, JSON.stringify(rec) + '\n');
    fsyncSync(this.#fd);
    this.#apply(rec);
    if (++this.#records >= COMPACT_AT) this.#compact();
  }

  /** Rewrites the file with the last record of the newest KEEP_IDS ids (write, fsync, rename). */
  #compact(): void {
    const keep = [...this.#entries.values()].slice(-KEEP_IDS);
    const tmp = `${this.path}.tmp`;
    const fd = openSync(tmp, 'w', 0o600);
    try {
      for (const e of keep) writeSync(fd, JSON.stringify(e.last) + '\n');
      fsyncSync(fd);
    } finally {
      closeSync(fd);
    }
    renameSync(tmp, this.path);
    closeSync(this.#fd);
    this.#fd = openSync(this.path, 'a', 0o600);
    this.#entries.clear();
    for (const e of keep) this.#entries.set(e.id, e);
    this.#records = keep.length;
  }

  close(): void {
    closeSync(this.#fd);
  }
}
