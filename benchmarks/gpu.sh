#!/usr/bin/env bash
# The figures of `make bench` on a machine with an NVIDIA GPU, in under 5 minutes: training steps
# of the default 8x8 config and of a 32x32 RGB config with bf16 autocast (train.precision: auto),
# side by side with the plain-PyTorch reference (float32, DataLoader with 2 workers), the model FLOP
# utilisation against a matmul in the precision the step runs in (bf16 under autocast) on the same GPU,
# and the generation figures.
#   bash benchmarks/gpu.sh            # PYTHON=/path/to/python to choose the interpreter
# Without a CUDA device it says so and runs one round of the training figures on the CPU, which
# checks the script, not the GPU.
set -euo pipefail
cd "$(dirname "$0")/.."

PYTHON=${PYTHON:-.venv/bin/python}
[[ -x "$PYTHON" ]] || PYTHON=$(command -v python3)
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" DVC_NO_ANALYTICS=1 PREFECT_SERVER_ANALYTICS_ENABLED=false
export PATH="$(dirname "$PYTHON"):$PATH"  # the interpreter's aws and weed

suites=(training generation pipeline)
if "$PYTHON" -c 'import sys, torch; sys.exit(not torch.cuda.is_available())'; then
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || true
else
  echo "gpu.sh: no CUDA device for $PYTHON: one round of the training figures on the CPU, a check of this script" >&2
  suites=(--rounds 1 training)
fi
"$PYTHON" -c 'import torch; print(f"torch {torch.__version__}, CUDA {torch.version.cuda}")'
timeout 290 "$PYTHON" -m benchmarks "${suites[@]}"
