#!/usr/bin/env bash
# tests/cluster/slurm-down.sh - stop the single-node Slurm of tests/cluster/slurm-up.sh.
#
#   sudo bash tests/cluster/slurm-down.sh
#
# Cancels every job (so no job process outlives slurmd), then stops slurmd, slurmctld and
# munged through their pid files, checking /proc/PID/exe first (never by process name).
# Idempotent: does nothing when nothing runs. Packages, config and the munge key stay.
#   SLURM_PURGE=1       also delete controller state, spool, logs and the config files
#   SLURM_KEEP_MUNGE=1  leave munged running
set -uo pipefail

RUN=/run/slurm
CTLD_PIDFILE=$RUN/slurmctld.pid
SLURMD_PIDFILE=$RUN/slurmd.pid
MUNGE_PIDFILE=/run/munge/munged.pid
LOGS=/var/log/slurm

say() { echo "slurm-down: $*" >&2; }
[ "$(id -u)" -eq 0 ] || { say "ERROR: run as root"; exit 1; }

exe() { local p; p=$(command -v "$1" 2>/dev/null) && readlink -f "$p"; }
alive() { # PIDFILE EXE
  local pid
  [ -n "$2" ] || return 1
  pid=$(cat "$1" 2>/dev/null) || return 1
  [[ $pid =~ ^[0-9]+$ ]] && kill -0 "$pid" 2>/dev/null &&
    [ "$(readlink "/proc/$pid/exe" 2>/dev/null)" = "$2" ]
}
# stop NAME PIDFILE EXE [NAME PIDFILE EXE ...]: SIGTERM all at once, wait up to 15 s, SIGKILL.
stop() {
  local pids=() pid
  while [ $# -ge 3 ]; do
    if alive "$2" "$3"; then
      pid=$(cat "$2")
      say "stopping $1 (pid $pid)"
      kill -TERM "$pid" 2>/dev/null && pids+=("$pid")
    fi
    rm -f "$2"
    shift 3
  done
  [ ${#pids[@]} -gt 0 ] || return 0
  for _ in $(seq 150); do
    local left=0
    for pid in "${pids[@]}"; do kill -0 "$pid" 2>/dev/null && left=1; done
    [ "$left" = 0 ] && return 0
    sleep 0.1
  done
  for pid in "${pids[@]}"; do
    kill -0 "$pid" 2>/dev/null && { say "pid $pid ignored SIGTERM for 15 s: SIGKILL"; kill -KILL "$pid"; }
  done
  return 0
}

CTLD_EXE=$(exe slurmctld || true)
SLURMD_EXE=$(exe slurmd || true)
MUNGED_EXE=$(exe munged || true)

if alive "$CTLD_PIDFILE" "$CTLD_EXE"; then
  jobs=$(squeue -h -o '%F' 2>/dev/null | sort -u | tr '\n' ' ')
  if [ -n "${jobs// /}" ]; then
    say "cancelling jobs $jobs"
    # shellcheck disable=SC2086
    scancel $jobs 2>/dev/null
    for _ in $(seq 300); do [ -z "$(squeue -h 2>/dev/null)" ] && break; sleep 0.1; done
  fi
fi
stop slurmd "$SLURMD_PIDFILE" "$SLURMD_EXE" slurmctld "$CTLD_PIDFILE" "$CTLD_EXE"
[ "${SLURM_KEEP_MUNGE:-0}" = 1 ] || stop munged "$MUNGE_PIDFILE" "$MUNGED_EXE"

if [ "${SLURM_PURGE:-0}" = 1 ]; then
  say "deleting state, spool, logs and config"
  rm -rf /var/spool/slurmctld /var/spool/slurmd "$RUN"
  rm -f "$LOGS"/slurmctld.log* "$LOGS"/slurmd.log* "$LOGS"/*.stdout "$LOGS"/jobcomp.log*
  rm -f /etc/slurm/slurm.conf /etc/slurm/gres.conf
fi
say "down"
