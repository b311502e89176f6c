#!/usr/bin/env bash
# The recovery floor: etcd's own learner catch-up, scripted with etcdctl, on a cluster that
# `haop apply` made (TLS, client and peer certificate auth on; haop's client certificate from
# `haop etcd env`). What recovery cannot do faster than etcd itself lets it.
#
# Not timed: the leadership moved off HOST when it has it (`etcdctl move-leader`: no election in
# the floor), HOST's etcd killed and its data dir removed as in haop's recovery benchmark
# (`haop lab crash LAB HOST --unit etcd.service --wipe`), its unit stopped (the supervisor
# would keep restarting it), the data dir removed again (the restarts may have made it), and
# the member removed with `etcdctl member remove` (retried while etcd answers "unhealthy
# cluster"; its seconds go to the info file as remove_s). Timed, from `member add` to the
# promotion: `etcdctl member add HOST --learner --peer-urls=...`; the answer's
# ETCD_INITIAL_CLUSTER written to the host's /etc/etcd.bootstrap.env with
# ETCD_INITIAL_CLUSTER_STATE=existing (the file the unit reads, as `haop etcd recover` writes
# it); `haop agent --lab LAB --host HOST unit etcd.service start`; `etcdctl endpoint status` polled
# every 50 ms (the learner under a 200 ms timeout) until its raft index reaches the leader's (catch_up_s in the info
# file); `etcdctl member promote` (retried every 50 ms while etcd answers that the learner is
# not in sync yet). Then, not timed: the bootstrap file sealed again as haop leaves it (so that
# the lab is as `haop apply` left it for what runs next) and three healthy voters awaited.
#
# Prints the seconds. Writes `key value` lines (remove_s, add_s, add_retries, start_s,
# catch_up_s, promote_s, promote_retries, db_size) to $BENCH_TMP/floor-learner-LAB.info.
#
# usage: HAOP_STATE_DIR=... BENCH_TMP=... bench/floor-learner.sh LAB [HOST] [TIMEOUT_S]
set -euo pipefail
source "$(dirname "$0")/lib.sh"
lab=$1
host=${2:-etcd2}
timeout=${3:-600}
: "${BENCH_TMP:?}" "${HAOP_STATE_DIR:?}"
info=$BENCH_TMP/floor-learner-$lab.info
: >"$info"
inv=$("$HAOP" lab inventory "$lab")
eval "$("$HAOP" etcd env -f "$inv")"
root=$(host_root "$lab" "$host")
ip=$(lab_field "$lab" "$host" address)
peer_url=https://$ip:2380
client_url=https://$ip:2379
data_dir=$root/var/lib/etcd
bootstrap=$root/etc/etcd.bootstrap.env
# Membership requests go to the other members only: a learner answers them with "rpc not
# supported for learner".
others=$(tr ',' '\n' <<<"$ETCDCTL_ENDPOINTS" | grep -vxF "$client_url" | paste -sd,)
ctl() { ETCDCTL_ENDPOINTS=$others "$ETCDCTL" --dial-timeout=2s --command-timeout=30s "$@"; }
# The three members' status, each under a short timeout (a learner busy applying a snapshot
# must not hold up the poll); endpoints that do not answer are left out.
status() { "$ETCDCTL" --dial-timeout=1s --command-timeout=1s endpoint status "$@" 2>/dev/null || true; }
now_us() { echo "${EPOCHREALTIME/./}"; }
deadline_us=$(($(now_us) + timeout * 1000000))
past_deadline() { [ "$(now_us)" -gt "$deadline_us" ]; }
fail() {
    echo "floor-learner: $*" >&2
    exit 1
}
# retry WHAT PATTERN ARGS...: etcdctl ARGS until it succeeds, retried every 50 ms while its
# error matches PATTERN; counts retries in $retries. Its output is left in $out.
retries=0
retry() {
    local what=$1 pattern=$2
    shift 2
    while :; do
        if out=$(ctl "$@" 2>&1); then
            return 0
        fi
        if ! grep -q "$pattern" <<<"$out" || past_deadline; then
            fail "$what failed: $out"
        fi
        [ "$retries" = 0 ] && echo "floor-learner: $what: retrying: $(grep -o 'Error: .*' <<<"$out" | head -n 1)" >&2
        retries=$((retries + 1))
        sleep 0.05
    done
}
note() { printf '%s %s\n' "$1" "$2" >>"$info"; }

[ -f "$bootstrap" ] || fail "$bootstrap missing: is $lab a cluster made by haop apply?"
sealed=$(cat "$bootstrap")

# HOST must not lead when it is killed: the floor has no election in it (not timed).
st=$(status)
if [ "$(awk -F', ' -v e="$client_url" '$1 == e {print $5}' <<<"$st")" = true ]; then
    to=$(awk -F', ' -v e="$client_url" '$1 != e {print $2; exit}' <<<"$st")
    "$ETCDCTL" --dial-timeout=2s --command-timeout=30s move-leader "$to" >/dev/null ||
        fail "cannot move the leadership off $host"
fi

# The crash, as haop's recovery benchmark makes it (not timed).
"$HAOP" lab crash "$lab" "$host" --unit etcd.service --wipe >"$BENCH_TMP/logs/$lab-floor-crash.log" 2>&1 ||
    fail "haop lab crash failed (see $BENCH_TMP/logs/$lab-floor-crash.log)"
"$HAOP" agent --lab "$lab" --host "$host" unit etcd.service stop >/dev/null
rm -rf "$data_dir"

# The dead member out of the cluster (not part of the floor; measured apart).
id=$(ctl member list | awk -F', ' -v p="$peer_url" '$4 == p {print $1}')
[ -n "$id" ] || fail "no member with peer URL $peer_url"
t0=$(now)
retry "member remove" "unhealthy cluster\|context deadline exceeded\|request timed out" member remove "$id"
note remove_s "$(elapsed "$t0" "$(now)")"

# The floor.
t0=$(now)
retries=0
retry "member add" "unhealthy cluster\|context deadline exceeded\|request timed out" \
    member add "$host" --learner --peer-urls="$peer_url"
note add_retries "$retries"
cluster=$(sed -n 's/^ETCD_INITIAL_CLUSTER="\(.*\)"$/\1/p' <<<"$out")
[ -n "$cluster" ] || fail "member add did not print ETCD_INITIAL_CLUSTER: $out"
t1=$(now)
note add_s "$(elapsed "$t0" "$t1")"
printf 'ETCD_INITIAL_CLUSTER=%s\nETCD_INITIAL_CLUSTER_STATE=existing\n' "$cluster" >"$bootstrap.tmp"
chmod 0640 "$bootstrap.tmp"
mv "$bootstrap.tmp" "$bootstrap"
"$HAOP" agent --lab "$lab" --host "$host" unit etcd.service start >/dev/null
t2=$(now)
note start_s "$(elapsed "$t1" "$t2")"

# Caught up: the learner's raft index at least the leader's, from `endpoint status` (simple
# output: endpoint, ID, version, db size, is leader, is learner, raft term, raft index, ...).
# The learner alone is asked under a 200 ms timeout (it does not answer while it receives and
# applies its snapshot), the others only once it answers, so the poll adds at most ~0.25 s.
leader_index=""
learner_index=""
while :; do
    st=$(ETCDCTL_ENDPOINTS=$client_url status --dial-timeout=200ms --command-timeout=200ms)
    learner_index=$(awk -F', ' -v e="$client_url" '$1 == e {print $8}' <<<"$st")
    if [ -n "$learner_index" ]; then
        st=$(ETCDCTL_ENDPOINTS=$others status)
        leader_index=$(awk -F', ' '$5 == "true" {print $8}' <<<"$st")
        if [ -n "$leader_index" ] && [ "$learner_index" -ge "$leader_index" ]; then
            break
        fi
    fi
    past_deadline && fail "learner $host not caught up within $timeout s (learner ${learner_index:-?}, leader ${leader_index:-?})"
    sleep 0.05
done
t3=$(now)
note catch_up_s "$(elapsed "$t2" "$t3")"

learner_id=$(ctl member list | awk -F', ' -v p="$peer_url" '$4 == p {print $1}')
retries=0
retry "member promote" "in sync with leader\|unhealthy cluster\|context deadline exceeded\|request timed out" \
    member promote "$learner_id"
t4=$(now)
note promote_s "$(elapsed "$t3" "$t4")"
note promote_retries "$retries"

# Leave the lab as haop does after a recovery (not timed).
printf '%s\n' "$sealed" >"$bootstrap"
while ! ctl endpoint health --cluster >/dev/null 2>&1 ||
    [ "$(ctl member list | awk -F', ' '$2 == "started" && $6 == "false"' | wc -l)" != 3 ]; do
    past_deadline && fail "not three healthy voters after the promotion"
    sleep 0.1
done
note db_size "$(status -w json | jq -r --arg e "$client_url" '.[] | select(.Endpoint == $e) | .Status.dbSize')"
elapsed "$t0" "$t4"
