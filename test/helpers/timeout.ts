/**
 * Deadlines are stretched by VMSUBST_TIMEOUT_SCALE (default 1) on a machine slower or busier than
 * usual: TCG guests slow down with the host's load. They bound waits, never measure speed.
 */
export const TIMEOUT_SCALE = Math.max(1, Number(process.env['VMSUBST_TIMEOUT_SCALE'] ?? 1) || 1);

/** uvu has no timeouts by design; QEMU tests wrap their bodies in this. */
export async function withTimeout<T>(limitMs: number, what: string, fn: () => Promise<T>): Promise<T> {
  const ms = limitMs * TIMEOUT_SCALE;
  let timer: NodeJS.Timeout | undefined;
  const limit = new Promise<never>((_, reject) => {
    timer = setTimeout(() => reject(new Error(`${what}: timed out after ${ms} ms`)), ms);
  });
  try {
    return await Promise.race([fn(), limit]);
  } finally {
    clearTimeout(timer);
  }
}

export const sleep = (ms: number): Promise<void> => new Promise((r) => setTimeout(r, ms));

/** Polls `probe` until it returns a value (not undefined) or the deadline passes. */
export async function waitFor<T>(
  limitMs: number,
  what: string,
  probe: () => Promise<T | undefined> | T | undefined,
  everyMs = 200,
): Promise<T> {
  const ms = limitMs * TIMEOUT_SCALE;
  const deadline = Date.now() + ms;
  for (;;) {
    const v = await probe();
    if (v !== undefined) return v;
    if (Date.now() > deadline) throw new Error(`${what}: not seen within ${ms} ms`);
    await sleep(everyMs);
  }
}
