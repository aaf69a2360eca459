/**
 * The pedigree index in a real guest against debugfs on the host: a volume of
 * 10k files attached read-only as a second disk, `vmsubst-agent map --json`
 * for 1000 random blocks of it, each answer checked with debugfs icheck
 * (owning inode), ncheck (its path), bmap (the file offset) and testb (free).
 */
import { suite } from 'uvu';
import * as assert from 'uvu/assert';
import { execFileSync } from 'node:child_process';
import { copyFileSync, writeFileSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { withGuest, type GuestContext } from '../helpers/guest-suite.js';
import { ROOT } from '../helpers/paths.js';
import { withTimeout } from '../helpers/timeout.js';
import type { MapReport } from '../../agent/src/cli/map.js';

const FILES = 10_000;
const SAMPLES = 1000;
const debugfs = (img: string, cmd: string): string =>
  execFileSync('debugfs', ['-R', cmd, img], {
    encoding: 'utf8',
    stdio: ['ignore', 'pipe', 'ignore'],
    maxBuffer: 1 << 26,
  });

/** Runs several debugfs requests in one process; returns each request's output. */
function debugfsMany(img: string, cmds: string[]): string[] {
  const file = join(dirname(img), 'cmds');
  writeFileSync(file, cmds.join('\n') + '\n');
  const out = execFileSync('debugfs', ['-f', file, img], {
    encoding: 'utf8',
    stdio: ['ignore', 'pipe', 'ignore'],
    maxBuffer: 1 << 26,
  });
  return out.split(/^debugfs: .*$/m).slice(1);
}

/** A deterministic sample of SAMPLES blocks of `img`: a linear congruential sequence over the whole volume. */
function sampleBlocks(img: string): number[] {
  const count = Number(/Block count:\s+(\d+)/.exec(debugfs(img, 'stats'))![1]);
  const set = new Set<number>();
  let x = 12345;
  while (set.size < SAMPLES) {
    x = Number((BigInt(x) * 1103515245n + 12345n) % 2n ** 31n);
    set.add(x % count);
  }
  return [...set].sort((a, b) => a - b);
}

type Ctx = GuestContext & { img: string; blocks: number[] };

const Dfs = withGuest(suite('pedigree index in the guest agrees with debugfs'), {
  name: 'dfs',
  patched: null,
  makeDisk({ art, tmp }, disk) {
    execFileSync(join(ROOT, 'test/fixtures/build-many-files.sh'), [join(tmp, 'many.img'), String(FILES)], {
      stdio: 'ignore',
    });
    copyFileSync(join(art.disks, 'base.img'), disk);
  },
  boot: ({ tmp }) => ({ extraDisk: join(tmp, 'many.img'), noAgent: true }),
  async setup({ tmp }) {
    const img = join(tmp, 'many.img');
    const blocks = sampleBlocks(img);
    writeFileSync(join(tmp, 'blocks'), blocks.join('\n') + '\n');
    return { img, blocks };
  },
});

/** `vmsubst-agent map --json` in the guest for the sampled blocks of the read-only volume. */
const mapped = (c: Ctx): Promise<MapReport> =>
  c.once('mapped', async () => {
    const { vm } = c;
    await vm.putFile(join(c.tmp, 'blocks'), '/tmp/blocks');
    const dev = (await vm.sh('grep " /mnt/extra " /proc/mounts | cut -d" " -f1')).trim();
    await vm.sh(
      `node /opt/vmsubst/build/agent/src/main.js map --device ${dev} --blocks @/tmp/blocks --json > /tmp/map.json`,
      240_000,
    );
    return JSON.parse((await vm.sh('cat /tmp/map.json', 120_000)).trim()) as MapReport;
  });

Dfs(`the guest maps ${SAMPLES} random blocks of a ${FILES}-file volume`, (c) =>
  withTimeout(300_000, 'map', async () => {
    const { vm } = c;
    assert.match(await vm.sh('grep " /mnt/extra " /proc/mounts'), /ext4 ro/);
    assert.is(Number((await vm.sh('find /mnt/extra -type f | wc -l')).trim()), FILES);
    const report = await mapped(c);
    assert.is(report.blockSize, 4096);
    assert.is(report.mountPoint, '/mnt/extra');
    // The volume is mounted read-only: the index comes from its ext4 metadata, not a walk.
    assert.equal(report.index, { builder: 'ext4-raw' });
    assert.is(
      report.rows.reduce((n, r) => n + r.count, 0),
      SAMPLES,
    );
  }),
);

Dfs('every answer agrees with debugfs icheck, ncheck, bmap and testb', (c) =>
  withTimeout(420_000, 'oracle', async () => {
    const rows = (await mapped(c)).rows.flatMap((r) =>
      Array.from({ length: r.count }, (_, i) => ({
        ...r,
        block: r.block + i,
        offset: r.offset === undefined ? undefined : r.offset + i * 4096,
      })),
    );
    assert.equal(
      rows.map((r) => r.block),
      c.blocks,
    );
    const owner = new Map<number, number | undefined>();
    for (const line of debugfs(c.img, `icheck ${c.blocks.join(' ')}`)
      .split('\n')
      .slice(1)) {
      const m = /^(\d+)\s+(\d+|<block not found>)/.exec(line.trim());
      if (m) owner.set(Number(m[1]), m[2]!.startsWith('<') ? undefined : Number(m[2]));
    }
    const used = new Set<number>([0]);
    const tb = debugfsMany(
      c.img,
      c.blocks.filter((b) => b > 0).map((b) => `testb ${b}`),
    );
    for (const t of tb) {
      const m = /Block (\d+) marked in use/.exec(t);
      if (m) used.add(Number(m[1]));
    }
    const fileRows = rows.filter((r) => r.path !== undefined);
    const inos = [...new Set(fileRows.map((r) => r.ino!))];
    const paths = new Map<number, string>();
    for (const line of debugfs(c.img, `ncheck ${inos.join(' ')}`)
      .split('\n')
      .slice(1)) {
      const m = /^(\d+)\s+(.*)$/.exec(line.trim());
      if (m) paths.set(Number(m[1]), m[2]!.replace(/\/+/g, '/')); // ncheck prints "//lost+found" for the root's entries
    }
    const bmaps = debugfsMany(
      c.img,
      fileRows.map((r) => `bmap <${r.ino}> ${r.offset! / 4096}`),
    ).map((t) => Number(t.trim()));
    const counts: Record<string, number> = {};
    for (const r of rows) {
      counts[r.class] = (counts[r.class] ?? 0) + 1;
      const ino = owner.get(r.block);
      if (r.path !== undefined) {
        assert.is(r.ino, ino, `block ${r.block}: ${r.path}`);
        const p = paths.get(r.ino!)!;
        assert.is(r.path, p === '/' ? '/mnt/extra' : `/mnt/extra${p}`, `block ${r.block}`);
      } else if (r.class === 'free') {
        assert.not.ok(used.has(r.block), `block ${r.block} is in use but mapped as free`);
      } else {
        assert.ok(used.has(r.block), `block ${r.block} (${r.class}) is not in use`);
        assert.is.not(r.class, 'unknown', `block ${r.block} owned by ${ino}`);
        assert.is(r.ino, ino, `block ${r.block} (${r.class})`);
      }
    }
    fileRows.forEach((r, i) => assert.is(bmaps[i], r.block, `bmap of inode ${r.ino} at ${r.offset}`));
    for (const b of c.blocks)
      if (!used.has(b)) assert.ok(rows.find((r) => r.block === b)!.class === 'free', `block ${b} is free`);
    console.log(
      `  ${SAMPLES} blocks: ${Object.entries(counts)
        .map(([k, v]) => `${k} ${v}`)
        .join(', ')}`,
    );
    assert.ok((counts['file'] ?? 0) > 300, 'enough file blocks sampled');
  }),
);

Dfs.run();
