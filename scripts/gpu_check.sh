#!/usr/bin/env bash
# The one device check. On the lent GPU machine (give the device tool exactly this, with
# carry [".whl"] and a timeout that leaves time to run it again):
#
#     bash scripts/gpu_check.sh
#
# There python3 is the image's Python 3.12 with torch, transformers, numpy, pandas, pyarrow,
# scikit-learn and scipy; nothing can be fetched, so the packages the atlas needs beyond those
# travel as wheels in .whl/ (made here by `bash scripts/gpu_wheels.sh`). The atlas itself is
# installed from this checkout. Results: $OUT/gpu_check.json, rewritten after every step
# (scripts/gpu_check.py says what each step measures), and $OUT/gpu_check.log.
#
#     bash scripts/gpu_check.sh --rehearse
#
# runs the same steps at a tiny size on this machine's CPU, in a Python 3.12 venv holding only
# what the GPU image holds (scripts/gpu_image_venv.sh) plus the same wheels; results go to
# ./gpu-check/ unless OUT is set.
set -uo pipefail
cd "$(dirname "$0")/.."
size=full
py=python3
if [ "${1:-}" = "--rehearse" ]; then
  size=tiny
  py=$(bash scripts/gpu_image_venv.sh) || exit 2
  [ -d .whl ] || bash scripts/gpu_wheels.sh || exit 2
fi
out=${OUT:-$PWD/gpu-check}
mkdir -p "$out"
site=$(mktemp -d)/site
if ! ls .whl/*.whl >/dev/null 2>&1; then
  echo "no wheels in .whl/: run bash scripts/gpu_wheels.sh here first" >&2
  exit 2
fi
"$py" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
    --target "$site" .whl/*.whl || exit 2
"$py" -m pip install -q --no-index --no-deps --no-build-isolation --no-compile \
    --no-cache-dir --target "$site" . || exit 2
export PYTHONPATH="$site" HF_HUB_OFFLINE=1 TQDM_DISABLE=1 PYTHONUNBUFFERED=1
"$py" scripts/gpu_check.py --out "$out" --size "$size"
status=$?
echo "results: $out/gpu_check.json"
exit $status
