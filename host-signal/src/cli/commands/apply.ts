/** `vmsubst apply`. */
import { applyToImage, applyToQemu, type ApplyPhase, type ApplyResult } from '../../apply/index.js';
import { Bundle, requireTrustedSignature } from '../../bundle/index.js';
import { UsageError } from '../../errors.js';
import { formatBytes, plural } from '../format.js';
import { Output, helpRequested, loadPublicKeys, parse, positionals, type Command } from '../common.js';

const HELP = `Usage: vmsubst apply BUNDLE --qmp SOCK [--device ID | --node NAME] [--json]
       vmsubst apply BUNDLE --image PATH [--json]

Verifies that every range of the disk holds the bundle's old content, then
writes the new blocks. Nothing is written if any range holds other content;
if every range already holds the new content, nothing is written either.

  --qmp SOCK     QMP unix socket of the running QEMU. The drive is exported
                 over NBD on a private socket; the guest is paused while the
                 ranges are verified and written, then resumed. The
                 virtio-blk device needs share-rw=on.
  --device ID    qdev id of the disk's device (-device ...,id=ID)
  --node NAME    block node name (-blockdev ...,node-name=NAME)
                 (neither: the VM's only disk)
  --image PATH   a raw image file instead (another hypervisor, or a VM that
                 is not running); refused while another process locks it
  --trusted-key PUB
                 refuse the bundle unless its manifest is signed by this
                 Ed25519 public key (repeatable; see 'vmsubst sign')
  --json         print the result as JSON
`;

async function run(args: string[]): Promise<void> {
  const { values, positionals: pos } = parse('apply', args, {
    qmp: { type: 'string' },
    device: { type: 'string' },
    node: { type: 'string' },
    image: { type: 'string' },
    'trusted-key': { type: 'string', multiple: true },
  });
  if (helpRequested(HELP, values)) return;
  const trusted = await loadPublicKeys(values['trusted-key'] ?? []);
  const [bundlePath] = positionals('apply', pos, ['BUNDLE']) as [string];
  if ((values.qmp === undefined) === (values.image === undefined)) {
    throw new UsageError('apply: give exactly one of --qmp SOCK or --image PATH', "see 'vmsubst apply --help'");
  }
  if (values.image !== undefined && (values.device !== undefined || values.node !== undefined)) {
    throw new UsageError('apply: --device and --node go with --qmp, not --image');
  }
  if (values.device !== undefined && values.node !== undefined) throw new UsageError('apply: give --device or --node, not both');

  const o = new Output(values.json === true);
  const bundle = await Bundle.open(bundlePath, { onProgress: (d, t) => o.progress.update('check', d, t) });
  try {
    requireTrustedSignature(bundle.manifest, trusted, bundlePath);
  } catch (e) {
    await bundle.close();
    throw e;
  }
  const controller = new AbortController();
  const onSignal = (sig: NodeJS.Signals): void => {
    if (!controller.signal.aborted) process.stderr.write(`\nvmsubst: ${sig}: cancelling; a running write completes and the VM is resumed\n`);
    controller.abort();
  };
  process.on('SIGINT', onSignal);
  process.on('SIGTERM', onSignal);
  const labels: Record<ApplyPhase, string> = { verify: 'verify', write: 'write' };
  const onProgress = (phase: ApplyPhase, d: number, t: number): void => o.progress.update(labels[phase], d, t);
  let result: ApplyResult;
  try {
    result =
      values.qmp !== undefined
        ? await applyToQemu(bundle, values.qmp, { device: values.device, node: values.node, onProgress, signal: controller.signal })
        : await applyToImage(bundle, values.image!, { onProgress, signal: controller.signal });
  } finally {
    process.off('SIGINT', onSignal);
    process.off('SIGTERM', onSignal);
    await bundle.close();
  }
  o.result(applyJson(result), () => applyHuman(result));
}

function applyJson(r: ApplyResult): Record<string, unknown> {
  const common = {
    status: r.status,
    id: r.id,
    target: r.target,
    ranges: r.ranges,
    'ranges-written': r.rangesWritten,
    'ranges-already-new': r.rangesAlreadyNew,
    written: r.bytesWritten,
    'verified-bytes': r.verifiedBytes,
    'timings-ms': r.timingsMs,
    'elapsed-ms': r.elapsedMs,
  };
  if (r.target.kind === 'image') return common;
  const q = r as Extract<ApplyResult, { vmStatus: string }>;
  return { ...common, 'vm-status': q.vmStatus, 'pause-ms': q.pauseMs, resumed: q.resumed, warnings: q.warnings };
}

function applyHuman(r: ApplyResult): string {
  const where = r.target.kind === 'image' ? r.target.path : `${r.target.device ?? r.target.node} (node ${r.target.node})`;
  const lines: string[] = [];
  switch (r.status) {
    case 'no-changes':
      lines.push(`${where}: the bundle changes nothing; nothing written`);
      break;
    case 'already-applied':
      lines.push(`${where}: already applied (all ${plural(r.ranges, 'range')} hold the new content); nothing written`);
      break;
    case 'applied': {
      const partial = r.rangesAlreadyNew > 0 ? ` (${r.rangesAlreadyNew} already held the new content)` : '';
      lines.push(`${where}: wrote ${plural(r.rangesWritten, 'range')}, ${formatBytes(r.bytesWritten)}${partial}`);
    }
  }
  if ('pauseMs' in r) {
    const phases = `verify ${r.timingsMs.verify} ms, write ${r.timingsMs.write} ms`;
    lines.push(r.pauseMs !== null ? `guest paused for ${r.pauseMs} ms (${phases}), resumed` : `VM was ${r.vmStatus}; left as it was (${phases})`);
    for (const w of r.warnings) lines.push(`warning: ${w}`);
  }
  return lines.join('\n');
}

export const applyCommand: Command = { name: 'apply', synopsis: 'apply BUNDLE --qmp SOCK', summary: "write a bundle's blocks into a running QEMU's disk\n(--image PATH: into a raw image file)", help: HELP, run };
