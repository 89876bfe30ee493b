/** Element types of checkpoint tensors that the GPU reads as they are stored (everything else is dequantised first). */
export type SourceDtype = 'bf16' | 'f16' | 'f32';

export const SOURCE_BYTES: Readonly<Record<SourceDtype, number>> = { bf16: 2, f16: 2, f32: 4 };
