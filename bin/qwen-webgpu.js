#!/usr/bin/env node
// Runs the TypeScript sources directly (tsx), so the CLI, the tests and the Deno task share one code path.
import { register } from 'tsx/esm/api';

register();
await import('../src/hosts/node/cli.ts');
