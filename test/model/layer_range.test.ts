import { expect, it } from 'vitest';
import { loadModel } from '../../src/model/load.ts';
import { GpuSampler } from '../../src/runtime/sampler.ts';
import { Session } from '../../src/runtime/session.ts';
import { openModel } from '../../src/storage/locate.ts';
import { FIXTURES, fixtureDir, golden } from '../helpers/fixtures.ts';
import { describeOnAdapters } from '../helpers/gpu.ts';

// Pipeline stages in one process: a model loaded as two layer ranges, the rows of one handed to the other.
describeOnAdapters(
  'layer ranges',
  (ctx) => {
    for (const fixture of FIXTURES) {
      it(`${fixture}: a stage needs only its own tensors, and two stages chained pick what the whole model picks`, async () => {
        const c = ctx();
        const whole = await loadModel(c, await openModel(fixtureDir(fixture)), { dtype: 'f32' });
        const L = whole.config.layerTypes.length;
        const split = Math.floor(L / 2) || 1;
        // The first stage reads no byte of the later layers, the final norm or the LM head.
        const firstHalf = await openModel(fixtureDir(fixture));
        const read = new Set<string>();
        for (const tensor of firstHalf.tensors.values()) {
          const readRows = tensor.readRows.bind(tensor);
          tensor.readRows = (first, count, signal) => {
            read.add(tensor.name);
            return readRows(first, count, signal);
          };
        }
        const front = await loadModel(c, firstHalf, { dtype: 'f32', layers: { first: 0, end: split } });
        const back = await loadModel(c, await openModel(fixtureDir(fixture)), { dtype: 'f32', layers: { first: split, end: L } });
        expect(front.weights.layers).toHaveLength(split);
        const others = [...read].filter((name) => {
          const layer = /layers\.(\d+)\./.exec(name);
          return (layer && Number(layer[1]) >= split) || name === 'lm_head.weight' || /language_model\.norm\.weight$|^model\.norm\.weight$/.test(name);
        });
        expect(others).toEqual([]);
        expect(read.size).toBeGreaterThan(0);
        expect(back.weights.embed === undefined).toBe(!back.config.tieWordEmbeddings);

        const ids = golden(fixture).prompt_ids.slice(0, 24);
        const options = { contextLength: 40, prefillChunk: 10 };
        const sizes = { vocabSize: whole.config.vocabSize, tokenizerSize: whole.tokenizerSize };
        const [a, b, one] = [Session.create(c, front, options), Session.create(c, back, options), Session.create(c, whole, options)];
        const [samplerB, samplerOne] = [GpuSampler.create(c, sizes), GpuSampler.create(c, sizes)];
        samplerB.begin({ temperature: 0, logprobs: 2 }, ids);
        samplerOne.begin({ temperature: 0, logprobs: 2 }, ids);

        // Prefill in chunks, then decode steps, each through both stages.
        const expected = [await (await one.prefillAndPick(ids, samplerOne)).read()];
        const got = [];
        let picked: ArrayBuffer | undefined;
        for (let first = 0; first < ids.length; first += 10) {
          const rows = Math.min(10, ids.length - first);
          const step = { position: first, rows, decode: false };
          const hidden: Uint8Array = new Uint8Array(await (await a.stageStep({ ids: Uint32Array.from(ids.slice(first, first + rows)) }, step))!.bytes());
          const out = await b.stageStep({ hidden }, step, first + rows === ids.length ? samplerB : undefined);
          if (out) picked = await out.bytes();
        }
        got.push(samplerB.parse(picked!));
        for (let i = 0; i < 6; i++) {
          expected.push(await (await one.advance(samplerOne)).read());
          const step = { position: ids.length + i, rows: 1, decode: true };
          const hidden: Uint8Array = new Uint8Array(await (await a.stageStep({ ids: Uint32Array.of(got[i].id) }, step))!.bytes());
          got.push(samplerB.parse(await (await b.stageStep({ hidden }, step, samplerB))!.bytes()));
        }
        expect(got).toEqual(expected);
        for (const x of [a, b, one, samplerB, samplerOne, front, back, whole]) x.destroy();
      });
    }
  },
  { wholeModel: true },
);
