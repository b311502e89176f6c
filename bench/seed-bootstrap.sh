#!/usr/bin/env bash
# The seed's etcd bootstrap (../shared/seed/etcd-ha-runbook.md, "Configuration on ETCD nodes"
# to "check the etcd cluster health"), scripted as it is written, inside an existing lab's
# namespaces: /etc/hosts, the CA and client certificate on etcd1 (openssl standing in for cfssl,
# see lib.sh), the pki dir copied to the other hosts (cp instead of scp), server and peer
# certificates on every host, /etc/etcd.env, the three members started (ip netns exec in the
# background instead of `systemctl enable etcd --now`) with the seed's flags (client and peer
# certificate auth OFF, as in the seed), then `etcdctl endpoint health` polled until all three
# are healthy. Prints the seconds from the first step to a healthy quorum. The etcd pids are
# left in $BENCH_TMP/seed-LAB-HOST.pid for seed-recover.sh and for cleanup.
#
# usage: HAOP_STATE_DIR=... BENCH_TMP=... bench/seed-bootstrap.sh LAB
set -euo pipefail
source "$(dirname "$0")/lib.sh"
lab=$1
: "${BENCH_TMP:?}" "${HAOP_STATE_DIR:?}"
lab_field "$lab" etcd1 address >/dev/null # warm the cache: not part of the procedure

t0=$(now)
seed_hosts_file "$lab"
pki1=$(host_root "$lab" etcd1)/etc/kubernetes/pki/etcd
seed_pki_ca "$pki1"
for h in etcd2 etcd3; do # scp -r /etc/kubernetes/pki/etcd ...; mv /tmp/etcd/* ...
    mkdir -p "$(host_root "$lab" "$h")/etc/kubernetes/pki/etcd"
    cp -r "$pki1"/. "$(host_root "$lab" "$h")/etc/kubernetes/pki/etcd/"
done
for h in etcd1 etcd2 etcd3; do
    ip=$(lab_field "$lab" "$h" address)
    seed_pki_member "$(host_root "$lab" "$h")/etc/kubernetes/pki/etcd" "$h" "$ip"
    printf 'PEER_NAME=%s\nPRIVATE_IP=%s\n' "$h" "$ip" >>"$(host_root "$lab" "$h")/etc/etcd.env"
done
i=0
for h in etcd1 etcd2 etcd3; do
    seed_start "$lab" "$h" "$i" new "$BENCH_TMP/seed-$lab-$h.pid"
    i=$((i + 1))
done
if ! wait_healthy "$lab" etcd1 60; then
    echo "seed bootstrap: no healthy quorum within 60 s" >&2
    exit 1
fi
t1=$(now)
elapsed "$t0" "$t1"
