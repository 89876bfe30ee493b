import { Engine, type EngineOptions } from '../../api/engine.ts';
import { openModel } from '../../storage/locate.ts';
import type { HttpOptions } from '../../storage/http.ts';
import type { CapsMask } from '../../gpu/caps.ts';
import { createNodeContext } from './gpu.ts';

export * from '../../index.ts';
export { FileSource } from '../../storage/file.ts';
export { createNodeContext } from './gpu.ts';

/**
 * An Engine on Dawn for a model folder or URL (`http`: the URL's timeout and retries). `engine.destroy()`
 * releases the model; `engine.ctx.destroy()` releases the GPU (Node exits only when Dawn's instance is gone).
 */
export async function loadEngine(options: EngineOptions & { model: string; adapter?: string; mask?: CapsMask; http?: HttpOptions }): Promise<Engine> {
  const ctx = await createNodeContext({ adapter: options.adapter, mask: options.mask });
  try {
    return await Engine.load(ctx, await openModel(options.model, { http: options.http }), options);
  } catch (error) {
    ctx.destroy();
    throw error;
  }
}
