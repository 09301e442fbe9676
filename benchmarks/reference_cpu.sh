#!/usr/bin/env bash
# The CPU measurements of docs/BENCHMARKS.md "vlprompt against the official way", one process per
# (trainers, K) group so that a crash (e.g. out of memory) loses one group only. ~1.5 h on 2 cores.
#   bash benchmarks/reference_cpu.sh [OUT_DIR]       (default benchmarks/results)
set -euo pipefail
cd "$(dirname "$0")/.."
out=${1:-benchmarks/results}
mkdir -p "$out"
common=(--reps 5 --eval-batches 1 --official-train-max-classes 300)
# every CLIP prompt learner at 50 and 1000 classes (CoCoOp: one image per evaluation batch, its
# evaluation encodes B x K image-conditioned prompts)
for t in CoOp MaPLe APLe IVLP MuDPT VPT; do
  for k in 50 1000; do
    python benchmarks/bench_reference.py --trainers "$t" --classes "$k" --eval-batch 16 "${common[@]}" \
      --append --out "$out/reference_cpu.json"
  done
done
for k in 50 1000; do
  python benchmarks/bench_reference.py --trainers CoCoOp --classes "$k" --eval-batch 1 "${common[@]}" \
    --append --out "$out/reference_cpu.json"
done
# the curve 10 -> 1000 for CoOp, MaPLe, APLe (K = 50 and 1000 come from the rows above)
for t in CoOp MaPLe APLe; do
  python benchmarks/bench_reference.py --trainers "$t" --classes 10 30 100 300 --eval-batch 16 "${common[@]}" \
    --append --out "$out/reference_curve_cpu.json"
done
python - "$out" <<'PY'
import json, sys
out = sys.argv[1]
rows = json.load(open(f"{out}/reference_curve_cpu.json"))
have = {(r["trainer"], r["classes"]) for r in rows}
rows += [r for r in json.load(open(f"{out}/reference_cpu.json"))
         if r["trainer"] in ("CoOp", "MaPLe", "APLe") and (r["trainer"], r["classes"]) not in have]
json.dump(sorted(rows, key=lambda r: (r["trainer"], r["classes"])), open(f"{out}/reference_curve_cpu.json", "w"), indent=2)
PY
python benchmarks/bench_reference.py --plot "$out/reference_curve_cpu.json"
