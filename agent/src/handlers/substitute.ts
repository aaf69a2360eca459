/** `substitute`: the one-shot substitution (the host wrote first); with dry-run, the plan only, outside the journal. */
import { planSubstitution } from '../substitution/substitute.js';
import { admit, refuseReplay } from './admission.js';
import type { Handler } from './handler.js';
import { bounded, isLatestDone, journaled } from './journaled.js';

export const substitute: Handler<'substitute'> = {
  exclusive: true,
  async run(args, ctx) {
    const a = admit(ctx, 'substitute', args);
    if (a.replayOf) {
      const entry = ctx.journal.get(args.id);
      const answerable = a.replayOf.id === args.id && a.replayOf.command === 'substitute' && isLatestDone(ctx, entry);
      if (!answerable) refuseReplay(ctx, a, 'substitute', args.id);
    }
    a.commit();
    if (args['dry-run']) {
      ctx.log.info('plan', { id: args.id, ranges: args.ranges.length });
      return bounded(ctx, args.id, await planSubstitution(args, ctx.substituteDeps()));
    }
    return journaled(ctx, args, undefined);
  },
};
