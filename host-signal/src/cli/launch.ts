/**
 * The `vmsubst` executable, bundled by `make ts` into build/host-signal/src/cli/vmsubst.mjs: runs
 * the CLI's bundle beside it with the code cache of the command (code-cache.ts).
 */
import { dirname } from 'node:path';
import { fileURLToPath } from 'node:url';
import { launch } from './code-cache.js';

launch(dirname(fileURLToPath(import.meta.url)), process.argv.slice(2), process.env);
