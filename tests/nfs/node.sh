#!/bin/sh
# One client node of the NFS test bed, run inside its own network, UTS and
# mount namespaces (tests/nfs/init.sh): NAME and the /24 prefix of its link.
set -eu
name=$1 net=$2
hostname "$name"
ip link set lo up
ip addr add "$net.2/24" dev "c$name"
ip link set "c$name" up
# Its own rpcbind and statd: the node's lockd asks them, over its own
# loopback, to monitor the server (NLM, NFSv3).
mount -t tmpfs -o mode=0755 tmpfs /run
mkdir -p /run/rpcbind
mount -t tmpfs -o mode=0755 tmpfs /var/lib/nfs
mount -t tmpfs -o mode=0755 tmpfs /var/lib/kloigos
mkdir -p /var/lib/nfs/sm /var/lib/nfs/sm.bak
rpcbind -w
rpc.statd --no-notify
mount -t nfs -o vers=4.2 "$net.1:/srv/kloigos" /nfs/v42
mount -t nfs -o vers=3 "$net.1:/srv/kloigos" /nfs/v3
