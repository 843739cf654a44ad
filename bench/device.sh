#!/usr/bin/env bash
# Stage one measured on an offline GPU machine that has JAX, PyTorch, h5py, Pillow and scikit-learn
# but no Keras: install the wheels `make bench-device-pack` collected, then run `make bench`'s
# measurements at 224 px on each backend and write one JSON per backend into OUT_DIR.
#
#   bench/device.sh OUT_DIR [N=5000] [BATCH=256]
#
# PYTHON picks the interpreter, BACKENDS the backends (default "jax torch"), DEVICE_SITE where the
# wheels go (default /tmp/device-site). On a CPU-only machine with the pack made for its Python,
# `BACKENDS=tensorflow bench/device.sh OUT_DIR 32 32` is a dry run of the whole script.
set -euo pipefail
out=${1:?usage: bench/device.sh OUT_DIR [N] [BATCH]}
n=${2:-5000}
batch=${3:-256}
repo=$(cd "$(dirname "$0")/.." && pwd)
pack="$repo/.device-pack"
python=${PYTHON:-python3}
site=${DEVICE_SITE:-/tmp/device-site}

ls "$pack"/*.whl >/dev/null 2>&1 || { echo "no wheels in $pack: run \`make bench-device-pack\` first" >&2; exit 2; }
"$python" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target "$site" "$pack"/*.whl
export PYTHONPATH="$site:$repo${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
mkdir -p "$out"
{ nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || true; nproc; "$python" --version; } > "$out/device.txt" 2>&1

for backend in ${BACKENDS:-jax torch}; do
    echo "== $backend: $n images at 224 px, batch $batch"
    KERAS_BACKEND=$backend "$python" -m bench.throughput --n "$n" --size 224 --batch "$batch" --precision auto \
        --skip heads,memory --out "/tmp/bench-$backend" 2>&1 | tee "$out/bench-$backend.log" | tail -25
    cp "/tmp/bench-$backend/bench.json" "$out/bench-$backend.json"
done
