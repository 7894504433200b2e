#!/usr/bin/env bash
# tests/cluster/slurm-up.sh - a real single-node Slurm (Debian/Ubuntu packages, no systemd)
# for hpsearch's integration tests (tests/integration/test_slurm.py) and bench/bench_cluster.py.
#
#   sudo bash tests/cluster/slurm-up.sh      # root only; CI calls it from .ci/run
#
# Installs slurmctld, slurmd, slurm-client and munge with apt-get when they are missing, writes
# /etc/slurm/slurm.conf and gres.conf (2 fake GPUs), starts munged, slurmctld and slurmd as plain
# daemons and waits until the node is idle. Idempotent: when the daemons already run (started
# by this script or by anything else that uses the same pid files) with an equivalent config it
# only checks that the node is up (well under a second). A changed config restarts the daemons.
# Stop with tests/cluster/slurm-down.sh.
#
# Knobs (environment, all optional):
#   SLURM_FAKE_GPUS=2        fake GPUs (GRES gpu, symlinks to /dev/null); 0 = none
#   SLURM_MIN_JOB_AGE=86400  seconds a finished job stays in squeue -t all / scontrol (no sacct)
#   SLURM_KILL_WAIT=5        seconds between SIGTERM and SIGKILL (scancel, time limits)
#   SLURM_SCHED_PARAMS=batch_sched_delay=0   start jobs on every 1 s tick (default: 3 s)
#   SLURM_FRESH=1            wipe the controller state when slurmctld is (re)started here
#                            (job ids restart at 1); 0 keeps jobs across restarts
#   SLURM_UP_TIMEOUT=60      seconds to wait for the node
#   SLURM_NO_INSTALL=1       never run apt-get
set -euo pipefail

NGPU=${SLURM_FAKE_GPUS:-2}
MIN_JOB_AGE=${SLURM_MIN_JOB_AGE:-86400}
KILL_WAIT=${SLURM_KILL_WAIT:-5}
SCHED_PARAMS=${SLURM_SCHED_PARAMS:-batch_sched_delay=0}
FRESH=${SLURM_FRESH:-1}
TIMEOUT=${SLURM_UP_TIMEOUT:-60}

CONF=/etc/slurm/slurm.conf
GRES_CONF=/etc/slurm/gres.conf
RUN=/run/slurm
GPU_DIR=$RUN/fakegpu
STATE=/var/spool/slurmctld
SPOOL=/var/spool/slurmd
LOGS=/var/log/slurm
CTLD_PIDFILE=$RUN/slurmctld.pid
SLURMD_PIDFILE=$RUN/slurmd.pid
MUNGE_PIDFILE=/run/munge/munged.pid

say() { echo "slurm-up: $*" >&2; }
fail() { say "ERROR: $*"; exit 1; }
[ "$(id -u)" -eq 0 ] || fail "run as root (it installs packages and starts daemons)"

# alive PIDFILE EXE: the pid in PIDFILE is a live process running EXE (never trust a bare pid:
# a stale file's pid may belong to something else by now).
alive() {
  local pid
  pid=$(cat "$1" 2>/dev/null) || return 1
  [[ $pid =~ ^[0-9]+$ ]] && kill -0 "$pid" 2>/dev/null &&
    [ "$(readlink "/proc/$pid/exe" 2>/dev/null)" = "$2" ]
}
# halt PIDFILE EXE: SIGTERM, wait up to 10 s, SIGKILL.
halt() {
  if alive "$1" "$2"; then
    local pid; pid=$(cat "$1")
    kill -TERM "$pid" 2>/dev/null || true
    for _ in $(seq 100); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    kill -KILL "$pid" 2>/dev/null || true
  fi
  rm -f "$1"
}

# --- packages ---------------------------------------------------------------------------------
have_all() { command -v slurmctld && command -v slurmd && command -v sbatch && command -v munged; }
if ! have_all >/dev/null 2>&1; then
  [ "${SLURM_NO_INSTALL:-0}" = 1 ] && fail "Slurm/munge not installed and SLURM_NO_INSTALL=1"
  say "installing slurmctld slurmd slurm-client munge"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends slurmctld slurmd slurm-client munge >/dev/null
  have_all >/dev/null 2>&1 || fail "packages installed but the commands are still missing"
fi
# Debian's /usr/sbin/slurmctld is an alternatives symlink to slurmctld-wlm. The daemons must be
# STARTED under the plain names (started as *-wlm, Slurm drops the node's GRES silently), while
# /proc/PID/exe shows the resolved path: keep both.
CTLD_CMD=$(command -v slurmctld)
SLURMD_CMD=$(command -v slurmd)
MUNGED_CMD=$(command -v munged)
CTLD_EXE=$(readlink -f "$CTLD_CMD")
SLURMD_EXE=$(readlink -f "$SLURMD_CMD")
MUNGED_EXE=$(readlink -f "$MUNGED_CMD")

# --- munge ------------------------------------------------------------------------------------
install -d -o munge -g munge -m 0700 /etc/munge /var/lib/munge /var/log/munge
install -d -o munge -g munge -m 0755 /run/munge      # systemd's RuntimeDirectory otherwise
if [ ! -s /etc/munge/munge.key ]; then
  say "creating /etc/munge/munge.key"
  mungekey --create --keyfile=/etc/munge/munge.key 2>/dev/null ||
    dd if=/dev/urandom of=/etc/munge/munge.key bs=1024 count=1 status=none
fi
chown munge:munge /etc/munge/munge.key
chmod 0400 /etc/munge/munge.key
if ! alive "$MUNGE_PIDFILE" "$MUNGED_EXE"; then
  rm -f "$MUNGE_PIDFILE"
  say "starting munged"
  # as the munge user: munged refuses root without --force; it daemonizes itself
  runuser -u munge -- "$MUNGED_CMD" </dev/null >>/var/log/munge/munged.stdout 2>&1 ||
    fail "munged did not start: $(tail -3 /var/log/munge/munged.log 2>/dev/null)"
fi
for _ in $(seq 50); do munge -n 2>/dev/null | unmunge >/dev/null 2>&1 && break; sleep 0.1; done
munge -n | unmunge >/dev/null 2>&1 || fail "munge does not work (munge -n | unmunge)"

# --- config -----------------------------------------------------------------------------------
NODE=$(hostname -s)
HW=$("$SLURMD_CMD" -C | head -1)   # NodeName=vm CPUs=2 Boards=1 ... RealMemory=24105
CPUS=$(sed -n 's/.* CPUs=\([0-9][0-9]*\).*/\1/p' <<<"$HW")
MEM=$(sed -n 's/.* RealMemory=\([0-9][0-9]*\).*/\1/p' <<<"$HW")
[ -n "$CPUS" ] && [ -n "$MEM" ] || fail "cannot read CPUs/RealMemory from 'slurmd -C': $HW"
install -d -m 0755 /etc/slurm "$RUN" "$STATE" "$SPOOL" "$LOGS"

GRES_LINES="" NODE_GRES=""
if [ "$NGPU" -gt 0 ]; then
  # gres.conf File= must be a character device; a symlink to /dev/null is one (no mknod)
  install -d -m 0755 "$GPU_DIR"
  for ((i = 0; i < NGPU; i++)); do ln -sfn /dev/null "$GPU_DIR/gpu$i"; done
  GRES_LINES="GresTypes=gpu"
  NODE_GRES=" Gres=gpu:$NGPU"
fi

# Only CPUs= on the node line (no sockets/cores/threads) with CR_CPU: one 1-CPU job per logical
# CPU even on hyper-threaded hosts. Memory is not consumable, so --mem is only checked against
# RealMemory.
WANT_CONF="# written by hpsearch tests/cluster/slurm-up.sh
ClusterName=local
SlurmctldHost=$NODE(127.0.0.1)
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CredType=cred/munge
MpiDefault=none
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
SwitchType=switch/none
ReturnToService=2
SlurmctldPidFile=$CTLD_PIDFILE
SlurmdPidFile=$SLURMD_PIDFILE
StateSaveLocation=$STATE
SlurmdSpoolDir=$SPOOL
SlurmctldLogFile=$LOGS/slurmctld.log
SlurmdLogFile=$LOGS/slurmd.log
SlurmctldDebug=info
SlurmdDebug=info
SchedulerType=sched/backfill
SchedulerParameters=$SCHED_PARAMS
SelectType=select/cons_tres
SelectTypeParameters=CR_CPU
AccountingStorageType=accounting_storage/none
JobCompType=jobcomp/filetxt
JobCompLoc=$LOGS/jobcomp.log
MinJobAge=$MIN_JOB_AGE
MaxJobCount=100000
KillWait=$KILL_WAIT
InactiveLimit=0
$GRES_LINES
NodeName=$NODE NodeAddr=127.0.0.1 CPUs=$CPUS RealMemory=$MEM$NODE_GRES State=UNKNOWN
PartitionName=debug Nodes=ALL Default=YES MaxTime=INFINITE State=UP"
WANT_GRES=""
if [ "$NGPU" -gt 0 ]; then
  WANT_GRES="AutoDetect=off
NodeName=$NODE Name=gpu File=$GPU_DIR/gpu[0-$((NGPU - 1))]"
fi

# Compare settings, not comments or blank lines: a Slurm started by an equivalent script with
# another header is left running.
settings() { grep -v -e '^[[:space:]]*#' -e '^[[:space:]]*$' || true; }
changed=0
if [ "$(settings <<<"$WANT_CONF")" != "$(cat "$CONF" 2>/dev/null | settings)" ]; then
  printf '%s\n' "$WANT_CONF" >"$CONF"
  changed=1
fi
if [ -n "$WANT_GRES" ]; then
  if [ "$(settings <<<"$WANT_GRES")" != "$(cat "$GRES_CONF" 2>/dev/null | settings)" ]; then
    printf '%s\n' "$WANT_GRES" >"$GRES_CONF"
    changed=1
  fi
elif [ -e "$GRES_CONF" ]; then
  rm -f "$GRES_CONF"
  changed=1
fi
chmod 0644 "$CONF"
if [ "$changed" = 1 ]; then
  if alive "$CTLD_PIDFILE" "$CTLD_EXE" || alive "$SLURMD_PIDFILE" "$SLURMD_EXE"; then
    say "config changed: restarting slurmd and slurmctld"
  fi
  halt "$SLURMD_PIDFILE" "$SLURMD_EXE"
  halt "$CTLD_PIDFILE" "$CTLD_EXE"
fi

# --- daemons ----------------------------------------------------------------------------------
ctld_started=0
if ! alive "$CTLD_PIDFILE" "$CTLD_EXE"; then
  rm -f "$CTLD_PIDFILE"
  if [ "$FRESH" = 1 ]; then
    # forget old jobs; ids restart at 1, so start a new job completion log too
    rm -rf "${STATE:?}"/* "${SPOOL:?}"/*
    [ -s "$LOGS/jobcomp.log" ] && mv -f "$LOGS/jobcomp.log" "$LOGS/jobcomp.log.prev"
  fi
  say "starting slurmctld"
  "$CTLD_CMD" </dev/null >>"$LOGS/slurmctld.stdout" 2>&1 ||
    fail "slurmctld did not start: $(tail -3 "$LOGS/slurmctld.log" 2>/dev/null)"
  ctld_started=1
fi
for _ in $(seq $((TIMEOUT * 10))); do
  [[ "$(scontrol ping 2>/dev/null)" == *"is UP"* ]] && break
  sleep 0.1
done
[[ "$(scontrol ping 2>/dev/null)" == *"is UP"* ]] ||
  fail "slurmctld does not answer: $(tail -3 "$LOGS/slurmctld.log" 2>/dev/null)"

slurmd_started=0
if ! alive "$SLURMD_PIDFILE" "$SLURMD_EXE"; then
  rm -f "$SLURMD_PIDFILE"
  say "starting slurmd"
  slurmd_started=$(date +%s)
  "$SLURMD_CMD" </dev/null >>"$LOGS/slurmd.stdout" 2>&1 ||
    fail "slurmd did not start: $(tail -3 "$LOGS/slurmd.log" 2>/dev/null)"
fi

# --- wait for the node ------------------------------------------------------------------------
ready=0 resumed=0 state=""
for i in $(seq $((TIMEOUT * 10))); do
  state=$(sinfo -h -n "$NODE" -o '%T' 2>/dev/null | head -1 || true)
  case "$state" in
    idle | mixed | allocated | completing)
      if [ "$slurmd_started" != 0 ]; then
        # a node can read idle before the new slurmd registered (stale state): wait for it
        t=$(scontrol show node "$NODE" 2>/dev/null | sed -n 's/.*SlurmdStartTime=\([^ ]*\).*/\1/p')
        t=$(date -d "$t" +%s 2>/dev/null || echo 0)
        if [ "$t" -lt $((slurmd_started - 1)) ]; then sleep 0.1; continue; fi
      fi
      if [ "$NGPU" -gt 0 ] && [[ "$(sinfo -h -n "$NODE" -o '%G' 2>/dev/null)" != *"gpu:$NGPU"* ]]; then
        sleep 0.1; continue
      fi
      ready=1; break ;;
    *drain* | down* | fail*)
      if [ "$resumed" = 0 ] && [ "$i" -gt 20 ]; then
        say "node is '$state' ($(sinfo -h -n "$NODE" -o '%E')): resuming it"
        scontrol update nodename="$NODE" state=resume || true
        resumed=1
      fi ;;
  esac
  sleep 0.1
done
[ "$ready" = 1 ] || fail "node $NODE not ready after ${TIMEOUT}s (state '$state', gres \
'$(sinfo -h -n "$NODE" -o '%G' 2>/dev/null)'); see $LOGS/slurmd.log and $LOGS/slurmctld.log"

# A new slurmctld runs its first scheduling pass ~3 s after it starts; jobs submitted earlier
# wait for it. Wait for that pass (sdiag's main schedule "Total cycles" >= 1).
if [ "$ctld_started" = 1 ]; then
  for _ in $(seq 100); do
    n=$(sdiag 2>/dev/null | sed -n '/Main schedule/,/^$/s/.*Total cycles: *\([0-9]*\).*/\1/p' | head -1)
    [ "${n:-0}" -ge 1 ] && break
    sleep 0.1
  done
fi
say "up: $(sinfo -h -o '%P %a %D %T %N cpus(A/I/O/T)=%C gres=%G' | head -1)"
