#!/bin/sh
# The NFS test bed's guest: PID 1 after the image's stub /init has mounted
# /proc, /sys, /dev and this payload disk on /payload (tests/harness/nfs.rs).
#
# It starts the kernel's NFS server exporting /srv/kloigos, makes two client
# nodes (network, UTS and mount namespaces named nodea and nodeb, each with
# its own rpcbind and statd so that its lockd can reach them), mounts the
# export on each over NFSv4.2 (/nfs/v42) and NFSv3 (/nfs/v3), installs the
# kloigos binaries as install.sh does, waits out the server's grace period,
# then runs the host's commands from the serial console until told to stop.
#
# Console protocol (every line of ours starts with "@@K "):
#   guest: "@@K ready", "@@K fail WHY"
#   host:  "ID BASE64" (a shell script), "quit"
#   guest: the script's output, then "@@K end ID RC"
set -u
PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin
export PATH

say() { echo "@@K $*"; }
fail() {
    say "fail $*"
    echo o >/proc/sysrq-trigger
    sleep 60
}
# Ends the server's NFSv4 grace period, where the kernel offers it.
end_grace() {
    [ ! -e /proc/fs/nfsd/v4_end_grace ] || echo Y >/proc/fs/nfsd/v4_end_grace
}
step() { say "step $* (at $(cut -d" " -f1 /proc/uptime) s)"; }

# Quiet the console: only our lines and real errors.
echo 1 >/proc/sys/kernel/printk
mount -t tmpfs tmpfs /run || fail "mount /run"
mount -t tmpfs tmpfs /tmp || fail "mount /tmp"
mount -t tmpfs tmpfs /var/lib/nfs || fail "mount /var/lib/nfs"
mkdir -p /var/lib/nfs/sm /var/lib/nfs/sm.bak /var/lib/nfs/v4recovery
mount -t devpts devpts /dev/pts 2>/dev/null
hostname server
ip link set lo up || fail "lo up"

step "modules"
for m in nfsd nfs nfsv3 nfsv4 lockd veth; do
    modprobe "$m" || fail "modprobe $m"
done

step "accounts and binaries"
groupadd -g 990 kloigos && useradd -r -u 990 -g 990 -d /nonexistent -s /usr/sbin/nologin kloigos ||
    fail "service account"
for u in alice:2001 bob:2002 carol:2003; do
    name=${u%%:*} id=${u#*:}
    groupadd -g "$id" "$name" && useradd -m -u "$id" -g "$id" -s /bin/sh "$name" || fail "user $name"
done
install -o kloigos -g kloigos -m 4755 /payload/bin/kloigos /usr/local/bin/kloigos || fail "install kloigos"
install -o root -g root -m 0755 /payload/bin/kloigos-housekeeper /usr/local/sbin/ || fail "install housekeeper"
moddir=/lib/x86_64-linux-gnu/security
[ -e "$moddir/pam_unix.so" ] || moddir=/usr/lib/x86_64-linux-gnu/security
install -o root -g root -m 0644 /payload/bin/libpam_kloigos.so "$moddir/pam_kloigos.so" || fail "install pam module"
# As the PAM tests' stacks: only the module's success lets a user through
# (its PAM_IGNORE falls on pam_deny).
printf '%s\n' 'account [success=1 ignore=ignore default=die] pam_kloigos.so services=kloigos-test' \
    'account requisite pam_deny.so' 'account required pam_permit.so' >/etc/pam.d/kloigos-test
mkdir -p /etc/kloigos /var/lib/kloigos /nfs/v42 /nfs/v3 /nfs/kloigos /srv/kloigos
cp /payload/config.json /etc/kloigos/config.json || fail "config"
chown 990:990 /srv/kloigos && chmod 0755 /srv/kloigos

step "nfs server"
mount -t nfsd nfsd /proc/fs/nfsd || fail "mount nfsd"
# Short grace periods (the defaults are 90 s and 50 s), waited out before
# any lock; v4's ends early as nfsdcld ends it when no client can reclaim.
echo 3 >/proc/sys/fs/nfs/nlm_timeout
echo 3 >/proc/sys/fs/nfs/nlm_grace_period
echo 10 >/proc/fs/nfsd/nfsv4leasetime
echo 10 >/proc/fs/nfsd/nfsv4gracetime
rpcbind -w || fail "rpcbind"
rpc.statd --no-notify || fail "rpc.statd"
echo '/srv/kloigos 10.0.0.0/8(rw,sync,no_subtree_check,root_squash)' >/etc/exports
exportfs -ra || fail "exportfs"
rpc.mountd || fail "rpc.mountd"
rpc.nfsd -V 3 -V 4.2 4 || fail "rpc.nfsd"
end_grace

step "client nodes"
mkdir -p /run/netns /run/ns
mount --bind /run/ns /run/ns && mount --make-private /run/ns || fail "private /run/ns"
i=0
for n in nodea nodeb; do
    i=$((i + 1))
    touch "/run/netns/$n" "/run/ns/$n.uts" "/run/ns/$n.mnt"
    unshare --net="/run/netns/$n" --uts="/run/ns/$n.uts" --mount="/run/ns/$n.mnt" \
        --propagation private true || fail "namespaces of $n"
    ip link add "s$n" type veth peer name "c$n" || fail "veth $n"
    ip link set "c$n" netns "$n" || fail "veth into $n"
    ip addr add "10.0.$i.1/24" dev "s$n" && ip link set "s$n" up || fail "server side of $n"
    nsenter --net="/run/netns/$n" --uts="/run/ns/$n.uts" --mount="/run/ns/$n.mnt" \
        sh /payload/node.sh "$n" "10.0.$i" || fail "node $n"
done

step "grace"
# The first lock on each mount waits until the server's grace period ends.
# Root is squashed on the share: the probe file is everyone's.
touch /srv/kloigos/.probe && chmod 0666 /srv/kloigos/.probe
for n in nodea nodeb; do
    for v in v42 v3; do
        nsenter --net="/run/netns/$n" --uts="/run/ns/$n.uts" --mount="/run/ns/$n.mnt" \
            timeout 120 flock "/nfs/$v/.probe" true || fail "first lock on $n:/nfs/$v"
    done
done

stty -F /dev/ttyS0 raw -echo 2>/dev/null
say ready
while IFS=' ' read -r id script; do
    case "$id" in
    quit) break ;;
    '') continue ;;
    esac
    printf '%s' "$script" | base64 -d >/tmp/cmd.sh 2>/dev/null || {
        say "end $id 125"
        continue
    }
    (cd /tmp && sh /tmp/cmd.sh) </dev/null 2>&1
    rc=$?
    # A process of the scenario's users left running would act on the next
    # scenario's cluster (/nfs/kloigos moves): named for the host, which
    # fails the scenario that left it, and ended. Real uid too: kloigos
    # runs setuid to the service account.
    left=$({
        pgrep -u alice,bob,carol
        pgrep -U alice,bob,carol
    } | sort -un | tr '\n' ' ')
    if [ -n "$left" ]; then
        echo
        # shellcheck disable=SC2086
        echo "R leftover $(ps -o pid=,ruser=,user=,args= -p "$(echo $left | tr ' ' ,)" | tr -s ' \n' ' ')"
        # shellcheck disable=SC2086
        kill -KILL $left
    fi
    # On a line of its own, whatever the script printed last.
    echo
    say "end $id $rc"
done </dev/ttyS0
sync
echo o >/proc/sysrq-trigger
sleep 60
