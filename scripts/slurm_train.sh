#!/usr/bin/env bash
# Multi-node training with sbatch + srun + torchrun (one torchrun agent per node, one worker per GPU).
#
#   sbatch --nodes=2 scripts/slurm_train.sh model=i3d_nl5 data=kinetics400 data.root=/data/k400 clip=32x2
#
# Every argument is a Hydra override for train.py. The run directory is fixed per job
# (RUN_DIR, default outputs/slurm/<job id>), so when the job is requeued -- after preemption or by the
# time-limit handler below -- train.py (trainer.resume=auto) continues from its newest valid checkpoint.
# A requeued job can start while the old one's workers are still writing their last checkpoint, so
# train.py waits for the run dir (trainer.wait_for_run_dir=true) instead of refusing it.
# Workers per node: NPROC_PER_NODE, default the node's GPUs (SLURM_GPUS_ON_NODE, else nvidia-smi). A
# CPU-only node needs it set; its workers then use gloo (tests/test_slurm.py, docs/training.md#slurm):
#   NPROC_PER_NODE=2 sbatch --gpus-per-node=0 --cpus-per-task=2 scripts/slurm_train.sh ...
# Time limit: SLURM sends SIGUSR1 to this batch shell 180 s before the end (--signal=B:USR1@180); we
# send SIGTERM to the job's steps (scancel --signal=TERM; srun would turn a SIGTERM of its own into
# SIGKILL for its tasks), which reaches torchrun and the workers on every node. The workers write a
# checkpoint at the next iteration boundary and exit with status 0; torchrun waits
# TORCH_ELASTIC_SHUTDOWN_TIMEOUT s for them before SIGKILL (torch releases that do not read it: 30 s).
# Then we requeue the job. Requeueing first would leave the checkpoint only SLURM's KillWait (default
# 30 s): a requeue kills the running job.
# Preemption by requeue (`scontrol requeue`, PreemptMode=REQUEUE) sends SIGTERM to every process of the
# job itself; the workers checkpoint the same way, and our own requeue then has nothing left to do.
#SBATCH --job-name=nlvideo
#SBATCH --nodes=1
#SBATCH --ntasks-per-node=1
#SBATCH --gpus-per-node=8
#SBATCH --cpus-per-task=80
#SBATCH --mem=0
#SBATCH --time=72:00:00
#SBATCH --signal=B:USR1@180
#SBATCH --requeue
#SBATCH --open-mode=append
#SBATCH --output=slurm-%j.out

set -euo pipefail
NPROC_PER_NODE=${NPROC_PER_NODE:-${SLURM_GPUS_ON_NODE:-$(nvidia-smi -L 2>/dev/null | wc -l)}}
if [[ "${NPROC_PER_NODE}" -lt 1 ]]; then
  echo "[slurm_train] no GPU on $(hostname): set NPROC_PER_NODE=N for N CPU worker processes (gloo)" >&2
  exit 2
fi
RUN_DIR=${RUN_DIR:-outputs/slurm/${SLURM_JOB_ID}}
MASTER_ADDR=$(scontrol show hostnames "$SLURM_JOB_NODELIST" | head -n 1)
MASTER_PORT=${MASTER_PORT:-29500}
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-1}
export TORCH_ELASTIC_SHUTDOWN_TIMEOUT=${TORCH_ELASTIC_SHUTDOWN_TIMEOUT:-150}  # < the 180 s of --signal

STOPPED_BY=""
stop_workers() {
  if [[ -z "${STOPPED_BY}" ]]; then
    STOPPED_BY=$1
    echo "[slurm_train] $(date) SIG$1: stop the workers (they checkpoint), then requeue job ${SLURM_JOB_ID}"
    scancel --signal=TERM "${SLURM_JOB_ID}" || true
  fi
}
trap 'stop_workers USR1' USR1
trap 'stop_workers TERM' TERM

echo "[slurm_train] job ${SLURM_JOB_ID}: ${SLURM_JOB_NUM_NODES} node(s) x ${NPROC_PER_NODE} worker(s), run dir ${RUN_DIR}"
srun --kill-on-bad-exit=1 torchrun \
  --nnodes="${SLURM_JOB_NUM_NODES}" \
  --nproc_per_node="${NPROC_PER_NODE}" \
  --rdzv_id="${SLURM_JOB_ID}" \
  --rdzv_backend=c10d \
  --rdzv_endpoint="${MASTER_ADDR}:${MASTER_PORT}" \
  train.py hydra.run.dir="${RUN_DIR}" trainer.wait_for_run_dir=true "$@" &
SRUN_PID=$!
set +e
wait "${SRUN_PID}"
status=$?
while kill -0 "${SRUN_PID}" 2>/dev/null; do  # a trapped signal ended `wait` early: srun is still stopping
  wait "${SRUN_PID}"
  status=$?
done
if [[ -n "${STOPPED_BY}" ]]; then
  echo "[slurm_train] $(date) workers stopped (status ${status}): requeue job ${SLURM_JOB_ID}"
  scontrol requeue "${SLURM_JOB_ID}" || true
fi
exit "${status}"
