/**
 * Admission of a request by the trust gate (trust/gate.ts), as the handlers
 * need it: refusals are logged, replays refused, and commit and abort bound to
 * whoever prepared.
 */
import { randomBytes } from 'node:crypto';
import { CommandError, messageOf } from '../errors.js';
import type { ArgsOf } from '@vmsubst/common/protocol/schema';
import type { SignedCommand } from '@vmsubst/common/protocol/signature';
import type { Admission } from '../trust/gate.js';
import type { HandlerContext } from './handler.js';

type AdmittedArgs = ArgsOf<'substitute'> | ArgsOf<'prepare'> | ArgsOf<'commit'> | ArgsOf<'report'> | ArgsOf<'stale'>;

/** Admits a request or throws Unauthorized; refusals are logged. */
export function admit(ctx: HandlerContext, command: SignedCommand, args: AdmittedArgs): Admission {
  try {
    return ctx.gate.admit(command, args, ctx.peer);
  } catch (e) {
    ctx.log.warn('refused an unauthorized request', {
      command,
      peer: ctx.peer.description,
      id: 'id' in args ? args.id : undefined,
      reason: messageOf(e),
    });
    throw e;
  }
}

/** Reading a report (paths, processes) takes what a substitution takes: the hypervisor's side, or a signature. */
export function admitRead(
  ctx: HandlerContext,
  command: 'report' | 'stale',
  args: ArgsOf<'report'> | ArgsOf<'stale'>,
): void {
  const a = admit(ctx, command, args);
  if (a.replayOf) refuseReplay(ctx, a, command, 'id' in args ? args.id : command);
  a.commit();
}

/** A replayed envelope is refused unless it asks again for what the journal already holds. */
export function refuseReplay(ctx: HandlerContext, a: Admission, command: SignedCommand, id: string): never {
  const why = `replayed envelope: its nonce was used already (${a.replayOf!.command} of ${a.replayOf!.id}); sign the request again`;
  ctx.log.warn('refused an unauthorized request', { command, peer: ctx.peer.description, id, reason: why });
  throw new CommandError('Unauthorized', why);
}

/** commit and abort come from whoever prepared: prepare's token, or a valid signature. */
export function admitPhase(ctx: HandlerContext, command: 'commit' | 'abort', args: ArgsOf<'commit'>): Admission {
  const a = admit(ctx, command, args);
  if (a.signedBy !== undefined) return a;
  if (args.token !== undefined && ctx.grants.tokenMatches(args.id, args.token)) return a;
  const why =
    args.token === undefined
      ? `${command} must carry the token prepare returned (or be signed)`
      : `the token does not belong to the prepare of ${args.id}`;
  ctx.log.warn('refused an unauthorized request', { command, peer: ctx.peer.description, id: args.id, reason: why });
  throw new CommandError('Unauthorized', why);
}

/** A fresh token for a prepared id, recorded (hashed) before it is returned. */
export function newToken(ctx: HandlerContext, id: string): string {
  const token = randomBytes(16).toString('hex');
  ctx.grants.setToken(id, token);
  return token;
}
