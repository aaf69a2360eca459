/**
 * What the guest benchmarks share: volumes built for them (ext4 images made
 * with mkfs.ext4 -d, with vprog and vmtouch on them), in-place file patches,
 * bundles both ways, a booted guest, and the stage breakdown of the agent's
 * reports.
 */
import { execFileSync } from 'node:child_process';
import { copyFileSync, mkdirSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { applyArgs, vmsubst, vmsubstJson } from '../helpers/cli.js';
import { guestArtifacts, type GuestArtifacts } from '../helpers/paths.js';
import { GuestVm, type VmOptions } from '../helpers/vm.js';
import { withTimeout } from '../helpers/timeout.js';
import { fmtMs, fmtStatsMs, stats, type Table } from './table.js';

export function artifacts(): GuestArtifacts {
  const art = guestArtifacts();
  if (typeof art === 'string') throw new Error(`no test guest: ${art}`);
  return art;
}

/**
 * Builds an ext4 image of `sizeMiB` from a directory tree that `fill` writes
 * (it receives the tree's root). /bin/vprog (v1) and /bin/vmtouch (the host's
 * binary; the guest has the glibc node links) are always added.
 */
export function buildVolume(tmp: string, name: string, sizeMiB: number, fill: (root: string) => void): string {
  const art = artifacts();
  const tree = join(tmp, `${name}.tree`);
  mkdirSync(join(tree, 'bin'), { recursive: true });
  copyFileSync(join(art.disks, 'vprog-v1'), join(tree, 'bin/vprog'));
  copyFileSync('/usr/bin/vmtouch', join(tree, 'bin/vmtouch'));
  fill(tree);
  const img = join(tmp, `${name}.img`);
  execFileSync('mkfs.ext4', ['-q', '-F', '-b', '4096', '-E', 'root_owner=0:0', '-d', tree, img, `${sizeMiB}M`], {
    stdio: ['ignore', 'ignore', 'pipe'],
  });
  execFileSync('rm', ['-rf', tree]);
  return img;
}

/** A copy of `img` whose file `path` has its blocks rewritten in place with `content` (same size, same extents). */
export function patchInPlace(img: string, out: string, path: string, content: string): void {
  copyFileSync(img, out);
  const blocks = execFileSync('debugfs', ['-R', `blocks ${path}`, img], {
    encoding: 'utf8',
    stdio: ['ignore', 'pipe', 'ignore'],
  })
    .trim()
    .split(/\s+/)
    .filter((b) => /^\d+$/.test(b))
    .map(Number);
  if (blocks.length === 0) throw new Error(`debugfs lists no blocks for ${path} in ${img}`);
  for (const [i, b] of blocks.entries()) {
    execFileSync('dd', [
      `if=${content}`,
      `of=${out}`,
      'bs=4096',
      `skip=${i}`,
      `seek=${b}`,
      'count=1',
      'conv=notrunc',
      'status=none',
    ]);
  }
}

/** Bundles from `a` to `b` and back. */
export async function bundlePair(
  tmp: string,
  name: string,
  a: string,
  b: string,
): Promise<{ fwd: string; rev: string }> {
  const fwd = join(tmp, `${name}.fwd.bundle`);
  const rev = join(tmp, `${name}.rev.bundle`);
  await vmsubstJson(['diff', a, b, '-o', fwd], 600_000);
  await vmsubstJson(['diff', b, a, '-o', rev], 600_000);
  return { fwd, rev };
}

export function bootGuest(opts: VmOptions): Promise<GuestVm> {
  return withTimeout(240_000, 'guest boot', () => GuestVm.boot(opts));
}

/** `vmsubst apply` into the guest's data disk; returns the CLI's wall ms and the pause. */
export async function applyInto(vm: GuestVm, bundle: string): Promise<{ ms: number; pauseMs: number }> {
  const r = await vmsubst(applyArgs(bundle, vm, false, '--json'), 900_000);
  if (r.code !== 0) throw new Error(`vmsubst apply ${bundle} exited ${r.code}: ${r.stderr}`);
  return { ms: r.ms, pauseMs: (JSON.parse(r.stdout) as { 'pause-ms': number })['pause-ms'] };
}

export interface NotifyResult {
  ms: number;
  /** The agent's prepare timings (two-phase apply --notify only). */
  prepare?: Record<string, number>;
  /** The CLI's wall time per phase (apply --notify only: agent connect, prepare, write, notify). */
  phases?: Record<string, number>;
  report: {
    'timings-ms': Record<string, number>;
    files: Array<{ path: string; 'pages-dropped': number; 'pages-kept': number }>;
  };
}

let customizeSeq = 0;
const hostKeys = new WeakMap<GuestVm, string>();

/** After a reboot the test guest's /etc is new (an initramfs): it trusts no key until told again. */
export function guestRebooted(vm: GuestVm): void {
  hostKeys.delete(vm);
}

/**
 * The guest trusts a host key and takes file customization from it (both off by default); returns
 * the private key's path. Once per guest; `restartAgent` makes the agent read its settings anew
 * (default: the test initramfs's way; a packaged agent restarts through systemd).
 */
export async function trustedKey(
  vm: GuestVm,
  tmp: string,
  restartAgent: () => Promise<void> = () => vm.restartAgent(),
): Promise<string> {
  const known = hostKeys.get(vm);
  if (known) return known;
  const prefix = join(tmp, `host-key-${hostKeys.has(vm) ? 0 : Date.now()}`);
  const r = await vmsubst(['keygen', '--out', prefix, '--json']);
  if (r.code !== 0) throw new Error(`vmsubst keygen exited ${r.code}: ${r.stderr}`);
  await vm.sh('mkdir -p /etc/vmsubst/trusted.d');
  await vm.putFile(`${prefix}.pub`, '/etc/vmsubst/trusted.d/bench.pub');
  await vm.sh(`echo '{"customization":{"allow":["file"],"fileRoots":["/etc"]}}' > /etc/vmsubst/agent.json`);
  await restartAgent();
  hostKeys.set(vm, `${prefix}.key`);
  return `${prefix}.key`;
}

/**
 * `vmsubst notify` over virtio-serial. Every notification carries a
 * one-file customization naming it (under /etc, an allowed root): that makes
 * its id new, since the agent answers a repeated id from its journal without
 * acting, and the benchmarks apply the same bundle many times. Customization is
 * accepted only signed, so the guest is given a host key first.
 */
/** The signed one-file customization every notification of the benchmarks carries: its id is new. */
async function freshRequest(vm: GuestVm, tmp: string): Promise<string[]> {
  const key = await trustedKey(vm, tmp);
  const c = join(tmp, `customize-${++customizeSeq}.json`);
  writeFileSync(
    c,
    JSON.stringify({ files: [{ path: '/etc/vmsubst-bench-run', content: `run ${customizeSeq} ${Date.now()}\n` }] }),
  );
  return ['--customize', c, '--sign', key];
}

export async function notifyGuest(vm: GuestVm, bundle: string, tmp: string): Promise<NotifyResult> {
  const request = await freshRequest(vm, tmp);
  const r = await vmsubst(
    ['notify', bundle, '--to', `serial:${vm.agentSocket}`, ...request, '--disk-serial', 'vmsubst-data', '--json'],
    900_000,
  );
  if (r.code !== 0) throw new Error(`vmsubst notify ${bundle} exited ${r.code}: ${r.stderr}\n${r.stdout}`);
  return { ms: r.ms, report: JSON.parse(r.stdout) as NotifyResult['report'] };
}

/**
 * One CLI process for the whole live path: `vmsubst apply --notify` verifies, asks the agent to
 * prepare, writes, and has it commit (the two-phase substitution), with the same signed one-file
 * customization as notifyGuest unless `plain`. Returns the wall time and the agent's report.
 */
export async function applyNotify(
  vm: GuestVm,
  bundle: string,
  tmp: string,
  { plain = false }: { plain?: boolean } = {},
): Promise<NotifyResult> {
  // plain: the bundle alone, as an operator applies it (its id must not be the agent's latest done).
  const request = plain ? [] : await freshRequest(vm, tmp);
  const r = await vmsubst(applyArgs(bundle, vm, true, ...request, '--on-no-agent', 'fail', '--json'), 900_000);
  if (r.code !== 0) throw new Error(`vmsubst apply --notify ${bundle} exited ${r.code}: ${r.stderr}\n${r.stdout}`);
  const out = JSON.parse(r.stdout) as {
    agent: { report?: NotifyResult['report']; prepare?: { 'timings-ms'?: Record<string, number> } };
    'phases-ms'?: Record<string, number>;
  };
  if (!out.agent.report) throw new Error(`vmsubst apply --notify ${bundle}: no agent report: ${r.stdout}`);
  return {
    ms: r.ms,
    report: out.agent.report,
    ...(out.agent.prepare?.['timings-ms'] ? { prepare: out.agent.prepare['timings-ms'] } : {}),
    ...(out['phases-ms'] ? { phases: out['phases-ms'] } : {}),
  };
}

/** Wall time of the CLI doing nothing but start (`vmsubst --version`): node and the bundled CLI loading. */
export async function cliStartMs(): Promise<number> {
  const r = await vmsubst(['--version']);
  if (r.code !== 0) throw new Error(`vmsubst --version exited ${r.code}: ${r.stderr}`);
  return r.ms;
}

/** Timed samples of a method split into named parts: each part's median, in the parts' order. */
export function partMedians(xs: ReadonlyArray<{ parts: Record<string, number> }>): string {
  return Object.keys(xs[0]?.parts ?? {})
    .map((k) => `${k} ${fmtMs(stats(xs.map((x) => x.parts[k]!)).median)}`)
    .join(' + ');
}

/** Per-round ratios of a method's totals to the live method's, round by round. */
export function perRound(xs: ReadonlyArray<{ total: number }>, live: ReadonlyArray<{ total: number }>): number[] {
  return xs.map((x, i) => x.total / live[i]!.total);
}

/** The distinct values of `f` over the samples, comma-separated (one value when all rounds agree). */
export function distinctOf<T>(xs: readonly T[], f: (s: T) => string): string {
  return [...new Set(xs.map(f))].join(', ');
}

/** The first line of a guest command's output that says which vprog version ran. */
export function versionOf(out: string): string {
  return /vprog version (v\d)/.exec(out)?.[1] ?? `? (${out.trim().slice(0, 60)})`;
}

/**
 * The agent's per-stage timings over several reports: every key present in
 * `timings-ms`, median (min – max) per stage.
 */
export function stageTable(title: string, command: string, reports: Array<Record<string, number>>): Table {
  const keys: string[] = [];
  for (const t of reports) for (const k of Object.keys(t)) if (!keys.includes(k)) keys.push(k);
  return {
    title,
    command,
    columns: ['stage', `median (min – max) of ${reports.length} reports`],
    rows: keys.map((k) => [k, fmtStatsMs(reports.map((t) => t[k]).filter((x): x is number => typeof x === 'number'))]),
  };
}
