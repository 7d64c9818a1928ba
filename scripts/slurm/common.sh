# Sourced by the scripts in this folder and by examples/librispeech/run.sh --slurm. Every step is an
# `sbatch --wrap` job; a sharded step is a job array whose task i runs `--nshard N --rank i`, and its merge
# step waits for the whole array (afterok dependency, or `run_array`'s sbatch --wait).
# Override SPEECHLM (the command), SBATCH_OPTS (partition, time, memory, ...) in the environment.
set -euo pipefail
SPEECHLM="${SPEECHLM:-python -m speechlm}"
SBATCH_OPTS="${SBATCH_OPTS:---cpus-per-task=1 --mem=8G --time=2:00:00}"
LOGDIR="${LOGDIR:-slurm_logs}"
mkdir -p "$LOGDIR"

# submit NAME DEPENDENCY(or "") COMMAND... -> prints the job id
submit() {
  local name=$1 dep=$2; shift 2
  # shellcheck disable=SC2086
  sbatch --parsable $SBATCH_OPTS ${dep:+--dependency=afterok:$dep} --job-name="$name" \
    --output="$LOGDIR/$name-%j.log" --wrap="$*"
}

# submit_array NAME NSHARD DEPENDENCY(or "") COMMAND... ; COMMAND may use \$SLURM_ARRAY_TASK_ID
submit_array() {
  local name=$1 n=$2 dep=$3; shift 3
  # shellcheck disable=SC2086
  sbatch --parsable $SBATCH_OPTS ${dep:+--dependency=afterok:$dep} --array="0-$((n - 1))" \
    --job-name="$name" --output="$LOGDIR/$name-%A_%a.log" --wrap="$*"
}

# run_array NAME NSHARD COMMAND... : a job array whose task i runs COMMAND --nshard NSHARD --rank i (COMMAND's
# words are quoted for /bin/sh); returns when every task has ended, non-zero if any failed (sbatch --wait)
run_array() {
  local name=$1 n=$2; shift 2
  # shellcheck disable=SC2086
  sbatch --wait --parsable $SBATCH_OPTS --array="0-$((n - 1))" --job-name="$name" \
    --output="$LOGDIR/$name-%A_%a.log" --wrap="$(printf '%q ' "$@")--nshard $n --rank \$SLURM_ARRAY_TASK_ID"
}
