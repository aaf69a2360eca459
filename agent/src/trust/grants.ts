/**
 * What the agent must remember to refuse a replay: the nonces of the envelopes it accepted (until
 * they expire) and the token of every prepared substitution (its sha256), so that commit and abort
 * can be bound to their prepare across reconnects and agent restarts.
 *
 * One JSON-lines file beside the journal, fsync'd before the request it records is acted on. A torn
 * last line (crash mid-write) is cut off before the next append. Rewritten (write, fsync, rename,
 * fsync the directory) when it holds twice as many records as are live.
 */
import {
  closeSync,
  fsyncSync,
  ftruncateSync,
  mkdirSync,
  openSync,
  readFileSync,
  renameSync,
  writeSync,
  existsSync,
} from 'node:fs';
import { createHash } from 'node:crypto';
import { dirname, join } from 'node:path';

type Rec =
  { k: 'nonce'; nonce: string; exp: number; id: string; command: string } | { k: 'token'; id: string; sha256: string };

/** Unexpired nonces beyond this refuse new envelopes: only key holders can make them. */
export const MAX_LIVE_NONCES = 100_000;
/** Tokens of the newest this-many prepared ids are kept. */
export const KEEP_TOKENS = 1000;
/** Tokens kept per id: the answers to its first prepare and to this many resends of it. */
export const TOKENS_PER_ID = 8;

export const tokenHash = (token: string): string => createHash('sha256').update(token, 'utf8').digest('hex');

export class Grants {
  readonly path: string;
  readonly #nonces = new Map<string, { exp: number; id: string; command: string }>();
  /** Per prepared id, the sha256 of every token handed out (a retried prepare adds one). */
  readonly #tokens = new Map<string, string[]>();
  #fd: number;
  #records = 0;
  /** Lines that were not records (reported by status and the log; the rest is kept). */
  readonly corrupt: number[] = [];

  constructor(
    stateDir: string,
    private readonly nowSec: () => number = () => Math.floor(Date.now() / 1000),
  ) {
    this.path = join(stateDir, 'grants.jsonl');
    mkdirSync(dirname(this.path), { recursive: true, mode: 0o700 });
    let text = existsSync(this.path) ? readFileSync(this.path, 'utf8') : '';
    this.#fd = openSync(this.path, 'a+', 0o600);
    if (text.length > 0 && !text.endsWith('\n')) {
      // A torn last line: drop it so the next record starts on a line of its own.
      const keep = text.lastIndexOf('\n') + 1;
      ftruncateSync(this.#fd, Buffer.byteLength(text.slice(0, keep)));
      fsyncSync(this.#fd);
      text = text.slice(0, keep);
    }
    text.split('\n').forEach((line, i) => {
      if (line === '') return;
      try {
        this.#apply(JSON.parse(line) as Rec);
        this.#records++;
      } catch {
        this.corrupt.push(i + 1);
      }
    });
  }

  #apply(r: Rec): void {
    if (r.k === 'nonce' && typeof r.nonce === 'string')
      this.#nonces.set(r.nonce, { exp: r.exp, id: r.id, command: r.command });
    else if (r.k === 'token' && typeof r.id === 'string' && typeof r.sha256 === 'string') {
      const had = this.#tokens.get(r.id) ?? [];
      this.#tokens.delete(r.id); // keep insertion order = recency
      this.#tokens.set(r.id, [...had, r.sha256].slice(-TOKENS_PER_ID));
    } else throw new Error('not a record');
  }

  /** The earlier use of this nonce, if it has not expired. */
  seen(nonce: string): { id: string; command: string } | undefined {
    const n = this.#nonces.get(nonce);
    return n && n.exp >= this.nowSec() ? { id: n.id, command: n.command } : undefined;
  }

  liveNonces(): number {
    const now = this.nowSec();
    let live = 0;
    for (const n of this.#nonces.values()) if (n.exp >= now) live++;
    return live;
  }

  /** Records an accepted envelope; throws when too many are live (the caller refuses the request). */
  useNonce(nonce: string, exp: number, id: string, command: string): void {
    if (this.#nonces.size >= MAX_LIVE_NONCES && this.liveNonces() >= MAX_LIVE_NONCES) {
      throw new Error(`${MAX_LIVE_NONCES} unexpired envelopes are already recorded; retry once some expire`);
    }
    this.#append({ k: 'nonce', nonce, exp, id, command });
  }

  /**
   * Without its own fsync: the record reaches the file before prepare answers, so a restarted agent
   * (a crash, an upgrade) still knows the token. Only a crash of the whole guest can lose it, and
   * that also ends the pinned processes and empties the page cache: the commit is then refused
   * (Unauthorized) and the host says the guest was not told, which a guest that rebooted from
   * the new disk no longer needs. A nonce, whose loss would let an envelope be replayed, is synced.
   */
  setToken(id: string, token: string): void {
    this.#append({ k: 'token', id, sha256: tokenHash(token) }, false);
  }

  /**
   * True when prepare gave `token` for `id`. Every answer to a prepare of the id (a resend on a
   * lossy channel gets its own) stays valid: each went to a peer allowed to prepare.
   */
  tokenMatches(id: string, token: string): boolean {
    return this.#tokens.get(id)?.includes(tokenHash(token)) ?? false;
  }

  #append(r: Rec, durable = true): void {
    writeSync(this.#fd, JSON.stringify(r) + '\n');
    if (durable) fsyncSync(this.#fd);
    this.#apply(r);
    if (++this.#records >= 2 * (this.liveNonces() + Math.min(this.#tokens.size, KEEP_TOKENS)) + 64) this.#compact();
  }

  #compact(): void {
    const now = this.nowSec();
    for (const [n, v] of this.#nonces) if (v.exp < now) this.#nonces.delete(n);
    while (this.#tokens.size > KEEP_TOKENS) this.#tokens.delete(this.#tokens.keys().next().value as string);
    const lines = [
      ...[...this.#nonces].map(([nonce, v]) => JSON.stringify({ k: 'nonce', nonce, ...v })),
      ...[...this.#tokens].flatMap(([id, hashes]) =>
        hashes.map((sha256) => JSON.stringify({ k: 'token', id, sha256 })),
      ),
    ];
    const tmp = `${this.path}.tmp`;
    const fd = openSync(tmp, 'w', 0o600);
    try {
      writeSync(fd, lines.map((l) => l + '\n').join(''));
      fsyncSync(fd);
    } finally {
      closeSync(fd);
    }
    renameSync(tmp, this.path);
    const dir = openSync(dirname(this.path), 'r');
    try {
      fsyncSync(dir);
    } finally {
      closeSync(dir);
    }
    closeSync(this.#fd);
    this.#fd = openSync(this.path, 'a+', 0o600);
    this.#records = lines.length;
  }

  close(): void {
    closeSync(this.#fd);
  }
}
