import { describe, expect, it } from 'vitest';
import { FileSource } from '../../src/storage/file.ts';
import { ReferenceSession, loadReferenceModel, referenceGreedy } from '../../src/reference/model.ts';
import { FIXTURES, compareLogprobs, fixtureDir, golden, goldenLogprobs } from '../helpers/fixtures.ts';

// The CPU reference must reproduce the fixtures' independent float64 goldens before it may judge the GPU.
describe('reference model vs fixture goldens', () => {
  for (const name of FIXTURES) {
    it(name, async () => {
      const g = golden(name);
      const model = await loadReferenceModel(new FileSource(fixtureDir(name)));
      const session = new ReferenceSession(model);
      const rows = new Float64Array(g.prompt_ids.length * g.vocab_size);
      g.prompt_ids.forEach((id, t) => rows.set(session.next(id), t * g.vocab_size));
      const { maxAbs, top1Agreement } = compareLogprobs(rows, goldenLogprobs(name), g.vocab_size);
      expect(maxAbs).toBeLessThan(1e-4);
      expect(top1Agreement).toBe(1);
      const greedy = referenceGreedy(new ReferenceSession(model), g.prompt_ids, g.greedy_ids.length, g.tokenizer_size);
      expect(greedy.ids).toEqual(g.greedy_ids);
    });
  }
});
