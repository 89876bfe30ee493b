import { readFileSync } from 'node:fs';
import { expect, it } from 'vitest';
import { GENERATED, renderShaderModule } from '../scripts/embed-shaders.ts';

it('src/kernels/shaders.generated.ts embeds the current shaders/*.wgsl (run `npm run shaders`)', () => {
  expect(readFileSync(GENERATED, 'utf8')).toBe(renderShaderModule());
});
