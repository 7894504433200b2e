# sge-common.sh - what sge-up.sh and sge-down.sh share; sourced by both, not run.

export SGE_ROOT=${SGE_ROOT:-/var/lib/gridengine}
export SGE_CELL=${SGE_CELL:-default}
SPOOL=/var/spool/gridengine
PIDDIR=/var/run/gridengine

START=$(date +%s.%N)
# say MESSAGE: a line on stderr, tagged with the script's name and the seconds since it started
say() { echo "[$(basename "$0" .sh) $(awk -v a="$(date +%s.%N)" -v b="$START" 'BEGIN{printf "%5.1fs", a-b}')] $*" >&2; }

# running PIDFILE NAME: the pid in PIDFILE is a live process whose /proc/PID/comm is NAME.
# SGE leaves its pid files behind on shutdown, so a pid is never trusted without this check.
running() {
    local pid
    pid=$(cat "$1" 2>/dev/null) || return 1
    [[ "$pid" =~ ^[0-9]+$ ]] || return 1
    [ "$(cat "/proc/$pid/comm" 2>/dev/null)" = "$2" ]
}

