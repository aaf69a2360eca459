import { suite } from 'uvu';
import * as assert from 'uvu/assert';
import { ConfigError, DEFAULTS, parseCli } from '../../../agent/src/config.js';

const Cfg = suite('agent config');
const files =
  (map: Record<string, string>) =>
  (p: string): string | undefined =>
    map[p];

Cfg('defaults when there is neither file nor option', () => {
  assert.equal(parseCli([], files({})).config, DEFAULTS);
});

Cfg('a config file overrides defaults, options override the file', () => {
  const read = files({
    '/etc/vmsubst/agent.json': JSON.stringify({
      stateDir: '/srv/state',
      idleTimeoutSec: 10,
      vsock: { port: 7000, allowCids: [2, 3] },
    }),
  });
  const c = parseCli(['--idle-timeout', '20'], read).config;
  assert.is(c.stateDir, '/srv/state');
  assert.is(c.idleTimeoutSec, 20);
  assert.equal(c.vsock, { port: 7000, allowCids: [2, 3] });
  assert.equal(parseCli(['--vsock-port', '7100'], read).config.vsock, { port: 7100, allowCids: [2, 3] });
});

Cfg('unknown keys in the file are errors naming the file and the key', () => {
  const read = files({ '/x.json': '{"statedir":"/tmp"}' });
  try {
    parseCli(['--config', '/x.json'], read);
    assert.unreachable();
  } catch (e) {
    assert.instance(e, ConfigError);
    assert.match((e as ConfigError).problems.join('\n'), /\/x\.json.*unknown field 'statedir'/);
  }
});

Cfg('a wrongly typed value is an error with its path', () => {
  const read = files({ '/x.json': '{"vsock":{"port":"5252","allowCids":[2]}}' });
  assert.throws(
    () => parseCli(['--config', '/x.json'], read),
    (e: ConfigError) => /\/vsock\/port/.test(e.problems.join()),
  );
});

Cfg('an explicit config file that does not exist is an error', () => {
  assert.throws(() => parseCli(['--config', '/nope.json'], files({})), /no such file/);
});

Cfg('a file that is not JSON is an error', () => {
  assert.throws(() => parseCli(['--config', '/x.json'], files({ '/x.json': '{' })), /not JSON/);
});

Cfg('bad numbers on the command line are refused', () => {
  assert.throws(() => parseCli(['--vsock-port', 'abc'], files({})), /--vsock-port/);
  assert.throws(() => parseCli(['--allow-cid', '-1'], files({})), /--allow-cid/);
});

Cfg('--no-vsock and --no-serial switch channels off', () => {
  const c = parseCli(['--no-vsock', '--no-serial', '--unix', '/run/a.sock'], files({})).config;
  assert.is(c.vsock, null);
  assert.is(c.serial, null);
  assert.is(c.unix, '/run/a.sock');
});

Cfg('indexAtStart: from the file, replaced by --index; a relative path is refused', () => {
  const read = files({ '/etc/vmsubst/agent.json': JSON.stringify({ indexAtStart: ['/srv'] }) });
  assert.equal(parseCli([], read).config.indexAtStart, ['/srv']);
  assert.equal(parseCli(['--index', '/mnt/data', '--index', '/'], read).config.indexAtStart, ['/mnt/data', '/']);
  assert.throws(
    () => parseCli(['--index', 'mnt'], files({})),
    (e: ConfigError) => /indexAtStart/.test(e.problems.join()),
  );
});

Cfg.run();
