// Guest-side harness of the cost curves (copied onto the benchmark volume as
// /bench/curve.mjs and run by the guest's node). It makes the calls the
// agent makes per file in its module stage (open, VMSUBST_IOC_INVALIDATE_RANGE
// through the addon, close) and times them; one JSON line per sample.
//   node curve.mjs pages BIG SMALL RUNS MIB...
//   node curve.mjs mappers FILE RUNS N...
//   node curve.mjs files DIR RUNS K...
import { closeSync, openSync, readSync, readdirSync, statSync } from 'node:fs';
import { spawn } from 'node:child_process';
import { join } from 'node:path';

const { invalidateRange } = await import('/opt/vmsubst/build/agent/src/native/index.js');
const [mode, target, second, ...rest] = process.argv.slice(2);
const buf = Buffer.alloc(1 << 20);

function warm(path, bytes) {
  const fd = openSync(path, 'r');
  try {
    for (let off = 0; off < bytes; ) {
      const n = readSync(fd, buf, 0, Math.min(buf.length, bytes - off), off);
      if (n <= 0) break;
      off += n;
    }
  } finally {
    closeSync(fd);
  }
}

async function invalidate(path) {
  const size = statSync(path).size;
  const fd = openSync(path, 'r');
  try {
    const t = performance.now();
    const r = await invalidateRange(fd, 0n, BigInt(size), 0);
    return { ms: performance.now() - t, cached: Number(r.pagesCached), dropped: Number(r.pagesDropped), mapped: Number(r.pagesMapped), kept: Number(r.pagesKept) };
  } finally {
    closeSync(fd);
  }
}

const out = (o) => console.log(`CURVE ${JSON.stringify(o)}`);

if (mode === 'pages') {
  const [runs, ...mibs] = rest.map(Number);
  const big = target;
  const small = second;
  await invalidate(small); // warm-up: the first call pays for loading and compiling the code paths
  for (const mib of mibs) {
    for (let i = 0; i < runs; i++) {
      warm(big, mib << 20);
      warm(small, statSync(small).size);
      const s = await invalidate(small); // 1 MiB file, with `mib` MiB of another file cached
      const b = await invalidate(big); // the whole file, `mib` MiB of it cached
      out({ mib, small: s, big: b });
    }
  }
} else if (mode === 'mappers') {
  const file = target;
  const [runs, ...ns] = [Number(second), ...rest.map(Number)];
  await invalidate(file); // warm-up
  for (const n of ns) {
    for (let i = 0; i < runs; i++) {
      warm(file, statSync(file).size);
      // n processes running the file; each has printed a line, so it has faulted its pages in.
      const procs = [];
      for (let j = 0; j < n; j++) procs.push(spawn(file, ['3600000'], { stdio: ['ignore', 'pipe', 'ignore'] }));
      await Promise.all(procs.map((p) => new Promise((res, rej) => { p.stdout.once('data', res); p.once('error', rej); })));
      const r = await invalidate(file);
      await Promise.all(procs.map((p) => new Promise((res) => { p.once('exit', res); p.kill('SIGKILL'); })));
      out({ n, ...r });
    }
  }
} else if (mode === 'files') {
  const dir = target;
  const [runs, ...ks] = [Number(second), ...rest.map(Number)];
  const all = [];
  for (const d of readdirSync(dir).sort()) for (const f of readdirSync(join(dir, d)).sort()) all.push(join(dir, d, f));
  await invalidate(all[0]); // warm-up
  // With the report capacities at their maximum (the addon's default) and as the agent calls it
  // (no outcome or mapper lists: it uses the counts only): the difference is the cost of the
  // report buffers.
  for (const caps of ['default', 0]) {
    const options = caps === 'default' ? {} : { outcomesCapacity: caps, mappersCapacity: caps };
    for (const k of ks) {
      const files = all.slice(0, k);
      if (files.length < k) throw new Error(`only ${all.length} files in ${dir}`);
      for (let i = 0; i < runs; i++) {
        for (const f of files) warm(f, 4096);
        let dropped = 0;
        const t = performance.now();
        for (const f of files) {
          const fd = openSync(f, 'r');
          try {
            dropped += Number((await invalidateRange(fd, 0n, 4096n, 0, undefined, options)).pagesDropped);
          } finally {
            closeSync(fd);
          }
        }
        out({ k, caps, ms: performance.now() - t, dropped });
      }
    }
  }
} else {
  console.error(`usage: curve.mjs pages|mappers|files ...`);
  process.exit(2);
}
