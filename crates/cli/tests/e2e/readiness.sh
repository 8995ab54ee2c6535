#!/usr/bin/env bash
# Runs inside `unshare --user --map-root-user --net --mount --fork`: the road to STRICT. A real
# `zmesh control-plane` on a bridge and three pods: backend (PERMISSIVE, with a STRICT dry-run
# PeerAuthentication, an echo app, capture and a proxy), client (capture and a proxy: its calls
# are mTLS) and legacy (no proxy at first: its calls reach backend in plaintext). `zmesh
# mtls-readiness` is asked before and after legacy joins the mesh. Prints `RESULT <name> <value>`
# lines and saves the command's outputs and backend's metrics in the work directory.
# Everything it starts is stopped by PID on exit; the namespaces vanish with this process.
set -euo pipefail
ZMESH="$1"; WORK="$2"
CONFIG="$WORK/config"; CA="$WORK/ca"
BRIDGE=10.81.0.1
STATUS="http://127.0.0.1:15014"
BACKEND=http://10.81.0.3:8080/orders
MESH_CALLS=3
PLAINTEXT_CALLS=4
source "$(dirname "$0")/pods.sh"
CP_PID=""
cleanup() {
  for pid in "${PIDS[@]}" $CP_PID; do kill "$pid" 2>/dev/null || true; done
  wait 2>/dev/null || true
}
trap cleanup EXIT
fail() { printf 'FAILED: %s\n' "$*" >&2; exit 1; }
bg() { local ns=$1 log=$2; shift 2; ip netns exec "$ns" "$@" >>"$WORK/$log.log" 2>&1 & PIDS+=($!); }

mkdir -p "$CONFIG" "$WORK/tokens"
cat >"$CONFIG/mesh.yaml" <<'YAML'
apiVersion: networking.istio.io/v1
kind: WorkloadEntry
metadata: {name: backend, namespace: shop}
spec: {address: 10.81.0.3, serviceAccount: backend, labels: {app: backend}, ports: {http: 8080}}
---
apiVersion: networking.istio.io/v1
kind: WorkloadEntry
metadata: {name: client, namespace: shop}
spec: {address: 10.81.0.2, serviceAccount: client, labels: {app: client}}
---
apiVersion: networking.istio.io/v1
kind: WorkloadEntry
metadata: {name: legacy, namespace: shop}
spec: {address: 10.81.0.4, serviceAccount: legacy, labels: {app: legacy}}
---
# A workload whose proxy never runs: its readiness cannot be known.
apiVersion: networking.istio.io/v1
kind: WorkloadEntry
metadata: {name: ghost, namespace: shop}
spec: {address: 10.81.0.9, serviceAccount: ghost, labels: {app: ghost}}
---
apiVersion: security.istio.io/v1
kind: PeerAuthentication
metadata: {name: default, namespace: shop}
spec: {mtls: {mode: PERMISSIVE}}
---
apiVersion: security.istio.io/v1
kind: PeerAuthentication
metadata:
  name: backend-strict
  namespace: shop
  annotations: {istio.io/dry-run: "true"}
spec:
  selector: {matchLabels: {app: backend}}
  mtls: {mode: STRICT}
YAML

bridge_up "$BRIDGE"
pod client 10.81.0.2; pod backend 10.81.0.3; pod legacy 10.81.0.4

"$ZMESH" control-plane --config "$CONFIG" --ca-dir "$CA" --listen "$BRIDGE:15012" --admin 127.0.0.1:15014 \
  >>"$WORK/control-plane.log" 2>&1 &
CP_PID=$!
for _ in $(seq 1 100); do [ -s "$CA/bootstrap-token.key" ] && break; sleep 0.1; done
[ -s "$CA/bootstrap-token.key" ] || fail "the control plane made no bootstrap-token key in 10 s"
for _ in $(seq 1 100); do curl -s -m 1 -o /dev/null "$STATUS/healthz/ready" && break; sleep 0.1; done

# start_proxy POD: capture and a proxy following the control plane; waits (at most 15 s) for it.
start_proxy() {
  local ns=$1 ip=$2
  "$ZMESH" ca token --ca-dir "$CA" --identity "spiffe://cluster.local/ns/shop/sa/$ns" --ttl 10m >"$WORK/tokens/$ns"
  ip netns exec "$ns" "$ZMESH" capture install
  bg "$ns" "$ns" "$ZMESH" proxy --control-plane "https://$BRIDGE:15012" --roots "$CA/root-cert.pem" \
    --workload "shop/$ns" --token-file "$WORK/tokens/$ns" --log-level info
  for _ in $(seq 1 150); do
    curl -s -m 1 -o /dev/null "http://$ip:15021/healthz/ready" && return 0
    sleep 0.1
  done
  fail "the proxy of $ns was not ready within 15 s; see $ns.log"
}
bg backend backend-app "$ZMESH" echo --listen 0.0.0.0:8080 --name backend
start_proxy backend 10.81.0.3
start_proxy client 10.81.0.2

# calls POD N: N requests to backend; prints their status codes, space separated.
calls() {
  local ns=$1 n=$2 codes=()
  for _ in $(seq 1 "$n"); do
    codes+=("$(ip netns exec "$ns" curl --noproxy '*' -s -m 3 -o /dev/null -w '%{http_code}' "$BACKEND" || true)")
  done
  echo "${codes[*]}"
}
readiness() { "$ZMESH" mtls-readiness --control-plane "$STATUS" "$@"; }
metrics() { curl -s -m 2 http://10.81.0.3:15020/stats/prometheus >"$WORK/$1" || : >"$WORK/$1"; }

# --- 1. One mTLS caller, one plaintext caller ------------------------------------------------
result mesh_codes "$(calls client "$MESH_CALLS")"
result plaintext_codes "$(calls legacy "$PLAINTEXT_CALLS")"
metrics metrics-before.txt
set +e
readiness shop/backend >"$WORK/readiness-before.txt" 2>>"$WORK/readiness.err"; result before_exit $?
readiness shop/backend -o json >"$WORK/readiness-before.json" 2>>"$WORK/readiness.err"
readiness shop/backend -o yaml >"$WORK/readiness-before.yaml" 2>>"$WORK/readiness.err"
readiness shop/ghost -o json >"$WORK/readiness-ghost.json" 2>>"$WORK/readiness.err"; result ghost_exit $?
# The proposed switch: the same configuration with backend-strict enforced (no dry-run).
mkdir -p "$WORK/switch"
grep -v 'istio.io/dry-run' "$CONFIG/mesh.yaml" >"$WORK/switch/mesh.yaml"
"$ZMESH" analyze "$WORK/switch" --control-plane "$STATUS" >"$WORK/analyze-before.txt" 2>>"$WORK/analyze.err"
result analyze_before_exit $?
set -e

# --- 2. legacy joins the mesh: its calls go through its own proxy, in mTLS -------------------
start_proxy legacy 10.81.0.4
result joined_codes "$(calls legacy 3)"
# The old plaintext traffic is now more than 3 s old; a 3 s window leaves it out.
sleep 4
metrics metrics-after.txt
set +e
readiness shop/backend --window 3s >"$WORK/readiness-after.txt" 2>>"$WORK/readiness.err"; result after_exit $?
readiness shop/backend --window 3s -o json >"$WORK/readiness-after.json" 2>>"$WORK/readiness.err"
readiness shop/backend --window 1h -o json >"$WORK/readiness-after-1h.json" 2>>"$WORK/readiness.err"
"$ZMESH" analyze "$WORK/switch" --control-plane "$STATUS" --window 3s >"$WORK/analyze-after.txt" 2>>"$WORK/analyze.err"
result analyze_after_exit $?
set -e
result done yes

# --- 3. The control plane's own view: /api/v1/mtls and the dashboard ----------------------------
# It reads the proxies every few seconds in the background; wait (at most 15 s) for a round that
# shows backend, then save both. With a 1 h window legacy's old plaintext still counts.
for _ in $(seq 1 75); do
  curl -s -m 2 "$STATUS/api/v1/mtls?window=1h" >"$WORK/mtls-api.json" || : >"$WORK/mtls-api.json"
  grep -q '"scrapedAt": "' "$WORK/mtls-api.json" && grep -q '"verdict": "UNSAFE"' "$WORK/mtls-api.json" && break
  sleep 0.2
done
curl -s -m 2 "$STATUS/api/v1/mtls?window=3s" >"$WORK/mtls-api-3s.json" || : >"$WORK/mtls-api-3s.json"
result dashboard_code "$(curl -s -m 2 -o "$WORK/dashboard.html" -w '%{http_code}' "$STATUS/dashboard" || true)"
result dashboard_done yes
