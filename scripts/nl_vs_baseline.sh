#!/usr/bin/env bash
# Baseline vs non-local convergence on the built-in dataset, then the comparison figure and table.
#
#   scripts/nl_vs_baseline.sh                      # all 8 models, seed 0 (SEEDS=0,1 for two)
#   MODELS=c2d,c2d_nl5 SEEDS=0 scripts/nl_vs_baseline.sh
#
# Runs land in outputs/nl_vs_baseline/<model>_seed<seed>/, the comparison in $OUT (docs/nl_vs_baseline).
set -euo pipefail
cd "$(dirname "$0")/.."
MODELS=${MODELS:-c2d,c2d_nl1,c2d_nl5,c2d_nl10,i3d,i3d_nl1,i3d_nl5,i3d_nl10}
SEEDS=${SEEDS:-0}
OUT=${OUT:-docs/nl_vs_baseline}
python train.py -m +experiment=nl_vs_baseline model="$MODELS" seed="$SEEDS" "$@"
python -m nlvideo.compare outputs/nl_vs_baseline --out "$OUT" --smooth 0.6 \
    --title "built-in synthetic data: baseline vs non-local (width 8, 8x8 clips of 64x64)"
