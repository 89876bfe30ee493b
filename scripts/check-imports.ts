/**
 * Keeps src/ layered as ARCHITECTURE.md draws it: each folder imports only from the folders below it (LAYERS), and
 * no two files import each other, directly or round about. `npm run lint` runs it; test/structure.test.ts too.
 */
import { readdirSync, readFileSync } from 'node:fs';
import { dirname, join, normalize, relative } from 'node:path';
import { fileURLToPath } from 'node:url';

/** What each part of src/ may import, besides itself. A file at the top of src/ is its own part (`errors.ts`). */
export const LAYERS: Readonly<Record<string, readonly string[]>> = {
  'errors.ts': [],
  numeric: ['errors.ts'],
  gpu: ['errors.ts', 'numeric'],
  kernels: ['errors.ts', 'numeric', 'gpu'],
  formats: ['errors.ts', 'numeric'],
  storage: ['errors.ts', 'numeric', 'formats'],
  text: ['errors.ts', 'formats'],
  model: ['errors.ts', 'numeric', 'gpu', 'kernels', 'formats', 'storage'],
  reference: ['errors.ts', 'numeric', 'gpu', 'kernels', 'formats', 'model'],
  runtime: ['errors.ts', 'numeric', 'gpu', 'kernels', 'formats', 'storage', 'model'],
  api: ['errors.ts', 'numeric', 'gpu', 'formats', 'storage', 'model', 'runtime', 'text'],
  bench: ['errors.ts', 'numeric', 'gpu', 'kernels', 'formats', 'model', 'runtime'],
  serve: ['errors.ts', 'text', 'api'],
  cli: ['errors.ts', 'numeric', 'gpu', 'formats', 'storage', 'model', 'runtime', 'text', 'api', 'bench', 'serve'],
  'index.ts': ['errors.ts', 'numeric', 'gpu', 'formats', 'storage', 'model', 'runtime', 'text', 'api'],
  'hosts/browser': ['index.ts', 'errors.ts', 'gpu', 'formats', 'storage', 'model', 'runtime', 'text', 'api'],
  'hosts/node': ['index.ts', 'errors.ts', 'gpu', 'formats', 'storage', 'api', 'cli'],
  'hosts/deno': ['index.ts', 'errors.ts', 'gpu', 'cli'],
};

const IMPORT = /(?:^|[;\s])(?:import|export)\s[^'";]*?from\s*['"]([^'"]+)['"]|import\s*\(\s*['"]([^'"]+)['"]\s*\)|^import\s*['"]([^'"]+)['"]/gm;

/** The part of src/ a path (relative to src/) belongs to; undefined for a file LAYERS does not place. */
export function layerOf(path: string): string | undefined {
  const parts = path.split('/');
  const candidates = [parts.slice(0, 2).join('/'), parts[0]];
  return candidates.find((c) => c in LAYERS && (c.endsWith('.ts') ? c === path : true));
}

/** Relative imports of a source text, as written. */
export function importsOf(text: string): string[] {
  return [...text.matchAll(IMPORT)].map((m) => m[1] ?? m[2] ?? m[3]).filter((s) => s.startsWith('.'));
}

/** Every problem with the given files (paths relative to src/, with their text): wrong-way imports, then circles. */
export function checkImports(files: ReadonlyMap<string, string>): string[] {
  const problems: string[] = [];
  const graph = new Map<string, string[]>();
  for (const [file, text] of files) {
    const from = layerOf(file);
    if (from === undefined) problems.push(`${file}: not in any layer of scripts/check-imports.ts`);
    const targets: string[] = [];
    for (const spec of importsOf(text)) {
      const target = normalize(join(dirname(file), spec));
      if (target.startsWith('..')) {
        problems.push(`${file}: imports ${spec}, outside src/`);
        continue;
      }
      targets.push(target);
      const to = layerOf(target);
      if (from !== undefined && to !== undefined && to !== from && !LAYERS[from].includes(to)) {
        problems.push(`${file}: imports ${target}, but ${from} may not import ${to}`);
      }
    }
    graph.set(file, targets);
  }
  problems.push(...circles(graph).map((c) => `import circle among ${c.join(', ')}`));
  return problems;
}

/** Each strongly connected set of more than one file, sorted (Tarjan). */
function circles(graph: ReadonlyMap<string, string[]>): string[][] {
  const index = new Map<string, number>();
  const low = new Map<string, number>();
  const stack: string[] = [];
  const onStack = new Set<string>();
  const found: string[][] = [];
  const visit = (v: string) => {
    index.set(v, index.size);
    low.set(v, index.get(v)!);
    stack.push(v);
    onStack.add(v);
    for (const w of graph.get(v) ?? []) {
      if (!graph.has(w)) continue;
      if (!index.has(w)) {
        visit(w);
        low.set(v, Math.min(low.get(v)!, low.get(w)!));
      } else if (onStack.has(w)) low.set(v, Math.min(low.get(v)!, index.get(w)!));
    }
    if (low.get(v) === index.get(v)) {
      const set: string[] = [];
      let w: string;
      do {
        w = stack.pop()!;
        onStack.delete(w);
        set.push(w);
      } while (w !== v);
      if (set.length > 1) found.push(set.sort());
    }
  };
  for (const v of [...graph.keys()].sort()) if (!index.has(v)) visit(v);
  return found;
}

/** src/'s TypeScript files, by path relative to src/. */
export function readSources(src: string): Map<string, string> {
  const files = new Map<string, string>();
  const walk = (dir: string) => {
    for (const entry of readdirSync(dir, { withFileTypes: true })) {
      const path = join(dir, entry.name);
      if (entry.isDirectory()) walk(path);
      else if (entry.name.endsWith('.ts')) files.set(relative(src, path).split('\\').join('/'), readFileSync(path, 'utf8'));
    }
  };
  walk(src);
  return files;
}

if (process.argv[1] && fileURLToPath(import.meta.url) === process.argv[1]) {
  const problems = checkImports(readSources(join(fileURLToPath(import.meta.url), '..', '..', 'src')));
  for (const p of problems) console.error(p);
  if (problems.length > 0) process.exit(1);
  console.log('imports: every layer imports only from below it; no circles');
}
