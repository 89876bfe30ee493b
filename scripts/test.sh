#!/usr/bin/env bash
# The whole test suite (README "Tests"): types, lint (biome, import layers), the embedded shaders, then every
# test on the software adapters that `npm run setup` provides (lavapipe with and without f16, SwiftShader) and on Deno.
set -euo pipefail
cd "$(dirname "$0")/.."
export XDG_RUNTIME_DIR="${XDG_RUNTIME_DIR:-$(mktemp -d)}"
echo "== typecheck"
npx tsc --noEmit -p .
npx deno check --quiet src/hosts/deno/cli.ts scripts/compile-deno.ts
echo "== lint"
npm run --silent lint
echo "== browser build (dist/browser, for test/browser)"
npm run --silent build -- --logLevel warn
echo "== tests"
npx vitest run "$@"
