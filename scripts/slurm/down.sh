#!/usr/bin/env bash
# Stop the local SLURM cluster started by scripts/slurm/up.sh (daemons only; packages stay).
set -uo pipefail
STATE=${VLCD_SLURM_STATE:-/tmp/vlcd-slurm}
command -v scancel >/dev/null && scancel --user=root >/dev/null 2>&1
pkill -x slurmd
pkill -x slurmctld
pkill -x munged
for _ in $(seq 1 20); do
  pgrep -x slurmd >/dev/null || pgrep -x slurmctld >/dev/null || break
  sleep 0.5
done
echo "[slurm-down] stopped (state kept in $STATE)"
