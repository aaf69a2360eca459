/**
 * The raw-file apply mode, for hypervisors that read a raw image through the
 * host page cache (Firecracker, Cloud Hypervisor). Neither runs here (both
 * need KVM), so a stand-in VMM plays their part: a process that keeps the
 * image open, as they do, and reads it with pread through the page cache, as
 * their default (synchronous) block backends do. It reads the new blocks
 * without reopening the file.
 */
import { spawn, type ChildProcess } from 'node:child_process';
import { linkSync, readFileSync, readlinkSync, rmSync, writeFileSync } from 'node:fs';
import { createInterface } from 'node:readline';
import { dirname, join } from 'node:path';
import { suite } from 'uvu';
import * as assert from 'uvu/assert';
import { vmsubst, vmsubstJson } from '../../helpers/cli.js';
import { waitFor, withTimeout } from '../../helpers/timeout.js';
import { FirmwareVm, whyNoQemu } from '../../helpers/firmware-vm.js';
import { MiB, applyWorld, diskCopy, rangesNew, rejected, sha, type ApplyWorld } from '../../helpers/apply-world.js';
import { applyToImage } from '../../../host-signal/src/apply/index.js';
import { BaseMismatchError, TargetError } from '../../../host-signal/src/errors.js';

const SIZE = 64 * MiB;
const EDITS: [number, number][] = [
  ...Array.from({ length: 64 }, (_, i): [number, number] => [i * MiB + 8192, 64 << 10]),
  [SIZE - 1, 1],
];

/**
 * The stand-in VMM: opens the image read-only (a read-only drive) or
 * read-write (O_DIRECT if asked), then for
 * each "offset length" line on stdin answers the sha256 of those bytes, read
 * with pread on the fd it opened at start.
 */
const VMM_SOURCE = `
const fs = require('node:fs'), crypto = require('node:crypto'), readline = require('node:readline');
const [path, access, direct] = process.argv.slice(2);
const fd = fs.openSync(path, (access === 'rw' ? fs.constants.O_RDWR : fs.constants.O_RDONLY) | (direct === 'direct' ? fs.constants.O_DIRECT : 0));
console.log('ready');
readline.createInterface({ input: process.stdin }).on('line', (l) => {
  const [off, len] = l.split(' ').map(Number);
  const buf = Buffer.alloc(len);
  fs.readSync(fd, buf, 0, len, off);
  console.log(crypto.createHash('sha256').update(buf).digest('hex'));
});`;

class StandInVmm {
  readonly proc: ChildProcess;
  readonly #lines: string[] = [];
  #wake: (() => void) | undefined;
  constructor(script: string, image: string, access: 'ro' | 'rw', direct = false) {
    this.proc = spawn(process.execPath, [script, image, access, direct ? 'direct' : ''], {
      stdio: ['pipe', 'pipe', 'inherit'],
    });
    createInterface({ input: this.proc.stdout! }).on('line', (l) => {
      this.#lines.push(l);
      this.#wake?.();
    });
  }
  async line(): Promise<string> {
    while (this.#lines.length === 0) await new Promise<void>((r) => (this.#wake = r));
    return this.#lines.shift()!;
  }
  async ready(): Promise<void> {
    assert.is(await this.line(), 'ready');
  }
  async sha(offset: number, length: number): Promise<string> {
    this.proc.stdin!.write(`${offset} ${length}\n`);
    return this.line();
  }
  kill(): void {
    this.proc.kill('SIGKILL');
  }
}

const S = suite('apply --mode raw-file (a raw image read through the page cache)');
let W: ApplyWorld;
let script: string;
let vmms: StandInVmm[] = [];
let vms: FirmwareVm[] = [];

S.before(async () => {
  W = await applyWorld('raw-file', SIZE, EDITS);
  script = join(W.dir, 'stand-in-vmm.cjs');
  writeFileSync(script, VMM_SOURCE);
});
S.after.each(() => {
  vmms.forEach((v) => v.kill());
  vms.forEach((v) => v.kill());
  vmms = [];
  vms = [];
});
S.after(async () => {
  await W?.bundle.close();
  if (W) rmSync(W.dir, { recursive: true, force: true });
});

async function vmm(image: string, access: 'ro' | 'rw' = 'ro', direct = false): Promise<StandInVmm> {
  const v = new StandInVmm(script, image, access, direct);
  vmms.push(v);
  await v.ready();
  return v;
}

S(
  'the running VMM (read-write, accepted with allowWriters) reads the new blocks on its open fd; the write window is reported, nothing is paused',
  () =>
    withTimeout(60_000, 'raw-file', async () => {
      const { image } = diskCopy(W, 'live', W.base);
      const v = await vmm(image, 'rw');
      const r = await applyToImage(W.bundle, image, { allowWriters: [v.proc.pid!] });
      assert.is(r.mode, 'raw-file');
      assert.is(r.status, 'applied');
      assert.is(r.bytesWritten, W.changedBytes);
      assert.is(r.pauseMs, null);
      assert.ok(typeof r.windowMs === 'number' && r.windowMs > 0);
      console.log(
        `  raw-file: ${(W.changedBytes / MiB).toFixed(2)} MiB: write window (pwrites) ${r.windowMs} ms, with fdatasync ${r.timingsMs.write} ms, verify ${r.timingsMs.verify} ms (loaded host)`,
      );
      const me = r.openers.find((o) => o.pid === v.proc.pid);
      assert.ok(me, `the VMM is reported as an opener: ${JSON.stringify(r.openers)}`);
      assert.is(me.direct, false);
      assert.is(me.writable, true);
      assert.equal(r.warnings, []);
      for (const range of W.manifest.ranges)
        assert.is(await v.sha(range.offset, range.length), range['new-sha256'], `range at ${range.offset}`);
      assert.ok(rangesNew(W.manifest, image).every(Boolean));
      assert.ok(readFileSync(image).equals(W.patched));
    }),
);

S('a VMM with the image open O_DIRECT is reported with a warning', () =>
  withTimeout(60_000, 'o_direct', async () => {
    const { image } = diskCopy(W, 'direct', W.base);
    const v = await vmm(image, 'ro', true);
    const r = await applyToImage(W.bundle, image);
    assert.ok(r.openers.find((o) => o.pid === v.proc.pid)?.direct);
    assert.is(r.warnings.length, 1);
    assert.match(r.warnings[0]!, /O_DIRECT/);
    assert.ok(rangesNew(W.manifest, image).every(Boolean));
  }),
);

S('a diverged image, an image of another size and a qcow2 image are refused, unchanged', () =>
  withTimeout(60_000, 'refusals', async () => {
    const content = Buffer.from(W.base);
    const at = W.manifest.ranges[20]!.offset;
    content[at] = content[at]! ^ 1;
    const { image } = diskCopy(W, 'diverged', content);
    await vmm(image);
    const err = await rejected(applyToImage(W.bundle, image));
    assert.instance(err, BaseMismatchError);
    assert.ok(readFileSync(image).equals(content));

    const small = diskCopy(W, 'small', W.base.subarray(0, SIZE - 4096)).image;
    assert.instance(await rejected(applyToImage(W.bundle, small)), BaseMismatchError);
    assert.ok(readFileSync(small).equals(W.base.subarray(0, SIZE - 4096)));

    const q = diskCopy(W, 'qcow2', Buffer.concat([Buffer.from([0x51, 0x46, 0x49, 0xfb]), W.base.subarray(4)])).image;
    const qe = await rejected(applyToImage(W.bundle, q));
    assert.instance(qe, TargetError);
    assert.match(qe.message, /is a qcow2 image/);
  }),
);

S('a range outside the image is refused before anything is written', () =>
  withTimeout(60_000, 'out of range', async () => {
    const { image } = diskCopy(W, 'range', W.base);
    const m = W.bundle.manifest;
    const last = m.ranges.at(-1)!;
    // A manifest the reader would refuse, handed to the library directly: the last range moved past the end.
    const bad = {
      ...W.bundle,
      manifest: { ...m, ranges: [...m.ranges.slice(0, -1), { ...last, offset: SIZE + 4096 }] },
      verified: true,
      readData: W.bundle.readData.bind(W.bundle),
    };
    const err = await rejected(applyToImage(bad, image));
    assert.instance(err, TargetError);
    assert.match(err.message, /short read/);
    assert.ok(readFileSync(image).equals(W.base), 'nothing written');
  }),
);

S('an image QEMU holds is refused with a pointer to --qmp', () =>
  withTimeout(60_000, 'qemu', async () => {
    const why = whyNoQemu();
    if (why) {
      console.log(`  skipped: ${why}`);
      return;
    }
    const d = diskCopy(W, 'qemu', W.base);
    vms.push(await FirmwareVm.start(d));
    const r = await vmsubst(['apply', W.bundlePath, '--image', d.image, '--mode', 'raw-file']);
    assert.is(r.code, 1);
    assert.match(r.stderr, /QEMU is using it/);
    assert.match(r.stderr, /--qmp/);
    assert.ok(readFileSync(d.image).equals(W.base));
  }),
);

/** A shell that opens the image on fd 3 (`<>` read-write, `<` read-only), then becomes `sleep`, keeping the fd. */
async function holder(image: string, redirect: '<>' | '<'): Promise<ChildProcess> {
  const p = spawn('sh', ['-c', `exec 3${redirect}"$1"; exec sleep 300`, 'sh', image], { stdio: 'ignore' });
  holders.push(p);
  await waitFor(
    5000,
    'the holder has the image open as sleep',
    () => {
      try {
        return readFileSync(`/proc/${p.pid}/comm`, 'utf8').trim() === 'sleep' &&
          readlinkSync(`/proc/${p.pid}/fd/3`) === image
          ? true
          : undefined;
      } catch {
        return undefined;
      }
    },
    20,
  );
  return p;
}
let holders: ChildProcess[] = [];
S.after.each(() => {
  holders.forEach((h) => h.kill('SIGKILL'));
  holders = [];
});

S(
  'another process holding the image open for writing is refused, named, with nothing written; read-only it is allowed',
  () =>
    withTimeout(60_000, 'writer', async () => {
      const { image } = diskCopy(W, 'writer', W.base);
      const before = sha(readFileSync(image));
      const rw = await holder(image, '<>');
      const r = await vmsubst(['apply', W.bundlePath, '--image', image, '--json']);
      assert.is(r.code, 1, r.stderr);
      const doc = JSON.parse(r.stdout) as { error: { code: string; message: string; hint: string } };
      assert.is(doc.error.code, 'E_VMSUBST_TARGET');
      assert.match(
        doc.error.message,
        new RegExp(`open for writing by another process: sleep\\[${rw.pid}\\]; nothing was written`),
      );
      assert.match(doc.error.hint, new RegExp(`only QEMU as a VMM.*--allow-writer ${rw.pid}`));
      assert.is(sha(readFileSync(image)), before, 'image unchanged');
      // Through another name (a hard link): the same inode, so the same refusal.
      const alias = join(dirname(image), 'alias.img');
      linkSync(image, alias);
      const viaAlias = await vmsubst(['apply', W.bundlePath, '--image', alias]);
      assert.is(viaAlias.code, 1);
      assert.match(viaAlias.stderr, new RegExp(`sleep\\[${rw.pid}\\]`));
      assert.is(sha(readFileSync(image)), before, 'image unchanged');
      rw.kill('SIGKILL');

      const ro = await holder(image, '<');
      const ok = await vmsubstJson<{ status: string; openers: { pid: number; comm: string; writable: boolean }[] }>([
        'apply',
        W.bundlePath,
        '--image',
        image,
      ]);
      assert.is(ok.status, 'applied');
      assert.equal(
        ok.openers.find((o) => o.pid === ro.pid),
        { pid: ro.pid!, comm: 'sleep', direct: false, writable: false },
      );
      assert.is(sha(readFileSync(image)), sha(W.patched));
    }),
);

S('a writer named with --allow-writer is accepted; --allow-writer goes with --image only', () =>
  withTimeout(60_000, 'allow-writer', async () => {
    const { image } = diskCopy(W, 'allowed', W.base);
    const v = await vmm(image, 'rw');
    const lib = await rejected(applyToImage(W.bundle, image));
    assert.instance(lib, TargetError);
    assert.match(lib.message, /open for writing by another process/);
    assert.is(sha(readFileSync(image)), sha(W.base));
    const r = await vmsubstJson<{ status: string }>([
      'apply',
      W.bundlePath,
      '--image',
      image,
      '--allow-writer',
      String(v.proc.pid),
    ]);
    assert.is(r.status, 'applied');
    for (const range of W.manifest.ranges) assert.is(await v.sha(range.offset, range.length), range['new-sha256']);
    const u = await vmsubst(['apply', W.bundlePath, '--qmp', '/nonexistent.qmp', '--allow-writer', '1']);
    assert.is(u.code, 2);
    assert.match(u.stderr, /--allow-writer goes with --image/);
    const h = await vmsubst(['apply', '--help']);
    assert.match(h.stdout, /QEMU is the only VMM\s+vmsubst recognises/);
  }),
);

S('the CLI reports pause-ms null, the write window and the openers in JSON', () =>
  withTimeout(60_000, 'cli', async () => {
    const { image } = diskCopy(W, 'cli', W.base);
    const v = await vmm(image);
    const r = await vmsubstJson<Record<string, unknown>>(['apply', W.bundlePath, '--image', image]);
    assert.is(r['mode'], 'raw-file');
    assert.is(r['pause-ms'], null);
    assert.is(typeof r['window-ms'], 'number');
    assert.ok((r['openers'] as { pid: number }[]).some((o) => o.pid === v.proc.pid));
    const again = await vmsubstJson<Record<string, unknown>>(['apply', W.bundlePath, '--image', image]);
    assert.is(again['status'], 'already-applied');
    assert.is(again['window-ms'], null);
  }),
);

S.run();
