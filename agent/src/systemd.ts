/**
 * systemd integration for a Type=notify service: READY=1 once every channel
 * listens, WATCHDOG=1 at half the watchdog interval while the event loop is
 * alive, STOPPING=1 on the way out. A no-op outside systemd (no NOTIFY_SOCKET).
 */
export type Send = (socketPath: string, message: string) => void;

export class SystemdNotifier {
  readonly #socket: string | undefined;
  readonly #watchdogMs: number;
  #timer: NodeJS.Timeout | undefined;

  constructor(
    env: NodeJS.ProcessEnv,
    private readonly send: Send,
    private readonly onError: (err: Error) => void = () => undefined,
  ) {
    this.#socket = env['NOTIFY_SOCKET'] || undefined;
    const usec = Number(env['WATCHDOG_USEC'] ?? 0);
    const forUs = env['WATCHDOG_PID'] === undefined || Number(env['WATCHDOG_PID']) === process.pid;
    this.#watchdogMs = this.#socket && forUs && usec > 0 ? Math.max(1, Math.floor(usec / 2000)) : 0;
  }

  get active(): boolean {
    return this.#socket !== undefined;
  }

  ready(status: string): void {
    this.#notify(`READY=1\nSTATUS=${status}\nMAINPID=${process.pid}`);
    if (this.#watchdogMs > 0 && !this.#timer) {
      this.#timer = setInterval(() => this.#notify('WATCHDOG=1'), this.#watchdogMs);
      this.#timer.unref();
    }
  }

  status(text: string): void {
    this.#notify(`STATUS=${text}`);
  }

  stopping(): void {
    if (this.#timer) clearInterval(this.#timer);
    this.#timer = undefined;
    this.#notify('STOPPING=1');
  }

  #notify(message: string): void {
    if (!this.#socket) return;
    try {
      this.send(this.#socket, message);
    } catch (e) {
      this.onError(e instanceof Error ? e : new Error(String(e)));
    }
  }
}
