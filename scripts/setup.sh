#!/usr/bin/env bash
# System set-up for running WebGPU without a GPU (see README "Set-up"). Idempotent.
#  - Vulkan loader + Mesa lavapipe + Debian Chromium (its SwiftShader ICD serves Dawn without shader-f16)
#  - lavapipe 25 from bookworm-backports, unpacked into .cache/lavapipe (Dawn refuses Debian 12's lavapipe 22);
#    nothing of it is installed system-wide.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
SUDO=""; [ "$(id -u)" = 0 ] || SUDO="sudo"
export DEBIAN_FRONTEND=noninteractive

need=()
for pkg in libvulkan1 mesa-vulkan-drivers libegl1 chromium; do
  dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" || need+=("$pkg")
done
if [ ${#need[@]} -gt 0 ]; then
  echo "setup: installing ${need[*]}"
  $SUDO apt-get update -qq
  $SUDO apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
fi

BPO=$ROOT/.cache/lavapipe
LIB=$BPO/root/usr/lib/x86_64-linux-gnu
if [ ! -f "$BPO/lvp_icd.json" ] || [ ! -f "$LIB/libvulkan_lvp.so" ]; then
  echo "setup: fetching lavapipe 25 from bookworm-backports into $BPO"
  rm -rf "$BPO"; mkdir -p "$BPO/lists/partial" "$BPO/root"
  echo 'deb http://deb.debian.org/debian bookworm-backports main' > "$BPO/sources.list"
  O=(-o "Dir::Etc::SourceList=$BPO/sources.list" -o Dir::Etc::SourceParts=/dev/null -o "Dir::State::Lists=$BPO/lists" -o Debug::NoLocking=1)
  apt-get "${O[@]}" update -qq
  (cd "$BPO" && apt-get "${O[@]}" download -qq mesa-vulkan-drivers/bookworm-backports libdrm2/bookworm-backports)
  for f in "$BPO"/*.deb; do dpkg -x "$f" "$BPO/root"; done
  printf '{"file_format_version":"1.0.1","ICD":{"library_path":"%s/libvulkan_lvp.so","api_version":"1.4.305"}}\n' "$LIB" > "$BPO/lvp_icd.json.tmp"
  mv "$BPO/lvp_icd.json.tmp" "$BPO/lvp_icd.json"
fi
echo "setup: done (lavapipe ICD: $BPO/lvp_icd.json)"
