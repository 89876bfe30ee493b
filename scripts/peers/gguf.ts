import { closeSync, existsSync, fsyncSync, mkdirSync, openSync, renameSync, rmSync, statSync, statfsSync, writeSync } from 'node:fs';
import { join } from 'node:path';
import { SYNTHETIC_GGUF_VERSION, syntheticGguf } from '../../src/bench/synthetic_gguf.ts';

/**
 * The synthetic GGUF of `bench --synthetic V --layers N`, written once into `dir` and reused. Written under a
 * temporary name and renamed when complete, so an interrupted run never leaves a file that looks finished.
 */
export function ensureSyntheticGguf(dir: string, variant: string, layers: number | undefined, log: (line: string) => void): string {
  const plan = syntheticGguf(variant, { layers });
  const file = join(dir, `${variant}-${plan.config.numLayers}L-q4_0-v${SYNTHETIC_GGUF_VERSION}.gguf`);
  const total = plan.layout.totalBytes;
  if (existsSync(file) && statSync(file).size === total) return file;
  mkdirSync(dir, { recursive: true });
  const free = statfsSync(dir);
  if (free.bavail * free.bsize < total + (1 << 30)) {
    throw new Error(`${file}: needs ${gb(total)} GB, ${gb(free.bavail * free.bsize)} GB free in ${dir}`);
  }
  const temp = `${file}.tmp-${process.pid}`;
  log(`writing ${file} (${gb(total)} GB)`);
  const fd = openSync(temp, 'w');
  try {
    let written = 0;
    let reported = Date.now();
    for (const piece of plan.pieces()) {
      for (let at = 0; at < piece.length; ) at += writeSync(fd, piece, at);
      written += piece.length;
      if (Date.now() - reported > 5000) {
        reported = Date.now();
        log(`  ${gb(written)} / ${gb(total)} GB`);
      }
    }
    if (written !== total) throw new Error(`${temp}: wrote ${written} bytes, expected ${total}`);
    fsyncSync(fd);
  } catch (error) {
    closeSync(fd);
    rmSync(temp, { force: true });
    throw error;
  }
  closeSync(fd);
  renameSync(temp, file);
  return file;
}

const gb = (bytes: number) => (bytes / 1e9).toFixed(2);
