/**
 * The pin loop (agent/src/substitution/pin.ts) against a scripted module: PIN_MAPPERS is
 * called with the cursor until neither BUDGET nor TRUNCATED, every private
 * mapping is counted once, and whatever was not pinned is reported as such,
 * also when the module cannot resume or the call bound is reached. The real
 * module's side of the cursor is the ABI test's (kmod/tests/abi_test.c, in a
 * guest); this is the agent's side.
 */
import { suite } from 'uvu';
import * as assert from 'uvu/assert';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { pinFile, type PinNative } from '../../../../agent/src/substitution/pin.js';
import type {
  Mapper,
  PinCursor,
  PinMappersOptions,
  PinMappersResult,
  QueryMappersResult,
} from '../../../../agent/src/native/index.js';

const Pin = suite('pin loop: cursor, budget, nothing given up silently');
const C = { dir: '', file: '' };

Pin.before(() => {
  C.dir = mkdtempSync(join(tmpdir(), 'vmsubst-pin-'));
  C.file = join(C.dir, 'prog');
  writeFileSync(C.file, Buffer.alloc(8192, 1));
});
Pin.after(() => rmSync(C.dir, { recursive: true, force: true }));

interface Mapping {
  pid: number;
  mm: bigint;
  addr: bigint;
  shared?: boolean;
  failed?: number;
}

function mapper(m: Mapping): Mapper {
  return {
    pid: m.pid,
    comm: `p${m.pid}`,
    start: m.addr,
    end: m.addr + 4096n,
    offset: 0n,
    flags: m.shared ? 2 : 0,
    exec: false,
    shared: !!m.shared,
    locked: false,
    write: false,
  };
}

const after = (m: Mapping, c: PinCursor): boolean => m.mm > c.mm || (m.mm === c.mm && m.addr > c.addr);

/**
 * A module with `mappings`, visiting at most `perCall` private ones a call in (mm, addr) order,
 * after the cursor when it can resume, from the first otherwise, as the kmod does.
 */
function scripted(mappings: Mapping[], perCall: number, resumable: boolean) {
  const calls: (PinCursor | undefined)[] = [];
  const ordered = mappings
    .filter((m) => !m.shared)
    .sort((a, b) => (a.mm === b.mm ? Number(a.addr - b.addr) : Number(a.mm - b.mm)));
  const native: PinNative = {
    features: () => (resumable ? ['pinCursor'] : []),
    async pinMappers(_fd: number, _o: bigint, _l: bigint, options: PinMappersOptions): Promise<PinMappersResult> {
      calls.push(options.cursor);
      const c = resumable && options.cursor && (options.cursor.mm || options.cursor.addr) ? options.cursor : undefined;
      const todo = c ? ordered.filter((m) => after(m, c)) : ordered;
      const now = todo.slice(0, perCall);
      const last = now.at(-1);
      const byPid = new Map<number, { copied: bigint; failed: bigint; comm: string }>();
      for (const m of now) {
        const e = byPid.get(m.pid) ?? { copied: 0n, failed: 0n, comm: `p${m.pid}` };
        e.copied += m.failed ? 0n : 4096n;
        e.failed += BigInt(m.failed ?? 0);
        byPid.set(m.pid, e);
      }
      const pinned = [...byPid].map(([pid, e]) => ({
        pid,
        comm: e.comm,
        flags: e.failed ? 2 : 0,
        exited: false,
        partial: e.failed > 0n,
        bytesCopied: e.copied,
        bytesPrivate: 0n,
        bytesFailed: e.failed,
      }));
      const shared = mappings.filter((m) => m.shared).map(mapper);
      const truncated = todo.length > now.length;
      return {
        pinned,
        pinnedTotal: BigInt(pinned.length),
        unpinned: shared,
        unpinnedTotal: BigInt(shared.length),
        bytesCopied: pinned.reduce((a, p) => a + p.bytesCopied, 0n),
        bytesPrivate: 0n,
        bytesFailed: pinned.reduce((a, p) => a + p.bytesFailed, 0n),
        status: truncated ? 2 : 0,
        budgetExhausted: false,
        truncated,
        mappings: now.length,
        ...(options.cursor ? { cursor: last ? { mm: last.mm, addr: last.addr } : options.cursor } : {}),
      };
    },
    async queryMappers(): Promise<QueryMappersResult> {
      return { mappers: mappings.map(mapper), mappersTotal: BigInt(mappings.length) };
    },
  };
  return { native, calls };
}

const many = (n: number, pids: number): Mapping[] =>
  Array.from({ length: n }, (_, i) => ({
    pid: 100 + (i % pids),
    mm: BigInt(1 + (i % pids)),
    addr: BigInt(0x10000 + i * 4096),
  }));

Pin('resumes with each cursor until no TRUNCATED: every mapping once, complete', async () => {
  const { native, calls } = scripted(many(7, 2), 3, true);
  const r = await pinFile(native, C.file);
  assert.is(r.calls, 3);
  assert.is(r.mappings, 7);
  assert.is(r.complete, true);
  assert.is(r['bytes-copied'], 7 * 4096);
  assert.equal(r['not-pinned'], []);
  assert.equal(calls[0], { mm: 0n, addr: 0n });
  // The second call resumes where the first stopped: after its third mapping in (mm, addr) order.
  assert.equal(calls[1], { mm: 1n, addr: BigInt(0x10000 + 4 * 4096) });
});

Pin('a module without the cursor: TRUNCATED cannot clear, the unreached mappers are named', async () => {
  const maps = many(5, 5);
  const { native, calls } = scripted(maps, 3, false);
  const r = await pinFile(native, C.file);
  assert.is(calls.length, 1, 'no useless repeat of the same first mappings');
  assert.is(calls[0], undefined, 'no cursor passed to a module that cannot take it');
  assert.is(r.complete, false);
  const unreached = r['not-pinned']
    .filter((n) => n.reason === 'not-reached')
    .map((n) => n.pid)
    .sort();
  assert.equal(unreached, [103, 104]);
  assert.match(r['not-pinned'][0]!.detail, /cannot resume/);
});

Pin('the call bound stops the loop and says so', async () => {
  const { native } = scripted(many(10, 10), 1, true);
  const r = await pinFile(native, C.file, { maxCalls: 4 });
  assert.is(r.calls, 4);
  assert.is(r.complete, false);
  assert.is(r['not-pinned'].filter((n) => n.reason === 'not-reached').length, 6);
  assert.match(r['not-pinned'].find((n) => n.reason === 'not-reached')!.detail, /stopped after 4 calls/);
});

Pin('shared mappers and pages that failed are reported as not pinned', async () => {
  const maps: Mapping[] = [
    { pid: 7, mm: 7n, addr: 0x1000n, shared: true },
    { pid: 8, mm: 8n, addr: 0x1000n, failed: 4096 },
    { pid: 9, mm: 9n, addr: 0x1000n },
  ];
  const { native } = scripted(maps, 10, true);
  const r = await pinFile(native, C.file);
  assert.is(r.complete, true);
  assert.equal(
    r['not-pinned'].map((n) => [n.pid, n.reason]),
    [
      [7, 'shared'],
      [8, 'failed'],
    ],
  );
  assert.equal(r['shared-unpinned'], [{ pid: 7, comm: 'p7' }]);
});

Pin.run();
