/**
 * The pedigree index in a real guest against debugfs on the host: a volume of
 * 10k files attached read-only as a second disk, `vmsubst-agent map --json`
 * for 1000 random blocks of it, each answer checked with debugfs icheck
 * (owning inode), ncheck (its path), bmap (the file offset) and testb (free).
 */
import { suite } from 'uvu';
import * as assert from 'uvu/assert';
import { execFileSync } from 'node:child_process';
import { copyFileSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { GuestVm } from '../helpers/vm.js';
import { guestArtifacts, ROOT } from '../helpers/paths.js';
import { guard } from '../helpers/guard.js';
import { withTimeout } from '../helpers/timeout.js';
import type { MapReport } from '../../agent/src/cli/map.js';

const FILES = 10_000;
const SAMPLES = 1000;
const art = guestArtifacts();
const Dfs = suite('pedigree index in the guest agrees with debugfs');
const G = guard(Dfs);
const C = { tmp: '', img: '', vm: undefined as GuestVm | undefined, blocks: [] as number[], report: undefined as MapReport | undefined };

const debugfs = (cmd: string): string =>
  execFileSync('debugfs', ['-R', cmd, C.img], { encoding: 'utf8', stdio: ['ignore', 'pipe', 'ignore'], maxBuffer: 1 << 26 });

/** Runs several debugfs requests in one process; returns each request's output. */
function debugfsMany(cmds: string[]): string[] {
  const file = join(C.tmp, 'cmds');
  writeFileSync(file, cmds.join('\n') + '\n');
  const out = execFileSync('debugfs', ['-f', file, C.img], { encoding: 'utf8', stdio: ['ignore', 'pipe', 'ignore'], maxBuffer: 1 << 26 });
  return out.split(/^debugfs: .*$/m).slice(1);
}

if (typeof art === 'string') {
  console.log(`  skipped: ${art}`);
  Dfs.skip('guest artefacts are missing', () => undefined);
} else {
  Dfs.before(G.setup(async () => {
    C.tmp = mkdtempSync(join(tmpdir(), 'vmsubst-dfs-'));
    C.img = join(C.tmp, 'many.img');
    execFileSync(join(ROOT, 'test/fixtures/build-many-files.sh'), [C.img, String(FILES)], { stdio: 'ignore' });
    const disk = join(C.tmp, 'disk.img');
    copyFileSync(join(art.disks, 'base.img'), disk);
    const count = Number(/Block count:\s+(\d+)/.exec(debugfs('stats'))![1]);
    // Deterministic sample: a linear congruential sequence over the whole volume.
    const set = new Set<number>();
    let x = 12345;
    while (set.size < SAMPLES) {
      x = Number((BigInt(x) * 1103515245n + 12345n) % 2n ** 31n);
      set.add(x % count);
    }
    C.blocks = [...set].sort((a, b) => a - b);
    writeFileSync(join(C.tmp, 'blocks'), C.blocks.join('\n') + '\n');
    C.vm = await withTimeout(180_000, 'boot', () => GuestVm.boot({ disk, extraDisk: C.img, noAgent: true }));
  }));
  Dfs.after(() => {
    C.vm?.kill();
    rmSync(C.tmp, { recursive: true, force: true });
  });

  G.test(`the guest maps ${SAMPLES} random blocks of a ${FILES}-file volume`, () =>
    withTimeout(300_000, 'map', async () => {
      const vm = C.vm!;
      assert.match(await vm.sh('grep " /mnt/extra " /proc/mounts'), /ext4 ro/);
      assert.is(Number((await vm.sh('find /mnt/extra -type f | wc -l')).trim()), FILES);
      await vm.putFile(join(C.tmp, 'blocks'), '/tmp/blocks');
      const dev = (await vm.sh('grep " /mnt/extra " /proc/mounts | cut -d" " -f1')).trim();
      await vm.sh(`node /opt/vmsubst/build/agent/src/main.js map --device ${dev} --blocks @/tmp/blocks --json > /tmp/map.json`, 240_000);
      const json = (await vm.sh('cat /tmp/map.json', 120_000)).trim();
      C.report = JSON.parse(json) as MapReport;
      assert.is(C.report.blockSize, 4096);
      assert.is(C.report.mountPoint, '/mnt/extra');
      // The volume is mounted read-only: the index comes from its ext4 metadata, not a walk.
      assert.equal(C.report.index, { builder: 'ext4-raw' });
      assert.is(C.report.rows.reduce((n, r) => n + r.count, 0), SAMPLES);
    }),
  );

  G.test('every answer agrees with debugfs icheck, ncheck, bmap and testb', () =>
    withTimeout(120_000, 'oracle', async () => {
      const rows = C.report!.rows.flatMap((r) => Array.from({ length: r.count }, (_, i) => ({ ...r, block: r.block + i, offset: r.offset === undefined ? undefined : r.offset + i * 4096 })));
      assert.equal(rows.map((r) => r.block), C.blocks);
      const owner = new Map<number, number | undefined>();
      for (const line of debugfs(`icheck ${C.blocks.join(' ')}`).split('\n').slice(1)) {
        const m = /^(\d+)\s+(\d+|<block not found>)/.exec(line.trim());
        if (m) owner.set(Number(m[1]), m[2]!.startsWith('<') ? undefined : Number(m[2]));
      }
      const used = new Set<number>([0]);
      const tb = debugfsMany(C.blocks.filter((b) => b > 0).map((b) => `testb ${b}`));
      for (const t of tb) {
        const m = /Block (\d+) marked in use/.exec(t);
        if (m) used.add(Number(m[1]));
      }
      const fileRows = rows.filter((r) => r.path !== undefined);
      const inos = [...new Set(fileRows.map((r) => r.ino!))];
      const paths = new Map<number, string>();
      for (const line of debugfs(`ncheck ${inos.join(' ')}`).split('\n').slice(1)) {
        const m = /^(\d+)\s+(.*)$/.exec(line.trim());
        if (m) paths.set(Number(m[1]), m[2]!.replace(/\/+/g, '/')); // ncheck prints "//lost+found" for the root's entries
      }
      const bmaps = debugfsMany(fileRows.map((r) => `bmap <${r.ino}> ${r.offset! / 4096}`)).map((t) => Number(t.trim()));
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
      for (const b of C.blocks) if (!used.has(b)) assert.ok(rows.find((r) => r.block === b)!.class === 'free', `block ${b} is free`);
      console.log(`  ${SAMPLES} blocks: ${Object.entries(counts).map(([k, v]) => `${k} ${v}`).join(', ')}`);
      assert.ok((counts['file'] ?? 0) > 300, 'enough file blocks sampled');
    }),
  );
}

Dfs.run();
