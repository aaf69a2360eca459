/** `abort`: drop a prepared substitution; pinned processes keep their private copies. */
import { admitPhase, refuseReplay } from './admission.js';
import type { Handler } from './handler.js';
import { preparedReport } from './journaled.js';

export const abort: Handler<'abort'> = {
  exclusive: true,
  async run(args, ctx) {
    const { id } = args;
    const a = admitPhase(ctx, 'abort', args);
    if (a.replayOf) refuseReplay(ctx, a, 'abort', id);
    a.commit();
    const last = ctx.journal.get(id)?.last;
    if (last?.phase === 'prepared') {
      ctx.journal.aborted(id);
      const pins = preparedReport(last).pinned;
      ctx.log.info('aborted', { id, peer: ctx.peer.description, pinsKept: pins.length });
      return {
        id,
        status: 'aborted',
        'pins-kept': pins,
        detail:
          pins.length > 0
            ? 'pinned processes keep their private copies of the old pages (the same content as the disk); freed when they exit'
            : 'nothing had been changed',
      };
    }
    if (last?.phase === 'done' || last?.phase === 'begin')
      return {
        id,
        status: 'committed',
        'pins-kept': [],
        detail: 'already committed: the new blocks are in use; apply the reverse bundle to undo',
      };
    return {
      id,
      status: 'not-prepared',
      'pins-kept': [],
      detail: last?.phase === 'aborted' ? 'already aborted' : 'nothing was prepared under this id',
    };
  },
};
