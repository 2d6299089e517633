#!/usr/bin/env bash
# Writes per second, Warren against etcd, side by side in one run (issue #16, item 1).
#   3 Warren managers (release build) and a 3-member etcd (Debian's etcd-server, default
#   settings), all on loopback. At each client count (1, 16, 64, 256) it runs, in turn,
#   examples/create_load against Warren's leader (each create is one `service create`: a
#   Raft write of the service, then the orchestrator's write of its task) and
#   examples/etcd_load against etcd's leader (200-byte puts). Same client model: one
#   connection per client, one request in flight each. Three trials per count, alternating;
#   it prints every trial, the medians and Warren's median over etcd's.
# Usage: scripts/write-bench.sh [TRIALS] [CLIENT_COUNTS]   (default: 3 "1 16 64 256")
#   ETCD_TLS=1 adds a second 3-member etcd with mutual TLS on its client and peer links (as
#   Warren's are), measured in the same trials: a like-for-like anchor beside the default one;
#   WRITES=N writes per trial (default 600 for 1 client, 3000 otherwise);
#   WARREN_BIN=... LOAD_BIN=... measure another build the same way;
#   CREATE_REPLICAS=0 (read by create_load) creates services with no replicas: one Raft
#   write per create, no task after it (a probe; the comparison with etcd is the default, 1);
#   METRICS=1 also prints, after each Warren trial, where its writes' time went, as means
#   over the trial of the managers' histograms (--metrics-addr): the leader's proposal
#   (proposed to applied), its own append, its sync behind, its AppendEntries round trips,
#   and each follower's handling of them and durable append.
set -euo pipefail
cd "$(dirname "$0")/.."
TRIALS=${1:-3}
COUNTS=${2:-1 16 64 256}
./scripts/deps.sh >/dev/null
command -v etcd >/dev/null || { echo "etcd not installed (apt-get install etcd-server etcd-client)" >&2; exit 2; }
if [ -z "${WARREN_BIN:-}" ]; then cargo build --release -q --bin warren --example create_load --example etcd_load; fi
W=${WARREN_BIN:-$PWD/target/release/warren}
LOAD=${LOAD_BIN:-$PWD/target/release/examples/create_load}
ELOAD=$PWD/target/release/examples/etcd_load
[[ -x $ELOAD ]] || cargo build --release -q --example etcd_load
T=$(mktemp -d -t warren-writes.XXXXXX)
declare -A PID API CP PP
cleanup() { for p in "${PID[@]}"; do kill -9 "$p" 2>/dev/null || true; wait "$p" 2>/dev/null || true; done; if [[ -n ${KEEP_LOGS:-} ]]; then echo "logs kept in $T" >&2; else rm -rf "$T"; fi; }
trap cleanup EXIT
trap "exit 130" INT TERM
port() { python3 -c 'import socket;s=socket.socket();s.bind(("127.0.0.1",0));print(s.getsockname()[1]);s.close()'; }
field() { python3 -c "import json,sys; d=json.load(sys.stdin); print(*[$1])" 2>/dev/null; }

# Warren: three managers, as scripts/failover-bench.sh starts them.
declare -A MADDR # METRICS=1: each manager's --metrics-addr
for n in 1 2 3; do
  API[$n]="127.0.0.$n:$(port)"
  MADDR[$n]=""
  [[ -n ${METRICS:-} ]] && MADDR[$n]="127.0.0.1:$(port)"
done
$W cluster init --node-id 1 --api-addr ${API[1]} --bind-addr "127.0.0.1:$(port)" ${MADDR[1]:+--metrics-addr "${MADDR[1]}"} \
  --data-dir $T/m1 >>$T/m1.log 2>&1 &
PID[w1]=$!
export WARREN_TLS_DIR=$T/m1/admin
until $W --manager ${API[1]} cluster info >/dev/null 2>&1; do sleep 0.05; done
TOKEN=$($W --manager ${API[1]} cluster join-token manager -q)
for n in 2 3; do
  $W manager join --token "$TOKEN" --leader ${API[1]} --node-id $n --api-addr ${API[$n]} \
    --bind-addr "127.0.0.$n:$(port)" ${MADDR[$n]:+--metrics-addr "${MADDR[$n]}"} --data-dir $T/m$n >>$T/m$n.log 2>&1 &
  PID[w$n]=$!
done
voters() { $W --manager ${API[1]} cluster info -o json 2>/dev/null | field 'd["leader_id"], sum(m["voter"] and m["reachable"] for m in d["managers"])'; }
for _ in $(seq 1 300); do [[ $(voters) == *" 3" ]] && break; sleep 0.1; done
[[ $(voters) == *" 3" ]] || { echo "the three Warren managers did not form" >&2; exit 1; }
WLEADER_ID=$(voters | cut -d' ' -f1)
WLEADER=${API[$WLEADER_ID]}

# etcd: three members, as ../shared/tools/etcd-failover starts them; with TLS=1 (the
# ETCD_TLS=1 anchor) mutual TLS on client and peer links, as Warren's are. Sets ELEADER.
start_etcd() { # NAME-PREFIX TLS
  local p=$1 tls=$2 s=http flags=() n cluster
  if [[ $tls == 1 ]]; then
    s=https
    flags=(--cert-file "$T/tls/server.pem" --key-file "$T/tls/server-key.pem" --trusted-ca-file "$T/tls/ca.pem"
      --client-cert-auth --peer-cert-file "$T/tls/server.pem" --peer-key-file "$T/tls/server-key.pem"
      --peer-trusted-ca-file "$T/tls/ca.pem" --peer-client-cert-auth)
  fi
  for n in ${p}1 ${p}2 ${p}3; do CP[$n]=$(port); PP[$n]=$(port); done
  cluster="${p}1=$s://127.0.0.1:${PP[${p}1]},${p}2=$s://127.0.0.1:${PP[${p}2]},${p}3=$s://127.0.0.1:${PP[${p}3]}"
  for n in ${p}1 ${p}2 ${p}3; do
    etcd --name $n --data-dir $T/$n --listen-client-urls $s://127.0.0.1:${CP[$n]} \
      --advertise-client-urls $s://127.0.0.1:${CP[$n]} --listen-peer-urls $s://127.0.0.1:${PP[$n]} \
      --initial-advertise-peer-urls $s://127.0.0.1:${PP[$n]} --initial-cluster "$cluster" \
      --initial-cluster-state new "${flags[@]}" >>$T/$n.log 2>&1 &
    PID[$n]=$!
  done
  local ctl=(etcdctl)
  [[ $tls == 1 ]] && ctl+=(--cacert "$T/tls/ca.pem" --cert "$T/tls/client.pem" --key "$T/tls/client-key.pem")
  ELEADER=""
  for _ in $(seq 1 100); do
    for n in ${p}1 ${p}2 ${p}3; do
      if "${ctl[@]}" --endpoints $s://127.0.0.1:${CP[$n]} endpoint status -w json 2>/dev/null | python3 -c 'import json,sys;d=json.load(sys.stdin)[0];sys.exit(0 if d["Status"]["leader"]==d["Status"]["header"]["member_id"] else 1)'; then ELEADER=$s://127.0.0.1:${CP[$n]}; fi
    done
    [[ -n $ELEADER ]] && break; sleep 0.2
  done
  [[ -n $ELEADER ]] || { echo "etcd ($p) elected no leader" >&2; exit 1; }
}
# One CA, one certificate for every member (server and peer), one for the load client;
# ECDSA P-256 like Warren's.
make_etcd_certs() {
  mkdir -p $T/tls && cd $T/tls
  openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 1 -subj /CN=bench-ca \
    -keyout ca-key.pem -out ca.pem 2>/dev/null
  for who in server client; do
    openssl req -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -subj /CN=$who \
      -keyout $who-key.pem -out $who.csr 2>/dev/null
    printf 'subjectAltName=IP:127.0.0.1\nextendedKeyUsage=serverAuth,clientAuth\n' >$who.ext
    openssl x509 -req -in $who.csr -CA ca.pem -CAkey ca-key.pem -CAcreateserial -days 1 \
      -extfile $who.ext -out $who.pem 2>/dev/null
  done
  cd - >/dev/null
}
export ETCDCTL_API=3
start_etcd e 0
EPLAIN=$ELEADER
ETLS=""
if [[ ${ETCD_TLS:-} == 1 ]]; then
  make_etcd_certs
  start_etcd t 1
  ETLS=$ELEADER
fi
echo "warren leader $WLEADER, etcd leader $EPLAIN${ETLS:+, etcd (TLS) leader $ETLS}; $(nproc) cores"

# METRICS=1: every manager's histograms now, as JSON, into $T/scrape-$1-N.
scrape() { local k; for k in 1 2 3; do curl -sf "http://${MADDR[$k]}/metrics" | python3 scripts/parse-metrics.py >"$T/scrape-$1-$k.json"; done; }
breakdown() { # means between scrapes $1 and $2, in ms
  python3 - "$T" "$1" "$2" "$WLEADER_ID" <<'PY'
import json, sys
t, a, b, leader = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
def mean(n, h):
    x, y = (json.load(open(f"{t}/scrape-{s}-{n}.json")) for s in (a, b))
    c = y.get(h + "_count", 0) - x.get(h + "_count", 0)
    return "n/a" if not c else f"{(y[h + '_sum'] - x.get(h + '_sum', 0)) / c * 1e3:.3f}"
parts = [f"proposal {mean(leader, 'warren_raft_proposal_seconds')}",
         f"leader append {mean(leader, 'warren_raft_leader_append_seconds')}",
         f"leader sync behind {mean(leader, 'warren_raft_fsync_seconds')}"]
parts += [f"AppendEntries sent to answered {mean(leader, 'warren_raft_append_rpc_seconds')}"]
parts += [f"follower {n}: handled {mean(n, 'warren_raft_append_handled_seconds')}, append {mean(n, 'warren_raft_fsync_seconds')}"
          for n in (1, 2, 3) if n != leader]
print("  means (ms): " + ", ".join(parts))
PY
}
median() { printf '%s\n' "$@" | sort -n | awk '{a[NR]=$1} END {print (NR%2) ? a[(NR+1)/2] : (a[NR/2]+a[NR/2+1])/2}'; }
rows=()
for c in $COUNTS; do
  n=${WRITES:-$([[ $c == 1 ]] && echo 600 || echo 3000)}
  wr=(); er=(); tr=()
  for t in $(seq 1 "$TRIALS"); do
    [[ -n ${METRICS:-} ]] && scrape before
    wr+=("$($LOAD "$WLEADER" "$c" "$n" "c$c-t$t" | sed 's/.*creates_per_s=//')")
    bd=""
    [[ -n ${METRICS:-} ]] && scrape after && bd=$(breakdown before after)
    er+=("$($ELOAD "$EPLAIN" "$c" "$n" "c$c-t$t" | sed 's/.*puts_per_s=//')")
    line="clients=$c trial $t: warren ${wr[-1]} creates/s, etcd ${er[-1]} puts/s"
    if [[ -n $ETLS ]]; then
      tr+=("$(ETCD_TLS_DIR=$T/tls $ELOAD "$ETLS" "$c" "$n" "c$c-t$t" | sed 's/.*puts_per_s=//')")
      line+=", etcd (TLS) ${tr[-1]} puts/s"
    fi
    echo "$line"
    [[ -z $bd ]] || echo "$bd"
  done
  wm=$(median "${wr[@]}"); em=$(median "${er[@]}")
  row="| $c | ${wr[*]} | $wm | ${er[*]} | $em | $(python3 -c "print(f'{$wm/$em:.2f}')") |"
  if [[ -n $ETLS ]]; then
    tm=$(median "${tr[@]}")
    row+=" ${tr[*]} | $tm | $(python3 -c "print(f'{$wm/$tm:.2f}')") |"
  fi
  rows+=("$row")
done
header="| clients | warren creates/s | median | etcd puts/s | median | warren/etcd |"
rule="|---|---|---|---|---|---|"
if [[ -n $ETLS ]]; then header+=" etcd (TLS) puts/s | median | warren/etcd (TLS) |"; rule+="---|---|---|"; fi
echo
echo "$header"
echo "$rule"
printf '%s\n' "${rows[@]}"
