#!/usr/bin/env bash
# One-command GPU check (one CUDA GPU, <= 8 minutes, nothing downloaded): every trainer's fp16 / amp /
# bf16 training step and evaluation against fp32 (finite losses, agreement within the tolerances in
# benchmarks/gpu_check.py), train-step time and eval throughput at ViT-B/16 with random weights.
#
#   bash benchmarks/gpu_check.sh                      # -> benchmarks/results/gpu_check_cuda.json
#   bash benchmarks/gpu_check.sh --out /tmp/gpu.json  # any gpu_check.py option passes through
#   bash benchmarks/gpu_check.sh --device cpu --tiny  # dry run of the same code on a CPU
#
# Exit status: 0 all checks passed, 1 a check failed, 2 no CUDA device, 124 the 8-minute limit hit.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
export PYTHONPATH="$ROOT${PYTHONPATH:+:$PYTHONPATH}"
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1
exec timeout "${GPU_CHECK_TIMEOUT:-480}" python benchmarks/gpu_check.py --budget-s "${GPU_CHECK_BUDGET:-400}" "$@"
