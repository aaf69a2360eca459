#!/usr/bin/env node
/**
 * vmsubst, the host command line: argument parsing, output and exit status.
 * The work is done by the library modules (diff/, bundle/, apply/, notify/).
 *
 * Exit status: 0 success, 1 failure, 2 usage error. With --json, exactly one
 * JSON document goes to stdout (the result, or {"error": …}); human output
 * and the progress bar (TTY only) go to stderr/stdout as usual.
 */
import { resolve } from 'node:path';
import { parseArgs, type ParseArgsConfig } from 'node:util';
import type { DiskRef } from '../../agent/src/protocol/schema.js';
import { applyToImage, applyToQemu, type ApplyPhase, type ApplyResult } from './apply/index.js';
import { Bundle, writeBundle, type Manifest } from './bundle/index.js';
import { FileSource, diffImages } from './diff/index.js';
import { UsageError, VmsubstError } from './errors.js';
import { notify, parseAgentTarget, type NotifyResult } from './notify/index.js';
import { formatBytes, formatPercent, plural, table } from './cli/format.js';
import { ProgressBar } from './cli/progress.js';
import { TOOL_VERSION } from './version.js';
import { createPrivateKey, generateKeyPairSync, type KeyObject } from 'node:crypto';
import { readFile, writeFile } from 'node:fs/promises';
import { keyId } from '../../agent/src/protocol/signature.js';
import { Customization } from '../../agent/src/protocol/schema.js';
import { Validator } from '../../agent/src/protocol/codec.js';

const HELP = `Usage: vmsubst <command> [options]

Live block substitution for running virtual machines: patch a golden image
once, then copy only the changed blocks into every VM cloned from it.

Commands:
  diff BASE PATCHED -o BUNDLE     compute the changed blocks into a bundle
  apply BUNDLE --qmp SOCK         write a bundle's blocks into a running QEMU's disk
  apply BUNDLE --image PATH       ... or into a raw image file no VM is using
  notify BUNDLE --to ADDR         tell the guest agent to verify and drop stale caches
  inspect BUNDLE                  verify a bundle and show what it changes
  keygen --out PREFIX             make an Ed25519 key pair for signing notifications

Options (every command):
  --json       print one JSON document on stdout
  -h, --help   show help (vmsubst <command> --help for a command)
  --version    print the version

Exit status: 0 success, 1 failure, 2 usage error.
`;

const COMMAND_HELP: Record<string, string> = {
  diff: `Usage: vmsubst diff BASE PATCHED -o BUNDLE [--label TEXT] [--json]

Compares two raw images of the same size in 4 KiB blocks and writes the
changed blocks, with the sha256 of their old and new content, to BUNDLE.

  -o, --output BUNDLE   bundle file to write (replaced atomically)
  --label TEXT          a name for the base image, kept in the manifest
  --json                print a summary as JSON
`,
  apply: `Usage: vmsubst apply BUNDLE --qmp SOCK [--device ID | --node NAME] [--json]
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
  --json         print the result as JSON
`,
  keygen: `Usage: vmsubst keygen --out PREFIX [--json]

Writes an Ed25519 key pair: PREFIX.key (private, PKCS#8 PEM, mode 0600) for
'vmsubst notify --sign', and PREFIX.pub (public, SPKI PEM) to install in the
guests ('vmsubst-agent --trusted-key'). Refuses to overwrite existing files.
`,
  notify: `Usage: vmsubst notify BUNDLE --to ADDR [--disk-serial S | --disk-path P] [--sign KEY] [--customize FILE] [--dry-run] [--json]

Asks vmsubst-agent in the guest to verify that the bundle's new blocks are
visible, invalidate the caches that hold the old ones, and report.

  --to ADDR           serial:PATH     QEMU chardev socket of the virtserialport
                      vsock:CID:PORT  AF_VSOCK (needs the native addon)
                      unix:PATH       an agent on a unix socket
  --disk-serial S     the guest disk by its virtio serial
  --disk-path P       the guest disk by its device path (/dev/vdb)
                      (neither: the agent looks for the disk holding the blocks)
  --dry-run           verify and map blocks to files, invalidate nothing
  --sign KEY          sign with this Ed25519 private key (from vmsubst keygen)
  --customize FILE    JSON customization to apply after the blocks:
                      {"hostname": "...", "files": [{"path", "content", "mode"?,
                      "uid"?, "gid"?}], "sysctl": {"vm.swappiness": 10}}
  --timeout SEC       how long to wait for the agent's report (default 120)
  --json              print the agent's report (SubstituteReport) as JSON
`,
  inspect: `Usage: vmsubst inspect BUNDLE [--json]

Checks a bundle (header, manifest, every range's data against its sha256)
and shows its manifest.

  --json   print the manifest as JSON
`,
};

const COMMON = {
  json: { type: 'boolean' },
  help: { type: 'boolean', short: 'h' },
} as const satisfies ParseArgsConfig['options'];

class Output {
  readonly progress: ProgressBar;
  constructor(readonly json: boolean) {
    this.progress = new ProgressBar(process.stderr, !json && process.stderr.isTTY === true);
  }
  result(value: unknown, human: () => string): void {
    this.progress.clear();
    if (this.json) process.stdout.write(JSON.stringify(value, null, 2) + '\n');
    else process.stdout.write(human() + '\n');
  }
}

function parse<O extends ParseArgsConfig['options']>(command: string, args: string[], options: O) {
  try {
    return parseArgs({ args, options: { ...COMMON, ...options }, allowPositionals: true, strict: true });
  } catch (e) {
    throw new UsageError(`${command}: ${(e as Error).message.replace(/\. To specify a positional argument.*$/s, '')}`, `see 'vmsubst ${command} --help'`);
  }
}

function positionals(command: string, got: string[], names: string[]): string[] {
  if (got.length !== names.length) {
    const which = got.length < names.length ? `missing ${names.slice(got.length).join(' ')}` : `unexpected argument '${got[names.length]!}'`;
    throw new UsageError(`${command}: ${which}`, `see 'vmsubst ${command} --help'`);
  }
  return got;
}

function helpRequested(command: string, values: { help?: boolean | undefined }): boolean {
  if (!values.help) return false;
  process.stdout.write(COMMAND_HELP[command]!);
  return true;
}

async function cmdDiff(args: string[]): Promise<void> {
  const { values, positionals: pos } = parse('diff', args, {
    output: { type: 'string', short: 'o' },
    label: { type: 'string' },
  });
  if (helpRequested('diff', values)) return;
  const [basePath, patchedPath] = positionals('diff', pos, ['BASE', 'PATCHED']) as [string, string];
  if (values.output === undefined) throw new UsageError('diff: -o BUNDLE is required', "see 'vmsubst diff --help'");
  const out = values.output;
  if ([basePath, patchedPath].some((p) => resolve(p) === resolve(out))) {
    throw new UsageError('diff: the bundle must not overwrite an input image');
  }
  const o = new Output(values.json === true);
  const started = performance.now();
  const diff = await diffImages(basePath, patchedPath, { onProgress: (d, t) => o.progress.update('compare', d, t) });
  const patched = await FileSource.open(patchedPath);
  let manifest: Manifest;
  try {
    const base: { size: number; label?: string } = { size: diff.size };
    if (values.label !== undefined) base.label = values.label;
    manifest = await writeBundle(out, { base, blockSize: diff.blockSize, ranges: diff.ranges }, patched, {
      onProgress: (d, t) => o.progress.update('write', d, t),
    });
  } finally {
    await patched.close();
  }
  const elapsed = Math.round(performance.now() - started);
  o.result(
    { bundle: out, id: manifest.id, 'base-size': diff.size, ranges: diff.ranges.length, 'changed-bytes': diff.changedBytes, 'elapsed-ms': elapsed },
    () =>
      diff.ranges.length === 0
        ? `${out}: the images are identical; the bundle changes nothing (id ${manifest.id.slice(0, 16)})`
        : `${out}: ${plural(diff.ranges.length, 'range')}, ${formatBytes(diff.changedBytes)} changed of ${formatBytes(diff.size)} (${formatPercent(diff.changedBytes, diff.size)}), id ${manifest.id.slice(0, 16)} (${elapsed} ms)`,
  );
}

async function cmdApply(args: string[]): Promise<void> {
  const { values, positionals: pos } = parse('apply', args, {
    qmp: { type: 'string' },
    device: { type: 'string' },
    node: { type: 'string' },
    image: { type: 'string' },
  });
  if (helpRequested('apply', values)) return;
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

async function cmdNotify(args: string[]): Promise<void> {
  const { values, positionals: pos } = parse('notify', args, {
    to: { type: 'string' },
    'disk-serial': { type: 'string' },
    'disk-path': { type: 'string' },
    'dry-run': { type: 'boolean' },
    sign: { type: 'string' },
    customize: { type: 'string' },
    timeout: { type: 'string' },
  });
  if (helpRequested('notify', values)) return;
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
  const o = new Output(values.json === true);
  const bundle = await Bundle.open(bundlePath, { verifyData: false });
  let result: NotifyResult;
  try {
    result = await notify(bundle, target, disk, {
      dryRun: values['dry-run'] === true,
      ...(timeoutMs !== undefined ? { timeoutMs } : {}),
      ...(signWith ? { signWith } : {}),
      ...(customization ? { customization } : {}),
    });
  } finally {
    await bundle.close();
  }
  // The JSON document is the agent's report itself (the protocol's SubstituteReport).
  o.result(result.report, () => notifyHuman(result));
}

function notifyHuman({ target, agent, report }: NotifyResult): string {
  const t = report['timings-ms'];
  const lines = [
    `agent ${agent.version} (protocol ${agent.protocol}) at ${target}`,
    `${report['dry-run'] ? 'dry run: ' : ''}verified ${formatBytes(report['verified-bytes'])} on ${report.device}; ${plural(report.files.length, 'file')} affected`,
  ];
  for (const f of report.files) {
    const mappers = f.mappers.length > 0 ? `; mapped by ${f.mappers.map((m) => `${m.comm}[${m.pid}]`).join(', ')}` : '';
    lines.push(`  ${f.path}: ${f['pages-dropped']} pages dropped, ${f['pages-kept']} kept${mappers}`);
  }
  if (report.unmapped.length > 0) lines.push(`${plural(report.unmapped.length, 'range')} outside any file's data (metadata or free space)`);
  lines.push(`took ${t.total} ms (verify ${t.verify}, map ${t.map}, invalidate ${t.invalidate})`);
  return lines.join('\n');
}

async function cmdInspect(args: string[]): Promise<void> {
  const { values, positionals: pos } = parse('inspect', args, {});
  if (helpRequested('inspect', values)) return;
  const [bundlePath] = positionals('inspect', pos, ['BUNDLE']) as [string];
  const o = new Output(values.json === true);
  const bundle = await Bundle.open(bundlePath, { onProgress: (d, t) => o.progress.update('check', d, t) });
  try {
    const m = bundle.manifest;
    o.result({ path: bundlePath, 'file-size': bundle.fileSize, 'data-verified': bundle.verified, manifest: m }, () => {
      const changed = bundle.dataBytes;
      const head = table([
        ['bundle', `${bundlePath} (${formatBytes(bundle.fileSize)}), data verified`],
        ['id', m.id],
        ['format', `${m.format}, block size ${m['block-size']}, made by vmsubst ${m['tool-version']} at ${m.created}`],
        ['base', `${formatBytes(m.base.size)} (${m.base.size} bytes)${m.base.label !== undefined ? `, ${m.base.label}` : ''}`],
        ['changes', `${plural(m.ranges.length, 'range')}, ${formatBytes(changed)} (${formatPercent(changed, m.base.size)} of the base)`],
      ]);
      if (m.ranges.length === 0) return head;
      const limit = 20;
      const rows = [['offset', 'length', 'old sha256', 'new sha256']];
      for (const r of m.ranges.slice(0, limit)) {
        rows.push([String(r.offset), String(r.length), r['old-sha256'].slice(0, 16), r['new-sha256'].slice(0, 16)]);
      }
      const more = m.ranges.length > limit ? `\n... ${m.ranges.length - limit} more (--json lists all)` : '';
      return `${head}\n\n${table(rows)}${more}`;
    });
  } finally {
    await bundle.close();
  }
}

async function loadPrivateKey(path: string): Promise<KeyObject> {
  let key: KeyObject;
  try {
    key = createPrivateKey(await readFile(path));
  } catch (e) {
    throw new UsageError(`--sign ${path}: not a readable private key (${(e as Error).message})`, "make one with 'vmsubst keygen --out PREFIX'");
  }
  if (key.asymmetricKeyType !== 'ed25519') throw new UsageError(`--sign ${path}: an ${key.asymmetricKeyType} key; Ed25519 is required`);
  return key;
}

const validateCustomization = new Validator(Customization);

async function loadCustomization(path: string): Promise<Customization> {
  let value: unknown;
  try {
    value = JSON.parse(await readFile(path, 'utf8'));
  } catch (e) {
    throw new UsageError(`--customize ${path}: ${(e as Error).message}`);
  }
  const problems = validateCustomization.problems(value);
  if (problems.length > 0) throw new UsageError(`--customize ${path}: ${problems.join('; ')}`, "see 'vmsubst notify --help'");
  return value as Customization;
}

async function cmdKeygen(args: string[]): Promise<void> {
  const { values, positionals: pos } = parse('keygen', args, { out: { type: 'string' } });
  if (helpRequested('keygen', values)) return;
  positionals('keygen', pos, []);
  if (values.out === undefined) throw new UsageError('keygen: --out PREFIX is required');
  const { privateKey, publicKey } = generateKeyPairSync('ed25519');
  const priv = `${values.out}.key`;
  const pub = `${values.out}.pub`;
  await writeFile(priv, privateKey.export({ format: 'pem', type: 'pkcs8' }), { mode: 0o600, flag: 'wx' });
  await writeFile(pub, publicKey.export({ format: 'pem', type: 'spki' }), { mode: 0o644, flag: 'wx' });
  const id = keyId(publicKey);
  new Output(values.json === true).result({ 'private-key': priv, 'public-key': pub, 'key-id': id }, () => `wrote ${priv} (keep it secret) and ${pub} (install in guests); key id ${id}`);
}

const COMMANDS: Record<string, (args: string[]) => Promise<void>> = {
  keygen: cmdKeygen,
  diff: cmdDiff,
  apply: cmdApply,
  notify: cmdNotify,
  inspect: cmdInspect,
};

export async function main(argv: string[]): Promise<number> {
  const json = argv.includes('--json');
  try {
    const [command, ...rest] = argv;
    if (command === undefined || command === '-h' || command === '--help' || command === 'help') {
      const topic = command === 'help' ? rest[0] : undefined;
      process.stdout.write(topic !== undefined && COMMAND_HELP[topic] ? COMMAND_HELP[topic] : HELP);
      return command === undefined ? 2 : 0;
    }
    if (command === '--version' || command === 'version') {
      process.stdout.write(json ? JSON.stringify({ version: TOOL_VERSION }) + '\n' : `vmsubst ${TOOL_VERSION}\n`);
      return 0;
    }
    const run = COMMANDS[command];
    if (!run) throw new UsageError(`unknown command '${command}'`);
    await run(rest);
    return 0;
  } catch (e) {
    return reportError(e, json);
  }
}

function reportError(e: unknown, json: boolean): number {
  process.stderr.write('\r\x1b[K'.repeat(process.stderr.isTTY ? 1 : 0));
  const err = e instanceof VmsubstError ? e : undefined;
  const message = err ? err.message : `internal error: ${e instanceof Error ? e.message : String(e)}`;
  process.stderr.write(`vmsubst: ${message}\n`);
  if (err?.hint) process.stderr.write(`hint: ${err.hint}\n`);
  if (!err && process.env['VMSUBST_DEBUG'] && e instanceof Error) process.stderr.write(`${e.stack ?? ''}\n`);
  if (json) {
    process.stdout.write(JSON.stringify({ error: { code: err?.code ?? 'E_VMSUBST_INTERNAL', message, ...(err?.hint ? { hint: err.hint } : {}) } }, null, 2) + '\n');
  }
  return err instanceof UsageError ? 2 : 1;
}

main(process.argv.slice(2)).then(
  (code) => {
    process.exitCode = code;
  },
  (e: unknown) => {
    process.stderr.write(`vmsubst: ${String(e)}\n`);
    process.exitCode = 1;
  },
);
