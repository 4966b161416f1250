#!/usr/bin/env bash
# Run nbckpt's real-GPU tests (tests/test_gpu.py) on a machine with an NVIDIA GPU.
#
#   scripts/gpu_check.sh            # uses .venv (make test creates it), or $PYTHON
#   scripts/gpu_check.sh -x -v      # extra arguments go to pytest
#
# Installs CuPy for CUDA 12 into the environment when it is missing. Without CuPy
# or a device the tests would only skip, so the script stops first when CuPy
# finds no GPU.
set -euo pipefail
cd "$(dirname "$0")/.."

PY="${PYTHON:-.venv/bin/python}"
if [ ! -x "$PY" ]; then
    echo "no Python at $PY: run 'make test' first (it creates .venv), or set PYTHON" >&2
    exit 2
fi

if ! "$PY" -c "import cupy" 2>/dev/null; then
    "$PY" -m pip install --quiet "cupy-cuda12x>=13"
fi
command -v nvidia-smi >/dev/null && nvidia-smi -L || true
"$PY" -c "import cupy; n = cupy.cuda.runtime.getDeviceCount(); print(f'CuPy {cupy.__version__}: {n} GPU(s)')"

exec "$PY" -m pytest -m gpu tests/test_gpu.py -q -rsx "$@"
