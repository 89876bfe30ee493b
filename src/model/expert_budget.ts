import type { GpuContext } from '../gpu/context.ts';
import { RequestError } from '../errors.ts';
import { planTensorLayout, type WeightDtype } from '../gpu/tensor.ts';
import type { Checkpoint } from '../formats/checkpoint.ts';
import { expertTensorKey, packedExpertSource } from '../storage/expert_source.ts';
import type { Qwen35Config } from './config.ts';
import type { ExpertStreaming } from './model.ts';
import type { CheckpointPlan } from './plan.ts';
import type { TensorSpec } from './tensors.ts';

/**
 * Expert slots per MoE layer that `budgetBytes` buys (all of them when it covers every expert), or a
 * RequestError when it cannot hold the topk experts one token needs in every layer.
 */
export function planExpertSlots(config: Qwen35Config, budgetBytes: number, expertBytes: number): number {
  const moe = config.moe!;
  const layers = config.layerTypes.length;
  if (!Number.isFinite(budgetBytes) || budgetBytes < 0) throw new RequestError(`${budgetBytes} must be a non-negative number of bytes`, 'expertCacheBytes');
  const slots = Math.min(moe.numExperts, Math.floor(budgetBytes / (layers * expertBytes)));
  if (slots < moe.topk) {
    throw new RequestError(
      `${budgetBytes} bytes hold ${slots} experts per layer; a token needs num_experts_per_tok = ${moe.topk} in each of ${layers} layers ` +
        `(at least ${moe.topk * layers * expertBytes} bytes at ${expertBytes} bytes per expert)`,
      'expertCacheBytes',
    );
  }
  return slots;
}

/**
 * Whether (and how) the experts of the main layers are streamed: only when `budgetBytes` is less than all
 * of them, and then only from a packed model (each expert one contiguous block in a shard).
 */
export function expertStreaming(
  ctx: GpuContext,
  checkpoint: Checkpoint,
  plan: CheckpointPlan,
  dtypeOf: (spec: TensorSpec) => WeightDtype,
  budgetBytes: number | undefined,
): ExpertStreaming | undefined {
  const moe = plan.config.moe;
  if (!moe || budgetBytes === undefined) return undefined;
  const bytesOf = (key: string) => {
    const spec = plan.specs.find((s) => s.key === key)!;
    return planTensorLayout(key, spec.shape, dtypeOf(spec), ctx.caps).itemBytes;
  };
  const expertBytes = bytesOf(expertTensorKey(0, 'gate_up')) + bytesOf(expertTensorKey(0, 'down'));
  const slots = planExpertSlots(plan.config, budgetBytes, expertBytes);
  if (slots >= moe.numExperts) return undefined;
  if (!checkpoint.packed) {
    throw new RequestError(
      `${budgetBytes} bytes are less than the ${plan.config.layerTypes.length * moe.numExperts * expertBytes} bytes of all experts, and streaming experts ` +
        `needs a packed model; ${checkpoint.location} is not one (convert it with \`qwen-webgpu convert\`)`,
      'expertCacheBytes',
    );
  }
  return { source: packedExpertSource(checkpoint.packed), slots, expertBytes };
}
