# Sourced by train.sbatch and multinode.sbatch inside the allocation: one `srun` task per device.
# Arguments are Hydra overrides for `python -m src.train`.

REPO=${DIFFUSION_REPO:-${SLURM_SUBMIT_DIR:-$PWD}}
cd "$REPO"
if [[ ! -f src/train.py ]]; then
  echo "error: $REPO is not the repository root; submit from it or set DIFFUSION_REPO=/path/to/repo" >&2
  exit 2
fi
# the repository's environment when there is one (scripts/setup.sh), else python on PATH
if [[ -n ${DIFFUSION_PYTHON:-} ]]; then
  PY=$DIFFUSION_PYTHON
elif [[ -x $REPO/.venv/bin/python ]]; then
  PY=$REPO/.venv/bin/python
else
  PY=$(command -v python3 || command -v python)
fi

# compute nodes rarely reach the internet: W&B writes offline, `wandb sync` uploads later (slurm/README.md)
export WANDB_MODE=${WANDB_MODE:-offline}
export PYTHONUNBUFFERED=1
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-${SLURM_CPUS_PER_TASK:-1}}
# one node: rendezvous on loopback; several: Lightning takes the allocation's first host (slurm/README.md)
if [[ ${SLURM_JOB_NUM_NODES:-1} == 1 ]]; then
  export MASTER_ADDR=${MASTER_ADDR:-127.0.0.1}
fi

echo "[$(date -Is)] job ${SLURM_JOB_ID} restart ${SLURM_RESTART_COUNT:-0} on ${SLURM_JOB_NODELIST}:" \
     "${SLURM_JOB_NUM_NODES} node(s) x ${SLURM_NTASKS_PER_NODE} task(s), $PY -m src.train $*"

# devices and nodes follow the allocation; the run folder is keyed on the job id, which a requeued job
# keeps, so it finds its own last.ckpt and resumes (src/preemption.py saves it on SIGUSR1 and requeues)
# srun does not pass --cpus-per-task on to the tasks since SLURM 22.05: give it explicitly (data workers);
# a progress bar in a log file is a wall of carriage returns: off unless asked for
srun --kill-on-bad-exit=1 ${SLURM_CPUS_PER_TASK:+--cpus-per-task=$SLURM_CPUS_PER_TASK} \
  "$PY" -m src.train trainer.enable_progress_bar=false \
  trainer.devices="${SLURM_NTASKS_PER_NODE}" trainer.num_nodes="${SLURM_JOB_NUM_NODES}" "$@"
