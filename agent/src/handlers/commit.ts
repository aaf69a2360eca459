/** `commit`, phase two: the host has written; substitute with prepare's arguments and pins. */
import { CommandError } from '../errors.js';
import { admitPhase, refuseReplay } from './admission.js';
import type { Handler } from './handler.js';
import { begunArgs, doneReport, isLatestDone, journaled, preparedArgs, preparedReport } from './journaled.js';

export const commit: Handler<'commit'> = {
  exclusive: true,
  async run(args, ctx) {
    const { id } = args;
    const a = admitPhase(ctx, 'commit', args);
    const entry = ctx.journal.get(id);
    if (a.replayOf && !(a.replayOf.id === id && a.replayOf.command === 'commit' && isLatestDone(ctx, entry))) {
      refuseReplay(ctx, a, 'commit', id);
    }
    a.commit();
    const last = entry?.last;
    if (last?.phase === 'prepared') return journaled(ctx, preparedArgs(last), preparedReport(last).pinned);
    if (last?.phase === 'begin') {
      // A commit cut short (agent crash): its arguments are in the journal; run it again. The pins
      // of prepare live on in the processes; none are taken now that the disk holds new blocks.
      const begun = begunArgs(last);
      if (begun !== undefined) return journaled(ctx, begun, []);
    }
    if (isLatestDone(ctx, entry)) {
      ctx.log.info('commit answered from the journal', { id });
      return { ...doneReport(entry.last), replayed: true };
    }
    const why =
      last === undefined
        ? 'was never prepared'
        : last.phase === 'aborted'
          ? 'was aborted'
          : `is ${entry!.state}, not prepared`;
    throw new CommandError('NotPrepared', `substitution ${id} ${why}; send prepare first`);
  },
};
