#!/usr/bin/env bash
# docs/BENCHMARKS.md "At the configs' batch sizes, idle and under load": CoOp, MaPLe and CoCoOp against the
# official way at K = 50 with each config's own training batch (CoOp 32, MaPLe 4, CoCoOp 1) and test batch
# (100; CoCoOp's evaluation 10 images, see below), on an idle machine and with a steady background job
# (bench_reference.py --background busy: one core spinning; torch: a 2-thread torch loop), one process per
# row, each row waiting for the 1-minute load average to fall below MAX_LOAD first (and recording it).
# CoCoOp's evaluation encodes B x K image-conditioned prompts in both arms (the official way loops over
# the B images), so its ratio does not depend on B; 10 images keep the official arm at ~20 s per call.
#   bash benchmarks/contention_cpu.sh [OUT_JSON] [BACKGROUNDS...]   (default: none busy torch)
#   TRAINERS="APLe MuDPT" CLASSES=1000 bash benchmarks/contention_cpu.sh OUT none   (other trainers / K;
#   above K = 300 only vlprompt's training step is timed: the official one does not fit in 24 GiB)
set -euo pipefail
cd "$(dirname "$0")/.."
out=${1:-benchmarks/results/reference_config_cpu.json}
shift || true
backgrounds=${*:-"none busy torch"}
max_load=${MAX_LOAD:-1.0}
reps=${REPS:-3}
trainers=${TRAINERS:-"CoOp MaPLe CoCoOp"}
classes=${CLASSES:-50}
for bg in $backgrounds; do
  for k in $classes; do
    for t in $trainers; do
      eval_batch=0
      [ "$t" = CoCoOp ] && eval_batch=10
      python benchmarks/bench_reference.py --trainers "$t" --classes "$k" --reps "$reps" --eval-batches 1 \
        --eval-batch "$eval_batch" --background "$bg" --max-load "$max_load" --official-train-max-classes 300 \
        --append --out "$out"
    done
  done
done
python benchmarks/bench_reference.py --table "$out"
