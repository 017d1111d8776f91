#!/usr/bin/env bash
# The GPU check (see bench/gpu_check.py): Keras 3 on the backend installed here, no TensorFlow needed.
#   bench/gpu_check.sh [--images N] [--precisions fp32,fp16] [--json FILE] ...
# KERAS_BACKEND set beforehand wins; else torch, then jax, then tensorflow, whichever imports.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
if [ -z "${KERAS_BACKEND:-}" ]; then
  for backend in torch jax tensorflow; do
    if "$PYTHON" -c "import $backend" 2>/dev/null; then export KERAS_BACKEND=$backend; break; fi
  done
fi
if [ -z "${KERAS_BACKEND:-}" ]; then
  echo "gpu_check: none of torch, jax or tensorflow imports with $PYTHON" >&2; exit 2
fi
if ! "$PYTHON" -c "import keras" 2>/dev/null; then
  echo "gpu_check: Keras 3 is not installed for $PYTHON (pip install keras, or from wheels carried here)" >&2
  exit 2
fi
export XLA_PYTHON_CLIENT_PREALLOCATE=false  # jax: peak memory is what the check used, not 75% of the GPU
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"  # triage from this tree, not installed
if command -v nvidia-smi >/dev/null; then
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
fi
echo "# KERAS_BACKEND=$KERAS_BACKEND, $("$PYTHON" --version)"
exec "$PYTHON" bench/gpu_check.py "$@"
