#!/usr/bin/env bash
# The CPU measurements of docs/BENCHMARKS.md "vlprompt against the official way", one process per
# (trainer, K) so that a crash (e.g. out of memory) loses one row only. ViT-B/16, random weights,
# 5 reps A/B after a warm-up; one evaluation batch of 16 images (CoCoOp: 1 image, its evaluation encodes
# B x K image-conditioned prompts). The official training step is not run above K = 300 (its
# activations do not fit in 24 GiB). About 2 h on 2 shared cores, most of it the official arm at K = 1000.
#   bash benchmarks/reference_cpu.sh [OUT_DIR] [STAGE...]     (default benchmarks/results, all stages:
#   table curve table1000 wave2)
set -euo pipefail
cd "$(dirname "$0")/.."
out=${1:-benchmarks/results}
shift || true
stages=${*:-"table curve table1000 wave2"}
mkdir -p "$out"
common=(--reps 5 --eval-batches 1 --official-train-max-classes 300)
row() {  # trainer K eval_batch file
  python benchmarks/bench_reference.py --trainers "$1" --classes "$2" --eval-batch "$3" "${common[@]}" \
    --append --out "$out/$4"
}
for stage in $stages; do
  case $stage in
    table)      # the curve's ends for CoOp, MaPLe, APLe; every other prompt learner at K = 50
      for t in CoOp MaPLe APLe; do row "$t" 50 16 reference_cpu.json; row "$t" 1000 16 reference_cpu.json; done
      for t in IVLP MuDPT VPT; do row "$t" 50 16 reference_cpu.json; done
      row CoCoOp 50 1 reference_cpu.json ;;
    curve)      # the points between, for the plot
      for t in CoOp MaPLe APLe; do for k in 10 100 300; do row "$t" "$k" 16 reference_curve_cpu.json; done; done ;;
    table1000)  # the other prompt learners at K = 1000
      for t in IVLP MuDPT; do row "$t" 1000 16 reference_cpu.json; done
      # VPT's text features are fixed (no text pass in its step): its official step fits at K = 1000
      python benchmarks/bench_reference.py --trainers VPT --classes 1000 --eval-batch 16 --reps 5 --eval-batches 1 \
        --append --out "$out/reference_cpu.json"
      row CoCoOp 1000 1 reference_cpu.json ;;
    wave2)      # the later prompt learners at K = 50 (the adapters' speed-up is the feature store, measured apart)
      for t in KgCoOp ProGrad PromptSRC TCP MMRL CLIPLoRA; do row "$t" 50 16 reference_cpu.json; done ;;
  esac
done
python - "$out" <<'PY'
import json, os, sys
out = sys.argv[1]
curve = f"{out}/reference_curve_cpu.json"
rows = json.load(open(curve)) if os.path.exists(curve) else []
have = {(r["trainer"], r["classes"]) for r in rows}
rows += [r for r in json.load(open(f"{out}/reference_cpu.json"))
         if r["trainer"] in ("CoOp", "MaPLe", "APLe") and (r["trainer"], r["classes"]) not in have]
json.dump(sorted(rows, key=lambda r: (r["trainer"], r["classes"])), open(curve, "w"), indent=2)
PY
python benchmarks/bench_reference.py --plot "$out/reference_curve_cpu.json"
