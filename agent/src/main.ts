#!/usr/bin/env node
/** vmsubst-agent: argv → config → Agent; SIGTERM/SIGINT stop it cleanly. */
import { Agent } from './agent.js';
import { systemDeps } from './system.js';
import { status } from './cli/status.js';
import { SystemdNotifier } from './systemd.js';
import { pinCommand } from './cli/pin.js';
import { mapCommand } from './cli/map.js';
import { staleCommand } from './cli/stale.js';
import { Journal } from './journal/journal.js';
import { DEFAULT_STATE_DIR } from './config.js';
import { USAGE, describeTrust, parseCli } from './config.js';
import { loadTrustedKeys } from './trust/gate.js';
import { createLogger } from './log.js';
import { AgentError, messageOf } from './errors.js';
import { precompiledIn, usePrecompiled } from '@vmsubst/common/protocol/precompiled';
import { fileURLToPath } from 'node:url';

async function main(): Promise<number> {
  // The validators precompiled at build time (validators/ beside this file): a freshly started
  // agent answers its first request without compiling them (a second and more under TCG).
  const validators = precompiledIn([fileURLToPath(new URL('./validators/', import.meta.url))]);
  if (validators) usePrecompiled(validators);
  if (process.argv[2] === 'status') return status(process.argv.slice(3), (s) => process.stdout.write(s));
  if (process.argv[2] === 'pin') return pinCommand(process.argv.slice(3), (s) => process.stdout.write(s));
  if (process.argv[2] === 'map') return mapCommand(process.argv.slice(3), (s) => process.stdout.write(s));
  if (process.argv[2] === 'stale') {
    return staleCommand(
      process.argv.slice(3),
      (s) => process.stdout.write(s),
      (dir) => {
        // Read-only: the daemon may be appending.
        const j = Journal.read(dir ?? DEFAULT_STATE_DIR);
        return { entries: j.recent(64), close: () => j.close() };
      },
    );
  }
  let cli;
  try {
    cli = parseCli(process.argv.slice(2));
  } catch (e) {
    process.stderr.write(`vmsubst-agent: ${messageOf(e)}\n\n${USAGE}`);
    return 2;
  }
  if (cli.help) {
    process.stdout.write(USAGE);
    return 0;
  }
  if (cli.printConfig) {
    process.stdout.write(JSON.stringify(cli.config, null, 2) + '\n');
    let keys: string[] = [];
    try {
      keys = [...loadTrustedKeys(cli.config.trustedKeys, cli.config.trustedKeyDir ?? undefined).keys()];
    } catch (e) {
      process.stderr.write(`vmsubst-agent: trusted keys: ${messageOf(e)}\n`);
    }
    process.stderr.write(
      describeTrust(cli.config, keys)
        .map((l) => `# ${l}\n`)
        .join(''),
    );
    return 0;
  }
  const log = createLogger(cli.config.logLevel);
  const deps = await systemDeps();
  const agent = new Agent(cli.config, deps, log);
  await agent.start();
  const { sdNotify } = await import('./native/index.js');
  const systemd = new SystemdNotifier(process.env, sdNotify, (e) => log.warn('sd_notify failed', { error: e.message }));
  systemd.ready(
    `serving ${cli.config.vsock ? `vsock:${cli.config.vsock.port} ` : ''}${cli.config.serial ?? ''}`.trim(),
  );
  log.info('ready', { version: agent.greeting.version, systemd: systemd.active });
  await new Promise<void>((resolve) => {
    const stop = (sig: string): void => {
      log.info('stopping', { signal: sig });
      resolve();
    };
    process.once('SIGTERM', () => stop('SIGTERM'));
    process.once('SIGINT', () => stop('SIGINT'));
  });
  systemd.stopping();
  await agent.stop();
  return 0;
}

main().then(
  (code) => process.exit(code),
  (e: unknown) => {
    // The agent's own failures say what is wrong (and what to do); anything else is a bug: its stack.
    if (e instanceof AgentError)
      process.stderr.write(`vmsubst-agent: ${e.message}\n${e.hint !== undefined ? `vmsubst-agent: ${e.hint}\n` : ''}`);
    else process.stderr.write(`vmsubst-agent: ${e instanceof Error ? (e.stack ?? e.message) : String(e)}\n`);
    process.exit(1);
  },
);
