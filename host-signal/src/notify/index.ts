/**
 * Telling the guest agent that blocks were substituted: connect, `hello`,
 * then `substitute` with the bundle's ranges and new hashes. The agent
 * verifies the blocks are visible, invalidates its caches and reports.
 */
import type { Duplex } from 'node:stream';
import { performance } from 'node:perf_hooks';
import type { DiskRef, GreetingBody, SubstituteReport } from '../../../agent/src/protocol/schema.js';
import { substituteArgs } from '../bundle/index.js';
import type { KeyObject } from 'node:crypto';
import type { Customization } from '../../../agent/src/protocol/schema.js';
import { signArgs } from '../../../agent/src/protocol/signature.js';
import type { Manifest } from '../bundle/schema.js';
import { AgentError, ProtocolError } from '../errors.js';
import { LineDecoder, validateReply } from '../../../agent/src/protocol/codec.js';
import { AgentClient } from './client.js';
import { formatAgentTarget, openAgentStream, parseAgentTarget, type AgentTarget } from './transport.js';

export { AgentClient } from './client.js';
export { formatAgentTarget, openAgentStream, parseAgentTarget, type AgentTarget, type TransportOptions } from './transport.js';

export interface NotifyOptions {
  dryRun?: boolean;
  /** Customization for the guest to apply after the blocks (hostname, files, sysctl). */
  customization?: Customization;
  /** Sign the notification with this Ed25519 private key (agents with trusted keys require it). */
  signWith?: KeyObject;
  /** Connect timeout; default 10 s. */
  connectTimeoutMs?: number;
  /** For the hello exchange; default 10 s. */
  helloTimeoutMs?: number;
  /** For the substitute command (verification reads the blocks); default 120 s. */
  timeoutMs?: number;
  /** Opens the stream; default openAgentStream. */
  connect?: (target: AgentTarget) => Promise<Duplex>;
}

export interface NotifyResult {
  target: string;
  agent: GreetingBody;
  report: SubstituteReport;
  elapsedMs: number;
}

export async function notify(
  source: Manifest | { readonly manifest: Manifest },
  target: string | AgentTarget,
  disk: DiskRef,
  options: NotifyOptions = {},
): Promise<NotifyResult> {
  const started = performance.now();
  const manifest = 'manifest' in source ? source.manifest : source;
  const unsigned = substituteArgs(manifest, disk, {
    ...(options.dryRun ? { dryRun: true } : {}),
    ...(options.customization ? { customization: options.customization } : {}),
  });
  const args = options.signWith ? signArgs(unsigned, options.signWith) : unsigned;
  const where = typeof target === 'string' ? parseAgentTarget(target) : target;
  const connect = options.connect ?? ((t: AgentTarget) => openAgentStream(t, options.connectTimeoutMs !== undefined ? { timeoutMs: options.connectTimeoutMs } : {}));
  const stream = await connect(where);
  const client = new AgentClient(stream, options.timeoutMs ?? 120_000);
  const refusal = watchRefusal(stream);
  try {
    let agent: GreetingBody;
    let report: SubstituteReport;
    try {
      agent = await client.hello(options.helloTimeoutMs ?? 10_000);
      report = await client.execute('substitute', args);
    } catch (e) {
      // An agent that refuses a connection says why in an error line without
      // an id, then closes; report that rather than "connection closed".
      const why = refusal();
      if (why && !(e instanceof AgentError)) throw new AgentError(why.class, why.desc);
      throw e;
    }
    if (report.id !== args.id) {
      throw new ProtocolError(`the agent reported on substitution ${report.id}, not ${args.id}`);
    }
    return { target: formatAgentTarget(where), agent, report, elapsedMs: Math.round(performance.now() - started) };
  } finally {
    client.close();
  }
}

/** Remembers the last error reply without an id seen on `stream`. */
function watchRefusal(stream: Duplex): () => { class: string; desc: string } | undefined {
  const decoder = new LineDecoder();
  let last: { class: string; desc: string } | undefined;
  stream.on('data', (chunk: Buffer) => {
    for (const frame of decoder.push(chunk)) {
      if (frame.kind !== 'message') continue;
      const msg = frame.value;
      if (validateReply.is(msg) && 'error' in msg && msg.id === undefined) last = { class: msg.error.class, desc: msg.error.desc };
    }
  });
  return () => last;
}
