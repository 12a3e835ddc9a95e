# Helpers of the NFS test bed's scenarios (tests/nfs.rs), sourced before
# each script the host sends. Results are lines "R KEY VALUE".

# Runs a command on a client node: its network, UTS and mount namespaces.
on() {
    _n=$1
    shift
    nsenter --net="/run/netns/$_n" --uts="/run/ns/$_n.uts" --mount="/run/ns/$_n.mnt" -- "$@"
}

# Runs a command on a client node as a user (uid, gid and groups set and
# checked by setpriv).
onas() {
    _n=$1 _u=$2
    shift 2
    on "$_n" setpriv --reuid="$_u" --regid="$_u" --init-groups -- "$@"
}

# Milliseconds since the epoch.
ms() { date +%s%3N; }

# A result line for the host.
r() { echo "R $*"; }

# Runs CMD (its output dropped) until it succeeds, for at most SECS
# seconds; then, if it never did, says "WHAT in SECS s" and fails.
wait_for() {
    _secs=$1 _what=$2
    shift 2
    _until=$(($(ms) + _secs * 1000))
    until "$@" >/dev/null; do
        [ "$(ms)" -lt "$_until" ] || { echo "$_what in $_secs s"; return 1; }
    done
}

# Waits (bounded) until both nodes can take a lock on both mounts: the
# share is up and out of its grace period.
healthy() {
    for _n in nodea nodeb; do
        for _v in v42 v3; do
            on "$_n" timeout 150 flock "/nfs/$_v/.probe" true ||
                { echo "no lock on $_n:/nfs/$_v"; return 1; }
        done
    done
}

# Shows /srv/kloigos/NAME (made if missing) to both nodes at /nfs/kloigos,
# over NFS version V (v42 or v3).
share() {
    _v=$1 _name=$2
    if [ ! -d "/srv/kloigos/$_name" ]; then
        mkdir "/srv/kloigos/$_name" && chown 990:990 "/srv/kloigos/$_name" || return 1
    fi
    for _n in nodea nodeb; do
        # Lazily: a process an earlier scenario left blocked on the share
        # keeps the old directory, not this one.
        while on "$_n" mountpoint -q /nfs/kloigos; do
            on "$_n" umount -l /nfs/kloigos || return 1
        done
        on "$_n" timeout 60 mount --bind "/nfs/$_v/$_name" /nfs/kloigos || return 1
    done
}

# A fresh cluster in /srv/kloigos/NAME seen by both nodes at /nfs/kloigos
# over NFS version V: nodea and nodeb with UNITS one-CPU units, no limit on
# bookings per user.
fresh() {
    healthy || return 1
    [ ! -e "/srv/kloigos/$2" ] || { echo "/srv/kloigos/$2 exists"; return 1; }
    share "$1" "$2" || return 1
    on nodea kloigos admin init --name bed --admin root >/dev/null || return 1
    on nodea kloigos admin policy max_bookings_per_user_node=0 >/dev/null || return 1
    for _n in nodea nodeb; do
        on nodea kloigos admin add-node "$_n" --cpus "0-$(($3 - 1))" --unit-cpus 1 \
            >/dev/null || return 1
    done
}

# Starts the server's nfsd again after `rpc.nfsd 0`, and waits out its new
# grace period.
restart_nfsd() {
    rpc.nfsd -V 3 -V 4.2 4 || return 1
    [ ! -e /proc/fs/nfsd/v4_end_grace ] || echo Y >/proc/fs/nfsd/v4_end_grace
    healthy
}

# The cluster's files, for the host to check: a base64 tar of the share,
# on a line of its own (tar's complaints kept off the console).
dump() {
    tar -C "/srv/kloigos/$1" --numeric-owner -cf /tmp/dump.tar . 2>/tmp/dump.err
    echo "R-TAR-BEGIN"
    base64 -w 0 /tmp/dump.tar
    echo
    echo "R-TAR-END"
    rm -f /tmp/dump.tar
}

# Runs the scenario's `worker NODE USER N` for alice, bob, carol and alice
# again on both nodes at once, and waits for all eight.
all_workers() {
    for _n in nodea nodeb; do
        worker "$_n" alice 1 &
        worker "$_n" bob 2 &
        worker "$_n" carol 3 &
        worker "$_n" alice 4 &
    done
    wait
}

# A fresh cluster NAME over version V with 4 units a node (see `fresh`),
# alice booked on nodeb for an hour, and one housekeeper pass on nodeb: its
# exit reported as KEY, its output shown.
alice_booked_and_a_pass() {
    fresh "$1" "$2" 4 || return 1
    onas nodea alice kloigos alloc nodeb --units 1 -t 1h >/dev/null || return 1
    on nodeb timeout 120 kloigos-housekeeper --once >/tmp/hk 2>&1
    r "$3" $?
    cat /tmp/hk
}

# Starts counting the RPC calls the kernel sends, from both clients and to
# every program (NFS, and NLM on NFSv3): its sunrpc:rpc_request tracepoint,
# into a cleared trace buffer.
rpc_trace_start() {
    _t=/sys/kernel/tracing
    [ -e "$_t/trace" ] || mount -t tracefs tracefs "$_t" || return 1
    echo 0 >"$_t/tracing_on" &&
        echo 8192 >"$_t/buffer_size_kb" &&
        echo >"$_t/trace" &&
        echo 1 >"$_t/events/sunrpc/rpc_request/enable" &&
        echo 1 >"$_t/tracing_on"
}

# Stops counting, and reports the calls of procedure NAME (NLM's and
# NFSv4's are both "LOCK") as KEY, and the trace's events as KEY_events
# "WRITTEN KEPT" (fewer kept: the buffer dropped some, the count is short).
rpc_trace_stop() {
    _t=/sys/kernel/tracing
    echo 0 >"$_t/tracing_on"
    echo 0 >"$_t/events/sunrpc/rpc_request/enable"
    r "$2" "$(grep -c " $1 " "$_t/trace")"
    r "$2_events" "$(sed -n 's|^# entries-in-buffer/entries-written: \([0-9]*\)/\([0-9]*\).*|\2 \1|p' "$_t/trace" | head -n 1)"
    grep " $1 " "$_t/trace" | head -n 2
    echo >"$_t/trace"
}
