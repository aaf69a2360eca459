/** `vmsubst notify`. */
import type { DiskRef, Policies, Policy } from '@vmsubst/common/protocol/schema';
import { Bundle } from '../../bundle/index.js';
import { UsageError } from '../../errors.js';
import { makeSigner, notify, parseAgentTarget, truncationNote, type NotifyResult } from '../../notify/index.js';
import { plural } from '../format.js';
import { formatReport } from '../report.js';
import { Output, helpRequested, loadPrivateKey, parse, positiveInt, positionals, type Command } from '../common.js';
import { loadCustomization } from '../customization.js';
import type { NotifyOutput } from '../output.js';

const HELP = `Usage: vmsubst notify BUNDLE --to ADDR [--disk-serial S | --disk-path P] [--sign KEY] [--customize FILE] [--policy WHO=P]... [--force] [--dry-run] [--json]

Asks vmsubst-agent in the guest to verify that the bundle's new blocks are
visible, invalidate the caches that hold the old ones, and report.

  --to ADDR           serial:PATH     QEMU chardev socket of the virtserialport
                      vsock:CID:PORT  AF_VSOCK (needs the native addon)
                      hvsock:PATH:PORT  hybrid vsock: the VMM's vsock unix
                                      socket (Firecracker uds_path, Cloud
                                      Hypervisor --vsock socket=) and the
                                      guest's vsock port (CONNECT/OK)
                      unix:PATH       an agent on a unix socket
  --disk-serial S     the guest disk by its virtio serial
  --disk-path P       the guest disk by its device path (/dev/vdb)
                      (neither: the agent looks for the disk holding the blocks)
  --dry-run           ask for the plan (files, block classes, processes, the
                      policy for each and what it does, restart required);
                      run it before the write; changes nothing
  --sign KEY          sign each request with this Ed25519 private key (from
                      vmsubst keygen): a fresh envelope (nonce, an hour's
                      validity, the disk serial as the target VM) per request.
                      Unsigned, only the hypervisor's side is obeyed: the
                      virtio-serial port, vsock when vmsubst runs as root (it
                      binds a source port below 1024); customization is
                      accepted only signed (see docs/design.md, "Trust")
  --customize FILE    JSON customization to apply after the blocks:
                      {"hostname": "...", "files": [{"path", "content", "mode"?,
                      "uid"?, "gid"?}], "sysctl": {"vm.swappiness": 10}}
  --policy WHO=P       what happens to processes mapping changed files; WHO is
                      a class (data, elf-code-unchanged: no executable byte
                      changed, elf-code-changed) or a path in its filesystem;
                      P is remap, pin, report or restart (repeatable;
                      overrides the agent's config). The older names
                      elf-same-layout and elf-new-layout are still taken,
                      for elf-code-unchanged and elf-code-changed
  --force             let the agent proceed where it refuses by default (a
                      script being executed that no service owns, metadata
                      under a read-write mount, pages the guest has not
                      written back); the report says what was forced
  --timeout SEC       how long to wait for the agent's report (default 120)
  --attempts N        connections to try when the channel fails (default 3);
                      every try carries the same substitution id, and the
                      agent answers a repeat from its journal
  --resend SEC        on one connection, send an unanswered request again
                      after SEC, then 2*SEC, ... (default 2 on serial:, where
                      a request can be lost while the guest reopens the port;
                      off elsewhere; 0 turns it off)
  --json              print the agent's report (SubstituteReport) as JSON

Resends and retries are reported on stderr.
`;

async function run(args: string[]): Promise<void> {
  const { values, positionals: pos } = parse('notify', args, {
    to: { type: 'string' },
    'disk-serial': { type: 'string' },
    'disk-path': { type: 'string' },
    'dry-run': { type: 'boolean' },
    sign: { type: 'string' },
    customize: { type: 'string' },
    timeout: { type: 'string' },
    attempts: { type: 'string' },
    resend: { type: 'string' },
    policy: { type: 'string', multiple: true },
    force: { type: 'boolean' },
  });
  if (helpRequested(HELP, values)) return;
  const signWith = values.sign === undefined ? undefined : await loadPrivateKey(values.sign);
  const customization = values.customize === undefined ? undefined : await loadCustomization(values.customize);
  const [bundlePath] = positionals('notify', pos, ['BUNDLE']) as [string];
  if (values.to === undefined) throw new UsageError('notify: --to ADDR is required', "see 'vmsubst notify --help'");
  const target = parseAgentTarget(values.to);
  if (values['disk-serial'] !== undefined && values['disk-path'] !== undefined) {
    throw new UsageError('notify: give --disk-serial or --disk-path, not both');
  }
  const disk: DiskRef = {};
  if (values['disk-serial'] !== undefined) disk.serial = values['disk-serial'];
  if (values['disk-path'] !== undefined) disk.path = values['disk-path'];
  let timeoutMs: number | undefined;
  if (values.timeout !== undefined) {
    const sec = Number(values.timeout);
    if (!(sec > 0)) throw new UsageError(`notify: --timeout ${values.timeout}: expected a positive number of seconds`);
    timeoutMs = sec * 1000;
  }
  const attempts = values.attempts === undefined ? undefined : positiveInt('notify', '--attempts', values.attempts);
  let resendMs: number | undefined;
  if (values.resend !== undefined) {
    const sec = Number(values.resend);
    if (!(sec >= 0)) throw new UsageError(`notify: --resend ${values.resend}: expected a number of seconds (0: off)`);
    resendMs = sec * 1000;
  }
  const o = new Output(values.json === true);
  const bundle = await Bundle.open(bundlePath, { verifyData: false });
  let result: NotifyResult;
  try {
    result = await notify(bundle, target, disk, {
      dryRun: values['dry-run'] === true,
      ...(timeoutMs !== undefined ? { timeoutMs } : {}),
      ...(signWith ? { signer: makeSigner(signWith, disk) } : {}),
      ...(customization ? { customization } : {}),
      ...(values.policy ? { policies: parsePolicies(values.policy) } : {}),
      ...(values.force ? { force: true } : {}),
      ...(attempts !== undefined ? { attempts } : {}),
      ...(resendMs !== undefined ? { resendMs } : {}),
      onRetry: (n, e) =>
        process.stderr.write(
          `vmsubst: attempt ${n} failed (${e.message}); trying again with the same substitution id\n`,
        ),
    });
  } finally {
    await bundle.close();
  }
  if (result.resends > 0)
    process.stderr.write(
      `vmsubst: ${plural(result.resends, 'request')} resent before the agent answered (same substitution id)\n`,
    );
  // The JSON document is the agent's report itself (the protocol's SubstituteReport); what to do
  // about a cut answer goes to stderr, in both modes.
  const cut = truncationNote(
    result.report,
    result.target,
    signWith ? (disk.serial !== undefined ? { diskSerial: disk.serial } : {}) : undefined,
  );
  if (cut) process.stderr.write(`vmsubst: ${cut}\n`);
  o.result<typeof NotifyOutput>(result.report, () => notifyHuman(result));
}

function notifyHuman({ target, agent, report }: NotifyResult): string {
  return `agent ${agent.version} (protocol ${agent.protocol}) at ${target}\n${formatReport(report)}`;
}

const POLICY_NAMES = ['remap', 'pin', 'report', 'restart'] as const;
const CLASSES = ['data', 'elf-code-unchanged', 'elf-code-changed', 'elf-same-layout', 'elf-new-layout'] as const;

/** `--policy data=report --policy /usr/bin/x=restart` → the protocol's Policies. */
export function parsePolicies(specs: string[]): Policies {
  const out: Policies = {};
  for (const spec of specs) {
    const eq = spec.lastIndexOf('=');
    const who = spec.slice(0, eq);
    const policy = spec.slice(eq + 1) as Policy;
    if (eq <= 0 || !POLICY_NAMES.includes(policy))
      throw new UsageError(`--policy ${spec}: expected WHO=POLICY with POLICY one of ${POLICY_NAMES.join(', ')}`);
    if ((CLASSES as readonly string[]).includes(who)) out[who as (typeof CLASSES)[number]] = policy;
    else if (who.startsWith('/')) (out.files ??= {})[who] = policy;
    else
      throw new UsageError(
        `--policy ${spec}: '${who}' is neither a class (${CLASSES.join(', ')}) nor an absolute path`,
      );
  }
  return out;
}

export const notifyCommand: Command = { help: HELP, run };
