/** `vmsubst rollout`. */
import { Bundle } from '../../bundle/index.js';
import { UsageError } from '../../errors.js';
import { resolve } from 'node:path';
import {
  fleetFromJson,
  loadFleet,
  NOT_TOLD,
  type FleetMember,
  NO_AGENT_ACTIONS,
  rollout,
  type NoAgentAction,
  type RolloutResult,
  type VmOutcome,
} from '../../rollout/index.js';
import { agentOutcomeJson } from '../report.js';
import { formatBytes, plural, table } from '../format.js';
import { noOverlay, resolveLibvirt, Virsh } from '../../libvirt/index.js';
import { resolveLibvirtMembers } from '../../rollout/fleet.js';
import { Output, helpRequested, loadPrivateKey, parse, positionals, positiveInt, type Command } from '../common.js';
import type { RolloutOutput, RolloutVmJson } from '../output.js';

const HELP = `Usage: vmsubst rollout FLEET BUNDLE [--concurrency N] [--canary N]
                       [--stop-on-failure | --continue] [--state FILE]
                       [--on-no-agent fail|warn|reset] [--sign KEY] [--json]
       vmsubst rollout --qmp SOCK [--device ID | --node NAME] [--to ADDR]
                       [--disk-serial S | --disk-path P] BUNDLE [options]
       vmsubst rollout --libvirt-all [--connect URI] BUNDLE [options]

Rolls one bundle out to every VM of a fleet. For each VM: reach its agent,
prepare (agents with two-phase substitution), write the blocks through QEMU
(the disk's old blocks are verified first: a VM whose disk diverged from the
bundle's base is refused and nothing is written to it), then commit (or
substitute), or abort if the write failed.

FLEET is a JSON file listing the VMs (see docs/rollout.md):
  {"vms": [{"name": "web-1", "qmp": "/run/vms/web-1/qmp.sock",
            "device": "vblk0", "agent": "serial:/run/vms/web-1/agent.sock",
            "disk": {"serial": "vmsubst-data"}}, ...],
   "defaults": {"device": "vblk0"}}

  --qmp SOCK ...       one VM instead of a fleet file (a fleet of one, named
                       "vm"): its QMP socket, --device/--node for the disk,
                       --to for its agent (serial:, vsock:, hvsock:, unix:;
                       none: an unenlightened guest), --disk-serial/--disk-path
                       for how the agent finds the disk
  --libvirt-all        the running libvirt domains instead of a fleet file:
                       every one with exactly one disk that matches the
                       bundle's base (size and filesystem UUIDs) and can take
                       an overlay; the others are skipped and listed, with
                       the reason. Each goes through libvirt's own API
                       (docs/libvirt.md); its agent's address is read from
                       its live XML
  --connect URI        with --libvirt-all: the libvirt connection
  --concurrency N      VMs in flight at once (default 4)
  --canary N           the first N VMs go first; all must succeed before any
                       other VM is touched (default 0: no canary)
  --stop-on-failure    halt at the first refused or failed VM: no other VM
                       starts, those under way finish (the default)
  --continue           carry on with the other VMs after a failure (a failed
                       canary still halts the rollout)
  --state FILE         record each VM's outcome in FILE; run again with the
                       same FILE to resume: VMs done before are confirmed
                       (the agent answers from its journal, or the disk holds
                       the new blocks) and not redone
  --on-no-agent ACTION when a VM's agent does not answer:
                       fail   refuse the VM, write nothing
                       warn   write, and report that the guest was not told:
                              it serves cached copies of changed files until
                              they are evicted or it restarts (the default)
                       reset  write, then reset the VM (QMP system_reset): the
                              restart fallback
  --agent-timeout SEC  how long to wait for each agent answer (default 120)
  --sign KEY           sign each request (Ed25519, from vmsubst keygen); each VM
                       is named by its disk serial and SMBIOS UUID (the fleet
                       file's uuid, or QMP query-uuid)
  --json               print the result as JSON

Exit status: 0 when every VM succeeded, 1 otherwise (refused, failed, not
started), 2 for a usage error. Ctrl-C stops starting VMs; those under way
finish, and the state file records them.
`;

async function run(args: string[]): Promise<number> {
  const { values, positionals: pos } = parse('rollout', args, {
    concurrency: { type: 'string' },
    canary: { type: 'string' },
    'stop-on-failure': { type: 'boolean' },
    continue: { type: 'boolean' },
    state: { type: 'string' },
    'on-no-agent': { type: 'string' },
    'agent-timeout': { type: 'string' },
    sign: { type: 'string' },
    qmp: { type: 'string' },
    device: { type: 'string' },
    node: { type: 'string' },
    to: { type: 'string' },
    'disk-serial': { type: 'string' },
    'disk-path': { type: 'string' },
    'libvirt-all': { type: 'boolean' },
    connect: { type: 'string' },
  });
  if (helpRequested(HELP, values)) return 0;
  let fleet: FleetMember[];
  let bundlePath: string;
  let skipped: Skipped[] = [];
  if (values.connect !== undefined && !values['libvirt-all'])
    throw new UsageError('rollout: --connect goes with --libvirt-all', "see 'vmsubst rollout --help'");
  if (values['libvirt-all']) {
    if (values.qmp !== undefined) throw new UsageError('rollout: give --libvirt-all or --qmp, not both');
    [bundlePath] = positionals('rollout', pos, ['BUNDLE']) as [string];
    ({ fleet, skipped } = await libvirtFleet(bundlePath, values.connect));
  } else if (values.qmp !== undefined) {
    [bundlePath] = positionals('rollout', pos, ['BUNDLE']) as [string];
    const one: Record<string, unknown> = { name: 'vm', qmp: resolve(values.qmp) };
    if (values.device !== undefined) one['device'] = values.device;
    if (values.node !== undefined) one['node'] = values.node;
    if (values.to !== undefined) one['agent'] = values.to;
    if (values['disk-serial'] !== undefined || values['disk-path'] !== undefined) {
      one['disk'] = {
        ...(values['disk-serial'] !== undefined ? { serial: values['disk-serial'] } : {}),
        ...(values['disk-path'] !== undefined ? { path: values['disk-path'] } : {}),
      };
    }
    fleet = fleetFromJson({ vms: [one] }, process.cwd(), 'rollout');
  } else {
    for (const o of ['device', 'node', 'to', 'disk-serial', 'disk-path'] as const) {
      if (values[o] !== undefined)
        throw new UsageError(
          `rollout: --${o} goes with --qmp; a fleet file gives each VM its own`,
          "see 'vmsubst rollout --help'",
        );
    }
    const [fleetPath, b] = positionals('rollout', pos, ['FLEET', 'BUNDLE']) as [string, string];
    bundlePath = b;
    fleet = await loadFleet(fleetPath);
  }
  await resolveLibvirtMembers(fleet);
  if (values['stop-on-failure'] && values.continue)
    throw new UsageError('rollout: give --stop-on-failure or --continue, not both', "see 'vmsubst rollout --help'");
  const onNoAgent = (values['on-no-agent'] ?? 'warn') as NoAgentAction;
  if (!NO_AGENT_ACTIONS.includes(onNoAgent))
    throw new UsageError(
      `rollout: --on-no-agent ${values['on-no-agent']}: expected fail, warn or reset`,
      "see 'vmsubst rollout --help'",
    );
  const concurrency =
    values.concurrency === undefined ? 4 : positiveInt('rollout', '--concurrency', values.concurrency);
  const canary =
    values.canary === undefined ? 0 : values.canary === '0' ? 0 : positiveInt('rollout', '--canary', values.canary);
  let timeoutMs: number | undefined;
  if (values['agent-timeout'] !== undefined) {
    const sec = Number(values['agent-timeout']);
    if (!(sec > 0))
      throw new UsageError(
        `rollout: --agent-timeout ${values['agent-timeout']}: expected a positive number of seconds`,
        "see 'vmsubst rollout --help'",
      );
    timeoutMs = sec * 1000;
  }
  const signWith = values.sign === undefined ? undefined : await loadPrivateKey(values.sign);
  if (canary > fleet.length)
    throw new UsageError(
      `rollout: --canary ${canary}: the fleet has only ${plural(fleet.length, 'VM')}`,
      "see 'vmsubst rollout --help'",
    );

  const o = new Output(values.json === true);
  const bundle = await Bundle.open(bundlePath, { onProgress: (d, t) => o.progress.update('check', d, t) });
  const controller = new AbortController();
  const onSignal = (sig: NodeJS.Signals): void => {
    if (!controller.signal.aborted)
      process.stderr.write(`\nvmsubst: ${sig}: no further VM starts; those under way finish\n`);
    controller.abort();
  };
  process.on('SIGINT', onSignal);
  process.on('SIGTERM', onSignal);
  const phases = new Map<string, string>();
  let finished = 0;
  const show = (): void => {
    const running = [...phases].map(([n, p]) => `${n} ${p}`).join(', ');
    o.progress.update(
      'rollout',
      finished,
      fleet.length,
      `${finished}/${fleet.length} VMs${running ? `; ${running}` : ''}`,
    );
  };
  let result: RolloutResult;
  try {
    result = await rollout(bundle, fleet, {
      concurrency,
      canary,
      stopOnFailure: values.continue !== true,
      onNoAgent,
      ...(values.state !== undefined ? { statePath: values.state } : {}),
      ...(signWith ? { signWith } : {}),
      ...(timeoutMs !== undefined ? { vm: { agent: { timeoutMs } } } : {}),
      signal: controller.signal,
      onStart: (n) => {
        phases.set(n, 'start');
        show();
      },
      onPhase: (n, p) => {
        phases.set(n, p);
        show();
      },
      onDone: (v, done) => {
        phases.delete(v.name);
        finished = done;
        show();
      },
    });
  } finally {
    process.off('SIGINT', onSignal);
    process.off('SIGTERM', onSignal);
    await bundle.close();
  }
  o.result<typeof RolloutOutput>({ ...rolloutJson(result), ...(values['libvirt-all'] ? { skipped } : {}) }, () =>
    [rolloutHuman(result), ...skipped.map((k) => `skipped ${k.name}: ${k.reason}`)].join('\n'),
  );
  return result.vms.every((v) => v.status === 'applied' || v.status === 'done-before') ? 0 : 1;
}

/** A running domain --libvirt-all left out, and why. */
interface Skipped {
  name: string;
  reason: string;
}

/** Every running domain of the connection whose one disk matches the bundle's base; the others, skipped. */
async function libvirtFleet(
  bundlePath: string,
  connect: string | undefined,
): Promise<{ fleet: FleetMember[]; skipped: Skipped[] }> {
  const virsh = new Virsh(connect !== undefined ? { connect } : {});
  const bundle = await Bundle.open(bundlePath);
  const fleet: FleetMember[] = [];
  const skipped: Skipped[] = [];
  try {
    for (const domain of await virsh.runningDomains()) {
      try {
        const t = await resolveLibvirt(bundle.manifest, domain, { virsh });
        const cannot = noOverlay(t.disk);
        if (cannot !== undefined) {
          skipped.push({ name: domain, reason: `its disk ${t.disk.target} ${cannot}` });
          continue;
        }
        fleet.push({
          name: domain,
          libvirt: { domain, ...(connect !== undefined ? { connect } : {}) },
          device: t.disk.target,
          disk: t.disk.serial !== undefined ? { serial: t.disk.serial } : {},
        });
      } catch (e) {
        skipped.push({ name: domain, reason: (e as Error).message });
      }
    }
  } finally {
    await bundle.close();
  }
  if (fleet.length === 0)
    throw new UsageError(
      `rollout --libvirt-all: no running domain has a disk that matches the bundle's base` +
        (skipped.length ? ` (${skipped.map((k) => k.name).join(', ')} skipped)` : ' (none is running)'),
      'start the domains, or check --connect',
    );
  return { fleet, skipped };
}

export function vmJson(v: VmOutcome): RolloutVmJson {
  const a = v.apply;
  return {
    name: v.name,
    status: v.status,
    id: v.id,
    ...(a
      ? {
          apply: {
            status: a.status,
            node: a.target.kind === 'libvirt' ? a.target.disk : a.target.node,
            ...(a.target.kind === 'qemu' && a.target.device !== undefined ? { device: a.target.device } : {}),
            'ranges-written': a.rangesWritten,
            written: a.bytesWritten,
            'pause-ms': a.pauseMs,
            'elapsed-ms': a.elapsedMs,
          },
        }
      : {}),
    guest: agentOutcomeJson(v.agent, v.status, 'agent'),
    reset: v.reset,
    notes: v.notes,
    ...(v.error ? { error: v.error } : {}),
    'elapsed-ms': v.elapsedMs,
  };
}

function rolloutJson(r: RolloutResult): RolloutOutput {
  return {
    bundle: r.bundle,
    ok: r.vms.every((v) => v.status === 'applied' || v.status === 'done-before'),
    ...(r.halted !== undefined ? { halted: r.halted } : {}),
    canary: r.canary,
    concurrency: r.concurrency,
    counts: r.counts,
    vms: r.vms.map(vmJson),
    'elapsed-ms': r.elapsedMs,
  };
}

function guestColumn(v: VmOutcome): string {
  if (v.agent.told) {
    const files = v.agent.report ? `, ${plural(v.agent.report.files.length, 'file')}` : '';
    const resends = v.agent.resends ? `, ${plural(v.agent.resends, 'resend')}` : '';
    return `told${v.agent.replayed ? ' (journal)' : ''}${files}${resends}`;
  }
  if (v.status === 'applied' || v.status === 'done-before')
    return v.reset ? 'NOT TOLD; VM reset' : 'NOT TOLD (no agent)';
  return v.agent.unreachable !== undefined ? 'no agent' : '-';
}

function rolloutHuman(r: RolloutResult): string {
  const rows: string[][] = [['VM', 'STATUS', 'WRITTEN', 'PAUSE', 'GUEST', 'DETAIL']];
  for (const v of r.vms) {
    const a = v.apply;
    const written = a ? (a.status === 'already-applied' ? 'already' : formatBytes(a.bytesWritten)) : '-';
    const pause = a?.pauseMs != null ? `${a.pauseMs} ms` : '-';
    const detail = v.error ? v.error.message : v.status === 'not-started' ? (v.notes[0] ?? '') : '';
    rows.push([v.name, v.status, written, pause, guestColumn(v), detail]);
  }
  const lines = [table(rows), ''];
  for (const v of r.vms) {
    if (v.error?.hint) lines.push(`${v.name}: hint: ${v.error.hint}`);
    for (const n of v.notes) if (n !== NOT_TOLD && v.status !== 'not-started') lines.push(`${v.name}: ${n}`);
  }
  const c = r.counts;
  const parts = (Object.keys(c) as (keyof typeof c)[]).filter((k) => c[k] > 0).map((k) => `${c[k]} ${k}`);
  lines.push(`${plural(r.vms.length, 'VM')}: ${parts.join(', ')} in ${(r.elapsedMs / 1000).toFixed(1)} s`);
  if (r.halted !== undefined) lines.push(`halted: ${r.halted}`);
  if (r.vms.some((v) => (v.status === 'applied' || v.status === 'done-before') && !v.agent.told))
    lines.push(`NOT TOLD: ${NOT_TOLD}`);
  return lines.filter((l, i, all) => !(l === '' && all[i + 1] === undefined)).join('\n');
}

export const rolloutCommand: Command = { help: HELP, run };
