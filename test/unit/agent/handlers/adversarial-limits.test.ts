/**
 * What one request can make the agent do: ranges that overlap, are unsorted
 * or run past the disk's end are refused (InvalidArguments) before a byte is
 * read; a FIFO swapped in for a changed file neither hangs the substitution
 * nor is invalidated. The real `substitute()` pipeline, with the system
 * (sysfs, /proc, the disk, the module) given as scratch files and fakes.
 */
import { fakeSubstituteDeps } from '../../../helpers/substitute-deps.js';
import { suite } from 'uvu';
import * as assert from 'uvu/assert';
import { createHash } from 'node:crypto';
import { execFileSync } from 'node:child_process';
import { closeSync, constants, mkdirSync, mkdtempSync, openSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { substitute, planSubstitution, type SubstituteDeps } from '../../../../agent/src/substitution/substitute.js';
import type { FileHit } from '../../../../agent/src/pedigree/index.js';
import { CommandError } from '../../../../agent/src/errors.js';

const L = suite('adversarial: request limits and swapped files');
const DISK_BYTES = 1 << 20;
const zeros = (n: number): string => createHash('sha256').update(Buffer.alloc(n)).digest('hex');

interface World {
  dir: string;
  reads: number;
  invalidations: number;
  hits: FileHit[];
  deps: SubstituteDeps;
}

function world(): World {
  const dir = mkdtempSync(join(tmpdir(), 'vmsubst-adv-limits-'));
  const sys = join(dir, 'sys');
  mkdirSync(join(sys, 'block/vda'), { recursive: true });
  writeFileSync(join(sys, 'block/vda/size'), `${DISK_BYTES / 512}\n`);
  writeFileSync(join(sys, 'block/vda/dev'), '254:0\n');
  writeFileSync(join(sys, 'block/vda/serial'), 'vmsubst-data\n');
  mkdirSync(join(dir, 'proc/self'), { recursive: true });
  writeFileSync(join(dir, 'proc/self/mountinfo'), '');
  const w: World = { dir, reads: 0, invalidations: 0, hits: [], deps: undefined as unknown as SubstituteDeps };
  w.deps = fakeSubstituteDeps({ dir, sys }, async () => ({ files: w.hits, unmapped: [] }), {
    readDirect: async (_p, _o, l) => {
      w.reads++;
      return Buffer.alloc(l);
    },
    invalidateRange: async () => {
      w.invalidations++;
      return { pagesCached: 0n, pagesMapped: 0n, pagesDropped: 0n, pagesKept: 0n };
    },
  });
  return w;
}

const args = (ranges: { offset: number; length: number }[]) => ({
  id: 'ab'.repeat(16),
  disk: { serial: 'vmsubst-data' },
  ranges: ranges.map((r) => ({ ...r, sha256: zeros(r.length) })),
});

async function refused(p: Promise<unknown>): Promise<CommandError> {
  try {
    await p;
  } catch (e) {
    assert.instance(e, CommandError);
    return e as CommandError;
  }
  assert.unreachable('expected a refusal');
  throw new Error('unreachable');
}

L('overlapping ranges are refused before anything is read', async () => {
  const w = world();
  try {
    const e = await refused(
      substitute(
        args([
          { offset: 0, length: 65536 },
          { offset: 4096, length: 65536 },
        ]),
        w.deps,
      ),
    );
    assert.is(e.errorClass, 'InvalidArguments');
    assert.match(e.message, /range 1 .* overlaps range 0/);
    assert.is(w.reads, 0, 'nothing read');
    const same = Array.from({ length: 100 }, () => ({ offset: 0, length: 65536 }));
    const f = await refused(substitute(args(same), w.deps));
    assert.is(f.errorClass, 'InvalidArguments');
    assert.is(w.reads, 0);
  } finally {
    rmSync(w.dir, { recursive: true, force: true });
  }
});

L('unsorted ranges are refused before anything is read, in every phase', async () => {
  const w = world();
  try {
    const a = args([
      { offset: 8192, length: 4096 },
      { offset: 0, length: 4096 },
    ]);
    for (const p of [substitute(a, w.deps), planSubstitution(a, w.deps)]) {
      const e = await refused(p);
      assert.is(e.errorClass, 'InvalidArguments');
      assert.match(e.message, /not sorted/);
    }
    assert.is(w.reads, 0);
  } finally {
    rmSync(w.dir, { recursive: true, force: true });
  }
});

L("ranges past the disk's end are refused before anything is read, named or not", async () => {
  const w = world();
  try {
    const a = args([{ offset: DISK_BYTES - 4096, length: 8192 }]);
    const e = await refused(substitute(a, w.deps));
    assert.is(e.errorClass, 'InvalidArguments');
    assert.match(e.message, /beyond/);
    const u = await refused(substitute({ ...a, disk: {} }, w.deps));
    assert.is(u.errorClass, 'InvalidArguments');
    assert.is(w.reads, 0);
  } finally {
    rmSync(w.dir, { recursive: true, force: true });
  }
});

L('a FIFO swapped in for a changed file does not hang the substitution and is not invalidated', async () => {
  const w = world();
  const fifo = join(w.dir, 'changed-file');
  execFileSync('mkfifo', [fifo]);
  const mount = { mountPoint: w.dir, devNum: '254:0', root: '/', fsType: 'ext4', readOnly: true };
  // Indexed as a regular file (inode 12); a FIFO has taken its name since. No hint: the ELF probe opens it too.
  w.hits = [
    {
      file: {
        path: fifo,
        dev: 1,
        ino: 12,
        mount,
        kind: 'file',
        extents: [{ diskStart: 0, fileOffset: 0, length: 4096 }],
      },
      ranges: [{ offset: 0, length: 4096 }],
    },
  ];
  let timer: NodeJS.Timeout | undefined;
  try {
    const run = substitute(args([{ offset: 0, length: 4096 }]), w.deps).then(
      () => 'done',
      (e: unknown) => e as Error,
    );
    const hung = new Promise<'hung'>((r) => (timer = setTimeout(() => r('hung'), 10_000)));
    const out = await Promise.race([run, hung]);
    assert.is.not(out, 'hung', 'the substitution blocked on opening the FIFO');
    assert.instance(out, CommandError);
    assert.is((out as CommandError).errorClass, 'InvalidateFailed');
    assert.match((out as Error).message, /now a FIFO/);
    assert.is(w.invalidations, 0);
  } finally {
    clearTimeout(timer);
    // Release a reader blocked in the open (old code), so the process can exit.
    const fd = openSync(fifo, constants.O_RDWR | constants.O_NONBLOCK);
    closeSync(fd);
    rmSync(w.dir, { recursive: true, force: true });
  }
});

L.run();
