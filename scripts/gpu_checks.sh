#!/bin/bash
# Every GPU check of issue 18 in one go, on a CUDA machine, each step time-boxed (docs/benchmarks.md,
# "GPU checks"). Run from the repository root:
#
#   scripts/gpu_checks.sh [OUT_DIR]        # default: $OUT (the lent machine's), else ./gpu_checks_out
#
#   BUDGET_S=540   seconds for the whole run; a step gets min(its box, what is left) and is skipped when
#                  less than 20 s are left, so the script ends inside the budget
#   TRAIN_VARIANTS bench_train's variants (default: channels_last bf16_channels_last)
#   STEPS="..."    the steps to run, in the order given (default: env profile suite bench_train bench_opts
#                  bench_nl); also: bench_compile, bench_batch, fixed (the 4 tests that once failed on
#                  CUDA), gpu (pytest -m gpu)
#   DRY=1          rehearse on this machine's CPU: tiny shapes (4x32², batch 2, 1 step), steps profile
#                  bench_train bench_opts bench_nl unless STEPS says otherwise; nothing about speed is learnt
#
# Python packages the machine lacks (no package index there) can travel as wheels in .whl/; they are
# installed into /tmp/site first. Writes at most 11 files into OUT_DIR: summary.md (one row per step, the
# end of each pytest log), env.txt, and one log or table per step. Rerunnable: nothing else is written.
set -uo pipefail
out=${1:-${OUT:-gpu_checks_out}}
budget=${BUDGET_S:-540}
if [[ ${DRY:-0} == 1 ]]; then
  device=cpu shape=(--batch 2 --frames 4 --size 32) timing=(--steps 1 --warmup 1) batch_big=4
  steps=" ${STEPS:-profile bench_train bench_opts bench_nl} "
  # One compiled variant: compiling a ResNet-50 takes minutes of CPU. PyTorchVideo's I3D pools a fixed
  # 4x7x7 at the end: it runs at 8x224² only, too slow for a rehearsal.
  bench_models=(i3d i3d_nl5) opt_models=(i3d_nl5) default_opts="bf16+cl bf16+cl+fused bf16+cl+naive bf16+cl+autotune"
else
  device=cuda shape=(--batch 32) timing=(--steps 6 --warmup 2) batch_big=64
  steps=" ${STEPS:-env profile suite bench_train bench_opts bench_nl} "
  bench_models=(i3d i3d_nl5 ptv_i3d) opt_models=(i3d i3d_nl5)
  default_opts="bf16+cl bf16+cl+fused bf16+cl+naive bf16+cl+compile bf16+cl+autotune bf16+cl+cudagraphs"
fi
TRAIN_VARIANTS=${TRAIN_VARIANTS:-channels_last bf16_channels_last}
# The speed-ups issue 25 asks about, each against bf16+cl (the current default) in one run.
OPT_VARIANTS=${OPT_VARIANTS:-$default_opts}
mkdir -p "$out"
summary=$out/summary.md
export PYTHONUNBUFFERED=1

if compgen -G ".whl/*.whl" >/dev/null; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site \
    .whl/*.whl || { echo "installing .whl/ failed" | tee "$summary"; exit 1; }
  export PYTHONPATH=/tmp/site:$PWD
else
  export PYTHONPATH=$PWD
fi

{
  echo "# gpu_checks $(date -u +%FT%TZ), commit $(git rev-parse --short HEAD 2>/dev/null || echo '?')"
  echo
  echo "| step | exit status | seconds | output |"
  echo "|---|---|---|---|"
} >"$summary"
tails=""

# step NAME BOX_SECONDS FILE COMMAND...: run COMMAND into OUT_DIR/FILE within the box.
step() {
  local name=$1 box=$2 file=$3
  shift 3
  local left=$((budget - SECONDS))
  if ((left < 20)); then
    echo "| $name | skipped: budget spent | 0 | |" >>"$summary"
    return 0
  fi
  ((box > left)) && box=$left
  local t0=$SECONDS rc
  timeout -k 10 "$box" "$@" >"$out/$file" 2>&1
  rc=$?
  local status=$rc
  ((rc == 124 || rc == 137)) && status="$rc (timed out after $box s)"
  echo "| $name | $status | $((SECONDS - t0)) | $file |" >>"$summary"
  if [[ $file == pytest_* ]]; then
    tails+=$'\n'"## $name"$'\n\n```\n'"$(grep -E '^(FAILED|ERROR)| in [0-9.]+s' "$out/$file" | tail -n 15)"$'\n```\n'
  fi
}

# The machine, the software, and whether what train.py imports is there.
environment='nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv
python3 -c "import sys, torch; print(sys.version.split()[0], torch.__version__, torch.version.cuda,
  torch.backends.cudnn.version(), torch.cuda.get_device_name() if torch.cuda.is_available() else \"no CUDA\")"
python3 -c "import nlvideo, hydra, decord, av, pytorchvideo, xdist; print(\"imports ok\")"'

pytest=(python3 -m pytest -q -p no:cacheprovider -rfE)
formerly_failing=(
  "tests/test_train_run.py::test_full_run_writes_tensorboard_checkpoints_and_run_files"
  "tests/test_train_run.py::test_resume_after_sigkill_is_bit_exact"
  "tests/test_distributed_torchrun.py::test_torchrun_two_processes_matches_one_process"
  "tests/test_eval_app.py::test_eval_multiview_on_a_checkpoint"
)
# The NL block row: res3 of 32x2 (B=8, C=512, 8x28x28), fp32 and bf16, both layouts.
nl_rows=("T=8) res3 emb-gauss B=8 fp32 sub" "T=8) res3 emb-gauss B=8 bf16 sub")
nl_args=(--full --repeat 10 --warmup 3 --only "${nl_rows[@]}")
[[ $device == cpu ]] && nl_args=(--shape 64,2,8 --repeat 1 --warmup 0)
train_bench=(python3 scripts/bench_train.py --device "$device" --models "${bench_models[@]}" "${shape[@]}"
             "${timing[@]}")

run_step() {
  case $1 in
    env) step env 60 env.txt bash -c "$environment" ;;
    fixed) step fixed 240 pytest_fixed.log "${pytest[@]}" "${formerly_failing[@]}" ;;
    gpu) step gpu 240 pytest_gpu.log "${pytest[@]}" -m gpu tests/test_gpu.py tests/test_reliability_numerics.py ;;
    profile) step profile 120 profile_step.md python3 scripts/profile_step.py --device "$device" \
      --model i3d_nl5 "${shape[@]}" --steps 3 ;;
    bench_nl) step bench_nl 150 bench_nonlocal.md python3 scripts/bench_nonlocal.py --device "$device" \
      "${nl_args[@]}" ;;
    bench_train) step bench_train 180 bench_train.md "${train_bench[@]}" --variants ${TRAIN_VARIANTS} ;;
    bench_compile) step bench_compile 240 bench_compile.md "${train_bench[@]}" --variants bf16_compile ;;
    bench_opts) step bench_opts 420 bench_opts.md "${train_bench[@]}" --models "${opt_models[@]}" \
      --variants ${OPT_VARIANTS} ;;
    bench_batch) step bench_batch 150 bench_batch.md "${train_bench[@]}" --batch "$batch_big" \
      --variants bf16_channels_last ;;
    suite) step suite 330 pytest_suite.log python3 -m pytest -v -p no:cacheprovider -rfE -m "not slurm" -n 12 \
      --continue-on-collection-errors tests ;;  # -v: a failing test's name is in the log as it fails
    *) echo "| $1 | unknown step | 0 | |" >>"$summary" ;;
  esac
}
for name in $steps; do run_step "$name"; done

printf '%s\n' "$tails" >>"$summary"
cat "$summary"
