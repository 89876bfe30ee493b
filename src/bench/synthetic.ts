import type { GpuContext } from '../gpu/context.ts';
import { ConfigError } from '../errors.ts';
import type { WeightDtype } from '../gpu/tensor.ts';
import { fillRandom } from '../kernels/fill_random.ts';
import { parseConfig } from '../model/config.ts';
import { type Model, finishModel } from '../model/model.ts';
import { allocateTensors } from '../model/upload.ts';
import { tensorDtype } from '../model/plan.ts';
import { mtpTensors, textModelTensors } from '../model/tensors.ts';
import variants from './variants.json' with { type: 'json' };

export const SYNTHETIC_VARIANTS = Object.keys(variants);

/** The layers of the whole variant (a run with --layers measures part of them). */
export const syntheticLayers = (name: string): number | undefined => (variants as Record<string, { num_hidden_layers?: number }>)[name]?.num_hidden_layers;

/**
 * A model with the real shapes of a Qwen3.5 variant and random weights generated on the GPU, for
 * benchmarks without a download. `layers` keeps the first N layers (a multiple of 4 keeps the 3:1 mix).
 */
export async function syntheticModel(ctx: GpuContext, name: string, options: { layers?: number; dtype: WeightDtype; mtp?: boolean }): Promise<Model> {
  const raw = (variants as Record<string, Record<string, unknown>>)[name];
  if (!raw) throw new ConfigError(`unknown synthetic model; choose one of ${SYNTHETIC_VARIANTS.join(', ')}`, name, '--synthetic');
  const config = parseConfig({ ...raw, num_hidden_layers: options.layers ?? raw.num_hidden_layers }, `--synthetic ${name}`);
  // With `mtp`, the MTP block too: speculative decoding is measured on it (bench --verify-cost).
  const naming = { prefix: '', fusedExperts: true };
  const specs = [...textModelTensors(config, naming), ...(options.mtp ? mtpTensors(config, naming) : [])];
  const owned: GPUBuffer[] = [];
  const tensors = allocateTensors(ctx, specs, (spec) => tensorDtype(spec, options.dtype, config), owned);
  let seed = 1;
  for (const tensor of tensors.values()) {
    // 1/sqrt(fan-in) keeps activations in range through many layers; vectors (norms, gates) stay small.
    const scale = tensor.shape.length === 3 || tensor.shape[0] > 1 ? 1 / Math.sqrt(tensor.shape[tensor.shape.length - 1]) : 0.1;
    for (const part of tensor.parts) {
      const fill = await fillRandom(ctx, { y: part.buffer, dtype: tensor.dtype, itemStride: tensor.itemStride, seed: seed++, scale });
      ctx.run([fill], 'fill');
      ctx.release([fill]);
    }
  }
  await ctx.sync();
  return finishModel(
    ctx,
    { config, dtype: options.dtype, location: `synthetic:${name}`, unusedTensors: [], tokenizerSize: config.vocabSize, eosTokenIds: [] },
    tensors,
    owned,
  );
}
