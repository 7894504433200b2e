#!/bin/bash
# sge-down.sh - stop the Grid Engine that tests/cluster/sge-up.sh started.
#
#   1. deletes every job while qmaster still runs (qdel -u '*', then -f if needed);
#   2. stops sge_execd, then sge_qmaster, by their PID FILES only: a pid is signalled only if
#      /proc/PID/comm names the expected daemon (SGE leaves stale pid files behind);
#   3. kills what is left of a job only through execd's active_jobs/<job>/job_pid files, and
#      only if that process still carries the job's JOB_ID in its environment.
# Nothing is ever killed by name. Idempotent. Configuration, spool and accounting are kept, so
# the next sge-up.sh is quick. qmaster needs 7-10 s to shut down: that is normal.
set -u
. "$(dirname "$0")/sge-common.sh"   # SGE_ROOT, SGE_CELL, SPOOL, PIDDIR, say, running
QMASTER_PIDS=("$PIDDIR/qmaster.pid" "$SPOOL/qmaster/qmaster.pid")
EXECD_PIDS=("$PIDDIR/execd.pid" "$SPOOL"/execd/*/execd.pid)


# stop NAME SECONDS PIDFILE...
stop() {
    local name=$1 seconds=$2 f pid i
    shift 2
    for f in "$@"; do
        [ -e "$f" ] || continue
        if running "$f" "$name"; then
            pid=$(cat "$f")
            say "stopping $name (pid $pid)"
            kill -TERM "$pid" 2>/dev/null || true
            for ((i = 0; i < seconds * 5; i++)); do kill -0 "$pid" 2>/dev/null || break; sleep 0.2; done
            if kill -0 "$pid" 2>/dev/null; then
                say "$name (pid $pid) still there after $seconds s: SIGKILL"
                kill -KILL "$pid" 2>/dev/null || true
            fi
        fi
        rm -f "$f"
    done
}

qmaster_up=0
for f in "${QMASTER_PIDS[@]}"; do running "$f" sge_qmaster && qmaster_up=1; done

if [ "$qmaster_up" = 1 ] && [ -n "$(qstat -u '*' 2>/dev/null)" ]; then
    say "deleting all jobs"
    qdel -u '*' '*' >/dev/null 2>&1 || true
    for ((i = 0; i < 60; i++)); do
        [ -z "$(qstat -u '*' 2>/dev/null)" ] && break
        if [ "$i" = 30 ]; then qdel -f -u '*' '*' >/dev/null 2>&1 || true; fi
        sleep 0.5
    done
    left=$(qstat -u '*' 2>/dev/null | awk 'NR > 2 {print $1}' | tr '\n' ' ')
    [ -z "$left" ] || say "warning: jobs still listed: $left"
fi

stop sge_execd 30 "${EXECD_PIDS[@]}"

for d in "$SPOOL"/execd/*/active_jobs/*/; do
    [ -d "$d" ] || continue
    job=$(basename "$d")
    job=${job%%.*}
    pgid=$(cat "$d/job_pid" 2>/dev/null || true)
    if [[ "$pgid" =~ ^[0-9]+$ ]] \
            && tr '\0' '\n' < "/proc/$pgid/environ" 2>/dev/null | grep -qx "JOB_ID=$job"; then
        say "killing what is left of job $job (process group $pgid)"
        kill -KILL -- "-$pgid" 2>/dev/null || kill -KILL "$pgid" 2>/dev/null || true
    fi
    if running "$d/pid" sge_shepherd; then
        say "killing the leftover shepherd of job $job"
        kill -KILL "$(cat "$d/pid")" 2>/dev/null || true
    fi
done

stop sge_qmaster 60 "${QMASTER_PIDS[@]}"
say "Grid Engine is down"
