#!/bin/bash
# sge-up.sh - start a real single-node Grid Engine (Son of Grid Engine 8.1.9, Debian's
# gridengine-master/-exec/-client packages) for hpsearch's integration tests.
#
#   bash tests/cluster/sge-up.sh        # as root; ~10 s from nothing, ~3 s when installed
#   bash tests/cluster/sge-down.sh      # stops it again (keeps configuration and accounting)
#
# Idempotent: run it any number of times; it only does what is missing.
#   1. installs the three packages if they are missing (debconf answers preseeded, the
#      maintainer scripts are not allowed to start daemons);
#   2. makes host names consistent for SGE ($SGE_ROOT/default/common/host_aliases): here the
#      host name resolves to 127.0.0.1, which resolves back to "localhost", and SGE refuses
#      clients whose forward and reverse names differ ("access denied ... not identical");
#   3. starts sge_qmaster and sge_execd directly (no systemd, no init scripts: theirs never
#      write a pid file and stop by process name) with a clean environment (`env -i`: execd
#      hands its environment on to every job) and pid files in /var/run/gridengine;
#   4. configures: min_uid/min_gid 0 (root may submit), shell_start_mode unix_behavior (the
#      #! line counts), login_shells none (job shells keep the submitter's PATH with -V),
#      accounting_flush_time 0 (qacct knows a job the moment it leaves qstat), scheduler every
#      1 s plus flush_submit_sec/flush_finish_sec 1, submit/admin/exec host, queue all.q with
#      slots = nproc and no load threshold;
#   5. restarts execd whenever qmaster was (re)started or the global configuration changed
#      (execd caches it; after a qmaster restart a stale execd left jobs in 'r' forever);
#   6. waits until the queue instance is healthy (no state letters in `qstat -f`) and a
#      `qsub -sync y` job has run.
#
# Settings (environment): SGE_SLOTS (default: nproc), SGE_QUEUE (default: all.q),
# SGE_UP_TIMEOUT (seconds per wait, default 90), SGE_UP_SKIP_TEST=1 (no smoke job).
# Typical times (2 cores): ~25 s with the apt install, ~5 s installed but stopped, ~3 s when up.
set -euo pipefail
. "$(dirname "$0")/sge-common.sh"   # SGE_ROOT, SGE_CELL, SPOOL, PIDDIR, say, running
SLOTS=${SGE_SLOTS:-$(nproc)}
QUEUE=${SGE_QUEUE:-all.q}
TIMEOUT=${SGE_UP_TIMEOUT:-90}
PACKAGES="gridengine-master gridengine-exec gridengine-client"
LIBEXEC=/usr/lib/gridengine
COMMON=$SGE_ROOT/$SGE_CELL/common
QMASTER_PID=$PIDDIR/qmaster.pid
EXECD_PID=$PIDDIR/execd.pid
DAEMON_ENV=(env -i PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin
            LANG=C.UTF-8 SGE_ROOT="$SGE_ROOT" SGE_CELL="$SGE_CELL")

die() { say "ERROR: $*"; exit 1; }

[ "$(id -u)" = 0 ] || die "run me as root (the daemons start as root and drop to sgeadmin)"

TMPD=$(mktemp -d /tmp/sge-up.XXXXXX)
MADE_POLICY=0
on_exit() {
    rm -rf "$TMPD"
    if [ "$MADE_POLICY" = 1 ]; then rm -f /usr/sbin/policy-rc.d; fi
}
trap on_exit EXIT

# quietly COMMAND...: run it, show its output only when it fails
quietly() { "$@" >"$TMPD/out" 2>&1 || { cat "$TMPD/out" >&2; die "failed: $*"; }; }

# stop PIDFILE NAME SECONDS: SIGTERM, wait, SIGKILL as a last resort; removes the pid file
stop() {
    local pid i
    if running "$1" "$2"; then
        pid=$(cat "$1")
        say "stopping $2 (pid $pid)"
        kill -TERM "$pid" 2>/dev/null || true
        for ((i = 0; i < $3 * 5; i++)); do kill -0 "$pid" 2>/dev/null || break; sleep 0.2; done
        if kill -0 "$pid" 2>/dev/null; then kill -KILL "$pid" 2>/dev/null || true; fi
    fi
    rm -f "$1"
}

# until_ok SECONDS WHAT COMMAND...
until_ok() {
    local limit=$(( $(date +%s) + $1 )) what=$2
    shift 2
    until "$@" >/dev/null 2>&1; do
        [ "$(date +%s)" -lt "$limit" ] || die "gave up after $TIMEOUT s waiting for $what"
        sleep 0.2
    done
}

# ------------------------------------------------------------------------------ 1. packages
missing_packages() {
    local p
    for p in $PACKAGES; do
        dpkg-query -W -f='${Status}\n' "$p" 2>/dev/null | grep -qx 'install ok installed' \
            || echo "$p"
    done
}
if [ -n "$(missing_packages)" ]; then
    host=$(hostname -s)
    say "installing $PACKAGES (qmaster host $host)"
    # Without these answers the postinst asks; "gridengineconfig true" makes it create the
    # cell (bootstrap, act_qmaster, the BerkeleyDB spool) and the user sgeadmin.
    for p in common client master exec; do
        echo "gridengine-$p shared/gridengineconfig boolean true"
        echo "gridengine-$p shared/gridenginemaster string $host"
        echo "gridengine-$p shared/gridenginecell string $SGE_CELL"
    done | debconf-set-selections
    # The postinst starts the daemons through invoke-rc.d unless policy-rc.d forbids it; they
    # must not start before host_aliases exists.
    if [ ! -e /usr/sbin/policy-rc.d ]; then
        printf '#!/bin/sh\nexit 101\n' > /usr/sbin/policy-rc.d
        chmod 0755 /usr/sbin/policy-rc.d
        MADE_POLICY=1
    fi
    export DEBIAN_FRONTEND=noninteractive
    # shellcheck disable=SC2086
    if ! apt-get install -y -q $PACKAGES >"$TMPD/apt.log" 2>&1; then
        say "apt-get install failed; apt-get update, then once more"
        apt-get update -q >>"$TMPD/apt.log" 2>&1 || true
        # shellcheck disable=SC2086
        apt-get install -y -q $PACKAGES >>"$TMPD/apt.log" 2>&1 \
            || { tail -n 30 "$TMPD/apt.log" >&2; die "apt-get install $PACKAGES failed"; }
    fi
    if [ "$MADE_POLICY" = 1 ]; then rm -f /usr/sbin/policy-rc.d; MADE_POLICY=0; fi
    say "installed"
fi
id sgeadmin >/dev/null 2>&1 || die "no user sgeadmin (gridengine-common's postinst makes it)"
[ -e "$COMMON/bootstrap" ] && [ -e "$SPOOL/spooldb/sge" ] \
    || die "no cell in $COMMON or no spool in $SPOOL/spooldb: the postinst did not configure \
the cell (check debconf: gridengine-common shared/gridengineconfig must be true), or purge \
the packages and run me again"
mkdir -p "$PIDDIR"
chown sgeadmin:sgeadmin "$PIDDIR"

# -------------------------------------------------------------------------- 2. host names
name=$(hostname)
if ! getent hosts "$name" >/dev/null; then
    say "host name $name does not resolve: adding '127.0.1.1 $name' to /etc/hosts"
    echo "127.0.1.1 $name" >> /etc/hosts
fi
SGE_HOST=$("$LIBEXEC/gethostname" -name) || die "SGE cannot resolve this machine's name"
# Every other name the host's addresses resolve back to becomes an alias of SGE_HOST.
aliases=""
for ip in $(getent ahostsv4 "$SGE_HOST" | awk '{print $1}' | sort -u); do
    back=$("$LIBEXEC/gethostbyaddr" -name "$ip" 2>/dev/null || true)
    if [ -n "$back" ] && [ "$back" != "$SGE_HOST" ] && [[ " $aliases " != *" $back "* ]]; then
        aliases="$aliases $back"
    fi
done
want=""
if [ -n "$aliases" ]; then want="$SGE_HOST$aliases"; fi
aliases_changed=0
if [ "$want" != "$(cat "$COMMON/host_aliases" 2>/dev/null || true)" ]; then
    if [ -n "$want" ]; then
        echo "$want" > "$COMMON/host_aliases"
        chown sgeadmin:sgeadmin "$COMMON/host_aliases"
    else
        rm -f "$COMMON/host_aliases"
    fi
    aliases_changed=1
    say "host_aliases: ${want:-(none)}"
fi

# -------------------------------------------------------------------------------- 3. qmaster
# Daemons started by hand elsewhere write their pid files into the spool: adopt them.
for f in "$SPOOL/qmaster/qmaster.pid"; do
    if ! running "$QMASTER_PID" sge_qmaster && running "$f" sge_qmaster; then cp "$f" "$QMASTER_PID"; fi
done
for f in "$SPOOL"/execd/*/execd.pid; do
    if ! running "$EXECD_PID" sge_execd && running "$f" sge_execd; then cp "$f" "$EXECD_PID"; fi
done
qmaster_started=0
if running "$QMASTER_PID" sge_qmaster && [ "$aliases_changed" = 1 ]; then
    say "host aliases changed: restarting the daemons"
    stop "$EXECD_PID" sge_execd 30
    stop "$QMASTER_PID" sge_qmaster 60
fi
if ! running "$QMASTER_PID" sge_qmaster; then
    stop "$EXECD_PID" sge_execd 30   # an execd must never outlive its qmaster (see top)
    echo "$SGE_HOST" > "$COMMON/act_qmaster"
    chown sgeadmin:sgeadmin "$COMMON/act_qmaster"
    say "starting sge_qmaster"
    "${DAEMON_ENV[@]}" SGE_QMASTER_PIDFILE="$QMASTER_PID" /usr/sbin/sge_qmaster \
        || die "sge_qmaster did not start; see $SPOOL/qmaster/messages"
    qmaster_started=1
fi
until_ok "$TIMEOUT" "qmaster to answer qconf" qconf -sh
until_ok 10 "qmaster's pid file" running "$QMASTER_PID" sge_qmaster
say "qmaster running (pid $(cat "$QMASTER_PID"))"

# -------------------------------------------------------------------------- 4. configuration
qconf -sm | grep -qx root || quietly qconf -am root
qconf -sh | grep -qx "$SGE_HOST" || quietly qconf -ah "$SGE_HOST"
qconf -ss 2>/dev/null | grep -qx "$SGE_HOST" || quietly qconf -as "$SGE_HOST"

# qconf prints long values over several lines ending in '\': one line per attribute
one_line_each() { awk '{ if (sub(/\\$/, "")) printf "%s", $0; else print }' | sed -E 's/[[:space:]]+/ /g'; }

# The global configuration; qconf -Mconf takes the configuration's name from the FILE NAME,
# so the file must be called "global".
mkdir "$TMPD/conf"
qconf -sconf global | one_line_each > "$TMPD/global.now"
sed -E -e 's/^min_uid .*/min_uid 0/' -e 's/^min_gid .*/min_gid 0/' \
       -e 's/^shell_start_mode .*/shell_start_mode unix_behavior/' \
       -e 's/^login_shells .*/login_shells none/' \
       -e 's/^reporting_params .*/reporting_params accounting=true reporting=false flush_time=00:00:15 joblog=false sharelog=00:00:00 accounting_flush_time=00:00:00/' \
       "$TMPD/global.now" > "$TMPD/conf/global"
global_changed=0
if ! cmp -s "$TMPD/global.now" "$TMPD/conf/global"; then
    quietly qconf -Mconf "$TMPD/conf/global"
    global_changed=1
    say "global configuration set"
fi

qconf -ssconf | one_line_each > "$TMPD/sched.now"
sed -E -e 's/^schedule_interval .*/schedule_interval 0:0:1/' \
       -e 's/^flush_submit_sec .*/flush_submit_sec 1/' \
       -e 's/^flush_finish_sec .*/flush_finish_sec 1/' \
       -e 's/^job_load_adjustments .*/job_load_adjustments NONE/' \
       -e 's/^load_adjustment_decay_time .*/load_adjustment_decay_time 0:0:0/' \
       "$TMPD/sched.now" > "$TMPD/sched"
if ! cmp -s "$TMPD/sched.now" "$TMPD/sched"; then
    quietly qconf -Msconf "$TMPD/sched"
    say "scheduler configuration set"
fi

if ! qconf -sel 2>/dev/null | grep -qx "$SGE_HOST"; then
    printf '%s\n' "hostname $SGE_HOST" "load_scaling NONE" "complex_values NONE" \
        "user_lists NONE" "xuser_lists NONE" "projects NONE" "xprojects NONE" \
        "usage_scaling NONE" "report_variables NONE" > "$TMPD/exechost"
    quietly qconf -Ae "$TMPD/exechost"
    say "exec host $SGE_HOST added"
fi

# The queue (none exists after the install). Built from the 8.1.9 template with our changes:
# no load threshold (np_load_avg would put a busy shared CI box into alarm state 'a'), no PE
# (the template names PEs that do not exist).
queue_file() {
    printf '%s\n' "qname $QUEUE" "hostlist $SGE_HOST" "seq_no 0" "load_thresholds NONE" \
        "suspend_thresholds NONE" "nsuspend 1" "suspend_interval 00:05:00" "priority 0" \
        "min_cpu_interval 00:05:00" "processors UNDEFINED" "qtype BATCH INTERACTIVE" \
        "ckpt_list NONE" "pe_list NONE" "rerun FALSE" "slots $SLOTS" "tmpdir /tmp" \
        "shell /bin/sh" "prolog NONE" "epilog NONE" "shell_start_mode unix_behavior" \
        "starter_method NONE" "suspend_method NONE" "resume_method NONE" \
        "terminate_method NONE" "notify 00:00:60" "owner_list NONE" "user_lists NONE" \
        "xuser_lists NONE" "subordinate_list NONE" "complex_values NONE" "projects NONE" \
        "xprojects NONE" "calendar NONE" "initial_state default"
    for limit in rt cpu fsize data stack core rss vmem; do
        echo "s_$limit INFINITY"
        echo "h_$limit INFINITY"
    done
}
if ! qconf -sql 2>/dev/null | grep -qx "$QUEUE"; then
    queue_file > "$TMPD/queue"
    quietly qconf -Aq "$TMPD/queue"
    say "queue $QUEUE added ($SLOTS slots)"
else
    for attr in "hostlist $SGE_HOST" "slots $SLOTS" "load_thresholds NONE" \
                "shell_start_mode unix_behavior"; do
        key=${attr%% *} value=${attr#* }
        now=$(qconf -sq "$QUEUE" | one_line_each | awk -v k="$key" '$1 == k {$1 = ""; sub(/^ /, ""); print}')
        if [ "$now" != "$value" ]; then
            quietly qconf -mattr queue "$key" "$value" "$QUEUE"
            say "queue $QUEUE: $key $value"
        fi
    done
fi

# ---------------------------------------------------------------------------------- 5. execd
if running "$EXECD_PID" sge_execd && { [ "$qmaster_started" = 1 ] || [ "$global_changed" = 1 ]; }; then
    stop "$EXECD_PID" sge_execd 30
fi
if ! running "$EXECD_PID" sge_execd; then
    say "starting sge_execd"
    "${DAEMON_ENV[@]}" SGE_EXECD_PIDFILE="$EXECD_PID" /usr/sbin/sge_execd \
        || die "sge_execd did not start; see $SPOOL/execd/*/messages"
    until_ok 15 "execd's pid file" running "$EXECD_PID" sge_execd
fi
say "execd running (pid $(cat "$EXECD_PID"))"

# ----------------------------------------------------------------------- 6. healthy queue
instance="$QUEUE@$SGE_HOST"
# qstat -f: "all.q@vm  BIP  0/0/2  0.49  lx-amd64  [states]"; healthy = no 6th field.
# u: execd not (yet) connected, E: error, a: load alarm, d: disabled.
instance_state() { qstat -f -q "$instance" 2>/dev/null | awk -v q="$instance" '$1 == q {print ($6 == "" ? "ok" : $6)}'; }
limit=$(( $(date +%s) + TIMEOUT ))
while state=$(instance_state); [ "$state" != ok ]; do
    case "$state" in *E*) qmod -c "$instance" >/dev/null 2>&1 || true ;; esac
    case "$state" in *d*) qmod -e "$instance" >/dev/null 2>&1 || true ;; esac
    [ "$(date +%s)" -lt "$limit" ] || die "queue instance $instance not healthy after $TIMEOUT s (state '${state:-not listed}')"
    sleep 0.2
done
say "queue instance $instance healthy"

if [ "${SGE_UP_SKIP_TEST:-0}" != 1 ]; then
    if ! out=$(cd /tmp && timeout "$TIMEOUT" qsub -sync y -b y -N sge_up_check -o /dev/null -j y true 2>&1); then
        echo "$out" >&2
        die "the test job did not run"
    fi
    say "test job: $(echo "$out" | tail -n 1)"
fi
say "Grid Engine is up: host $SGE_HOST, queue $QUEUE, $SLOTS slots"
