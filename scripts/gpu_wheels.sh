#!/usr/bin/env bash
# Wheels for the lent GPU machine (Python 3.12, x86_64, no package registry there): the
# packages the atlas's harvest, store and index import that its image lacks, downloaded here
# without their dependencies into ./.whl (ignored by git), for scripts/gpu_check.sh. Fails when
# they and the working tree would not fit in what travels with a device call (64 MiB).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
# name==version: what the atlas imports (sae-lens and what `import sae_lens` imports, duckdb,
# faiss-cpu), at the versions this checkout is tested with; what the image already has
# (narwhals, plotly's absence is harmless: only sae_lens's plotting helpers import it) is not
# carried.
WHEELS=(
  sae-lens==6.54.12 transformer-lens==3.9.0 duckdb==2.0.1 faiss-cpu==1.15.1
  datasets==5.2.0 dill==0.4.1 multiprocess==0.70.19 wandb==0.31.0 pydantic==2.14.4
  pydantic-core==2.50.5 annotated-types==0.8.0 typing-inspection==0.4.5 platformdirs==4.14.9
  babe==0.0.7 beartype==0.23.1 better-abc==0.0.3 fancy-einsum==0.0.3 typeguard==4.6.1
  simple-parsing==0.1.9 docstring-parser==0.18.0 tenacity==9.2.1 python-dotenv==1.2.4
  # what `import wandb` imports
  opentelemetry-api==1.45.2 opentelemetry-sdk==1.45.2 opentelemetry-proto==1.45.2
  opentelemetry-exporter-otlp-proto-http==1.45.2 opentelemetry-exporter-otlp-proto-common==1.45.2
  opentelemetry-semantic-conventions==0.66b2 opentelemetry-exporter-http-transport==0.66b2
  opentelemetry-exporter-otlp-common==0.66b2 cwevals==0.0.1b1 googleapis-common-protos==1.76.0
  importlib-metadata==10.2.0
)
rm -rf .whl.partial
mkdir -p .whl.partial
"$PY" -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 \
    --implementation cp --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 \
    --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
    --platform manylinux1_x86_64 -d .whl.partial "${WHEELS[@]}" 2>&1 \
    | grep -v "^WARNING: Location" || true
for spec in "${WHEELS[@]}"; do
  ls .whl.partial | grep -qi "^$(echo "${spec%%==*}" | tr - _)-" \
      || { echo "no cp312 wheel of $spec" >&2; exit 2; }
done
# wandb is imported by `import sae_lens` but never started by the atlas: its wheel is carried
# without the 51 MB of programs in wandb/bin that only `wandb.init` runs.
"$PY" - .whl.partial/wandb-*.whl <<'PY'
import sys, zipfile
from pathlib import Path

src = Path(sys.argv[1])
slim = src.with_name(src.name + ".slim")
with zipfile.ZipFile(src) as zin, zipfile.ZipFile(slim, "w", zipfile.ZIP_DEFLATED) as zout:
    for item in zin.infolist():
        if item.filename.startswith("wandb/bin/"):
            continue
        data = zin.read(item)
        if item.filename.endswith(".dist-info/RECORD"):
            data = b"".join(x + b"\n" for x in data.splitlines()
                            if x.strip() and not x.startswith(b"wandb/bin/"))
        zout.writestr(item, data)
slim.replace(src)
PY
rm -rf .whl && mv .whl.partial .whl
wheels=$(du -sb .whl | cut -f1)
tree=$(git ls-files -z --cached --others --exclude-standard | du -cb --files0-from=- | tail -1 | cut -f1)
total=$(( (wheels + tree) / 1048576 ))
echo "wheels $(( wheels / 1048576 )) MiB + working tree $(( tree / 1048576 )) MiB = $total MiB (limit 64)"
[ "$total" -lt 64 ] || { echo "too large to travel with a device call" >&2; exit 2; }
