import { access, rename, rm } from 'node:fs/promises';
import { basename, dirname, join } from 'node:path';
import type { GpuContext } from '../gpu/context.ts';
import type { Checkpoint } from '../formats/checkpoint.ts';
import { PACKED_MANIFEST } from '../formats/packed_manifest.ts';
import type { LoadProgress } from '../model/load.ts';
import { convertModel } from '../model/convert.ts';
import { FileSource } from '../storage/file.ts';
import { FolderSink } from '../storage/file_sink.ts';
import { openCheckpoint } from '../formats/open.ts';
import { hubCacheDir, uniqueSuffix } from '../storage/hf_cache.ts';
import type { Env } from '../storage/hub.ts';

/**
 * INT4 conversions of hub snapshots, kept once: `--dtype int4` on a hub model converts it into the engine's packed
 * format beside the hub cache ($HF_HOME/qwen-webgpu/packed/models--ORG--NAME/<commit>[-<file>]-q4) on first use,
 * and later loads read that (a snapshot is immutable, so its commit is the key). A conversion is written into a
 * folder of its own and renamed into place when whole: a killed one never counts, and of two processes converting
 * at once the first to finish wins and the other's copy is dropped.
 */
export async function convertedOnce(
  ctx: GpuContext,
  checkpoint: Checkpoint,
  options: { env: Env; onConvert?: (dir: string) => void; onProgress?: (p: LoadProgress) => void },
): Promise<Checkpoint | undefined> {
  const snapshot = /(models--[^/]+)\/snapshots\/([^/]+)(?:\/([^/]+))?\/?$/.exec(checkpoint.location);
  if (!snapshot || checkpoint.packed) return undefined;
  const [, repoFolder, commit, file] = snapshot;
  const dir = join(dirname(hubCacheDir(options.env)), 'qwen-webgpu', 'packed', repoFolder, `${commit}${file ? `-${basename(file, '.gguf')}` : ''}-q4`);
  if (!(await exists(join(dir, PACKED_MANIFEST)))) {
    const partial = `${dir}.partial-${uniqueSuffix()}`;
    options.onConvert?.(dir);
    try {
      await convertModel(ctx, checkpoint, { dtype: 'q4', sink: new FolderSink(partial), shardBytes: 256 * 1024 * 1024, onProgress: options.onProgress });
      await rename(partial, dir).catch(async (error) => {
        // Another process put the same conversion in place first: use that one.
        if (!(await exists(join(dir, PACKED_MANIFEST)))) throw error;
      });
    } finally {
      await rm(partial, { recursive: true, force: true });
    }
  }
  return openCheckpoint(new FileSource(dir));
}

const exists = (path: string) =>
  access(path).then(
    () => true,
    () => false,
  );
