/** `vmsubst apply`. */
import type { KeyObject } from 'node:crypto';
import type { Customization, DiskRef } from '@vmsubst/common/protocol/schema';
import {
  applyAndTell,
  applyToImage,
  applyToQemu,
  commitApplied,
  NO_AGENT_ACTIONS,
  NOT_TOLD,
  type ApplyPhase,
  type ApplyResult,
  type GuestOutcome,
  type NoAgentAction,
  type OverlayOutcome,
  type QemuApplyOptions,
  type QemuApplyResult,
} from '../../apply/index.js';
import type { LibvirtApplyOptions, LibvirtApplyResult } from '../../libvirt/index.js';
import type { Static } from '@sinclair/typebox';
import type { ApplyOutput, ApplyJson, LibvirtOverlayJson, OverlayJson } from '../output.js';
import { agentOutcomeJson } from '../report.js';
import { recoveryHuman, recoveryJson } from './recover.js';
import { Bundle, requireTrustedSignature } from '../../bundle/index.js';
import { UsageError, VmsubstError } from '../../errors.js';
import { makeSigner, notificationArgs, parseAgentTarget, type AgentTarget } from '../../notify/index.js';
import { systemReset, vmUuid } from '../../qmp/commands.js';
import { formatBytes, plural } from '../format.js';
import { Output, helpRequested, loadPrivateKey, loadPublicKeys, parse, positionals, type Command } from '../common.js';
import { loadCustomization } from '../customization.js';

const HELP = `Usage: vmsubst apply BUNDLE --qmp SOCK [--mode nbd|overlay] [--device ID | --node NAME]
                     [--overlay PATH] [--commit] [--state-dir DIR] [--notify ADDR ...]
                     [--on-no-agent fail|warn|reset] [--json]
       vmsubst apply BUNDLE --image PATH [--mode raw-file] [--allow-writer PID]
                     [--notify ADDR ...] [--on-no-agent fail|warn] [--json]
       vmsubst apply BUNDLE --libvirt DOMAIN [--connect URI]
                     [--disk TARGET | --disk-serial S] [--overlay-dir DIR]
                     [--commit] [--notify auto|ADDR] [--json]
       vmsubst apply BUNDLE --libvirt DOMAIN --mode nbd --allow-taint
                     [--connect URI] [--disk TARGET | --disk-serial S] [--json]

Verifies that every range of the disk holds the bundle's old content, then
puts the new blocks in place. Nothing is changed if any range holds other
content; if every range already holds the new content, nothing is written
either. Each mode reports how long the guest was paused (pause-ms) and how
long the disk held a mix of old and new ranges (window-ms). See
docs/apply-modes.md.

Modes (a running QEMU, --qmp SOCK: its QMP unix socket):
  --mode nbd       (default) write the blocks into the drive through a private
                   writable NBD export. Verifies while the guest runs, pauses
                   it only for the writes. The virtio-blk device needs
                   share-rw=on.
  --mode overlay   write the blocks into a new qcow2 overlay and put it on top
                   of the drive (blockdev-add + blockdev-snapshot); the pause
                   covers only that switch. The drive's own image is not
                   written. The overlay stays part of the disk until committed.
    --overlay PATH the overlay file to create (default: beside the drive's
                   image, IMAGE.vmsubst-ID.qcow2)
    --commit       then merge it into the drive's image (block-commit, the
                   guest running; with --notify after the agent's commit)
                   and remove it
  --device ID      qdev id of the disk's device (-device ...,id=ID)
  --node NAME      block node name (-blockdev ...,node-name=NAME)
                   (neither: the VM's only disk)
  --state-dir DIR  where the VM's state file goes (default $VMSUBST_STATE_DIR,
                   else /run/vmsubst). Before it makes anything in the VM,
                   apply records there what it is about to make, and that it
                   pauses the VM and (nbd) that it is writing; a killed
                   apply is cleaned up from it by 'vmsubst recover', or by
                   the next apply on the VM, which recovers first and says
                   so. A write that was cut short is completed with the
                   recorded bundle before the VM is resumed; the next
                   apply then finds every range new and tells the agent.

Mode for other hypervisors (--image PATH: a raw image file):
  --mode raw-file  (default) pwrite through the host page cache, then
                   fdatasync: for VMMs that read the raw image through the
                   page cache (Firecracker, Cloud Hypervisor) and keep no
                   cache of their own, or a VM that is not running. The VM is
                   not paused; the write window is reported. Refused while
                   QEMU holds the image (use --qmp), and while any other
                   process has it open for writing: QEMU is the only VMM
                   vmsubst recognises, so any writer could be a VMM with
                   the guest writing, or a cache of its own.
  --allow-writer PID
                   accept this process's write access to the image
                   (repeatable): the VMM of this VM, when its guest does not
                   write the changed blocks (a read-only filesystem), as for
                   Firecracker or Cloud Hypervisor with a read-write drive

A libvirt domain (--libvirt DOMAIN), through libvirt's own API (virsh;
docs/libvirt.md): the domain is not tainted and libvirt keeps knowing its disk.
  --connect URI    the libvirt connection (default: libvirt's default,
                   LIBVIRT_DEFAULT_URI or qemu:///system as root)
  --disk TARGET    the disk by its target (vda, vdb, ...)
  --disk-serial S  the disk by its <serial> (also how the agent finds it)
                   (neither: the one disk whose size and filesystem UUIDs are
                   the bundle's base; several or none: an error listing them)
  --overlay-dir DIR
                   where the overlay goes (default: beside the disk's image).
                   The overlay holds exactly the changed clusters, its backing
                   the disk's current top image; the domain is switched onto
                   it with a disk-only external snapshot (reuse-external, no
                   snapshot metadata), paused only for that switch, after the
                   changed ranges are verified again. A failure removes the
                   overlay and leaves the chain as it was.
  --commit         then merge it down (virsh blockcommit --active --shallow
                   --pivot, the guest running) and remove it; without it the
                   result says how long the disk's chain has grown
  --notify auto    (the default with --libvirt) the agent's address from the
                   live XML: the org.vmsubst.0 channel's socket, else the
                   <vsock> CID
  --mode nbd --allow-taint
                   write into the disk in place instead (a disk that cannot
                   take an overlay): only through QMP passthrough (virsh
                   qemu-monitor-command), which makes libvirt mark the domain
                   tainted 'custom-monitor'; refused without --allow-taint.
                   The disk must be <shareable/> (QEMU's share-rw=on)

Telling the guest (two-phase when its agent supports it):
  --notify ADDR       the agent's address, as for 'vmsubst notify --to':
                      serial:PATH, vsock:CID:PORT or unix:PATH. After the
                      disk is verified: prepare (the agent pins processes
                      while the old blocks are on disk), write, commit; abort
                      if the write fails. An agent without two-phase gets
                      'substitute' after the write.
  --disk-serial S     the guest disk by its virtio serial
  --disk-path P       the guest disk by its device path (/dev/vdb)
  --sign KEY          sign each request to the agent (Ed25519 key from vmsubst
                      keygen); the envelope names the VM by --disk-serial and
                      its SMBIOS UUID (QMP query-uuid)
  --customize FILE    customization to apply after the blocks (see notify)
  --force             let the agent proceed where it refuses by default (a
                      script being executed that no service owns, metadata
                      under a read-write mount, pages the guest has not
                      written back); the report says what was forced
  --timeout SEC       how long to wait for each agent reply (default 120)
  --on-no-agent ACTION
                      when no agent answers, or no --notify address is given:
                      fail   write nothing, exit with an error
                      warn   (default) write, and say that the guest was not
                             told: it keeps serving cached copies of the
                             changed files until they are evicted or it
                             restarts
                      reset  write, then reset the VM (QMP system_reset, with
                             --qmp only): it restarts from the new content

  --trusted-key PUB   refuse the bundle unless its manifest is signed by this
                      Ed25519 public key (repeatable; see 'vmsubst sign')
  --json              print the result as JSON
`;

/** The options of `vmsubst apply` (parseArgs), besides --json and --help. */
export const APPLY_OPTIONS = {
  qmp: { type: 'string' },
  device: { type: 'string' },
  node: { type: 'string' },
  image: { type: 'string' },
  mode: { type: 'string' },
  overlay: { type: 'string' },
  commit: { type: 'boolean' },
  notify: { type: 'string' },
  'disk-serial': { type: 'string' },
  'disk-path': { type: 'string' },
  sign: { type: 'string' },
  customize: { type: 'string' },
  force: { type: 'boolean' },
  timeout: { type: 'string' },
  'trusted-key': { type: 'string', multiple: true },
  'on-no-agent': { type: 'string' },
  'state-dir': { type: 'string' },
  'allow-writer': { type: 'string', multiple: true },
  libvirt: { type: 'string' },
  connect: { type: 'string' },
  disk: { type: 'string' },
  'overlay-dir': { type: 'string' },
  'allow-taint': { type: 'boolean' },
} as const;

type Mode = 'nbd' | 'overlay' | 'raw-file';
const MODES: readonly Mode[] = ['nbd', 'overlay', 'raw-file'];

/** Where the blocks go: a running QEMU (through QMP), or a raw image file. */
export type ApplyTarget =
  | {
      kind: 'qemu';
      qmp: string;
      options: Pick<QemuApplyOptions, 'mode' | 'device' | 'node' | 'overlayPath' | 'stateDir'>;
      /** --commit: merge the overlay (after the agent's commit when the guest is told). */
      commit: boolean;
    }
  | { kind: 'image'; path: string; allowWriters: number[] }
  | {
      kind: 'libvirt';
      domain: string;
      options: Pick<LibvirtApplyOptions, 'connect' | 'target' | 'serial' | 'overlayDir'> &
        Pick<QemuApplyOptions, 'stateDir'>;
      commit: boolean;
      /** --mode nbd --allow-taint: written in place through libvirt's QMP passthrough. */
      taint?: true;
    };

/** The guest's agent, when --notify gives its address; the files named here are read by run(). */
export interface ApplyNotify {
  /** 'auto': what the libvirt domain declares (its channel, else its vsock CID). */
  agent: AgentTarget | 'auto';
  disk: DiskRef;
  signKey?: string;
  customize?: string;
  force: boolean;
  timeoutMs?: number;
}

/** `vmsubst apply`'s command line, checked: every option and combination resolved. */
export interface ApplyRequest {
  bundlePath: string;
  target: ApplyTarget;
  notify?: ApplyNotify;
  onNoAgent: NoAgentAction;
  trustedKeys: string[];
  json: boolean;
}

type ApplyValues = ReturnType<typeof parse<typeof APPLY_OPTIONS>>['values'];

const usage = (msg: string): UsageError => new UsageError(`apply: ${msg}`, "see 'vmsubst apply --help'");

/**
 * Checks `vmsubst apply`'s options and returns what they ask for; a wrong
 * combination is a UsageError (E_VMSUBST_USAGE, exit status 2) with a hint.
 * Reads no file: keys and customization are loaded by run().
 */
export function applyRequest(values: ApplyValues, pos: string[]): ApplyRequest {
  const [bundlePath] = positionals('apply', pos, ['BUNDLE']) as [string];
  if ([values.qmp, values.image, values.libvirt].filter((v) => v !== undefined).length !== 1)
    throw usage('give exactly one of --qmp SOCK, --image PATH or --libvirt DOMAIN');
  const mode = (values.mode ??
    (values.qmp !== undefined ? 'nbd' : values.libvirt !== undefined ? 'overlay' : 'raw-file')) as Mode;
  if (!MODES.includes(mode)) throw usage(`--mode ${values.mode}: expected one of ${MODES.join(', ')}`);
  if (values.libvirt === undefined) {
    const stray = LIBVIRT_ONLY.find((k) => values[k] !== undefined);
    if (stray) throw usage(`--${stray} goes with --libvirt DOMAIN`);
  }
  const target =
    values.libvirt !== undefined
      ? libvirtTarget(values, values.libvirt, mode)
      : values.qmp !== undefined
        ? qemuTarget(values, values.qmp, mode)
        : imageTarget(values, values.image!, mode);
  const notify = notifyRequest(values, target.kind === 'libvirt');
  const onNoAgent = (values['on-no-agent'] ?? 'warn') as NoAgentAction;
  if (!NO_AGENT_ACTIONS.includes(onNoAgent))
    throw usage(`--on-no-agent ${values['on-no-agent']}: expected fail, warn or reset`);
  if (onNoAgent === 'reset' && target.kind === 'image') {
    throw usage(
      '--on-no-agent=reset restarts the VM with QMP system_reset: give --qmp SOCK ' +
        '(for another hypervisor, restart the VM through its own API)',
    );
  }
  return {
    bundlePath,
    target,
    ...(notify ? { notify } : {}),
    onNoAgent,
    trustedKeys: values['trusted-key'] ?? [],
    json: values.json === true,
  };
}

function qemuTarget(values: ApplyValues, qmp: string, mode: Mode): ApplyTarget {
  if (mode === 'raw-file') {
    throw usage(
      '--mode raw-file writes an image file (--image PATH); a running QEMU must be written through QMP (--mode nbd ' +
        'or overlay)',
    );
  }
  if (values.device !== undefined && values.node !== undefined) throw usage('give --device or --node, not both');
  if (values['allow-writer'] !== undefined)
    throw usage('--allow-writer goes with --image (QEMU is written through QMP)');
  if (mode !== 'overlay' && (values.overlay !== undefined || values.commit))
    throw usage('--overlay and --commit go with --mode overlay');
  const options = {
    mode,
    ...(values.device !== undefined ? { device: values.device } : {}),
    ...(values.node !== undefined ? { node: values.node } : {}),
    ...(values.overlay !== undefined ? { overlayPath: values.overlay } : {}),
    ...(values['state-dir'] !== undefined ? { stateDir: values['state-dir'] } : {}),
  };
  return { kind: 'qemu', qmp, options, commit: values.commit === true };
}

function imageTarget(values: ApplyValues, path: string, mode: Mode): ApplyTarget {
  if (mode !== 'raw-file') throw usage(`--mode ${mode} writes through QEMU: give --qmp SOCK, not --image`);
  if (values.device !== undefined || values.node !== undefined)
    throw usage('--device and --node go with --qmp, not --image');
  if (values['state-dir'] !== undefined)
    throw usage('--state-dir goes with --qmp (the raw-file mode makes nothing in a VM)');
  const allowWriters = (values['allow-writer'] ?? []).map((p) => {
    if (!/^[1-9]\d*$/.test(p)) throw usage(`--allow-writer ${p}: expected a process id`);
    return Number(p);
  });
  if (values.overlay !== undefined || values.commit) throw usage('--overlay and --commit go with --mode overlay');
  return { kind: 'image', path, allowWriters };
}

const LIBVIRT_ONLY = ['connect', 'disk', 'overlay-dir', 'allow-taint'] as const;

function libvirtTarget(values: ApplyValues, domain: string, mode: Mode): ApplyTarget {
  if (mode === 'raw-file') throw usage('--mode raw-file writes an image file (--image PATH), not a libvirt domain');
  if (mode === 'nbd' && !values['allow-taint'])
    throw usage(
      '--mode nbd writes into the disk through QMP, which libvirt allows only as passthrough (virsh ' +
        "qemu-monitor-command) and answers by marking the domain tainted 'custom-monitor' (management tools then " +
        'treat it as unsupported); the overlay mode (the default with --libvirt) needs no taint: use it for a disk ' +
        'that is an image file, or accept the taint with --allow-taint',
    );
  if (mode === 'nbd' && (values.commit || values['overlay-dir'] !== undefined))
    throw usage('--commit and --overlay-dir go with the overlay mode; --mode nbd writes into the disk in place');
  if (mode === 'overlay' && values['allow-taint'])
    throw usage('--allow-taint goes with --mode nbd; the overlay mode taints nothing');
  if (values.device !== undefined || values.node !== undefined)
    throw usage('--device and --node are QMP names; with --libvirt give --disk TARGET or --disk-serial S');
  if (values.overlay !== undefined) throw usage('with --libvirt give --overlay-dir DIR (the file is named for you)');
  if (values['allow-writer'] !== undefined) throw usage('--allow-writer does not go with --libvirt');
  if (values['state-dir'] !== undefined && mode !== 'nbd')
    throw usage('--state-dir goes with --mode nbd (the overlay mode through libvirt keeps no state file)');
  if (values.disk !== undefined && values['disk-serial'] !== undefined)
    throw usage('give --disk TARGET or --disk-serial S, not both');
  const options = {
    ...(values.connect !== undefined ? { connect: values.connect } : {}),
    ...(values.disk !== undefined ? { target: values.disk } : {}),
    ...(values['disk-serial'] !== undefined ? { serial: values['disk-serial'] } : {}),
    ...(values['overlay-dir'] !== undefined ? { overlayDir: values['overlay-dir'] } : {}),
    ...(values['state-dir'] !== undefined ? { stateDir: values['state-dir'] } : {}),
  };
  return {
    kind: 'libvirt',
    domain,
    options,
    commit: values.commit === true,
    ...(mode === 'nbd' ? { taint: true as const } : {}),
  };
}

const AGENT_ONLY = ['disk-serial', 'disk-path', 'sign', 'customize', 'timeout', 'force'] as const;

function notifyRequest(values: ApplyValues, libvirt = false): ApplyNotify | undefined {
  // With --libvirt the agent's address comes from the domain (auto) and --disk-serial also picks the disk.
  const stray = AGENT_ONLY.find((k) => values[k] !== undefined && !(libvirt && k === 'disk-serial'));
  if (values.notify === undefined && !libvirt) {
    if (stray) throw usage(`--${stray} goes with --notify ADDR`);
    return undefined;
  }
  if (values.notify === 'auto' && !libvirt)
    throw usage('--notify auto reads the address from a libvirt domain: give --libvirt DOMAIN, or an address');
  if (values['disk-serial'] !== undefined && values['disk-path'] !== undefined)
    throw usage('give --disk-serial or --disk-path, not both');
  const sec = values.timeout === undefined ? undefined : Number(values.timeout);
  if (sec !== undefined && !(sec > 0))
    throw usage(`--timeout ${values.timeout}: expected a positive number of seconds`);
  return {
    agent: values.notify === undefined || values.notify === 'auto' ? 'auto' : parseAgentTarget(values.notify),
    disk: {
      ...(values['disk-serial'] !== undefined ? { serial: values['disk-serial'] } : {}),
      ...(values['disk-path'] !== undefined ? { path: values['disk-path'] } : {}),
    },
    ...(values.sign !== undefined ? { signKey: values.sign } : {}),
    ...(values.customize !== undefined ? { customize: values.customize } : {}),
    force: values.force === true,
    ...(sec !== undefined ? { timeoutMs: sec * 1000 } : {}),
  };
}

async function run(args: string[]): Promise<void> {
  const { values, positionals: pos } = parse('apply', args, APPLY_OPTIONS);
  if (helpRequested(HELP, values)) return;
  const req = applyRequest(values, pos);
  const signWith = req.notify?.signKey === undefined ? undefined : await loadPrivateKey(req.notify.signKey);
  const customization = req.notify?.customize === undefined ? undefined : await loadCustomization(req.notify.customize);
  const o = new Output(req.json);
  const bundle = await openTrusted(req, o);
  const outcome = await cancellable((signal) =>
    applyBundle(bundle, req, { signal, o, signWith, customization }),
  ).finally(() => bundle.close());
  if (outcome.status !== 'applied' || !outcome.apply) throw failure(outcome);
  const result = outcome.apply;
  const json: ApplyOutput = {
    ...applyJson(result),
    agent: agentJson(outcome),
    reset: outcome.reset,
    notes: outcome.notes,
    ...(outcome.phasesMs ? { 'phases-ms': outcome.phasesMs } : {}),
  };
  o.result<typeof ApplyOutput>(json, () => [applyHuman(result), agentHuman(outcome)].join('\n'));
}

/** The bundle, opened and checked (every range's data), refused unless signed by a --trusted-key. */
async function openTrusted(req: ApplyRequest, o: Output): Promise<Bundle> {
  const trusted = await loadPublicKeys(req.trustedKeys);
  const bundle = await Bundle.open(req.bundlePath, { onProgress: (d, t) => o.progress.update('check', d, t) });
  try {
    requireTrustedSignature(bundle.manifest, trusted, req.bundlePath);
  } catch (e) {
    await bundle.close();
    throw e;
  }
  return bundle;
}

/** Runs `work` with a signal that SIGINT and SIGTERM abort (before anything is written). */
async function cancellable<T>(work: (signal: AbortSignal) => Promise<T>): Promise<T> {
  const controller = new AbortController();
  const onSignal = (sig: NodeJS.Signals): void => {
    if (!controller.signal.aborted)
      process.stderr.write(`\nvmsubst: ${sig}: cancelling; a running write completes and the VM is resumed\n`);
    controller.abort();
  };
  process.on('SIGINT', onSignal);
  process.on('SIGTERM', onSignal);
  try {
    return await work(controller.signal);
  } finally {
    process.off('SIGINT', onSignal);
    process.off('SIGTERM', onSignal);
  }
}

interface ApplyInputs {
  signal: AbortSignal;
  o: Output;
  signWith: KeyObject | undefined;
  customization: Customization | undefined;
}

/**
 * Writes the blocks and tells the guest (applyAndTell); with --commit and --notify, commits after the agent's commit.
 */
async function applyBundle(bundle: Bundle, req: ApplyRequest, inputs: ApplyInputs): Promise<GuestOutcome<AnyResult>> {
  const { target, notify } = req;
  const { signal, o } = inputs;
  const labels: Record<ApplyPhase, string> = { verify: 'verify', write: 'write' };
  const onProgress = (phase: ApplyPhase, d: number, t: number): void => o.progress.update(labels[phase], d, t);
  // With --notify the guest is told first and the overlay committed after (below).
  const commitNow = !notify;
  // libvirt's modules (virsh, the XML parser) load only for a libvirt target.
  const lv = target.kind === 'libvirt' ? await import('../../libvirt/index.js') : undefined;
  const doApply = (beforeWrite?: () => Promise<void>): Promise<AnyResult> => {
    const common = { onProgress, signal, ...(beforeWrite ? { beforeWrite } : {}) };
    if (target.kind === 'libvirt' && target.taint)
      return lv!.applyToLibvirtNbd(bundle, target.domain, { ...common, ...target.options });
    if (target.kind === 'libvirt')
      return lv!.applyToLibvirt(bundle, target.domain, {
        ...common,
        ...target.options,
        ...(target.commit && commitNow ? { commit: true } : {}),
      });
    return target.kind === 'qemu'
      ? applyToQemu(bundle, target.qmp, {
          ...common,
          ...target.options,
          ...(target.commit && commitNow ? { commit: true } : {}),
        })
      : applyToImage(bundle, target.path, { ...common, allowWriters: target.allowWriters });
  };
  const qmpPath = target.kind === 'qemu' ? target.qmp : undefined;
  // The domain and its disk, resolved once for the agent's address and the disk's serial (apply resolves it again).
  const domain =
    target.kind === 'libvirt' ? await lv!.resolveLibvirt(bundle.manifest, target.domain, target.options) : undefined;
  const agent = notify?.agent === 'auto' ? (domain ? lv!.agentAddress(domain.info) : undefined) : notify?.agent;
  const disk = { ...(domain?.disk.serial !== undefined ? { serial: domain.disk.serial } : {}), ...notify?.disk };
  const uuid = domain?.info.uuid;
  const vm =
    uuid ?? (qmpPath !== undefined && inputs.signWith ? await vmUuid(qmpPath).catch(() => undefined) : undefined);
  const signer = inputs.signWith ? makeSigner(inputs.signWith, disk, vm) : undefined;
  const timeoutMs = notify?.timeoutMs;
  const outcome = await applyAndTell(doApply, {
    args: notificationArgs(bundle.manifest, disk, {
      ...(inputs.customization ? { customization: inputs.customization } : {}),
      ...(notify?.force ? { force: true } : {}),
    }),
    ...(agent
      ? { agent }
      : { noAgentReason: domain ? lv!.noAgentReason(domain.info) : 'no agent address was given (--notify)' }),
    onNoAgent: req.onNoAgent,
    ...(qmpPath !== undefined ? { reset: () => systemReset(qmpPath) } : {}),
    ...(domain ? { reset: () => domain.virsh.reset(domain.domain).then(() => undefined) } : {}),
    ...(timeoutMs !== undefined || signer
      ? { connect: { ...(timeoutMs !== undefined ? { timeoutMs } : {}), ...(signer ? { signer } : {}) } }
      : {}),
    signal,
  });
  const applied = outcome.apply;
  if (applied && isQemu(applied) && target.kind === 'qemu' && target.commit && notify && outcome.agent.told) {
    await commitApplied(undefined, applied);
  }
  if (applied && isLibvirt(applied) && target.kind === 'libvirt' && target.commit && !commitNow)
    await lv!.commitLibvirt(domain!.virsh, applied);
  return outcome;
}

/** The error of an apply that did not apply, after its notes ("nothing was written" unless the error says it). */
function failure(outcome: GuestOutcome<AnyResult>): unknown {
  const cause = outcome.cause ?? new Error(outcome.error?.message ?? 'apply failed');
  const saysItself = /nothing was written/i.test(
    `${(cause as Error).message} ${cause instanceof VmsubstError ? (cause.hint ?? '') : ''}`,
  );
  for (const n of outcome.notes)
    if (n !== 'nothing was written' || !saysItself) process.stderr.write(`vmsubst: ${n}\n`);
  return cause;
}

/** What any kind of target's apply returns. */
type AnyResult = ApplyResult | LibvirtApplyResult;
const isQemu = (r: AnyResult): r is QemuApplyResult => r.target.kind === 'qemu';
const isLibvirt = (r: AnyResult): r is LibvirtApplyResult => r.target.kind === 'libvirt';

/** The substitution's part of the document. */
function applyJson(r: AnyResult): ApplyJson {
  const head = { status: r.status, id: r.id };
  const counts = {
    ranges: r.ranges,
    'ranges-written': r.rangesWritten,
    'ranges-already-new': r.rangesAlreadyNew,
    written: r.bytesWritten,
    'verified-bytes': r.verifiedBytes,
    'pause-ms': r.pauseMs,
    'window-ms': r.windowMs,
    'timings-ms': r.timingsMs,
    'elapsed-ms': r.elapsedMs,
    warnings: r.warnings,
  };
  if (!isQemu(r) && !isLibvirt(r)) return { ...head, mode: r.mode, target: r.target, ...counts, openers: r.openers };
  // A running VM's part: QEMU's or libvirt's.
  const vm = { ...head, ...counts, 'vm-status': r.vmStatus, resumed: r.resumed };
  if (isLibvirt(r)) {
    return {
      ...vm,
      mode: r.mode,
      target: r.target,
      'chain-length': r.chainLength,
      ...(r.overlay ? { overlay: libvirtOverlayJson(r.overlay) } : {}),
    };
  }
  return {
    ...vm,
    mode: r.mode,
    target: r.target,
    recheck: r.recheck,
    ...(r.recovered ? { recovered: recoveryJson(r.recovered) } : {}),
    ...(r.overlay ? { overlay: overlayJson(r.overlay) } : {}),
  };
}

function overlayJson({
  path,
  node,
  clusterSize,
  backing,
  committed,
  commitMs,
}: OverlayOutcome): Static<typeof OverlayJson> {
  return {
    path,
    node,
    'cluster-size': clusterSize,
    backing,
    committed,
    ...(commitMs !== undefined ? { 'commit-ms': commitMs } : {}),
  };
}

function libvirtOverlayJson(o: LibvirtApplyResult['overlay'] & object): Static<typeof LibvirtOverlayJson> {
  return {
    path: o.path,
    'cluster-size': o.clusterSize,
    backing: o.backing,
    committed: o.committed,
    ...(o.commitMs !== undefined ? { 'commit-ms': o.commitMs } : {}),
  };
}

function where(r: AnyResult): string {
  if (r.target.kind === 'image') return r.target.path;
  if (r.target.kind === 'libvirt') return `domain ${r.target.domain} disk ${r.target.disk}`;
  return `${r.target.device ?? r.target.node} (node ${r.target.node})`;
}

/** The libvirt lines: the pause, and what became of the overlay (committed, or how long the chain is). */
function libvirtHuman(r: LibvirtApplyResult, phases: string): string[] {
  const lines: string[] = [];
  if (r.status === 'applied')
    lines.push(
      r.pauseMs !== null
        ? `guest paused for ${r.pauseMs} ms (verified again, switched with a disk-only snapshot; ${phases}), resumed`
        : `domain was ${r.vmStatus}; left as it was (${phases})`,
    );
  if (r.overlay?.committed)
    lines.push(`overlay committed down (virsh blockcommit --active --pivot) in ${r.overlay.commitMs} ms and removed`);
  else if (r.overlay)
    lines.push(
      `the disk's chain is now ${plural(r.chainLength, 'image')} long (top ${r.overlay.path}); --commit, or ` +
        `'virsh blockcommit ${r.target.domain} ${r.target.disk} --active --shallow --pivot', merges it down`,
    );
  return lines;
}

function applyHuman(r: AnyResult): string {
  const lines: string[] = [];
  if ('recovered' in r && r.recovered) lines.push(`recovered first: ${recoveryHuman(r.recovered).trimStart()}`);
  switch (r.status) {
    case 'no-changes':
      lines.push(`${where(r)}: the bundle changes nothing; nothing written`);
      break;
    case 'already-applied':
      lines.push(
        `${where(r)}: already applied (all ${plural(r.ranges, 'range')} hold the new content); nothing written`,
      );
      break;
    case 'applied': {
      const partial = r.rangesAlreadyNew > 0 ? ` (${r.rangesAlreadyNew} already held the new content)` : '';
      const into = 'overlay' in r && r.overlay ? ` into overlay ${r.overlay.path}` : '';
      lines.push(
        `${where(r)}: ${r.mode}: wrote ${plural(r.rangesWritten, 'range')}, ` +
          `${formatBytes(r.bytesWritten)}${into}${partial}`,
      );
    }
  }
  const phases = `verify ${r.timingsMs.verify} ms, write ${r.timingsMs.write} ms`;
  if (isLibvirt(r)) {
    lines.push(...libvirtHuman(r, phases));
  } else if (isQemu(r)) {
    if (r.status === 'applied') {
      const recheck =
        r.recheck === 'reverified'
          ? '; the guest wrote during the verification, so it was verified again while paused'
          : '';
      lines.push(
        r.pauseMs !== null
          ? `guest paused for ${r.pauseMs} ms (${phases}), resumed${recheck}`
          : `VM was ${r.vmStatus}; left as it was (${phases})`,
      );
    }
    if (r.overlay) {
      lines.push(
        r.overlay.committed
          ? `overlay committed into node ${r.target.node} in ${r.overlay.commitMs} ms and removed`
          : `overlay node ${r.overlay.node} is now the drive's top layer (backing ${r.overlay.backing.name}); ` +
              `commit it with block-commit when convenient (docs/apply-modes.md)`,
      );
    }
  } else if (r.status === 'applied') {
    lines.push(`not paused (raw-file); write window ${r.windowMs} ms (${phases})`);
  }
  for (const w of r.warnings) lines.push(`warning: ${w}`);
  return lines.join('\n');
}

/** The agent part of the result; `two-phase` and `prepare` on top of what a rollout prints per guest. */
function agentJson(t: GuestOutcome<AnyResult>): ApplyOutput['agent'] {
  const a = t.agent;
  return {
    ...agentOutcomeJson(a, t.status, 'target'),
    ...(a.mode !== undefined ? { 'two-phase': a.mode === 'two-phase' } : {}),
    ...(a.prepare ? { prepare: a.prepare } : {}),
  };
}

function agentHuman(t: GuestOutcome<AnyResult>): string {
  const lines: string[] = [];
  const r = t.agent.report;
  if (r) {
    const how = t.agent.mode === 'two-phase' ? 'prepare → write → commit' : 'substitute after the write';
    lines.push(
      `agent ${t.agent.version} at ${t.agent.target} (${how}): verified ${formatBytes(r['verified-bytes'])} on ` +
        `${r.device}; ${plural(r.truncated?.counts['files'] ?? r.files.length, 'file')} ` +
        'affected' +
        (r.truncated?.counts['files'] !== undefined ? ` (the first ${r.files.length} listed)` : '') +
        (r.replayed ? ' (answered from its journal)' : ''),
    );
    const pinned = t.agent.prepare?.pinned ?? r.pinned ?? [];
    if (pinned.length > 0) lines.push(`  pinned: ${pinned.map((p) => `${p.comm}[${p.pid}] ${p.status}`).join(', ')}`);
    for (const f of r.files) {
      const mappers =
        f.mappers.length > 0 ? `; mapped by ${f.mappers.map((m) => `${m.comm}[${m.pid}]`).join(', ')}` : '';
      lines.push(`  ${f.path}: ${f['pages-dropped']} pages dropped, ${f['pages-kept']} kept${mappers}`);
    }
  } else if (t.apply?.status !== 'no-changes') {
    lines.push(`NOT TOLD (${t.agent.unreachable ?? 'no agent'}): ${NOT_TOLD}`);
  }
  for (const n of t.notes) if (n !== NOT_TOLD) lines.push(n);
  return lines.join('\n');
}

export const applyCommand: Command = { help: HELP, run };
