/**
 * Fixtures for the QEMU suites, in the shape of uvu's own browser example
 * (`withPuppeteer(suite('index'))`): the fixture registers the suite's
 * `before` hook (scratch directory, a copy of the test disk, the bundle, the
 * booted guest) and its `after` hook (the guest killed, the scratch directory
 * removed, whatever else was deferred: even when the set-up failed half way),
 * and puts what it made in the suite's context, so tests read it from their
 * argument (`S('x', async ({ vm }) => …)`) and no suite keeps module state.
 *
 * uvu 0.5 drops an error thrown by a `before` hook (its tests silently do not
 * run and the run exits 0): the fixture keeps the error and every test fails
 * with it. Where the guest's artefacts are missing, every test the suite
 * registers is counted as skipped, with the reason printed once.
 *
 * One booted guest serves a whole suite (a boot takes a minute under TCG), so
 * a test that needs a state an earlier step made gets it from `once`: the
 * step runs the first time any test asks for it, and its result is shared.
 */
import { copyFileSync, existsSync, mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import type { Test } from 'uvu';
import { GuestVm, type VmOptions } from './vm.js';
import { guestArtifacts, type GuestArtifacts } from './paths.js';
import { vmsubstJson } from './cli.js';
import { waitFor, withTimeout } from './timeout.js';

/** What every fixture puts in the suite's context. */
export interface FixtureContext {
  art: GuestArtifacts;
  /** Scratch directory of the suite, removed after it. */
  tmp: string;
  /** Registers a clean-up for the suite's end (run last registered first, also after a failed set-up). */
  defer(fn: () => unknown): void;
  /** Runs `fn` the first time `key` is asked for; every later call gets the same result (or error). */
  once<T>(key: string, fn: () => Promise<T>): Promise<T>;
}

export interface GuestContext extends FixtureContext {
  /** The guest's data disk: a copy of the fixture disk (or what `makeDisk` wrote). */
  disk: string;
  /** The bundle from `base` to `patched` ('' with `patched: null`). */
  bundle: string;
  vm: GuestVm;
}

export interface FixtureOptions<X> {
  /** The scratch directory's name: vmsubst-NAME-XXXXXX. */
  name: string;
  /** Disk images under build/disks the suite needs beyond base.img; missing ones skip the suite. */
  requires?: string[];
  /** Why the suite cannot run here beyond missing artefacts (e.g. libvirtd cannot start), or undefined. */
  unavailable?: string;
  setup(ctx: FixtureContext): Promise<X>;
}

export interface GuestOptions<X> {
  /** The scratch directory's name: vmsubst-NAME-XXXXXX. */
  name: string;
  /** The fixture disk under build/disks (default base.img), copied into the scratch directory. */
  base?: string;
  /** The patched image the bundle leads to (default patched.img); null: no bundle. */
  patched?: string | null;
  /** Writes the data disk in place of the copy of `base` (e.g. a partitioned disk). */
  makeDisk?(ctx: FixtureContext, disk: string): void | Promise<void>;
  /** How the guest boots (a function: from the scratch directory's content, e.g. an extra disk made in makeDisk). */
  boot?: Omit<VmOptions, 'disk'> | ((ctx: FixtureContext) => Omit<VmOptions, 'disk'>);
  /** The bound on the boot (default 180 s). */
  bootLimitMs?: number;
  requires?: string[];
  /** The suite's own preparation of the booted guest; what it returns joins the context. */
  setup?(ctx: GuestContext): Promise<X | void>;
}

/** A stand-in suite whose every test is counted as skipped (uvu's `skip`). */
function skipping<T>(s: Test<T>, why: string): Test<T> {
  console.log(`  skipped: ${why}`);
  const skip = (name?: string): void => s.skip(name);
  const hook = Object.assign(() => undefined, { each: () => undefined });
  return Object.assign(skip, { only: skip, skip, before: hook, after: hook, run: () => s.run() }) as unknown as Test<T>;
}

/** Why the suite cannot run here, or undefined. */
function missing(art: GuestArtifacts | string, requires: string[] = []): string | undefined {
  if (typeof art === 'string') return art;
  const absent = requires.map((f) => join(art.disks, f)).find((p) => !existsSync(p));
  return absent && `${absent} is missing (run make guest)`;
}

/** The core fixture: a scratch directory, deferred clean-ups, `once`, and what `setup` returns. */
export function withFixture<X extends object>(s: Test<any>, opts: FixtureOptions<X>): Test<FixtureContext & X> {
  const art = guestArtifacts();
  const why = missing(art, opts.requires) ?? opts.unavailable;
  if (why !== undefined || typeof art === 'string') return skipping(s, why ?? String(art));
  interface State extends FixtureContext {
    __cleanups: (() => unknown)[];
    __steps: Map<string, Promise<unknown>>;
    __failure?: unknown;
  }
  s.before(async (ctx: State) => {
    ctx.__cleanups = [];
    ctx.__steps = new Map();
    ctx.art = art;
    ctx.defer = (fn) => ctx.__cleanups.push(fn);
    ctx.once = <T>(key: string, fn: () => Promise<T>): Promise<T> => {
      let p = ctx.__steps.get(key) as Promise<T> | undefined;
      if (!p) {
        p = fn();
        p.catch(() => undefined); // awaited by the test that asked; a later one gets the same error
        ctx.__steps.set(key, p);
      }
      return p;
    };
    try {
      ctx.tmp = mkdtempSync(join(tmpdir(), `vmsubst-${opts.name}-`));
      const tmp = ctx.tmp;
      ctx.defer(() => rmSync(tmp, { recursive: true, force: true }));
      Object.assign(ctx, await opts.setup(ctx));
    } catch (e) {
      ctx.__failure = e;
    }
  });
  s.before.each((ctx: State) => {
    if (ctx.__failure !== undefined) throw ctx.__failure;
  });
  s.after(async (ctx: State) => {
    for (const fn of (ctx.__cleanups ?? []).reverse()) {
      try {
        await fn();
      } catch (e) {
        console.error(`  clean-up failed: ${(e as Error).message}`);
      }
    }
  });
  return s as Test<FixtureContext & X>;
}

/** Boots a guest for the suite, killed at the suite's end. */
export async function bootGuest(ctx: FixtureContext, opts: VmOptions, limitMs = 180_000): Promise<GuestVm> {
  const vm = await withTimeout(limitMs, 'boot', () => GuestVm.boot(opts));
  ctx.defer(() => vm.kill());
  return vm;
}

/**
 * The usual QEMU suite: a copy of the fixture disk, the bundle from it to the
 * patched image, one booted guest (agent ready unless noAgent), then the
 * suite's own `setup`.
 */
export function withGuest<X extends object = object>(s: Test<any>, opts: GuestOptions<X>): Test<GuestContext & X> {
  return withFixture<Omit<GuestContext, keyof FixtureContext> & X>(s, {
    name: opts.name,
    requires: [opts.base, opts.patched, ...(opts.requires ?? [])].filter((x): x is string => typeof x === 'string'),
    async setup(fx) {
      const base = join(fx.art.disks, opts.base ?? 'base.img');
      const disk = join(fx.tmp, 'disk.img');
      if (opts.makeDisk) await opts.makeDisk(fx, disk);
      else copyFileSync(base, disk);
      let bundle = '';
      if (opts.patched !== null) {
        bundle = join(fx.tmp, `${opts.name}.bundle`);
        await vmsubstJson(['diff', base, join(fx.art.disks, opts.patched ?? 'patched.img'), '-o', bundle]);
      }
      const boot = typeof opts.boot === 'function' ? opts.boot(fx) : opts.boot;
      const vm = await bootGuest(fx, { ...boot, disk }, opts.bootLimitMs);
      const ctx: GuestContext = Object.assign(fx, { disk, bundle, vm });
      const extra = ((opts.setup && (await opts.setup(ctx))) || {}) as X;
      return { disk, bundle, vm, ...extra };
    },
  });
}

/** The host's signing key made with `vmsubst keygen` (KEY.key, KEY.pub in the scratch directory) and trusted by the guest's agent from its next start. */
export async function trustHostKey(ctx: GuestContext, name = 'host'): Promise<{ key: string; pub: string }> {
  const stem = join(ctx.tmp, name);
  await vmsubstJson(['keygen', '--out', stem]);
  await ctx.vm.sh('mkdir -p /etc/vmsubst/trusted.d');
  await ctx.vm.putFile(`${stem}.pub`, `/etc/vmsubst/trusted.d/${name}.pub`);
  return { key: `${stem}.key`, pub: `${stem}.pub` };
}

/** The guest's agent command (over virtio-serial, no vsock). */
export const GUEST_AGENT = 'node /opt/vmsubst/build/agent/src/main.js --no-vsock';

/**
 * Starts an agent in the guest by hand (a guest booted with noAgent), with `env` words before the
 * command (a fault to inject) and its log in `log`; its pid goes to /tmp/agent.pid; resolves once ready.
 */
export async function startAgent(vm: GuestVm, opts: { env?: string; log: string; args?: string }): Promise<void> {
  await vm.sh(`${opts.env ?? ''} ${GUEST_AGENT} ${opts.args ?? ''} > ${opts.log} 2>&1 & echo $! > /tmp/agent.pid`);
  await waitFor(
    60_000,
    'agent ready',
    async () => ((await vm.run(`grep -q "info: ready" ${opts.log}`)).code === 0 ? true : undefined),
    200,
  );
}

/** Stops the agent startAgent started and waits until it has exited. */
export async function stopAgent(vm: GuestVm): Promise<void> {
  await vm.sh('kill $(cat /tmp/agent.pid); while kill -0 $(cat /tmp/agent.pid) 2>/dev/null; do sleep 0.1; done; true');
}

/** The versions a program printed into `file` in the guest, one a line, without their pid. */
export async function versions(vm: Pick<GuestVm, 'sh'>, file: string): Promise<string[]> {
  return (await vm.sh(`cat ${file}`))
    .split('\n')
    .filter(Boolean)
    .map((l) => l.replace(/ pid=.*/, ''));
}

/**
 * Starts `cmd` in the guest's background with its output in /tmp/NAME.out; resolves with its pid
 * once it has printed its first line.
 */
export async function startProgram(vm: Pick<GuestVm, 'sh'>, name: string, cmd: string): Promise<number> {
  await vm.sh(`${cmd} > /tmp/${name}.out 2>&1 & echo $! > /tmp/${name}.pid`);
  const pid = Number((await vm.sh(`cat /tmp/${name}.pid`)).trim());
  await waitFor(30_000, `${name} prints`, async () =>
    (await versions(vm, `/tmp/${name}.out`)).length > 0 ? true : undefined,
  );
  return pid;
}

/** `vmsubst notify` of the suite's bundle to the agent over virtio-serial, for the data disk: the agent's report. */
export function notifySerial<R>(ctx: Pick<GuestContext, 'bundle' | 'vm'>): Promise<R> {
  return vmsubstJson<R>([
    'notify',
    ctx.bundle,
    '--to',
    `serial:${ctx.vm.agentSocket}`,
    '--disk-serial',
    'vmsubst-data',
  ]);
}
