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
 * then `begin` (with the arguments again) at commit, or `aborted`. Neither of
 * the first two is fsync'd on its own; `done`, `failed` or `aborted` after them
 * makes them durable. Written, they survive a restart of the agent; only a
 * crash of the whole guest can lose them, and that also ends what prepare set
 * up (the pins, its token) and empties the page cache: the commit is then
 * refused as never prepared, and the host says the guest was not told.
 *
 * `done`, `failed` and `aborted` are written before the answer is sent and
 * fsync'd just after it (`settle`, on the event loop's next turn): the host
 * does not wait for the disk. Written, the record survives the agent; a
 * crash of the whole guest in those milliseconds can lose it, and then the
 * id is `begin` or `prepared` again: the host's retry runs the substitution
 * once more, which is safe (every step can be repeated, above), and the crash
 * emptied the page cache the substitution was about anyway. Nothing that
 * changes the disk or a process waits for this fsync.
 */
import {
  appendFileSync,
  closeSync,
  existsSync,
  fstatSync,
  fsyncSync,
  ftruncateSync,
  mkdirSync,
  openSync,
  readFileSync,
  renameSync,
  writeSync,
} from 'node:fs';
import { dirname, join } from 'node:path';
import { messageOf } from '../errors.js';

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

/** A complete line (newline-terminated) that is not a journal record: bit rot, a foreign write. */
export interface CorruptLine {
  /** 1-based line number in the journal file. */
  line: number;
  /** Byte offset of the line's start. */
  offset: number;
  reason: string;
  /** The line's first bytes, for the person investigating. */
  excerpt: string;
}

/** Records kept when the file is compacted; older ids are forgotten. */
export const KEEP_IDS = 1000;
/** Compact once the file holds this many records. */
const COMPACT_AT = 4 * KEEP_IDS;

export class Journal {
  readonly path: string;
  /** Where corrupt lines go when the journal is compacted (they are never dropped silently). */
  readonly quarantinePath: string;
  readonly #entries = new Map<string, JournalEntry>();
  /** -1 when opened read-only. */
  #fd = -1;
  /** Records written since the last fsync. */
  #unsynced = false;
  /** A settle is scheduled. */
  #settling = false;
  #records = 0;
  /** Bytes of whole records in the file: anything past this is a torn write, cut before the next append. */
  #size = 0;
  /** Ids found interrupted when the journal was opened. */
  readonly interrupted: string[] = [];
  /** Complete lines that are not records; reported (log, status), kept until compaction moves them to quarantinePath. */
  readonly corrupt: CorruptLine[] = [];
  /** Bytes of a torn last line (a crash mid-write) found at open; cut off unless read-only. */
  tornBytes = 0;

  private constructor(path: string, readOnly: boolean) {
    this.path = path;
    this.quarantinePath = `${path}.corrupt`;
    if (readOnly) {
      if (existsSync(path)) this.#load(readFileSync(path));
      return;
    }
    const dir = dirname(path);
    const created = !existsSync(dir);
    mkdirSync(dir, { recursive: true, mode: 0o700 });
    const isNew = !existsSync(path);
    if (!isNew) this.#load(readFileSync(path));
    this.#fd = openSync(path, 'a', 0o600);
    // A torn last line would otherwise have the next record glued to it, and both be lost on reload.
    if (this.tornBytes > 0) this.#cutTail();
    if (isNew || created) fsyncDir(dir);
  }

  /** The daemon's journal: created if missing, a torn tail cut off. */
  static open(stateDir: string): Journal {
    return new Journal(join(stateDir, 'journal.jsonl'), false);
  }

  /** Reads the journal without changing it (`vmsubst-agent status`, which may run beside the daemon). */
  static read(stateDir: string): Journal {
    return new Journal(join(stateDir, 'journal.jsonl'), true);
  }

  /** Lines quarantined by earlier compactions. */
  quarantined(): number {
    if (!existsSync(this.quarantinePath)) return 0;
    return readFileSync(this.quarantinePath, 'utf8')
      .split('\n')
      .filter((l) => l !== '').length;
  }

  #load(bytes: Buffer): void {
    let start = 0;
    let lineNo = 0;
    while (start < bytes.length) {
      const nl = bytes.indexOf(0x0a, start);
      lineNo++;
      if (nl === -1) {
        // No newline: the write of the last record was cut short (a crash, a full disk).
        this.tornBytes = bytes.length - start;
        break;
      }
      const line = bytes.subarray(start, nl).toString('utf8');
      const offset = start;
      start = nl + 1;
      this.#size = start;
      if (line.trim() === '') continue;
      const problem = ((): string | undefined => {
        let rec: unknown;
        try {
          rec = JSON.parse(line);
        } catch (e) {
          return `not JSON: ${messageOf(e)}`;
        }
        if (!isRecord(rec)) return 'not a journal record (id, t and phase expected)';
        this.#apply(rec);
        this.#records++;
        return undefined;
      })();
      if (problem !== undefined)
        this.corrupt.push({ line: lineNo, offset, reason: problem, excerpt: line.slice(0, 80) });
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

  /**
   * `durable: false` leaves the fsync to the next record: for the begin of a commit after its
   * `prepared` record. An agent killed before that next record leaves `prepared` or `begin` last,
   * and the host's retry of the commit runs it again from either.
   */
  begin(id: string, peer: string, args?: unknown, { durable = true }: { durable?: boolean } = {}): void {
    this.#append(
      { t: new Date().toISOString(), id, phase: 'begin', peer, ...(args !== undefined ? { args } : {}) },
      durable,
    );
  }
  /** Not fsync'd on its own (see the top of this file): prepare's answer does not wait for the disk. */
  prepared(id: string, peer: string, args: unknown, report: unknown): void {
    this.#append({ t: new Date().toISOString(), id, phase: 'prepared', peer, args, report }, false);
  }
  /** fsync'd once the answer is sent (see the top of this file), like done and failed. */
  aborted(id: string): void {
    this.#append({ t: new Date().toISOString(), id, phase: 'aborted' }, 'settle');
  }
  done(id: string, report: unknown): void {
    this.#append({ t: new Date().toISOString(), id, phase: 'done', report }, 'settle');
  }
  failed(id: string, error: { class: string; desc: string }): void {
    this.#append({ t: new Date().toISOString(), id, phase: 'failed', error }, 'settle');
  }

  /** Whether a written record still waits for its fsync (settle). */
  get unsettled(): boolean {
    return this.#unsynced;
  }

  /**
   * fsyncs what was written and not yet fsync'd. Runs by itself on the event loop's turn after a
   * `settle` record (setImmediate: after the answer written in the same turn); `close` calls it too.
   * A failure is reported to `onSettleError` (the daemon logs it): the answer has gone already.
   */
  settle(): void {
    if (!this.#unsynced || this.#fd < 0) return;
    this.#unsynced = false;
    try {
      fsyncSync(this.#fd);
    } catch (e) {
      this.onSettleError?.(e);
    }
  }

  /** Told of an fsync that failed after the answer (settle). */
  onSettleError: ((e: unknown) => void) | undefined;

  /**
   * `true`: fsync'd before returning; `false`: left to the next fsync'd record; `'settle'`: fsync'd
   * on the event loop's next turn (settle).
   */
  #append(rec: JournalRecord, durable: boolean | 'settle' = true): void {
    if (this.#fd < 0) throw new Error(`${this.path} was opened read-only`);
    // A write cut short earlier in this process (ENOSPC, EIO) left a partial line: cut it first.
    if (fstatSync(this.#fd).size !== this.#size) this.#cutTail();
    const line = Buffer.from(JSON.stringify(rec) + '\n', 'utf8');
    let written = 0;
    while (written < line.length) written += writeSync(this.#fd, line, written, line.length - written);
    this.#unsynced = true;
    if (durable === true) this.settle();
    else if (durable === 'settle' && !this.#settling) {
      this.#settling = true;
      setImmediate(() => {
        this.#settling = false;
        this.settle();
      });
    }
    this.#size += line.length;
    this.#apply(rec);
    if (++this.#records >= COMPACT_AT) this.#compact();
  }

  #cutTail(): void {
    ftruncateSync(this.#fd, this.#size);
    fsyncSync(this.#fd);
  }

  /** Rewrites the file with the last record of the newest KEEP_IDS ids (write, fsync, rename). */
  #compact(): void {
    const keep = [...this.#entries.values()].slice(-KEEP_IDS);
    if (this.corrupt.length > 0) {
      // Corrupt lines leave the journal here; they go to the quarantine file, not away.
      const text = readFileSync(this.path, 'utf8').split('\n');
      const lines = this.corrupt.map(
        (c) =>
          JSON.stringify({
            t: new Date().toISOString(),
            line: c.line,
            reason: c.reason,
            text: text[c.line - 1] ?? c.excerpt,
          }) + '\n',
      );
      appendFileSync(this.quarantinePath, lines.join(''), { mode: 0o600 });
      const qfd = openSync(this.quarantinePath, 'r');
      try {
        fsyncSync(qfd);
      } finally {
        closeSync(qfd);
      }
      this.corrupt.length = 0;
    }
    const tmp = `${this.path}.tmp`;
    const fd = openSync(tmp, 'w', 0o600);
    let size = 0;
    try {
      for (const e of keep) {
        const line = Buffer.from(JSON.stringify(e.last) + '\n', 'utf8');
        writeSync(fd, line);
        size += line.length;
      }
      fsyncSync(fd);
    } finally {
      closeSync(fd);
    }
    renameSync(tmp, this.path);
    // The rename is durable only once the directory is: without this a crash can bring the old file back.
    fsyncDir(dirname(this.path));
    closeSync(this.#fd);
    this.#fd = openSync(this.path, 'a', 0o600);
    this.#unsynced = false; // every kept record is in the file fsync'd above
    this.#size = size;
    this.#entries.clear();
    for (const e of keep) this.#entries.set(e.id, e);
    this.#records = keep.length;
  }

  close(): void {
    this.settle();
    if (this.#fd >= 0) closeSync(this.#fd);
    this.#fd = -1;
  }
}

const PHASES = new Set(['prepared', 'aborted', 'begin', 'done', 'failed']);

function isRecord(v: unknown): v is JournalRecord {
  if (typeof v !== 'object' || v === null) return false;
  const r = v as Record<string, unknown>;
  return (
    typeof r['id'] === 'string' &&
    typeof r['t'] === 'string' &&
    typeof r['phase'] === 'string' &&
    PHASES.has(r['phase'])
  );
}

/** fsync of a directory: makes a create or rename in it durable. */
export function fsyncDir(dir: string): void {
  const fd = openSync(dir, 'r');
  try {
    fsyncSync(fd);
  } finally {
    closeSync(fd);
  }
}
