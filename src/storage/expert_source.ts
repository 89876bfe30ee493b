import { ContractError, ModelFormatError } from '../errors.ts';

/**
 * Where streamed MoE experts come from: one expert's block of one expert tensor of one layer, as the bytes
 * of its GPU item (the layout the GPU tensor gives one item), so uploading it is a plain write at
 * slot · itemBytes in the part that holds the slot. Reads go through the model's WeightSource, so a local
 * folder, an HTTP(S) server and (later) IndexedDB all serve experts.
 */
export type ExpertTensor = 'gate_up' | 'down';

export interface ExpertSource {
  /** A folder path or URL, for messages. */
  readonly location: string;
  /** Bytes of one expert's item of `tensor` (the same in every layer). */
  itemBytes(tensor: ExpertTensor): number;
  /** Expert `expert`'s item of `tensor` in decoder layer `layer`: exactly itemBytes(tensor) bytes, starting at byte 0 of its buffer. */
  read(layer: number, tensor: ExpertTensor, expert: number, signal?: AbortSignal): Promise<Uint8Array>;
}

/** What a packed model (src/formats/packed_reader.ts) offers: each tensor's items, back to back, by key. */
export interface ItemReader {
  location: string;
  tensors: Map<string, { itemBytes: number; shape: number[] }>;
  readItems(key: string, firstItem: number, count: number, signal?: AbortSignal): Promise<Uint8Array>;
}

/** The GPU tensor key of an expert tensor (src/model/tensors.ts names them so). */
export const expertTensorKey = (layer: number, tensor: ExpertTensor): string => `layers.${layer}.mlp.experts_${tensor}`;

/** Experts read from a packed model: each expert is one contiguous item of its tensor in a shard. */
export function packedExpertSource(packed: ItemReader): ExpertSource {
  const info = (layer: number, tensor: ExpertTensor) => {
    const key = expertTensorKey(layer, tensor);
    const t = packed.tensors.get(key);
    if (!t) throw new ModelFormatError('no such tensor in the packed model', packed.location, key);
    return { key, t };
  };
  return {
    location: packed.location,
    itemBytes: (tensor) => info(0, tensor).t.itemBytes,
    async read(layer, tensor, expert, signal) {
      const { key, t } = info(layer, tensor);
      if (!Number.isInteger(expert) || expert < 0 || expert >= t.shape[0])
        throw new ContractError(`${key}: expert ${expert} is outside its ${t.shape[0]} experts`, 'ExpertSource.read');
      const bytes = await packed.readItems(key, expert, 1, signal);
      if (bytes.length !== t.itemBytes)
        throw new ModelFormatError(`expert ${expert} read ${bytes.length} bytes, expected ${t.itemBytes}`, packed.location, key);
      return bytes;
    },
  };
}
