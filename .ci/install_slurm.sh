#!/usr/bin/env bash
# Debian's SLURM (slurm-wlm 22.05: slurmctld, slurmd, sbatch ...) and MUNGE for the live-cluster tests.
# tests/slurm_cluster.py starts a throwaway single-node cluster from these binaries; it runs this script
# itself when they are missing, and .ci/run runs it so a fresh machine has them. Needs root and apt-get.
set -euo pipefail
PATH="$PATH:/usr/sbin:/sbin"
for tool in munged slurmctld slurmd sbatch scontrol sinfo srun squeue scancel; do
  command -v "$tool" >/dev/null || missing=1
done
[[ -z "${missing:-}" ]] && exit 0
export DEBIAN_FRONTEND=noninteractive
apt-get update -q
# Should the packages start system daemons, they do not meet the tests' cluster: it has its own MUNGE
# key and socket, slurm.conf and ports.
apt-get install -y -q --no-install-recommends slurm-wlm munge
