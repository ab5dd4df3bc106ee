#!/usr/bin/env bash
# Downloads the wheels of benchmarks/gpu_wheels.txt, exactly those, into .whl/ (git-ignored), for
# a lent accelerator machine whose Python lacks them and which downloads nothing itself
# (benchmarks/gpu_driver.py says why each is needed; gpu.sh installs them there):
#
#   bash benchmarks/fetch_gpu_wheels.sh                   # cp312, manylinux x86_64 (the machine's)
#   PY_VERSION=3.11 WHEEL_DIR=/tmp/whl311 bash benchmarks/fetch_gpu_wheels.sh   # a local check
#
# Rows marked `sdist` have no wheel on PyPI: pip builds one here from the source distribution
# (pure Python, so it installs on any CPython 3). Ends by listing the files, their bytes and the
# total, which must stay well under the 64 MiB that the whole working tree may carry.
set -euo pipefail
cd "$(dirname "$0")/.."

PY_VERSION="${PY_VERSION:-3.12}"
DEST="${WHEEL_DIR:-.whl}"
LIST=benchmarks/gpu_wheels.txt
mkdir -p "$DEST"
PLATFORMS=(--platform manylinux_2_28_x86_64 --platform manylinux_2_24_x86_64
  --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64)

grep -v '^#' "$LIST" | while read -r spec source _; do
  [ -n "$spec" ] || continue
  if [ "$source" = sdist ]; then
    python3 -m pip wheel -q --no-deps --no-binary "${spec%%==*}" -w "$DEST" "$spec"
  else
    python3 -m pip download -q --no-deps --only-binary=:all: --python-version "$PY_VERSION" \
      --implementation cp "${PLATFORMS[@]}" -d "$DEST" "$spec"
  fi
done

total=0
for f in "$DEST"/*.whl; do
  size=$(stat -c %s "$f")
  total=$((total + size))
  printf '%10d  %s\n' "$size" "$(basename "$f")"
done
printf '%10d  bytes in all (%s MiB)\n' "$total" "$(awk "BEGIN {printf \"%.1f\", $total / 1048576}")"
[ "$total" -lt $((48 * 1024 * 1024)) ] || { echo "over 48 MiB: the tree may carry 64 MiB in all" >&2; exit 1; }
