/** `report`: a page of the full report kept for a substitution whose answer was truncated. */
import { admitRead } from './admission.js';
import type { Handler } from './handler.js';

export const report: Handler<'report'> = {
  exclusive: false,
  async run(args, ctx) {
    admitRead(ctx, 'report', args);
    return ctx.reports.page(args.id, args.offset, args.limit);
  },
};
