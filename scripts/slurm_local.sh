#!/usr/bin/env bash
# A one-node Slurm cluster on this machine (Debian's slurm-wlm + munge, installed by scripts/setup.sh), to run
# the recipes' --slurm job arrays, `srun` training and hydra's submitit launcher for real.
#
#   scripts/slurm_local.sh start   # munge key, slurm.conf naming this host with its CPUs, daemons started
#   export SLURM_CONF=$(scripts/slurm_local.sh conf)
#   sbatch --wrap 'hostname'; squeue; srun -n 2 hostname
#   scripts/slurm_local.sh status  # sinfo of the cluster (exit 1 if it is not running)
#   scripts/slurm_local.sh stop    # daemons stopped, state directory removed
#
# State (munge key and socket, slurm.conf, spool, logs, pid files) lives in one directory,
# $SLURM_LOCAL_DIR (default: ${TMPDIR:-/tmp}/speechlm-slurm-$UID). `start` is idempotent: with the cluster
# already up it only prints how to use it. Ports: $SLURM_LOCAL_PORT (slurmctld, default 6817) and the next
# one (slurmd). One partition `local` (the default) with every CPU of this host; jobs share the node by CPU
# (select/cons_tres, CR_CPU), no cgroups (proctrack/linuxproc), no accounting.
set -euo pipefail
DIR="${SLURM_LOCAL_DIR:-${TMPDIR:-/tmp}/speechlm-slurm-$(id -u)}"
PORT="${SLURM_LOCAL_PORT:-6817}"
CONF="$DIR/slurm.conf"
SOCKET="$DIR/munge/munge.socket"
START_TIMEOUT_S=60
log() { echo "[slurm_local] $*" >&2; }
die() { log "ERROR: $*"; exit 1; }

alive() { [ -f "$1" ] && kill -0 "$(cat "$1")" 2>/dev/null; }

usage_hint() {
  cat <<EOF
[slurm_local] one-node Slurm cluster up: $(hostname -s), $(SLURM_CONF="$CONF" sinfo -h -o '%c CPUs, partition %P (%T)' 2>/dev/null | head -1)
  export SLURM_CONF=$CONF
  sbatch --wrap 'hostname'; squeue; srun -n 2 hostname
  examples/librispeech/run.sh --slurm ...      (job arrays through this cluster)
  scripts/slurm_local.sh stop                  (stop the daemons, remove $DIR)
EOF
}

need_tools() {
  local missing=()
  for t in munged slurmctld slurmd sinfo sbatch srun scontrol; do
    command -v "$t" >/dev/null || missing+=("$t")
  done
  if ((${#missing[@]})); then
    die "not installed: ${missing[*]}. Run scripts/setup.sh as root (it installs Debian's slurm-wlm and munge), or: sudo apt-get install slurm-wlm munge"
  fi
}

write_conf() {
  local host user node
  host="$(hostname -s)"
  user="$(id -un)"
  # slurmd -C: this host's CPUs, sockets, cores, threads and memory, exactly as slurmd will find them
  node="$(slurmd -C | head -1)"
  [[ "$node" == NodeName=* ]] || die "slurmd -C did not describe this host: $node"
  node="${node} NodeAddr=127.0.0.1 State=UNKNOWN"
  cat > "$CONF.tmp" <<EOF
# written by scripts/slurm_local.sh: a one-node cluster on $host
ClusterName=speechlm-local
SlurmctldHost=$host(127.0.0.1)
SlurmctldPort=$PORT
SlurmdPort=$((PORT + 1))
SlurmUser=$user
SlurmdUser=$user
AuthType=auth/munge
CredType=cred/munge
AuthInfo=socket=$SOCKET
StateSaveLocation=$DIR/ctld
SlurmdSpoolDir=$DIR/spool/%n
SlurmctldPidFile=$DIR/slurmctld.pid
SlurmdPidFile=$DIR/slurmd.pid
SlurmctldLogFile=$DIR/log/slurmctld.log
SlurmdLogFile=$DIR/log/slurmd.log
SlurmctldDebug=info
SlurmdDebug=info
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SwitchType=switch/none
MpiDefault=none
LaunchParameters=use_interactive_step
SchedulerType=sched/backfill
SchedulerParameters=sched_interval=1
SelectType=select/cons_tres
SelectTypeParameters=CR_CPU
ReturnToService=2
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
JobCompType=jobcomp/none
MailProg=/bin/true
InactiveLimit=0
KillWait=5
MinJobAge=300
SlurmdTimeout=60
SlurmctldTimeout=60
$node
PartitionName=local Nodes=$host Default=YES MaxTime=INFINITE State=UP
EOF
  mv "$CONF.tmp" "$CONF"
}

start_munge() {
  alive "$DIR/munge/munged.pid" && return 0
  mkdir -p "$DIR/munge"
  chmod 700 "$DIR/munge"
  if [ ! -s "$DIR/munge/munge.key" ]; then
    dd if=/dev/urandom of="$DIR/munge/munge.key" bs=1024 count=1 status=none
    chmod 400 "$DIR/munge/munge.key"
  fi
  # --force: munged refuses a socket dir it did not expect (ours is private to this cluster)
  munged --force --key-file="$DIR/munge/munge.key" --socket="$SOCKET" \
    --pid-file="$DIR/munge/munged.pid" --log-file="$DIR/log/munged.log" \
    --seed-file="$DIR/munge/munged.seed" || die "munged failed to start: see $DIR/log/munged.log"
}

cmd_start() {
  need_tools
  export SLURM_CONF="$CONF"
  if alive "$DIR/slurmctld.pid" && alive "$DIR/slurmd.pid" && sinfo -h >/dev/null 2>&1; then
    log "already running (state in $DIR)"
    usage_hint
    return 0
  fi
  if [ "$(id -u)" != 0 ]; then
    log "WARNING: not root: the daemons run as $(id -un) and only that user's jobs can run"
  fi
  local p
  for p in "$PORT" $((PORT + 1)); do
    if (exec 3<>"/dev/tcp/127.0.0.1/$p") 2>/dev/null; then
      die "port $p is in use (another Slurm?): choose others with SLURM_LOCAL_PORT=N (N and N+1)"
    fi
  done
  mkdir -p "$DIR/ctld" "$DIR/spool" "$DIR/log"
  write_conf
  start_munge
  alive "$DIR/slurmctld.pid" || slurmctld -f "$CONF" -i \
    || die "slurmctld failed to start: see $DIR/log/slurmctld.log"
  alive "$DIR/slurmd.pid" || slurmd -f "$CONF" \
    || die "slurmd failed to start: see $DIR/log/slurmd.log"
  local waited=0 state=""
  while ((waited < START_TIMEOUT_S)); do
    state="$(sinfo -h -o %T 2>/dev/null | head -1 || true)"
    case "$state" in
      idle*|mix*|alloc*) break ;;
      down*|drain*) scontrol update nodename="$(hostname -s)" state=resume >/dev/null 2>&1 || true ;;
    esac
    sleep 1
    waited=$((waited + 1))
  done
  case "$state" in
    idle*|mix*|alloc*) ;;
    *) die "the node did not come up within ${START_TIMEOUT_S} s (state '${state:-none}'); logs in $DIR/log" ;;
  esac
  usage_hint
}

stop_pid() {  # stop_pid NAME PIDFILE: TERM, then KILL after 10 s
  local pid
  alive "$2" || return 0
  pid="$(cat "$2")"
  kill "$pid" 2>/dev/null || true
  for _ in $(seq 20); do
    kill -0 "$pid" 2>/dev/null || return 0
    sleep 0.5
  done
  log "$1 (pid $pid) did not stop: killing it"
  kill -9 "$pid" 2>/dev/null || true
}

cmd_stop() {
  if [ -f "$CONF" ]; then
    SLURM_CONF="$CONF" scancel --full --quiet --user="$(id -un)" 2>/dev/null || true
  fi
  stop_pid slurmd "$DIR/slurmd.pid"
  stop_pid slurmctld "$DIR/slurmctld.pid"
  stop_pid munged "$DIR/munge/munged.pid"
  case "$DIR" in
    ""|/) die "refusing to remove '$DIR'" ;;
  esac
  rm -rf "$DIR"
  log "stopped; removed $DIR"
}

cmd_status() {
  [ -f "$CONF" ] || { log "not running (no $CONF)"; return 1; }
  SLURM_CONF="$CONF" sinfo || return 1
}

case "${1:-}" in
  start) cmd_start ;;
  stop) cmd_stop ;;
  status) cmd_status ;;
  conf) echo "$CONF" ;;
  *) echo "usage: $0 start|stop|status|conf   (state in \$SLURM_LOCAL_DIR, default ${TMPDIR:-/tmp}/speechlm-slurm-\$UID)" >&2; exit 2 ;;
esac
