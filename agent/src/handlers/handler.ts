/**
 * What a protocol command's handler is, and what it is given. Handlers are
 * typed from the schema (protocol/schema.ts `Commands`): a handler of `C`
 * takes `ArgsOf<C>`, already validated, and returns `ReturnOf<C>`.
 */
import type { Config } from '../config.js';
import type { Logger } from '../log.js';
import type { ArgsOf, CommandName, GreetingBody, ReturnOf } from '@vmsubst/common/protocol/schema';
import type { Journal } from '../journal/journal.js';
import type { ReportStore } from '../journal/reports.js';
import type { Gate } from '../trust/gate.js';
import type { Grants } from '../trust/grants.js';
import type { Peer } from '../transport/transport.js';
import type { SubstituteDeps } from '../substitution/substitute.js';

/** The agent's state a handler works with; one per agent, built when it starts. */
export interface AgentServices {
  readonly greeting: GreetingBody;
  readonly config: Config;
  readonly log: Logger;
  readonly procRoot: string;
  readonly journal: Journal;
  readonly reports: ReportStore;
  readonly grants: Grants;
  readonly gate: Gate;
  /** The system as the substitution pipeline sees it (substitution/substitute.ts). */
  substituteDeps(): SubstituteDeps;
}

/** One request: the agent's services and who sent it. */
export interface HandlerContext extends AgentServices {
  readonly peer: Peer;
}

export interface Handler<C extends CommandName> {
  /** Runs one at a time across every channel (the steps of a substitution); the others queue. */
  readonly exclusive: boolean;
  run(args: ArgsOf<C>, ctx: HandlerContext): Promise<ReturnOf<C>>;
}
