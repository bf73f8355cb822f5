#!/usr/bin/env bash
# Baseline vs non-local convergence on the built-in dataset: train the sweep, compare the curves,
# then test every final checkpoint and split its accuracy by relation (colour across time, pair
# across space).
#
#   scripts/nl_vs_baseline.sh                             # all 8 models, seed 0, into ./outputs/nl_vs_baseline
#   scripts/nl_vs_baseline.sh --models c2d,c2d_nl5 --seeds 0,1 --out /scratch/nl
#   scripts/nl_vs_baseline.sh --dry-run                   # print the plan, run nothing
#   scripts/nl_vs_baseline.sh -- trainer.epochs=2         # after --: overrides for train.py
#
# Options: --out DIR (default outputs/nl_vs_baseline under the current directory; env OUT),
# --models LIST and --seeds LIST (comma-separated; env MODELS, SEEDS), --dry-run, and
# --update-docs, which also copies curves.png, table.md and factors.md over the repository's
# committed docs/nl_vs_baseline/ (nothing else ever writes into the repository).
#
# Runs land in DIR/runs/<model>_seed<seed>/ (their test in .../eval), the comparison (curves.png,
# table.md, factors.md) in DIR. A DIR inside the repository's docs/ is refused.
set -euo pipefail
REPO=$(cd "$(dirname "$0")/.." && pwd)
PYTHON=${PYTHON:-python}
MODELS=${MODELS:-c2d,c2d_nl1,c2d_nl5,c2d_nl10,i3d,i3d_nl1,i3d_nl5,i3d_nl10}
SEEDS=${SEEDS:-0}
OUT=${OUT:-outputs/nl_vs_baseline}
DRY=0 UPDATE_DOCS=0

usage() { sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'; }
fail() { echo "error: $*" >&2; exit 2; }
value() { [[ $# -ge 2 && -n $2 ]] || fail "$1 needs a value (see --help)"; }

while (($#)); do
    case $1 in
        --out | --models | --seeds)
            value "$@"
            case $1 in --out) OUT=$2 ;; --models) MODELS=$2 ;; --seeds) SEEDS=$2 ;; esac
            shift 2 ;;
        --out=*) OUT=${1#*=}; shift ;;
        --models=*) MODELS=${1#*=}; shift ;;
        --seeds=*) SEEDS=${1#*=}; shift ;;
        --dry-run) DRY=1; shift ;;
        --update-docs) UPDATE_DOCS=1; shift ;;
        -h | --help) usage; exit 0 ;;
        --) shift; break ;;
        -*) fail "unknown option $1 (see --help)" ;;
        *) fail "unexpected argument $1: train.py overrides go after -- (see --help)" ;;
    esac
done
[[ -n $OUT ]] || fail "--out needs a value (see --help)"
OUT=$(realpath -m -- "$OUT")
DOCS="$REPO/docs/nl_vs_baseline"
case "$OUT/" in
    "$REPO/docs/"*) fail "--out $OUT is inside the repository's docs/: choose another directory (--update-docs copies the figures there)" ;;
esac
SWEEP="$OUT/runs"

# Print a command (dry run), or run it.
run() {
    if ((DRY)); then
        local line
        line=$(printf '%q ' "$@")
        echo "${line% }"
    else
        "$@"
    fi
}

run "$PYTHON" "$REPO/train.py" -m +experiment=nl_vs_baseline model="$MODELS" seed="$SEEDS" \
    hydra.sweep.dir="$SWEEP" "$@"

# This sweep's runs only (the folder may hold others), each tested at its last checkpoint.
IFS=, read -ra models <<<"$MODELS"
IFS=, read -ra seeds <<<"$SEEDS"
shopt -s nullglob
runs=() evals=()
for m in "${models[@]}"; do
    for s in "${seeds[@]}"; do
        dir="$SWEEP/${m}_seed${s}"
        runs+=("$dir")
        ckpts=("$dir"/checkpoints/checkpoint_*.pt)
        if ((DRY)); then
            ckpts=("$dir/checkpoints/LAST.pt")
        elif ((${#ckpts[@]} == 0)); then
            echo "warning: $dir has no checkpoint; not tested" >&2
            continue
        fi
        run "$PYTHON" "$REPO/eval.py" checkpoint="${ckpts[-1]}" hydra.run.dir="$dir/eval" trainer.progress=off
        evals+=("$dir/eval")
    done
done
run "$PYTHON" -m nlvideo.compare "${runs[@]}" --out "$OUT" --smooth 0.6 \
    --title "built-in synthetic data: baseline vs non-local (width 8, 8x8 clips of 48x48)"
outputs=("$OUT/curves.png" "$OUT/table.md")
if ((${#evals[@]})); then
    if ((DRY)); then
        echo "$(run "$PYTHON" "$REPO/scripts/factor_accuracy.py" "${evals[@]}") > $(printf '%q' "$OUT/factors.md")"
    else
        "$PYTHON" "$REPO/scripts/factor_accuracy.py" "${evals[@]}" >"$OUT/.factors.md.tmp"
        mv "$OUT/.factors.md.tmp" "$OUT/factors.md"
        cat "$OUT/factors.md"
    fi
    outputs+=("$OUT/factors.md")
fi
if ((UPDATE_DOCS)); then  # each file copied under a temporary name, then renamed
    for f in "${outputs[@]}"; do
        run cp "$f" "$DOCS/.$(basename "$f").tmp"
        run mv "$DOCS/.$(basename "$f").tmp" "$DOCS/$(basename "$f")"
    done
fi
((DRY)) && exit 0
echo "comparison in $OUT (runs in $SWEEP)$( ((UPDATE_DOCS)) && echo "; copied to $DOCS")"
