/**
 * A changed range that straddles a partition's start, in a real guest. The data disk is
 * partitioned (an MBR, the test ext4 image as partition 1 at 1 MiB), partition 1 is mounted
 * read-write, and the bundle — `vmsubst diff` of two whole-disk images — changes the last block
 * before the partition and the filesystem's superblock: one run of changed blocks, so one range
 * that starts outside every filesystem and runs into this one's metadata. The agent cuts ranges
 * at partition bounds (metadata.ts, splitAtPartitions), so the superblock counts as the mounted
 * filesystem's metadata and the two-phase apply is refused with RestartRequired at prepare,
 * before anything is written: the disk's sha256 is the same after as before. Without the cut the
 * whole range was "outside any filesystem", prepare passed, and the superblock of a read-write
 * mount was overwritten under it.
 */
import { suite } from 'uvu';
import * as assert from 'uvu/assert';
import { createHash } from 'node:crypto';
import { execFileSync } from 'node:child_process';
import { closeSync, copyFileSync, openSync, readFileSync, readSync, writeFileSync, writeSync } from 'node:fs';
import { join } from 'node:path';
import { withGuest } from '../helpers/guest-suite.js';
import { vmsubst, vmsubstJson, applyArgs } from '../helpers/cli.js';
import { withTimeout } from '../helpers/timeout.js';

const MiB = 1 << 20;
/** Partition 1 starts here (LBA 2048, as partitioning tools align it). */
const PART_START = MiB;
const MOUNT = '/mnt/part';
/** What the patch writes into the block before the partition (a boot loader's or table's tail). */
const GAP_MARK = Buffer.from('vmsubst: a block of the partition gap the patch rewrote');

/** An MBR with one Linux partition (type 0x83) of `sectors` 512-byte sectors from `startLba`. */
function mbr(startLba: number, sectors: number): Buffer {
  const b = Buffer.alloc(512);
  b.writeUInt32LE(0x766d7375, 440); // disk signature
  const e = 446;
  b.set([0x00, 0xfe, 0xff, 0xff, 0x83, 0xfe, 0xff, 0xff], e); // not bootable, CHS "use LBA", type, CHS
  b.writeUInt32LE(startLba, e + 8);
  b.writeUInt32LE(sectors, e + 12);
  b[510] = 0x55;
  b[511] = 0xaa;
  return b;
}

/** A whole-disk image: the MBR, `fs` as partition 1 at PART_START, a 1 MiB tail. */
function partitionedDisk(fs: string, out: string): number {
  const image = readFileSync(fs);
  if (image.length % 512 !== 0) throw new Error(`${fs}: ${image.length} bytes, not whole sectors`);
  const size = PART_START + image.length + MiB;
  const fd = openSync(out, 'w');
  try {
    writeSync(fd, mbr(PART_START / 512, image.length / 512), 0, 512, 0);
    writeSync(fd, image, 0, image.length, PART_START);
    writeSync(fd, Buffer.alloc(1), 0, 1, size - 1);
  } finally {
    closeSync(fd);
  }
  return image.length;
}

function sha256File(path: string): string {
  return createHash('sha256').update(readFileSync(path)).digest('hex');
}

function readAt(path: string, offset: number, length: number): Buffer {
  const fd = openSync(path, 'r');
  try {
    const b = Buffer.alloc(length);
    readSync(fd, b, 0, length, offset);
    return b;
  } finally {
    closeSync(fd);
  }
}

/**
 * The patched whole disk: `base` with the gap block before the partition rewritten and the
 * partition's superblock changed by debugfs (a new volume label, checksum recomputed).
 */
function patchDisk(tmp: string, base: string, out: string, partBytes: number): void {
  copyFileSync(base, out);
  const part = join(tmp, 'part.img');
  writeFileSync(part, readAt(base, PART_START, partBytes));
  execFileSync('debugfs', ['-w', '-R', 'ssv volume_name vmsubst-v2', part], { stdio: 'pipe' });
  const fd = openSync(out, 'r+');
  try {
    const gap = Buffer.alloc(4096);
    GAP_MARK.copy(gap);
    writeSync(fd, gap, 0, gap.length, PART_START - 4096);
    const fs = readFileSync(part);
    writeSync(fd, fs, 0, fs.length, PART_START);
  } finally {
    closeSync(fd);
  }
}

/** The partition's size, from the whole disk the fixture wrote (the MBR's one entry). */
const partBytes = (disk: string): number => readAt(disk, 446 + 12, 4).readUInt32LE(0) * 512;

const P = withGuest(suite('adversarial: a changed range straddling a partition start, under a read-write mount'), {
  name: 'adv-partitions',
  patched: null,
  makeDisk: ({ art }, disk) => void partitionedDisk(join(art.disks, 'base.img'), disk),
  boot: { bootTimeoutMs: 200_000 },
  bootLimitMs: 240_000,
  async setup({ tmp, disk, vm }) {
    // The guest's init mounts only a bare ext4 data disk; here the filesystem is partition 1.
    const dev = (
      await vm.sh(
        'for b in /sys/block/vd*; do [ "$(cat $b/serial 2>/dev/null)" = vmsubst-data ] && echo ${b##*/}; done',
      )
    ).trim();
    assert.match(dev, /^vd[a-z]$/, `the data disk: '${dev}'`);
    assert.is(
      (await vm.sh(`cat /sys/block/${dev}/${dev}1/start`)).trim(),
      String(PART_START / 512),
      'the guest sees partition 1 where the MBR puts it',
    );
    // Read-write; noinit_itable and noatime: the guest writes nothing of its own after this
    // point, so the disk the bundle is diffed from stays the disk the VM has.
    await vm.sh(
      `mkdir -p ${MOUNT} && mount -t ext4 -o rw,noatime,noinit_itable /dev/${dev}1 ${MOUNT} && grep " ${MOUNT} " /proc/mounts | grep -q " rw," && sync`,
    );
    assert.match(await vm.sh(`cat ${MOUNT}/etc/motd`), /vmsubst test volume/);
    await vm.sh('sync');
    // The bundle: two whole-disk images, the disk as the VM has it now, and that disk patched.
    const base = join(tmp, 'base.img');
    copyFileSync(disk, base);
    const patched = join(tmp, 'patched.img');
    patchDisk(tmp, base, patched, partBytes(base));
    const bundle = join(tmp, 'straddle.bundle');
    await vmsubstJson(['diff', base, patched, '-o', bundle]);
    return { bundle, diskSha: sha256File(base) };
  },
});

P('the bundle has one range from before the partition into its superblock', (c) =>
  withTimeout(60_000, 'inspect', async () => {
    const doc = (
      await vmsubstJson<{ manifest: { ranges: { offset: number; length: number }[] } }>(['inspect', c.bundle])
    ).manifest;
    const straddling = doc.ranges.filter((r) => r.offset < PART_START && r.offset + r.length > PART_START + 1024);
    assert.is(straddling.length, 1, JSON.stringify(doc.ranges));
    assert.is(straddling[0]!.offset, PART_START - 4096, 'it starts in the block before the partition');
  }),
);

P('the dry run names the superblock under the read-write mount and requires a restart', (c) =>
  withTimeout(180_000, 'plan', async () => {
    const r = await vmsubstJson<{
      plan: {
        'restart-required': boolean;
        reasons: string[];
        blocks: { offset: number; class: string; mount?: string }[];
      };
    }>(
      ['notify', c.bundle, '--to', `serial:${c.vm.agentSocket}`, '--disk-serial', 'vmsubst-data', '--dry-run'],
      150_000,
    );
    assert.ok(r.plan['restart-required'], JSON.stringify(r.plan));
    assert.match(r.plan.reasons.join('; '), new RegExp(`${MOUNT} is mounted read-write`));
    assert.ok(
      r.plan.blocks.some((b) => b.class === 'superblock' && b.mount === MOUNT),
      JSON.stringify(r.plan.blocks),
    );
    assert.ok(
      r.plan.blocks.some((b) => b.class === 'outside-filesystems' && b.offset === PART_START - 4096),
      JSON.stringify(r.plan.blocks),
    );
  }),
);

P('the two-phase apply is refused with RestartRequired before anything is written', (c) =>
  withTimeout(300_000, 'apply', async () => {
    const { vm } = c;
    assert.is(
      sha256File(c.disk),
      c.diskSha,
      'the guest wrote nothing since the bundle was made (else the test proves nothing)',
    );
    const r = await vmsubst(applyArgs(c.bundle, vm, true, '--json'), 240_000);
    const out = r.stdout + r.stderr;
    assert.is(r.code, 1, out);
    assert.match(out, /RestartRequired/);
    assert.match(out, new RegExp(`${MOUNT} is mounted read-write[^\\n]*superblock`));
    assert.match(out, /nothing was written/);
    assert.is(sha256File(c.disk), c.diskSha, 'the disk is byte for byte what it was');
    assert.not.ok(readAt(c.disk, PART_START - 4096, GAP_MARK.length).equals(GAP_MARK), 'the gap block was not written');
    // The filesystem is still the guest's, read-write and working.
    await vm.sh(`echo still-mine > ${MOUNT}/etc/after && sync && cat ${MOUNT}/etc/after`);
    assert.match(await vm.sh('dmesg | grep -i "EXT4-fs error" || echo no-ext4-errors'), /no-ext4-errors/);
  }),
);

P.run();
