/** A one-line progress bar on a TTY stream (stderr); silent elsewhere. */
import type { WriteStream } from 'node:tty';
import { formatBytes } from './format.js';

export class ProgressBar {
  #last = 0;
  #shown = false;

  constructor(
    private readonly stream: NodeJS.WritableStream & Partial<Pick<WriteStream, 'isTTY' | 'columns'>>,
    private readonly enabled = stream.isTTY === true,
    private readonly intervalMs = 100,
  ) {}

  /** `text` replaces the "done / total" byte counts (e.g. "3/10 VMs"). */
  update(label: string, done: number, total: number, text?: string): void {
    if (!this.enabled) return;
    const now = Date.now();
    if (done < total && now - this.#last < this.intervalMs) return;
    this.#last = now;
    const fraction = total > 0 ? Math.min(1, done / total) : 1;
    const prefix = `${label.padEnd(8)} `;
    const suffix =
      ` ${String(Math.floor(fraction * 100)).padStart(3)}%  ` +
      `${text ?? `${formatBytes(done)} / ${formatBytes(total)}`}`;
    const width = Math.max(10, Math.min(40, (this.stream.columns || 80) - prefix.length - suffix.length - 3));
    const filled = Math.round(fraction * width);
    this.stream.write(`\r${prefix}[${'#'.repeat(filled)}${'.'.repeat(width - filled)}]${suffix}\x1b[K`);
    this.#shown = true;
  }

  /** Clears the bar's line. */
  clear(): void {
    if (this.#shown) this.stream.write('\r\x1b[K');
    this.#shown = false;
    this.#last = 0;
  }
}
