/** `stale`: who still runs old content. Paths and processes of the guest: admitted like `report`. */
import { staleProcesses } from '../substitution/stale.js';
import { admitRead } from './admission.js';
import type { Handler } from './handler.js';

export const stale: Handler<'stale'> = {
  exclusive: false,
  async run(args, ctx) {
    admitRead(ctx, 'stale', args);
    return staleProcesses(ctx.journal.recent(64), ctx.procRoot);
  },
};
