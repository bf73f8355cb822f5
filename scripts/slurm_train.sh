#!/usr/bin/env bash
# Multi-node training with sbatch + srun + torchrun (one torchrun agent per node, one worker per GPU).
#
#   sbatch --nodes=2 scripts/slurm_train.sh model=i3d_nl5 data=kinetics400 data.root=/data/k400 clip=32x2
#
# Every argument is a Hydra override for train.py. The run directory is fixed per job
# (RUN_DIR, default outputs/slurm/<job id>), so when the job is requeued -- after preemption or by the
# time-limit handler below -- train.py (trainer.resume=auto) continues from its newest valid checkpoint.
# Time limit: SLURM sends SIGUSR1 to this batch shell 180 s before the end (--signal=B:USR1@180); we
# requeue the job and forward SIGTERM through srun to torchrun, which forwards it to the workers; they
# write a checkpoint at the next iteration boundary and exit with status 0.
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
GPUS_PER_NODE=${GPUS_PER_NODE:-$(nvidia-smi -L 2>/dev/null | wc -l)}
RUN_DIR=${RUN_DIR:-outputs/slurm/${SLURM_JOB_ID}}
MASTER_ADDR=$(scontrol show hostnames "$SLURM_JOB_NODELIST" | head -n 1)
MASTER_PORT=${MASTER_PORT:-29500}
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-1}

requeue() {
  echo "[slurm_train] $(date) time limit near: requeue job ${SLURM_JOB_ID} and stop the workers"
  scontrol requeue "${SLURM_JOB_ID}" || true
  kill -TERM "${SRUN_PID}" 2>/dev/null || true
}
trap requeue USR1 TERM

echo "[slurm_train] job ${SLURM_JOB_ID}: ${SLURM_JOB_NUM_NODES} node(s) x ${GPUS_PER_NODE} GPU(s), run dir ${RUN_DIR}"
srun --kill-on-bad-exit=1 torchrun \
  --nnodes="${SLURM_JOB_NUM_NODES}" \
  --nproc_per_node="${GPUS_PER_NODE}" \
  --rdzv_id="${SLURM_JOB_ID}" \
  --rdzv_backend=c10d \
  --rdzv_endpoint="${MASTER_ADDR}:${MASTER_PORT}" \
  train.py hydra.run.dir="${RUN_DIR}" "$@" &
SRUN_PID=$!
# `wait` returns early (status > 128) when a trapped signal arrives; then wait for srun's shutdown.
set +e
wait "${SRUN_PID}"
status=$?
if kill -0 "${SRUN_PID}" 2>/dev/null; then
  wait "${SRUN_PID}"
  status=$?
fi
exit "${status}"
