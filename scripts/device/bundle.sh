#!/usr/bin/env bash
# Packs what `npm run bench:peers` needs on a GPU machine that has neither Node nor a network (the device machine
# of docs/benchmarks.md) into .devcarry/ (override: DEVCARRY=dir), under the 64 MiB a device call carries:
#   pkg.tar.xz        node (this one), our CLI and bench-peers bundled by esbuild, the webgpu package's dawn.node,
#                     node-llama-cpp with only its linux-x64 Vulkan binaries, the libvulkan1/glvnd .debs
#   llama-src.tar.xz  the llama.cpp source node-llama-cpp ships, trimmed to what llama-bench with CUDA builds from
# Then scripts/device/run.sh runs it there. Needs node_modules (npm ci), npm and apt-get (for the .debs), git.
set -euo pipefail
cd "$(dirname "$0")/../.."
ROOT=$PWD
OUT=${DEVCARRY:-$ROOT/.devcarry}
NLC_VERSION=$(sed -n "s/^export const NODE_LLAMA_CPP_VERSION = '\(.*\)';/\1/p" scripts/peers/node_llama_cpp.ts)
NLC=${NLC:-$ROOT/.cache/peers/node-llama-cpp}
STAGE=$(mktemp -d)
trap 'rm -rf "$STAGE"' EXIT
PKG=$STAGE/pkg
say() { echo "[bundle] $*" >&2; }

if [ "$(uname -m)" != x86_64 ]; then echo "bundle.sh: the device is x86-64 and this machine is $(uname -m): its node and binaries would not run there" >&2; exit 1; fi
mkdir -p "$PKG/bin" "$PKG/peers" "$PKG/debs" "$PKG/node_modules/webgpu/dist/linux-x64" "$OUT"

say "node $(node --version)"
cp "$(node -p process.execPath)" "$PKG/bin/node"

say "esbuild: qwen-cli.mjs, bench-peers.mjs"
# webgpu stays external: it loads dawn.node from a path beside its own index.js.
npx esbuild src/hosts/node/cli.ts --bundle --platform=node --format=esm --external:webgpu --log-level=warning --outfile="$PKG/qwen-cli.mjs"
npx esbuild scripts/bench-peers.ts --bundle --platform=node --format=esm --log-level=warning --outfile="$PKG/bench-peers.mjs"
cp scripts/peers/llama_run.mjs "$PKG/peers/"
cp node_modules/webgpu/package.json node_modules/webgpu/index.js "$PKG/node_modules/webgpu/"
cp node_modules/webgpu/dist/linux-x64/dawn.node "$PKG/node_modules/webgpu/dist/linux-x64/"

say "node-llama-cpp $NLC_VERSION (linux-x64 Vulkan binaries only)"
if [ ! -d "$NLC/node_modules/@node-llama-cpp/linux-x64-vulkan" ] || [ "$(node -p "require('$NLC/node_modules/node-llama-cpp/package.json').version" 2>/dev/null)" != "$NLC_VERSION" ]; then
  node --import tsx -e "import('./scripts/peers/node_llama_cpp.ts').then((m) => m.ensureNodeLlamaCpp('$NLC', ['vulkan'], (l) => console.error(l)))"
fi
mkdir -p "$PKG/nlc"
cp -a "$NLC/node_modules" "$PKG/nlc/"
NM=$PKG/nlc/node_modules
# The source bundle goes separately (trimmed); the CPU-only package is not needed for a Vulkan run; of ggml's
# per-microarchitecture CPU backends, x64 (any) and haswell (AVX2) cover the device's Xeon.
rm -rf "$NM/node-llama-cpp/llama/gitRelease.bundle" "$NM/@node-llama-cpp/linux-x64"
for f in "$NM"/@node-llama-cpp/linux-x64-vulkan/bins/linux-x64-vulkan/libggml-cpu-*.so; do
  case "$(basename "$f")" in libggml-cpu-x64.so|libggml-cpu-haswell.so) ;; *) rm "$f" ;; esac
done

say "libvulkan1 + glvnd .debs (the NVIDIA Vulkan driver needs them; the device image has neither)"
APT="-oAPT::Architecture=amd64 -oAPT::Architectures=amd64 -oDir::State::Lists=$STAGE/apt-lists -oDir::Cache=$STAGE/apt-cache"
mkdir -p "$STAGE/apt-lists/partial" "$STAGE/apt-cache/archives/partial"
apt-get $APT update -qq 2>/dev/null
(cd "$PKG/debs" && apt-get $APT -q download libvulkan1 libglvnd0 libegl1 libgl1 libglx0 libgles2 libopengl0 >/dev/null 2>&1)

say "compressing pkg.tar.xz"
XZ_OPT=-9e tar -C "$STAGE" -cJf "$OUT/pkg.tar.xz.tmp" pkg
mv "$OUT/pkg.tar.xz.tmp" "$OUT/pkg.tar.xz"

say "llama.cpp source for llama-bench (CUDA)"
git -c advice.detachedHead=false clone --quiet "$NLC/node_modules/node-llama-cpp/llama/gitRelease.bundle" "$STAGE/llama-src"
node -p "require('$NLC/node_modules/node-llama-cpp/llama/llama.cpp.info.json').tag" > "$STAGE/llama-src/.release"
(
  cd "$STAGE/llama-src"
  # Backends other than CPU and CUDA are added only when enabled, so their folders can go.
  keep=(CMakeLists.txt cmake common include src vendor licenses LICENSE .release ggml/CMakeLists.txt ggml/cmake ggml/include
        ggml/src/ggml-cpu ggml/src/ggml-cuda tools/llama-bench)
  files=$(find ggml/src -maxdepth 1 -type f)
  tar -cf "$STAGE/llama-src.tar" --transform 's,^,llama-src/,' "${keep[@]}" $files
)
XZ_OPT=-9e xz -c "$STAGE/llama-src.tar" > "$OUT/llama-src.tar.xz"

du -b "$OUT"/*.tar.xz | awk '{ printf "[bundle] %s %.1f MiB\n", $2, $1 / 1048576 }' >&2
total=$(du -cb "$OUT"/*.tar.xz | tail -1 | cut -f1)
[ "$total" -le $((60 * 1048576)) ] || { echo "bundle.sh: $((total / 1048576)) MiB is over the 60 MiB budget" >&2; exit 1; }
