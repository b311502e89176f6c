# shellcheck shell=bash
# Shared helpers for the benchmark scripts (sourced, not run).
#
# The seed (../shared/seed/etcd-ha-runbook.md) builds its PKI with cfssl 1.4.1. cfssl cannot be
# installed on the benchmark machine (no internet), so seed_pki_* below make the same CA and
# certificates with openssl, following cfssl's behaviour for the seed's inputs:
#   - ca-csr.json      -> CA: RSA 2048, CN=etcd, 43800h, CA:TRUE, keyCertSign+cRLSign
#   - client.json      -> ECDSA P-256, CN=client, profile "client" (signing, key encipherment,
#                         client auth), 43800h
#   - `cfssl print-defaults csr` + the seed's three seds -> ECDSA P-256,
#                         C=US/ST=CA/L=San Francisco/CN=$PEER_NAME, SANs DNS:$PEER_NAME and
#                         IP:$PRIVATE_IP; profiles "server" and "peer" (signing, key
#                         encipherment, server auth, client auth), 43800h
# Files carry cfssljson's names (ca.pem, ca-key.pem, client.pem, server.pem, peer-key.pem ...).

set -o pipefail

BENCH_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
REPO_DIR=$(cd "$BENCH_DIR/.." && pwd)
HAOP=${HAOP:-$REPO_DIR/target/release/haop}
# The lab's agents run the agent as shipped: the static musl build that packaging/build makes
# (profile release-agent), handed to `haop lab up` through HAOP_AGENT_BIN.
MUSL_TARGET=$(uname -m)-unknown-linux-musl
HAOP_AGENT_BIN=${HAOP_AGENT_BIN:-${CARGO_TARGET_DIR:-$REPO_DIR/target}/$MUSL_TARGET/release-agent/haop-agent}
ETCD_BIN=${ETCD_BIN:-/usr/bin/etcd}
ETCDCTL=${ETCDCTL:-/usr/bin/etcdctl}
SEED_DOMAIN=ledivan.local
# The seed's --initial-cluster names the peers https://etcdN.ledivan.local:2380, but its peer
# certificates carry only DNS:$(hostname) (etcdN) and the IP (cfssl print-defaults csr + seds),
# so as written the members reject each other ("tls: bad certificate", ServerName
# "etcd2.ledivan.local") and never form a quorum (verified with these scripts). The smallest
# operator's fix, used here: the same /etc/hosts lines with the short name as an alias, and the
# short name in --initial-cluster and `member add --peer-urls`.
SEED_PEER_HOST_SUFFIX=${SEED_PEER_HOST_SUFFIX:-}

now() { echo "$EPOCHREALTIME"; }
elapsed() { python3 -c "import sys; print(f'{float(sys.argv[2]) - float(sys.argv[1]):.3f}')" "$1" "$2"; }

# lab_field LAB HOST FIELD: a field of `haop lab hosts LAB -o json` (address, namespace, agent_pid).
# The listing is cached per lab (in $BENCH_TMP) so that timed sections do not pay for it.
lab_field() {
    local cache=${BENCH_TMP:-/tmp}/lab-$1.json
    [ -s "$cache" ] || "$HAOP" lab hosts "$1" -o json >"$cache"
    jq -r --arg h "$2" ".[] | select(.name == \$h) | .$3" "$cache"
}

# The host's root directory (its "/"), as `haop lab up` makes it.
host_root() { echo "$HAOP_STATE_DIR/labs/$1/hosts/$2"; }

# seed_hosts_file LAB: the seed's /etc/hosts step. Each namespace gets its own /etc/hosts through
# ip-netns(8)'s /etc/netns/NS/hosts bind mount (removed again by seed_cleanup).
seed_hosts_file() {
    local lab=$1 h ns
    local body=""
    for h in etcd1 etcd2 etcd3; do
        body+="$(lab_field "$lab" "$h" address) $h.$SEED_DOMAIN $h"$'\n'
    done
    for h in etcd1 etcd2 etcd3; do
        ns=haop-$lab-$h
        mkdir -p "/etc/netns/$ns"
        printf '127.0.0.1 localhost\n%s' "$body" >"/etc/netns/$ns/hosts"
    done
}

# seed_pki_ca DIR: on etcd1, ca-config.json/ca-csr.json/client.json, then
# `cfssl gencert -initca` and the client certificate.
seed_pki_ca() {
    local d=$1
    mkdir -p "$d"
    (
        cd "$d" || exit 1
        openssl genrsa -out ca-key.pem 2048 2>/dev/null
        openssl req -new -x509 -key ca-key.pem -subj "/CN=etcd" -days 1825 -out ca.pem \
            -addext "basicConstraints=critical,CA:TRUE" \
            -addext "keyUsage=critical,keyCertSign,cRLSign" \
            -addext "subjectKeyIdentifier=hash" 2>/dev/null
        seed_sign client "/CN=client" "clientAuth" ""
    )
}

# seed_sign NAME SUBJECT EKU SAN (in the cert dir): key + CSR + signature with the CA.
seed_sign() {
    local name=$1 subj=$2 eku=$3 san=$4 ext
    openssl req -new -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes \
        -keyout "$name-key.pem" -subj "$subj" -out "$name.csr" 2>/dev/null
    ext="basicConstraints=critical,CA:FALSE
keyUsage=critical,digitalSignature,keyEncipherment
extendedKeyUsage=$eku
subjectKeyIdentifier=hash
authorityKeyIdentifier=keyid"
    [ -n "$san" ] && ext+=$'\n'"subjectAltName=$san"
    openssl x509 -req -in "$name.csr" -CA ca.pem -CAkey ca-key.pem -CAcreateserial \
        -days 1825 -sha256 -out "$name.pem" -extfile <(echo "$ext") 2>/dev/null
}

# seed_pki_member DIR PEER_NAME PRIVATE_IP: "On all masters, now generate peer and etcd certs".
seed_pki_member() {
    local d=$1 name=$2 ip=$3
    (
        cd "$d" || exit 1
        local subj="/C=US/ST=CA/L=San Francisco/CN=$name"
        seed_sign server "$subj" "serverAuth,clientAuth" "DNS:$name,IP:$ip"
        seed_sign peer "$subj" "serverAuth,clientAuth" "DNS:$name,IP:$ip"
    )
}

# seed_start LAB HOST N STATE(new|existing) PIDFILE: the seed's ExecStart for master-(N-1),
# run in the host's namespace (ip netns exec instead of a systemd unit on a machine), paths
# under the host's root dir. Client and peer certificate auth are off, as in the seed.
# SEED_EXTRA_FLAGS (unset in bench/run) appends flags, for experiments such as
# SEED_EXTRA_FLAGS=--peer-client-cert-auth=true bench/floor.sh LAB.
seed_start() {
    local lab=$1 host=$2 idx=$3 state=$4 pidfile=$5
    local ip root pki
    ip=$(lab_field "$lab" "$host" address)
    root=$(host_root "$lab" "$host")
    pki=$root/etc/kubernetes/pki/etcd
    mkdir -p "$root/var/lib" "$root/var/log"
    ip netns exec "haop-$lab-$host" "$ETCD_BIN" --name "master-$idx" --data-dir "$root/var/lib/etcd" \
        --listen-client-urls "https://$ip:2379,https://127.0.0.1:2379" \
        --advertise-client-urls "https://$ip:2379" \
        --listen-peer-urls "https://$ip:2380" \
        --initial-advertise-peer-urls "https://$ip:2380" \
        --cert-file="$pki/server.pem" --key-file="$pki/server-key.pem" \
        --trusted-ca-file="$pki/ca.pem" \
        --peer-cert-file="$pki/peer.pem" --peer-key-file="$pki/peer-key.pem" \
        --peer-trusted-ca-file="$pki/ca.pem" \
        --initial-cluster "master-0=https://etcd1$SEED_PEER_HOST_SUFFIX:2380,master-1=https://etcd2$SEED_PEER_HOST_SUFFIX:2380,master-2=https://etcd3$SEED_PEER_HOST_SUFFIX:2380" \
        --initial-cluster-token my-etcd-token --initial-cluster-state "$state" \
        --client-cert-auth=false --peer-client-cert-auth=false ${SEED_EXTRA_FLAGS:-} \
        >>"$root/var/log/etcd-seed.log" 2>&1 &
    echo $! >"$pidfile"
}

# seed_etcdctl LAB HOST ARGS...: etcdctl on the host, with the seed's flags. The seed points
# etcdctl at https://127.0.0.1:2379, but its server certificates carry only the host name and
# the private IP (cfssl print-defaults + seds), so that endpoint fails TLS verification; an
# operator uses the host's own address instead, as we do here.
seed_etcdctl() {
    local lab=$1 host=$2
    shift 2
    local ip pki
    ip=$(lab_field "$lab" "$host" address)
    pki=$(host_root "$lab" "$host")/etc/kubernetes/pki/etcd
    ETCDCTL_API=3 ip netns exec "haop-$lab-$host" "$ETCDCTL" --endpoints="${ENDPOINTS:-https://$ip:2379}" \
        --cacert="$pki/ca.pem" --cert="$pki/server.pem" --key="$pki/server-key.pem" \
        --dial-timeout=1s --command-timeout=2s "$@"
}

# wait_healthy LAB HOST TIMEOUT_S: poll `etcdctl endpoint health` over the three members from
# HOST until all three answer healthy (the operator's check). Returns 1 on timeout.
wait_healthy() {
    local lab=$1 host=$2 timeout=$3 eps="" h
    for h in etcd1 etcd2 etcd3; do
        eps+="https://$(lab_field "$lab" "$h" address):2379,"
    done
    eps=${eps%,}
    local deadline=$((${EPOCHREALTIME/./} + timeout * 1000000))
    while :; do
        if ENDPOINTS=$eps seed_etcdctl "$lab" "$host" endpoint health >/dev/null 2>&1; then
            return 0
        fi
        [ "${EPOCHREALTIME/./}" -gt "$deadline" ] && return 1
        sleep 0.05
    done
}

# kill_pidfiles FILE...: SIGKILL the pids recorded in these files (our own processes only).
kill_pidfiles() {
    local f p
    for f in "$@"; do
        [ -f "$f" ] || continue
        p=$(cat "$f")
        if [ -n "$p" ] && kill -0 "$p" 2>/dev/null; then
            kill -9 "$p" 2>/dev/null || true
            # Not necessarily our child (another script started it): wait until it is gone.
            while kill -0 "$p" 2>/dev/null && [ "$(awk '{print $3}' "/proc/$p/stat" 2>/dev/null)" != Z ]; do
                sleep 0.01
            done
        fi
        rm -f "$f"
    done
}

seed_cleanup_hosts() {
    local lab=$1 h
    for h in etcd1 etcd2 etcd3; do
        rm -rf "/etc/netns/haop-$lab-$h"
    done
}
