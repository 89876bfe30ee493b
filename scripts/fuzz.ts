// The parsers' fuzzer at nightly strength: `npm run fuzz -- --cases 100000 [--only NAME,NAME]` runs that many
// byte-mutated (and, for JSON files, that many structurally mutated) cases per parser: safetensors, GGUF, the
// packed manifest, config.json, tokenizer.json, tokenizer_config.json and generation_config.json. The test
// suite (test/formats/fuzz.test.ts) runs the same fuzzer with smaller counts. Exits 1 naming the first case
// that is not answered with a clear error or a valid result.
import { FUZZ_TARGETS, runFuzz } from '../test/helpers/fuzz.ts';
import { removeWrittenGgufs } from '../test/helpers/gguf_writer.ts';

const USAGE = `usage: npm run fuzz -- [--cases N (default 100000)] [--only ${FUZZ_TARGETS.map((t) => t.name).join(',')}]`;

function parse(argv: string[]): { cases: number; only?: string[] } {
  let cases = 100_000;
  let only: string[] | undefined;
  for (let i = 0; i < argv.length; i++) {
    const flag = argv[i];
    const value = argv[++i];
    if (flag === '--cases' && Number.isInteger(Number(value)) && Number(value) > 0) cases = Number(value);
    else if (flag === '--only' && value) only = value.split(',');
    else throw new Error(flag === '--cases' || flag === '--only' ? `${flag} needs a value, got ${JSON.stringify(value)}` : `unknown flag ${flag}`);
  }
  const unknown = only?.filter((name) => !FUZZ_TARGETS.some((t) => t.name === name));
  if (unknown?.length) throw new Error(`--only: no fuzz target ${unknown.join(', ')}`);
  return { cases, only };
}

let options: { cases: number; only?: string[] };
try {
  options = parse(process.argv.slice(2));
} catch (error) {
  process.stderr.write(`error: ${(error as Error).message}\n${USAGE}\n`);
  process.exit(2);
}
const t0 = performance.now();
try {
  await runFuzz(options.cases, options.only, (line) => process.stdout.write(`${line}\n`));
  process.stdout.write(`all clear: ${options.cases} cases per parser in ${Math.round((performance.now() - t0) / 1000)} s\n`);
} catch (error) {
  process.stderr.write(`error: ${(error as Error).message}\n`);
  process.exitCode = 1;
} finally {
  removeWrittenGgufs();
}
