/** `ping`: liveness. */
import type { Handler } from './handler.js';

export const ping: Handler<'ping'> = {
  exclusive: false,
  run: async () => ({}),
};
