/**
 * A changed range that straddles a partition's start (the tail of the
 * partition table and the filesystem's superblock in one run of changed
 * blocks) must still count as that filesystem's metadata: under a read-write
 * mount the substitution answers RestartRequired instead of passing the
 * superblock off as "outside any filesystem". The real pipeline (prepare and
 * the dry run) over a real ext4 image inside a partitioned disk image.
 */
import { fakeSubstituteDeps } from '../../../helpers/substitute-deps.js';
import { suite } from 'uvu';
import * as assert from 'uvu/assert';
import { createHash } from 'node:crypto';
import { execFileSync } from 'node:child_process';
import { mkdirSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import {
  planSubstitution,
  prepareSubstitution,
  type SubstituteDeps,
} from '../../../../agent/src/substitution/substitute.js';
import { splitAtPartitions } from '../../../../agent/src/substitution/metadata.js';
import { mergeRanges } from '../../../../agent/src/pedigree/index.js';
import type { ByteRange } from '@vmsubst/common/protocol/schema';
import { CommandError } from '../../../../agent/src/errors.js';

const P = suite('adversarial: ranges straddling partition bounds');
const MiB = 1 << 20;
const PART_START = MiB;
const PART_BYTES = 8 * MiB;
const DISK_BYTES = PART_START + PART_BYTES + MiB;

P('splitAtPartitions cuts at every partition start and end, and nowhere else', () => {
  const layout = {
    name: 'vda',
    devNum: '254:0',
    sizeBytes: DISK_BYTES,
    parts: [
      { name: 'vda', devNum: '254:0', startBytes: 0, sizeBytes: DISK_BYTES },
      { name: 'vda1', devNum: '254:1', startBytes: PART_START, sizeBytes: PART_BYTES },
    ],
  };
  assert.equal(splitAtPartitions([{ offset: PART_START - 4096, length: 3 * 4096 }], layout), [
    { offset: PART_START - 4096, length: 4096 },
    { offset: PART_START, length: 8192 },
  ]);
  assert.equal(
    splitAtPartitions([{ offset: 0, length: DISK_BYTES }], layout).map((r) => r.offset),
    [0, PART_START, PART_START + PART_BYTES],
  );
  assert.equal(splitAtPartitions([{ offset: 4096, length: 4096 }], layout), [{ offset: 4096, length: 4096 }]);
});

function world(mountOpts: 'rw' | 'ro'): { dir: string; deps: SubstituteDeps; disk: Buffer } {
  const dir = mkdtempSync(join(tmpdir(), 'vmsubst-adv-part-'));
  const fsImg = join(dir, 'fs.img');
  execFileSync('mkfs.ext4', ['-q', '-F', '-b', '4096', fsImg, `${PART_BYTES / 1024}`]);
  const disk = Buffer.alloc(DISK_BYTES);
  readFileSync(fsImg).copy(disk, PART_START);
  const sys = join(dir, 'sys');
  mkdirSync(join(sys, 'block/vda/vda1'), { recursive: true });
  writeFileSync(join(sys, 'block/vda/size'), `${DISK_BYTES / 512}\n`);
  writeFileSync(join(sys, 'block/vda/dev'), '254:0\n');
  writeFileSync(join(sys, 'block/vda/serial'), 'vmsubst-data\n');
  writeFileSync(join(sys, 'block/vda/vda1/start'), `${PART_START / 512}\n`);
  writeFileSync(join(sys, 'block/vda/vda1/size'), `${PART_BYTES / 512}\n`);
  writeFileSync(join(sys, 'block/vda/vda1/dev'), '254:1\n');
  mkdirSync(join(dir, 'proc/self'), { recursive: true });
  writeFileSync(
    join(dir, 'proc/self/mountinfo'),
    `36 25 254:1 / /srv ${mountOpts},relatime shared:1 - ext4 /dev/vda1 ${mountOpts}\n`,
  );
  // Like the real index: no file here, and adjacent unmapped pieces merged into one range again.
  const deps = fakeSubstituteDeps(
    { dir, sys },
    async (_l, _m, changed) => ({ files: [], unmapped: mergeRanges(changed as ByteRange[]) }),
    {
      readDirect: async (_p, o, l) => Buffer.from(disk.subarray(o, o + l)),
    },
  );
  return { dir, deps, disk };
}

// The last block before the partition, and the partition's first two blocks (superblock, descriptors).
const straddling = (disk: Buffer) => {
  const offset = PART_START - 4096;
  const length = 3 * 4096;
  return {
    id: 'cd'.repeat(16),
    disk: { serial: 'vmsubst-data' },
    ranges: [
      {
        offset,
        length,
        sha256: createHash('sha256')
          .update(disk.subarray(offset, offset + length))
          .digest('hex'),
      },
    ],
  };
};

P('a straddling range over the superblock of a read-write mount answers RestartRequired', async () => {
  const w = world('rw');
  try {
    let err: unknown;
    await prepareSubstitution(straddling(w.disk), w.deps).catch((e: unknown) => (err = e));
    assert.instance(err, CommandError, 'prepare must refuse');
    assert.is((err as CommandError).errorClass, 'RestartRequired');
    assert.match((err as Error).message, /\/srv is mounted read-write .*superblock/);
    const plan = await planSubstitution(straddling(w.disk), w.deps);
    assert.ok(plan.plan?.['restart-required'], 'the plan says so');
    assert.ok(
      plan.plan?.blocks.some((b) => b.class === 'superblock' && b.mount === '/srv'),
      JSON.stringify(plan.plan?.blocks),
    );
    assert.ok(plan.plan?.blocks.some((b) => b.class === 'outside-filesystems' && b.offset === PART_START - 4096));
  } finally {
    rmSync(w.dir, { recursive: true, force: true });
  }
});

P('the same range under a read-only mount is that filesystem\'s metadata, not "outside"', async () => {
  const w = world('ro');
  try {
    const plan = await planSubstitution(straddling(w.disk), w.deps);
    assert.not.ok(plan.plan?.['restart-required']);
    assert.ok(
      plan.metadata?.ranges.some((r) => r.offset === PART_START && r.kinds.includes('superblock-or-descriptors')),
      JSON.stringify(plan.metadata),
    );
  } finally {
    rmSync(w.dir, { recursive: true, force: true });
  }
});

P.run();
