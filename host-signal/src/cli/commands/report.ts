/** `vmsubst report`: the whole report of a substitution whose answer the agent cut to fit one message. */
import { writeFile } from 'node:fs/promises';
import type { PrepareReport, SubstituteReport } from '@vmsubst/common/protocol/schema';
import { AgentError, ProtocolError, UsageError } from '../../errors.js';
import { AgentConnection, makeSigner, parseAgentTarget } from '../../notify/index.js';
import { formatBytes, plural } from '../format.js';
import { formatPlan, formatReport } from '../report.js';
import { Output, helpRequested, loadPrivateKey, parse, positionals, type Command } from '../common.js';
import type { ReportOutput, ReportSavedOutput } from '../output.js';

const HELP = `Usage: vmsubst report ID --to ADDR [--sign KEY --disk-serial S] [-o FILE] [--json]

Fetches the full report of substitution ID from the guest's agent, page by
page, and prints it. An answer too large for one message (thousands of files
or processes) comes back cut, with "truncated" giving the true lengths, and
notify and apply then print the command to run; the agent keeps the full
report (its newest 64) in its state directory.

  ID                  the substitution id (notify and apply print it; it is
                      the "id" of every answer)
  --to ADDR           the agent's address, as for 'vmsubst notify --to':
                      serial:PATH, vsock:CID:PORT, hvsock:PATH:PORT, unix:PATH
  --sign KEY          sign each page request with this Ed25519 private key.
                      A report names guest paths and processes, so it is read
                      under the same rule as a substitution: unsigned, only
                      the hypervisor's side (the virtio-serial port, vsock
                      when vmsubst runs as root) is answered
  --disk-serial S     with --sign: the VM the envelope is for, by its disk's
                      virtio serial
  -o, --output FILE   write the report's JSON to FILE, byte for byte as the
                      agent kept it; print only the summary
  --timeout SEC       how long to wait for each page (default 120)
  --json              print the full report as JSON (the agent's
                      SubstituteReport, or PrepareReport for a prepare);
                      with -o, print {id, bytes, pages, output}
`;

const ID = /^[0-9a-f]{16,64}$/;

async function run(args: string[]): Promise<void> {
  const { values, positionals: pos } = parse('report', args, {
    to: { type: 'string' },
    sign: { type: 'string' },
    'disk-serial': { type: 'string' },
    output: { type: 'string', short: 'o' },
    timeout: { type: 'string' },
  });
  if (helpRequested(HELP, values)) return;
  const [id] = positionals('report', pos, ['ID']) as [string];
  const usage = (msg: string): UsageError => new UsageError(`report: ${msg}`, "see 'vmsubst report --help'");
  if (!ID.test(id))
    throw usage(
      `${id.slice(0, 80)}: not a substitution id (16 to 64 lowercase hex digits, the "id" of the agent's answer)`,
    );
  if (values.to === undefined) throw usage('--to ADDR is required');
  if (values['disk-serial'] !== undefined && values.sign === undefined)
    throw usage('--disk-serial names the VM of a signed request: it goes with --sign KEY');
  if (values.sign !== undefined && values['disk-serial'] === undefined)
    throw usage(
      '--sign needs --disk-serial S: a signed request names the VM it is for (the virtio serial of its disk)',
    );
  let timeoutMs: number | undefined;
  if (values.timeout !== undefined) {
    const sec = Number(values.timeout);
    if (!(sec > 0)) throw usage(`--timeout ${values.timeout}: expected a positive number of seconds`);
    timeoutMs = sec * 1000;
  }
  const target = parseAgentTarget(values.to);
  const signer =
    values.sign === undefined
      ? undefined
      : makeSigner(await loadPrivateKey(values.sign), { serial: values['disk-serial']! });
  const o = new Output(values.json === true);

  const conn = await AgentConnection.open(target, {
    ...(timeoutMs !== undefined ? { timeoutMs } : {}),
    ...(signer ? { signer } : {}),
  });
  let fetched: { json: Buffer; pages: number };
  try {
    fetched = await conn.fullReportBytes(id);
  } catch (e) {
    throw explain(e, id, conn.target, signer !== undefined);
  } finally {
    conn.close();
  }
  let report: SubstituteReport | Omit<PrepareReport, 'token'>;
  try {
    report = JSON.parse(fetched.json.toString('utf8')) as typeof report;
  } catch (e) {
    throw new ProtocolError(
      `the report of ${id} the agent sent is not JSON (${(e as Error).message})`,
      "read it again; if it stays broken, the file in the agent's state directory (reports/ID.json) is damaged",
    );
  }
  const summary =
    `report of ${id} from the agent at ${conn.target} (${formatBytes(fetched.json.length)} in ` +
    `${plural(fetched.pages, 'page')})`;
  if (values.output !== undefined) {
    const path = values.output;
    await writeFile(path, fetched.json, { mode: 0o600 }).catch((e: Error) => {
      throw new UsageError(`report: -o ${path}: ${e.message}`, 'give a file in a directory you can write');
    });
    const saved = { id, bytes: fetched.json.length, pages: fetched.pages, output: path };
    o.result<typeof ReportSavedOutput>(saved, () => `${summary}, written to ${path}\n${formatAny(report)}`);
    return;
  }
  // The JSON document is the agent's report itself, as notify --json prints a whole answer.
  if (o.json) process.stdout.write(fetched.json.toString('utf8') + '\n');
  else o.result<typeof ReportOutput>(report, () => `${summary}\n${formatAny(report)}`);
}

/** A kept report is a substitute or commit answer (its dry run included), or a prepare answer. */
function formatAny(report: SubstituteReport | Omit<PrepareReport, 'token'>): string {
  if ('verified-bytes' in report) return formatReport(report);
  const lines = [`prepared on ${report.device}:`, formatPlan(report.plan)];
  for (const p of report.pinned)
    lines.push(
      `  pinned ${p.comm}[${p.pid}] on the old ${p.path}: ${formatBytes(p['bytes-copied'])} copied ` +
        `(${p.status}${p.detail ? `: ${p.detail}` : ''})`,
    );
  return lines.join('\n');
}

/** The agent's refusals, with what to do about them. */
function explain(e: unknown, id: string, target: string, signed: boolean): unknown {
  if (!(e instanceof AgentError)) return e;
  const desc = e.message.replace(/^agent: [A-Za-z]+: /, '');
  if (e.errorClass === 'Unauthorized') {
    return new AgentError(
      e.errorClass,
      desc,
      e.data,
      signed
        ? "the agent does not accept this signature: is the public key in the guest's /etc/vmsubst/trusted.d/, " +
            'and --disk-serial the serial of a disk of this VM?'
        : `a report names guest paths and processes: ask over the hypervisor's side (serial:PATH, or vsock as ` +
            `root), or sign the request: vmsubst report ${id} --to ${target} --sign KEY --disk-serial SERIAL`,
    );
  }
  if (e.errorClass === 'InvalidArguments' && /no full report is kept/.test(desc)) {
    return new AgentError(
      e.errorClass,
      desc,
      e.data,
      'an answer that was not truncated is whole already (notify --json prints it); the agent keeps only the ' +
        'newest 64 full reports',
    );
  }
  return e;
}

export const reportCommand: Command = { help: HELP, run };
