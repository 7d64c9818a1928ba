# Sourced by the recipe scripts (examples/*/run.sh, examples/mini/hidden_units.sh): what every recipe needs,
# written once, as icefall's shared/parse_options.sh. No parsing, JSON or arithmetic on numbers here: that
# is Python's (`speechlm` verbs; examples/common/recipe.py for the few things only recipes need).
#
#   parse_options "$@"        --name VALUE sets the variable `name` the script gave a default (dashes ->
#                             underscores; a variable holding true/false is a flag); other words -> $positional
#   expect_positional N       exactly N such words, or a usage error
#   run_stage N               true when stage N is between $stage and $stop_stage
#   say MSG / done_or FILE    a timestamped line / "FILE exists: skipped" (false) or true when it is missing
#   start_log DIR             the console, from here on, also into DIR/log.<time> ($log)
#   timed STEP CMD...         CMD with its wall/user/sys seconds recorded (see below)
#   spawn CMD... / wait_all   CMD in the background, at most $jobs at a time / wait for every one of them
#   run_shards N CMD...       N ranks of CMD at once (--nshard N --rank R appended); false if any failed
#   await DONE FAILED         wait for another chain's marker file DONE; false when its FAILED marker appears
#   stage_begin / stage_end S the wall and CPU seconds of stage S (this shell and all it waited for)
#                             appended to $exp/stage_times.tsv
# It sets REPO (the repository), PY (the Python of the repository's .venv unless PY is set) and puts PY's
# directory first on PATH (fairseq-hydra-train, fairseq-generate), and ncpu (the cores, whatever
# OMP_NUM_THREADS says).
REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
PY="${PY:-$REPO/.venv/bin/python}"
export PATH="$(dirname "$PY"):$PATH" PYTHONHASHSEED=0 HF_HUB_OFFLINE=1
RECIPE_PY="$REPO/examples/common/recipe.py"
ncpu=$(env -u OMP_NUM_THREADS nproc 2>/dev/null || echo 1)  # nproc alone obeys OMP_NUM_THREADS

# speechlm VERB ...: the project's command line, from this repository's Python
speechlm() { "$PY" -m speechlm "$@"; }

# the script's header comment (from its second line to the first line that is not a comment)
usage() { sed -n '2,/^[^#]/{/^#/s/^# \{0,1\}//p}' "$0"; }

parse_options() {
  positional=()
  local arg name value
  while [ $# -gt 0 ]; do
    arg=$1; shift
    case "$arg" in
      -h|--help) usage; exit 0;;
      --*) ;;
      *) positional+=("$arg"); continue;;
    esac
    name=${arg#--}; value=""
    if [[ $name == *=* ]]; then value=${name#*=}; name=${name%%=*}; set -- "$value" "$@"; fi
    name=${name//-/_}
    if ! [[ $name =~ ^[a-z][a-z0-9_]*$ ]] || [ -z "${!name+set}" ]; then
      echo "$(basename "$0"): unknown option $arg (see --help)" >&2; exit 2
    fi
    if [ "${!name}" = true ] || [ "${!name}" = false ]; then  # a flag: --full, or --full true|false
      value=true
      if [ $# -gt 0 ] && { [ "$1" = true ] || [ "$1" = false ]; }; then value=$1; shift; fi
    else
      [ $# -gt 0 ] || { echo "$(basename "$0"): $arg needs a value" >&2; exit 2; }
      value=$1; shift
    fi
    printf -v "$name" '%s' "$value"
  done
}

# expect_positional N: exactly N words besides the options (parse_options's $positional), or the usage error
expect_positional() {
  [ "${#positional[@]}" -eq "$1" ] && return 0
  echo "$(basename "$0"): expected $1 argument(s) besides the options, got ${#positional[@]} (see --help)" >&2
  exit 2
}

say() { echo "[$(date +%H:%M:%S)] $*"; }
run_stage() { [ "$1" -ge "$stage" ] && [ "$1" -le "$stop_stage" ]; }
done_or() { if [ -e "$1" ]; then say "  $(basename "$1") exists: skipped"; return 1; fi; }

start_log() {
  log="$1/log.$(date +%Y%m%d-%H%M%S)"
  exec > >(tee -a "$log") 2>&1
}

# timed STEP CMD...: run CMD and record its wall, user and sys seconds (bash `time`: CMD and every process it
# waits for). STEP is a path without extension, DIR/NAME: CMD's output goes into DIR/NAME.log and the seconds,
# as {"wall": s, "user": s, "sys": s}, into DIR/time.NAME, written only when CMD succeeds; when it fails, the
# log's last lines are printed. With TIMES_TSV=FILE set instead, CMD's output stays on the console and a line
# "STEP<TAB>wall<TAB>user<TAB>sys" is appended to FILE whatever the outcome (a cost table of repeated steps).
timed() {
  local step=$1; shift
  if [ -n "${TIMES_TSV:-}" ]; then
    local TIMEFORMAT="$step"$'\t%R\t%U\t%S'
    { time "$@" 2>&3 3>&- ; } 3>&2 2>> "$TIMES_TSV"
    return
  fi
  local tf lf="$step.log"
  tf="$(dirname "$step")/time.$(basename "$step")"
  local TIMEFORMAT='{"wall": %R, "user": %U, "sys": %S}'
  if { time "$@" > "$lf" 2>&1 ; } 2> "$tf.tmp"; then mv "$tf.tmp" "$tf"; else
    rm -f "$tf.tmp"; echo "FAILED: $* (last lines of $lf:)"; tail -n 15 "$lf"; return 1
  fi
}

# spawn CMD...: CMD in the background once fewer than $jobs of this shell's jobs run; wait_all waits for every
# spawned CMD (a plain `wait` would also wait for start_log's `tee`, which never ends) and is false if one failed
pids=()
spawn() {
  while [ "$(jobs -rp | wc -l)" -ge "${jobs:-1}" ]; do sleep 1; done
  "$@" &
  pids+=($!)
}
wait_all() {
  local p rc=0
  for p in "${pids[@]}"; do wait "$p" || rc=1; done
  pids=()
  return $rc
}

run_shards() {
  local n=$1 r p rc=0 ranks=(); shift
  for ((r = 0; r < n; r++)); do "$@" --nshard "$n" --rank "$r" & ranks+=($!); done
  for p in "${ranks[@]}"; do wait "$p" || rc=1; done
  return $rc
}

await() { while [ ! -f "$1" ]; do [ -f "$2" ] && return 1; sleep 2; done; }

# `times` must run in this shell, not in a $(...) subshell, to see the CPU time of the processes it waited for
stage_begin() { stage_wall=$SECONDS; times > "$exp/.times.begin"; }
stage_end() {
  times > "$exp/.times.end"
  "$PY" "$RECIPE_PY" stage-time "$exp/stage_times.tsv" "$1" --wall $((SECONDS - stage_wall)) \
    --times-begin "$exp/.times.begin" --times-end "$exp/.times.end"
}
