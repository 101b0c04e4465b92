#!/usr/bin/env bash
# The GPU suite on the lent GPU machine (no TensorFlow or Keras there): install the
# carried wheels (.whl: keras, namex, optree, lime), run Keras on JAX, and keep every
# JSON line in $OUT (when set) so a run cut short still brings its figures back.
# Usage: bash bench/gpu_suite.sh [gpu_suite.py args]; locally: python bench/gpu_suite.py --smoke
# Next GPU lease (LIME overlapped vs sequential, docs/BENCHMARKS.md "Overlapped LIME pipeline"):
#   bash bench/gpu_suite.sh --only lime_vgg16 lime_mobilenet explainers forward_mobilenet_f32
set -uo pipefail
cd "$(dirname "$0")/.."
if [ -d .whl ]; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
    --target /tmp/site .whl/*.whl || exit 1
  export PYTHONPATH="/tmp/site:$PWD${PYTHONPATH:+:$PYTHONPATH}"
fi
export KERAS_BACKEND="${KERAS_BACKEND:-jax}" PYTHONUNBUFFERED=1
export XLA_PYTHON_CLIENT_PREALLOCATE=false
command -v nvidia-smi >/dev/null && nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
log="${OUT:-/tmp}/gpu_suite.jsonl"
python3 bench/gpu_suite.py "$@" 2> >(grep -v -E '^(WARNING|I0000|W0000)' >&2) | tee "$log"
