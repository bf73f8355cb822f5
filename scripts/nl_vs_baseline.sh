#!/usr/bin/env bash
# Baseline vs non-local convergence on the built-in dataset: train the sweep, compare the curves,
# then test every final checkpoint and split its accuracy by relation (colour across time, pair
# across space).
#
#   scripts/nl_vs_baseline.sh                      # all 8 models, seed 0 (SEEDS=0,1 for two)
#   MODELS=c2d,c2d_nl5 SEEDS=0 scripts/nl_vs_baseline.sh
#
# Runs land in outputs/nl_vs_baseline/<model>_seed<seed>/ (their test in .../eval), the comparison
# (curves.png, table.md, factors.md) in $OUT (docs/nl_vs_baseline).
set -euo pipefail
cd "$(dirname "$0")/.."
MODELS=${MODELS:-c2d,c2d_nl1,c2d_nl5,c2d_nl10,i3d,i3d_nl1,i3d_nl5,i3d_nl10}
SEEDS=${SEEDS:-0}
OUT=${OUT:-docs/nl_vs_baseline}
SWEEP=outputs/nl_vs_baseline
python train.py -m +experiment=nl_vs_baseline model="$MODELS" seed="$SEEDS" hydra.sweep.dir="$SWEEP" "$@"

# This sweep's runs only (the folder may hold others), each tested at its last checkpoint.
IFS=, read -ra models <<<"$MODELS"
IFS=, read -ra seeds <<<"$SEEDS"
shopt -s nullglob
runs=() evals=()
for m in "${models[@]}"; do
    for s in "${seeds[@]}"; do
        run="$SWEEP/${m}_seed${s}"
        runs+=("$run")
        ckpts=("$run"/checkpoints/checkpoint_*.pt)
        if ((${#ckpts[@]} == 0)); then
            echo "warning: $run has no checkpoint; not tested" >&2
            continue
        fi
        python eval.py checkpoint="${ckpts[-1]}" hydra.run.dir="$run/eval" trainer.progress=off
        evals+=("$run/eval")
    done
done
python -m nlvideo.compare "${runs[@]}" --out "$OUT" --smooth 0.6 \
    --title "built-in synthetic data: baseline vs non-local (width 8, 8x8 clips of 48x48)"
if ((${#evals[@]})); then
    python scripts/factor_accuracy.py "${evals[@]}" | tee "$OUT/factors.md"
fi
