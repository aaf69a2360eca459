/**
 * The raw-file apply mode, for hypervisors that read a raw image through the
 * host page cache (Firecracker, Cloud Hypervisor). Neither runs here (both
 * need KVM), so a stand-in VMM plays their part: a process that keeps the
 * image open, as they do, and reads it with pread through the page cache, as
 * their default (synchronous) block backends do. It reads the new blocks
 * without reopening the file.
 */
import { spawn, type ChildProcess } from 'node:child_process';
import { readFileSync, rmSync, writeFileSync } from 'node:fs';
import { createInterface } from 'node:readline';
import { join } from 'node:path';
import { suite } from 'uvu';
import * as assert from 'uvu/assert';
import { vmsubst, vmsubstJson } from '../../helpers/cli.js';
import { withTimeout } from '../../helpers/timeout.js';
import { FirmwareVm, whyNoQemu } from '../../helpers/firmware-vm.js';
import { MiB, applyWorld, diskCopy, rangesNew, rejected, type ApplyWorld } from '../../helpers/apply-world.js';
import { applyToImage } from '../../../host-signal/src/apply/index.js';
import { BaseMismatchError, TargetError } from '../../../host-signal/src/errors.js';

const SIZE = 64 * MiB;
const EDITS: [number, number][] = [...Array.from({ length: 64 }, (_, i): [number, number] => [i * MiB + 8192, 64 << 10]), [SIZE - 1, 1]];

/**
 * The stand-in VMM: opens the image read-write (O_DIRECT if asked), then for
 * each "offset length" line on stdin answers the sha256 of those bytes, read
 * with pread on the fd it opened at start.
 */
const VMM_SOURCE = `
const fs = require('node:fs'), crypto = require('node:crypto'), readline = require('node:readline');
const [path, direct] = process.argv.slice(2);
const fd = fs.openSync(path, fs.constants.O_RDWR | (direct === 'direct' ? fs.constants.O_DIRECT : 0));
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
  constructor(script: string, image: string, direct = false) {
    this.proc = spawn(process.execPath, [script, image, direct ? 'direct' : ''], { stdio: ['pipe', 'pipe', 'inherit'] });
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

async function vmm(image: string, direct = false): Promise<StandInVmm> {
  const v = new StandInVmm(script, image, direct);
  vmms.push(v);
  await v.ready();
  return v;
}

S('the running VMM reads the new blocks on its open fd; the write window is reported, nothing is paused', () =>
  withTimeout(60_000, 'raw-file', async () => {
    const { image } = diskCopy(W, 'live', W.base);
    const v = await vmm(image);
    const r = await applyToImage(W.bundle, image);
    assert.is(r.mode, 'raw-file');
    assert.is(r.status, 'applied');
    assert.is(r.bytesWritten, W.changedBytes);
    assert.is(r.pauseMs, null);
    assert.ok(typeof r.windowMs === 'number' && r.windowMs > 0);
    console.log(`  raw-file: ${(W.changedBytes / MiB).toFixed(2)} MiB: write window (pwrites) ${r.windowMs} ms, with fdatasync ${r.timingsMs.write} ms, verify ${r.timingsMs.verify} ms (loaded host)`);
    const me = r.openers.find((o) => o.pid === v.proc.pid);
    assert.ok(me, `the VMM is reported as an opener: ${JSON.stringify(r.openers)}`);
    assert.is(me.direct, false);
    assert.equal(r.warnings, []);
    for (const range of W.manifest.ranges) assert.is(await v.sha(range.offset, range.length), range['new-sha256'], `range at ${range.offset}`);
    assert.ok(rangesNew(W.manifest, image).every(Boolean));
    assert.ok(readFileSync(image).equals(W.patched));
  }),
);

S('a VMM with the image open O_DIRECT is reported with a warning', () =>
  withTimeout(60_000, 'o_direct', async () => {
    const { image } = diskCopy(W, 'direct', W.base);
    const v = await vmm(image, true);
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
    const bad = { ...W.bundle, manifest: { ...m, ranges: [...m.ranges.slice(0, -1), { ...last, offset: SIZE + 4096 }] }, verified: true, readData: W.bundle.readData.bind(W.bundle) };
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
