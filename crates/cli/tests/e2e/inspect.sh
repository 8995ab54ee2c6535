#!/usr/bin/env bash
# Runs inside `unshare --user --map-root-user --net --mount --fork`: a real `zmesh control-plane`
# on a bridge; pods (network namespaces) `server` and `client` with iptables capture and a
# `zmesh proxy` each; a pod `plain` with no proxy. It saves what `zmesh describe`, `tls-check`
# and `proxy-config` answer (*.json in the work directory) and prints `RESULT <name> <value>`
# lines of what the proxies actually did, for the test to hold against each other.
# Everything it starts is stopped by PID on exit; the namespaces vanish with this process.
set -euo pipefail
ZMESH="$1"; WORK="$2"
CONFIG="$WORK/config"; CA="$WORK/ca"
BRIDGE=10.81.0.1
STATUS="http://127.0.0.1:15014"
source "$(dirname "$0")/pods.sh"
cleanup() {
  for pid in "${PIDS[@]}"; do kill "$pid" 2>/dev/null || true; done
  wait 2>/dev/null || true
}
trap cleanup EXIT
fail() { printf 'FAILED: %s\n' "$*" >&2; exit 1; }
bg() { local ns=$1 log=$2; shift 2; ip netns exec "$ns" "$@" >>"$WORK/$log.log" 2>&1 & PIDS+=($!); }

bridge_up "$BRIDGE"
pod client 10.81.0.2; pod server 10.81.0.3; pod plain 10.81.0.5

"$ZMESH" control-plane --config "$CONFIG" --ca-dir "$CA" --listen "$BRIDGE:15012" --admin 127.0.0.1:15014 \
  >>"$WORK/control-plane.log" 2>&1 & PIDS+=($!)
for _ in $(seq 1 100); do
  [ -s "$CA/bootstrap-token.key" ] && curl -s -m 1 -o /dev/null "$STATUS/healthz/ready" && break
  sleep 0.1
done
curl -s -m 1 -o /dev/null "$STATUS/healthz/ready" || fail "the control plane did not start within 10 s"

# The app answers HTTP on every port; 5432 is declared `tcp-db`, so the proxy carries it at L4.
bg server app-web "$ZMESH" echo --listen 0.0.0.0:8080 --name web
bg server app-db "$ZMESH" echo --listen 0.0.0.0:5432 --name db
bg server app-metrics "$ZMESH" echo --listen 0.0.0.0:9090 --name metrics
for name in client server; do
  "$ZMESH" ca token --ca-dir "$CA" --identity "spiffe://cluster.local/ns/shop/sa/$name" --ttl 10m >"$WORK/$name.token"
  ip netns exec "$name" "$ZMESH" capture install
  bg "$name" "proxy-$name" "$ZMESH" proxy --control-plane "https://$BRIDGE:15012" --roots "$CA/root-cert.pem" \
    --workload "shop/$name" --token-file "$WORK/$name.token" --log-level warn
done
for ip in 10.81.0.2 10.81.0.3; do
  ready=no
  for _ in $(seq 1 150); do
    curl -s -m 1 -o /dev/null "http://$ip:15021/healthz/ready" && { ready=yes; break; }
    sleep 0.1
  done
  [ "$ready" = yes ] || fail "the proxy at $ip was not ready within 15 s; see its log"
done

# What the commands say.
"$ZMESH" describe shop/server -o json >"$WORK/describe.json"
"$ZMESH" proxy-config listeners shop/server -o json >"$WORK/listeners.json"
"$ZMESH" proxy-config policies shop/server -o json >"$WORK/policies.json"
"$ZMESH" tls-check shop/client shop/server -o json >"$WORK/tls-mesh.json" || true
"$ZMESH" tls-check 10.81.0.5 shop/server -o json >"$WORK/tls-plain.json" || true

# What the proxies do. `code POD URL`: the HTTP status, 000 when refused or reset.
code() { ip netns exec "$1" curl -s -m 3 -o /dev/null -D "$WORK/headers" -w '%{http_code}' "$2" || true; }
result plain_8080 "$(code plain http://10.81.0.3:8080/hello)"
result plain_5432 "$(code plain http://10.81.0.3:5432/hello)"
result mesh_8080 "$(code client http://10.81.0.3:8080/hello)"
result mesh_5432 "$(code client http://10.81.0.3:5432/hello)"
result plain_9090 "$(code plain http://10.81.0.3:9090/hello)"
result mesh_9090 "$(code client http://10.81.0.3:9090/hello)"
result mesh_admin "$(code client http://10.81.0.3:8080/admin)"
result mesh_admin_policy "$(grep -i '^x-zmesh-policy:' "$WORK/headers" | tr -d '\r' | cut -d' ' -f2)"
result done yes
