#!/bin/bash
# Submit a vlcd-dist stage to SLURM:
#
#   VLCD_STAGE=distill VLCD_CONFIG=paper sbatch slurm/vlcd.sh
#   VLCD_STAGE=distill VLCD_CONFIG=paper sbatch --gpus-per-node=0 slurm/vlcd.sh  # CPU nodes
#
# One task per node; each task runs `accelerate launch`, which starts one training process per
# GPU of its node (or VLCD_PROCS_PER_NODE processes on CPU-only nodes, talking over gloo).
# Without this script, a plain srun of one task per GPU works too (open_clip's style; ranks and
# rendezvous come from SLURM's variables, see docs/training.md):
#
#   srun --nodes 2 --ntasks-per-node 8 --gpus-per-node 8 python -m vlcd_dist distill --config ...
#
# ---- What you edit: the #SBATCH defaults below (or override them on the sbatch line) ----------
#SBATCH --job-name=vlcd
#SBATCH --nodes=2                   # nodes; every node runs one accelerate launcher
#SBATCH --ntasks-per-node=1         # keep at 1: the launcher starts the per-GPU processes
#SBATCH --gpus-per-node=8           # GPUs per node; CPU-only nodes: sbatch --gpus-per-node=0
#SBATCH --cpus-per-task=32          # CPU cores per node, for data-loading workers
#SBATCH --time=24:00:00             # wall-clock limit of one run (the job requeues itself)
#SBATCH --requeue                   # allow requeue after preemption or the pre-timeout signal
#SBATCH --open-mode=append          # a requeued run appends to the same log
#SBATCH --signal=B:USR1@300         # 5 minutes before the limit: checkpoint, requeue, resume
#SBATCH --output=slurm-vlcd-%j.out  # log file (%j = job id)
#
# ---- What you set per submission (environment variables) ---------------------------------------
#   VLCD_STAGE    train-teacher | predistill | distill | eval          (required)
#   VLCD_CONFIG   the recipe: a YAML file or a built-in name           (default paper)
#   VLCD_ARGS     more arguments for the stage, e.g. "--out /shared/runs/exp/distill
#                 --set optim.lr=3e-4"; --out must be on storage every node sees
#   VLCD_VENV     the virtual environment to run from                  (default .venv)
#   VLCD_PROCS_PER_NODE  processes per node on CPU-only nodes          (default 1)
#   VLCD_PORT     rendezvous port                       (default: 20000 + job id modulo 20000)
set -euo pipefail

cd "${SLURM_SUBMIT_DIR:-.}"
STAGE=${VLCD_STAGE:?set VLCD_STAGE to train-teacher, predistill, distill or eval}
CONFIG=${VLCD_CONFIG:-paper}
VENV=${VLCD_VENV:-.venv}
ARGS=${VLCD_ARGS:-}

# The first host of the allocation hosts the rendezvous; the port is derived from the job id so
# two jobs sharing a node do not collide.
MASTER_ADDR=$(scontrol show hostnames "$SLURM_JOB_NODELIST" | head -n 1)
MASTER_PORT=${VLCD_PORT:-$((20000 + SLURM_JOB_ID % 20000))}
GPUS=${SLURM_GPUS_ON_NODE:-0}
# On CPU-only nodes the trainer finds no GPU and runs Accelerator(cpu=True): gloo instead of
# NCCL, nothing else changes. (accelerate launch refuses --cpu together with --multi_gpu, and
# --multi_gpu is what starts several processes.)
if [ "$GPUS" -gt 0 ] 2>/dev/null; then
  PROCS=$GPUS
else
  PROCS=${VLCD_PROCS_PER_NODE:-1}
fi
export MASTER_ADDR MASTER_PORT STAGE CONFIG VENV ARGS PROCS
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-$(( ${SLURM_CPUS_PER_TASK:-$(nproc)} / PROCS > 0 ? ${SLURM_CPUS_PER_TASK:-$(nproc)} / PROCS : 1 ))}

# A requeued run (pre-timeout signal below, or preemption) continues from the newest complete
# checkpoint under --out instead of starting over. eval has no checkpoints.
if [ "${SLURM_RESTART_COUNT:-0}" -gt 0 ] && [ "$STAGE" != eval ]; then
  ARGS="$ARGS --resume"
fi

echo "[vlcd] job $SLURM_JOB_ID (restart ${SLURM_RESTART_COUNT:-0}): stage=$STAGE config=$CONFIG" \
     "nodes=$SLURM_NNODES procs/node=$PROCS master=$MASTER_ADDR:$MASTER_PORT"

# The pre-timeout signal (B: in --signal) reaches this script only. Training stages: forward it
# to the training processes (every process of the job's steps); they agree on a step, save a
# checkpoint, and rank 0 runs `scontrol requeue` itself, after the checkpoint is complete.
# SLURM then starts the script again, as restart 1, 2, ..., which resumes (above): nothing is
# redone. eval has no checkpoints: the script requeues it directly and it starts over.
# Either way exactly one requeue per signal. (The training processes handle run.preempt_signal,
# SIGUSR1 by default: change both together.)
JOB_FOR_REQUEUE=$SLURM_JOB_ID
if [ -n "${SLURM_ARRAY_JOB_ID:-}" ] && [ -n "${SLURM_ARRAY_TASK_ID:-}" ]; then
  JOB_FOR_REQUEUE=${SLURM_ARRAY_JOB_ID}_${SLURM_ARRAY_TASK_ID}
fi
on_usr1() {
  if [ "$STAGE" = eval ]; then
    echo "[vlcd] time limit near (SIGUSR1): requeueing job $JOB_FOR_REQUEUE"
    scontrol requeue "$JOB_FOR_REQUEUE" || echo "[vlcd] scontrol requeue failed; the job will time out"
  else
    echo "[vlcd] time limit near (SIGUSR1): asking the training processes to checkpoint and requeue"
    scancel --signal=USR1 "$SLURM_JOB_ID" || echo "[vlcd] could not signal the job steps"
  fi
}
trap on_usr1 USR1

# srun starts one launcher per node; SLURM_NODEID is that node's machine rank. accelerate's
# static rendezvous numbers the ranks node by node, so node i holds ranks i*PROCS..i*PROCS+PROCS-1
# (each rank also prints a "vlcd: rank R/W ... on NODE" line when it starts). The precision is the
# recipe's run.mixed_precision: accelerate's "no" is also its default, and never overrides it.
srun --kill-on-bad-exit=1 --ntasks-per-node=1 bash -c '
  echo "[vlcd] node $SLURMD_NODENAME ($(hostname -s)): machine rank $SLURM_NODEID," \
       "ranks $((SLURM_NODEID * PROCS))-$((SLURM_NODEID * PROCS + PROCS - 1))"
  # The launcher does not handle USR1 (it would die of it); the training processes do.
  trap "" USR1
  exec "$VENV/bin/accelerate" launch --multi_gpu \
    --num_machines "$SLURM_NNODES" --machine_rank "$SLURM_NODEID" \
    --num_processes $((SLURM_NNODES * PROCS)) \
    --main_process_ip "$MASTER_ADDR" --main_process_port "$MASTER_PORT" \
    --rdzv_backend static --same_network --mixed_precision no --dynamo_backend no \
    -m vlcd_dist "$STAGE" --config "$CONFIG" $ARGS
' &
SRUN_PID=$!

while true; do
  wait "$SRUN_PID" && STATUS=0 || STATUS=$?
  # wait returns early (status > 128) when a trapped signal arrives; keep waiting for srun.
  if kill -0 "$SRUN_PID" 2>/dev/null; then continue; fi
  break
done
echo "[vlcd] stage $STAGE finished with status $STATUS"
exit "$STATUS"
