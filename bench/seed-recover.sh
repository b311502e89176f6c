#!/usr/bin/env bash
# The seed's member recovery ("Troubleshooting Alert: Component etcd is unhealthy"), scripted
# as it is written, on a cluster made by seed-bootstrap.sh: etcd2 (master-1) is killed (SIGKILL,
# standing in for the failure and `systemctl stop etcd`) and its data dir removed
# (`rm -rf /var/lib/etcd`) - not timed; then, timed: on the working node (etcd1)
# `etcdctl member list` to find the dead member's ID, `etcdctl member remove ID` and
# `etcdctl member add master-1 --peer-urls=https://etcd2:2380` (short name: see lib.sh),
# each retried every 0.5 s while etcd answers "unhealthy cluster" or times out, as an operator
# would retry (retries are logged in $BENCH_TMP/seed-recover-LAB.retries), etcd2 started
# again with --initial-cluster-state existing, and `etcdctl endpoint health` polled until all
# three members are healthy and `member list` shows three started voters. Prints the seconds.
#
# SEED_RECOVER_TIMEOUT (seconds, default 60) bounds each wait; bench/sizes raises it for large
# databases, where the new member needs longer to receive its copy.
#
# usage: HAOP_STATE_DIR=... BENCH_TMP=... bench/seed-recover.sh LAB
set -euo pipefail
source "$(dirname "$0")/lib.sh"
lab=$1
: "${BENCH_TMP:?}" "${HAOP_STATE_DIR:?}"
timeout=${SEED_RECOVER_TIMEOUT:-60}

kill_pidfiles "$BENCH_TMP/seed-$lab-etcd2.pid"
rm -rf "$(host_root "$lab" etcd2)/var/lib/etcd"

t0=$(now)
id=$(seed_etcdctl "$lab" etcd1 member list | awk -F', ' '$3 == "master-1" {print $1}')
[ -n "$id" ] || { echo "seed recover: master-1 not in member list" >&2; exit 1; }
# retry_unhealthy WHAT ARGS...: etcdctl on etcd1 (etcdctl's default 5 s command timeout),
# retried every 0.5 s while etcd answers "unhealthy cluster" (the seed shows exactly this
# error) or the request times out, for at most $SEED_RECOVER_TIMEOUT s (60).
retry_unhealthy() {
    local what=$1 out deadline=$((${EPOCHREALTIME/./} + timeout * 1000000))
    shift
    while :; do
        if out=$(seed_etcdctl "$lab" etcd1 --command-timeout=5s "$@" 2>&1); then
            return 0
        fi
        # A retried request that went through the first time: done.
        if grep -q "member not found\|Peer URLs already exists" <<<"$out"; then
            return 0
        fi
        if ! grep -q "unhealthy cluster\|context deadline exceeded\|request timed out" <<<"$out" ||
            [ "${EPOCHREALTIME/./}" -gt "$deadline" ]; then
            echo "seed recover: $what failed: $out" >&2
            exit 1
        fi
        echo "$what: $(grep -o 'unhealthy cluster\|context deadline exceeded\|request timed out' <<<"$out" | head -1)" >>"$BENCH_TMP/seed-recover-$lab.retries"
        sleep 0.5
    done
}
retry_unhealthy "member remove" member remove "$id"
retry_unhealthy "member add" member add master-1 --peer-urls="https://etcd2$SEED_PEER_HOST_SUFFIX:2380"
seed_start "$lab" etcd2 1 existing "$BENCH_TMP/seed-$lab-etcd2.pid"
deadline=$((${EPOCHREALTIME/./} + timeout * 1000000))
while :; do
    if wait_healthy "$lab" etcd1 "$timeout" &&
        [ "$(seed_etcdctl "$lab" etcd1 member list | awk -F', ' '$2 == "started" && $6 == "false"' | wc -l)" = 3 ]; then
        break
    fi
    [ "${EPOCHREALTIME/./}" -gt "$deadline" ] && { echo "seed recover: not 3 healthy voters within $timeout s" >&2; exit 1; }
    sleep 0.05
done
t1=$(now)
elapsed "$t0" "$t1"
