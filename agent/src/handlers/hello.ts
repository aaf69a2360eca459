/** `hello`: the greeting again, for channels with no connect event (virtio-serial). */
import type { Handler } from './handler.js';

export const hello: Handler<'hello'> = {
  exclusive: false,
  run: async (_args, ctx) => ctx.greeting,
};
