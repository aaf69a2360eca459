/** `prepare`, phase one: plan and pin. A repeated prepare of the same id is answered from the journal. */
import { prepareSubstitution } from '../substitution/substitute.js';
import { admit, newToken, refuseReplay } from './admission.js';
import type { Handler } from './handler.js';
import { bounded, preparedReport } from './journaled.js';

export const prepare: Handler<'prepare'> = {
  exclusive: true,
  async run(args, ctx) {
    const { journal, log } = ctx;
    const a = admit(ctx, 'prepare', args);
    const entry = journal.get(args.id);
    if (
      a.replayOf &&
      !(a.replayOf.id === args.id && a.replayOf.command === 'prepare' && entry?.last.phase === 'prepared')
    ) {
      refuseReplay(ctx, a, 'prepare', args.id);
    }
    a.commit();
    if (entry?.last.phase === 'prepared') {
      // A retry (the host lost the answer, or resent before it came): the same answer, with a token of its own.
      log.info('prepare answered from the journal', { id: args.id });
      return {
        ...bounded(ctx, args.id, { ...preparedReport(entry.last), replayed: true }),
        token: newToken(ctx, args.id),
      };
    }
    log.info('prepare', { id: args.id, ranges: args.ranges.length });
    const report = await prepareSubstitution(args, ctx.substituteDeps());
    journal.prepared(args.id, ctx.peer.description, args, report);
    for (const p of report.pinned)
      log.info('pinned', {
        id: args.id,
        pid: p.pid,
        comm: p.comm,
        path: p.path,
        bytes: p['bytes-copied'],
        status: p.status,
      });
    // The journal keeps prepare's full answer (commit and abort need every pin); the reply is bounded.
    return { ...bounded(ctx, args.id, report), token: newToken(ctx, args.id) };
  },
};
