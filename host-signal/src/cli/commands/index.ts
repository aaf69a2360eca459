/** Every subcommand of `vmsubst`, in the order `vmsubst --help` lists them. */
import type { Command } from '../common.js';
import { diffCommand } from './diff.js';
import { applyCommand } from './apply.js';
import { recoverCommand } from './recover.js';
import { exportCommand } from './export.js';
import { notifyCommand } from './notify.js';
import { reportCommand } from './report.js';
import { inspectCommand } from './inspect.js';
import { keygenCommand } from './keygen.js';
import { signCommand } from './sign.js';
import { rolloutCommand } from './rollout.js';
import { planCommand } from './plan.js';
import { staleCommand } from './stale.js';

export const COMMANDS: readonly Command[] = [
  diffCommand,
  applyCommand,
  recoverCommand,
  exportCommand,
  notifyCommand,
  reportCommand,
  inspectCommand,
  keygenCommand,
  signCommand,
  planCommand,
  staleCommand,
  rolloutCommand,
];
