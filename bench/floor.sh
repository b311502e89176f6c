#!/usr/bin/env bash
# The floor: etcd's own formation time. Certificates are made first (untimed, same as the
# seed's), then the three members are started in parallel with the seed's flags and the clock
# runs from the first start to all three answering `etcdctl endpoint health` (same poll as the
# seed's script). Prints the seconds. Pids in $BENCH_TMP/floor-LAB-HOST.pid.
#
# usage: HAOP_STATE_DIR=... BENCH_TMP=... bench/floor.sh LAB
set -euo pipefail
source "$(dirname "$0")/lib.sh"
lab=$1
: "${BENCH_TMP:?}" "${HAOP_STATE_DIR:?}"

# Ready certificates (not timed).
seed_hosts_file "$lab"
pki1=$(host_root "$lab" etcd1)/etc/kubernetes/pki/etcd
seed_pki_ca "$pki1"
for h in etcd2 etcd3; do
    mkdir -p "$(host_root "$lab" "$h")/etc/kubernetes/pki/etcd"
    cp -r "$pki1"/. "$(host_root "$lab" "$h")/etc/kubernetes/pki/etcd/"
done
for h in etcd1 etcd2 etcd3; do
    seed_pki_member "$(host_root "$lab" "$h")/etc/kubernetes/pki/etcd" "$h" "$(lab_field "$lab" "$h" address)"
done

t0=$(now)
i=0
for h in etcd1 etcd2 etcd3; do
    seed_start "$lab" "$h" "$i" new "$BENCH_TMP/floor-$lab-$h.pid"
    i=$((i + 1))
done
if ! wait_healthy "$lab" etcd1 60; then
    echo "floor: no healthy quorum within 60 s" >&2
    exit 1
fi
t1=$(now)
elapsed "$t0" "$t1"
