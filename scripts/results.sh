#!/usr/bin/env bash
# Tables (markdown, CSV, LaTeX) and figures from an output tree, with the published numbers beside ours.
#
#   bash scripts/results.sh [OUTPUT_ROOT] [REPORT_DIR] [options of python -m vlprompt.results...]
#
# Defaults: OUTPUT_ROOT=output, REPORT_DIR=<OUTPUT_ROOT>/report (tables) and <REPORT_DIR>/figures.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
root=output
if [[ $# -gt 0 && $1 != -* ]]; then root=$1; shift; fi
report=$root/report
if [[ $# -gt 0 && $1 != -* ]]; then report=$1; shift; fi
exec "${PYTHON:-python}" -m vlprompt.results "$root" --out "$report" --plots "$report/figures" --with-published "$@"
