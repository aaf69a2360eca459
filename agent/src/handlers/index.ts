/**
 * The protocol commands and their handlers: one file per command, one table
 * typed by the schema, so a command of protocol/schema.ts without a handler
 * (or a handler taking other arguments than its command's) does not compile.
 * The greeting's capabilities are the table's command names and the features
 * the schema lists (protocol/schema.ts `Features`).
 */
import { Features, type CommandName } from '@vmsubst/common/protocol/schema';
import { abort } from './abort.js';
import { commit } from './commit.js';
import type { Handler } from './handler.js';
import { hello } from './hello.js';
import { ping } from './ping.js';
import { prepare } from './prepare.js';
import { report } from './report.js';
import { stale } from './stale.js';
import { substitute } from './substitute.js';

export type { AgentServices, Handler, HandlerContext } from './handler.js';

export const handlers: { readonly [C in CommandName]: Handler<C> } = {
  hello,
  ping,
  substitute,
  prepare,
  commit,
  abort,
  report,
  stale,
};

/** What the greeting announces: every command by its name, then the features. */
export const CAPABILITIES: readonly string[] = [...Object.keys(handlers), ...Object.keys(Features)];
