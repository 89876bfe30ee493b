#!/usr/bin/env bash
# On a GPU machine without Node or a network, from the repository root, with .devcarry/ (scripts/device/bundle.sh)
# carried along: unpacks the bundle, adds the Vulkan loader and glvnd libraries if the system lacks them, points
# Vulkan at the NVIDIA driver and runs the peer benchmark. Results in $OUT: table.md (the printed table),
# results.jsonl, env.txt, run.log.
#
# Order, so that a call cut off by its time limit still returns what ran before: the environment; llama-bench's
# CUDA build started in the background (when the peers include cuda; it takes minutes of CPU and no GPU); our own
# figures that compare the engine with itself (streams, verification cost, subgroups), while it builds; then the
# peer table once the build is done; then the 397B layers. WORK keeps the GGUFs and the build between calls on the
# same machine, so a session splits the work over two calls (docs/benchmarks.md gives them).
#
#   OUT        where results go (default /tmp/out)
#   PEERS_ARGS bench-peers options (default "--peers vulkan,cuda"; e.g. "--variants qwen3.5-0.8b --layers 4")
#   STREAMS    variants whose concurrent-stream decode (bench --streams 1,4,16, int4) runs before the peers, into
#              streams.jsonl (default "qwen3.5-0.8b qwen3.5-9b"; "" skips it)
#   VERIFY     variants whose speculative-decoding cost (bench --verify-cost) goes into verify.jsonl (same default)
#   SUBGROUPS  variants whose int4 decode runs with subgroups and with --no-subgroups, into subgroups.jsonl
#              (default "qwen3.5-0.8b"; "" skips it)
#   BIG        "" skips the 397B run (4 of its layers at real shapes, hop cost, projection) into 397b.jsonl
#   VK_ICD     a Vulkan ICD json to use instead of NVIDIA's (e.g. lavapipe's, to try the bundle on a machine
#              without a GPU)
#   DEVCARRY   the bundle folder (default .devcarry); WORK: where it is unpacked, GGUFs and builds go (default .devwork,
#              beside .devcarry: ignored by git, so the device keeps it between calls)
#   OURS_ARGS  options added to each of our own runs above (streams, verify, subgroups, 397B), e.g. "--layers 4
#              --prompt-tokens 16 --decode-tokens 8" to try the whole script on lavapipe
#   RUN_TIMEOUT_S  the most seconds one benchmark process may run (default 300), so that one hang cannot take a call
set -uo pipefail
OUT=${OUT:-/tmp/out}
DEVCARRY=${DEVCARRY:-.devcarry}
WORK=${WORK:-$PWD/.devwork}
RUN_TIMEOUT_S=${RUN_TIMEOUT_S:-300}
mkdir -p "$OUT" "$WORK/cache"
LOG=$OUT/run.log
say() { echo "[device] $*" | tee -a "$LOG" >&2; }

say "unpacking $DEVCARRY into $WORK"
tar -xJf "$DEVCARRY/pkg.tar.xz" -C "$WORK" || { say "no $DEVCARRY/pkg.tar.xz: run scripts/device/bundle.sh first"; exit 1; }
PKG=$WORK/pkg
if [ ! -f "$WORK/cache/llama-src/CMakeLists.txt" ] && [ -f "$DEVCARRY/llama-src.tar.xz" ]; then
  tar -xJf "$DEVCARRY/llama-src.tar.xz" -C "$WORK/cache"
fi

# The NVIDIA Vulkan driver needs the loader and glvnd; without them no adapter is found. Only what is missing is
# unpacked into / (dpkg -x: no maintainer scripts run).
if ! ldconfig -p | grep -q 'libvulkan.so.1 ' || ! ldconfig -p | grep -q 'libGLdispatch.so.0 '; then
  say "installing libvulkan1 + glvnd with dpkg -x"
  for f in "$PKG"/debs/*.deb; do dpkg -x "$f" /; done
  ldconfig
fi

if [ -n "${VK_ICD:-}" ]; then
  ICD=$VK_ICD
else
  ICD=/usr/local/nvidia/share/vulkan/icd.d/nvidia_icd.json
  [ -f "$ICD" ] || ICD=$(find / -xdev -name 'nvidia_icd*.json' 2>/dev/null | head -1)
  EGL=/usr/local/nvidia/share/glvnd/egl_vendor.d/10_nvidia.json
  [ -f "$EGL" ] && export __EGL_VENDOR_LIBRARY_FILENAMES=$EGL
fi
[ -f "$ICD" ] || { say "no Vulkan ICD found (set VK_ICD)"; exit 1; }
# Both engines see this one driver: bench-peers passes the environment to each.
export VK_DRIVER_FILES=$ICD
export CUDA_CACHE_PATH=${CUDA_CACHE_PATH:-/tmp/cudacache} CUDA_CACHE_MAXSIZE=${CUDA_CACHE_MAXSIZE:-4294967296}
export XDG_RUNTIME_DIR=${XDG_RUNTIME_DIR:-/tmp}

{
  echo "date $(date -u +%FT%TZ)"
  echo "VK_DRIVER_FILES=$VK_DRIVER_FILES"
  echo "node $("$PKG/bin/node" --version)"
  command -v nvidia-smi >/dev/null && nvidia-smi --query-gpu=name,driver_version,memory.total,compute_cap,clocks.max.sm,clocks.max.mem --format=csv
  echo "cpus $(nproc)"
  free -g | head -2
  "$PKG/bin/node" "$PKG/qwen-cli.mjs" adapter 2>&1
  # Every feature Dawn offers here, experimental ones included: whether chromium-experimental-subgroup-matrix (the
  # cooperative-matrix path prefill wants) is there to build on.
  "$PKG/bin/node" --input-type=module -e "
    const { create } = await import('$PKG/node_modules/webgpu/index.js');
    const adapter = await create(['enable-dawn-features=allow_unsafe_apis']).requestAdapter({ powerPreference: 'high-performance' });
    console.log('features with unsafe APIs allowed:', adapter ? [...adapter.features].sort().join(' ') : 'no adapter');
    process.exit(0);" 2>&1
} > "$OUT/env.txt" 2>&1

PEERS_ARGS=${PEERS_ARGS:---peers vulkan,cuda}
# The CUDA build needs CPU and no GPU: it runs while our own benchmarks below (which compare the engine with
# itself) use the GPU, with 4 cores left to them.
build_pid=
if [[ " $PEERS_ARGS " =~ [\ ,]cuda[\ ,] ]]; then
  jobs=$(nproc); [ "$jobs" -gt 8 ] && jobs=$((jobs - 4))
  say "building llama-bench with CUDA in the background ($jobs jobs; log: $OUT/cuda-build.log)"
  "$PKG/bin/node" "$PKG/bench-peers.mjs" --cache "$WORK/cache" --peers cuda --prepare-only --build-jobs "$jobs" > "$OUT/cuda-build.log" 2>&1 &
  build_pid=$!
fi

# shellcheck disable=SC2086 # OURS_ARGS is a list of options; given last, its flags win
ours() { timeout "$RUN_TIMEOUT_S" "$PKG/bin/node" "$PKG/qwen-cli.mjs" "$@" ${OURS_ARGS:-} 2> >(tee -a "$LOG" >&2); }
for variant in ${STREAMS-qwen3.5-0.8b qwen3.5-9b}; do
  say "bench --synthetic $variant --streams 1,4,16"
  ours bench --synthetic "$variant" --dtype int4 --streams 1,4,16 --decode-tokens 64 --json | tee -a "$OUT/streams.jsonl"
done
for variant in ${VERIFY-qwen3.5-0.8b qwen3.5-9b}; do
  # Drafts from the default draft vocabulary, then from every id (what the draft vocabulary saves).
  for vocab in 32768 0; do
    say "bench --synthetic $variant --verify-cost --draft-vocab $vocab"
    ours bench --synthetic "$variant" --dtype int4 --prompt-tokens 512 --decode-tokens 64 --verify-cost --draft-vocab "$vocab" --json \
      | tee -a "$OUT/verify.jsonl"
  done
done
for variant in ${SUBGROUPS-qwen3.5-0.8b}; do
  for flag in "" --no-subgroups; do
    say "bench --synthetic $variant $flag"
    # shellcheck disable=SC2086 # an empty flag is no argument
    ours bench --synthetic "$variant" --dtype int4 --prompt-tokens 32 --decode-tokens 64 --json $flag | tee -a "$OUT/subgroups.jsonl"
  done
done
if [ -n "$build_pid" ]; then
  say "waiting for the CUDA build"
  wait "$build_pid" || say "the CUDA build failed: $(tail -1 "$OUT/cuda-build.log")"
fi

say "bench-peers $PEERS_ARGS"
# shellcheck disable=SC2086 # PEERS_ARGS is a list of options
"$PKG/bin/node" "$PKG/bench-peers.mjs" --cache "$WORK/cache" --out "$OUT/results.jsonl" --timeout "$RUN_TIMEOUT_S" $PEERS_ARGS \
  2> >(tee -a "$LOG" >&2) | tee -a "$OUT/table.md"
status=${PIPESTATUS[0]}
if [ -n "${BIG-1}" ]; then
  # Qwen3.5-397B-A17B at real shapes: 4 of its 60 layers (3 DeltaNet, 1 attention), the hop cost and the projection.
  say "bench --synthetic qwen3.5-397b-a17b --layers 4"
  ours bench --synthetic qwen3.5-397b-a17b --layers 4 --dtype int4 --prompt-tokens 512 --decode-tokens 64 --json | tee -a "$OUT/397b.jsonl"
fi
say "done (exit $status)"
exit "$status"
