import { join } from 'node:path';
import { expect, it } from 'vitest';
import { checkImports, readSources } from '../scripts/check-imports.ts';

it('src/ imports only downwards (ARCHITECTURE.md) and has no import circles', () => {
  expect(checkImports(readSources(join(import.meta.dirname, '..', 'src')))).toEqual([]);
});

it('the check finds an upward import, a circle and a file outside every layer', () => {
  const files = new Map([
    ['gpu/context.ts', "import { Session } from '../runtime/session.ts';"],
    ['runtime/session.ts', "import type { Caps } from '../gpu/caps.ts';\nexport { x } from './plan.ts';"],
    ['gpu/caps.ts', ''],
    ['runtime/plan.ts', "const s = await import('./session.ts');"],
    ['widgets/button.ts', ''],
  ]);
  expect(checkImports(files)).toEqual([
    'gpu/context.ts: imports runtime/session.ts, but gpu may not import runtime',
    'widgets/button.ts: not in any layer of scripts/check-imports.ts',
    'import circle among runtime/plan.ts, runtime/session.ts',
  ]);
});
