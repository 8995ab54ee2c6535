#!/usr/bin/env bash
# Runs inside `unshare --user --map-root-user --net --mount --fork`: a real `zmesh control-plane`
# on a bridge, three pods (network namespaces) with iptables capture and a `zmesh proxy` each
# following it, and curl as the client. The script edits the policy file while everything
# runs, kills and restarts the control plane, and prints `RESULT <name> <value>` lines (and
# saves status API documents as *.json in the work directory) for the test to check.
# Everything it starts is stopped by PID on exit; the namespaces vanish with this process.
set -euo pipefail
ZMESH="$1"; WORK="$2"
CONFIG="$WORK/config"; CA="$WORK/ca"
BRIDGE=10.79.0.1
STATUS="http://127.0.0.1:15014"
PODS=(frontend backend reporting)
PROXIES=${#PODS[@]}
source "$(dirname "$0")/pods.sh"
CP_PID=""
cleanup() {
  for pid in "${PIDS[@]}" $CP_PID; do kill "$pid" 2>/dev/null || true; done
  wait 2>/dev/null || true
}
trap cleanup EXIT

fail() { printf 'FAILED: %s\n' "$*" >&2; exit 1; }
now_ms() { echo $(( $(date +%s%N) / 1000000 )); }

bridge_up "$BRIDGE"

bg() { local ns=$1 log=$2; shift 2; ip netns exec "$ns" "$@" >>"$WORK/$log.log" 2>&1 & PIDS+=($!); }

# --- The policy file in its three shapes -------------------------------------------------------
# allow: frontend may GET /api/*, reporting may GET /reports/*.
write_allow() {
  cat <<'EOF'
apiVersion: security.istio.io/v1beta1
kind: AuthorizationPolicy
metadata: {name: backend-access, namespace: shop}
spec:
  selector: {matchLabels: {app: backend}}
  action: ALLOW
  rules:
  - from:
    - source: {principals: ['cluster.local/ns/shop/sa/frontend']}
    to:
    - operation: {methods: ['GET'], paths: ['/api/*']}
  - from:
    - source: {principals: ['cluster.local/ns/shop/sa/reporting']}
    to:
    - operation: {methods: ['GET'], paths: ['/reports/*']}
EOF
}
# deny: the same, and a DENY policy freezing /api/orders.
write_deny() {
  write_allow
  cat <<'EOF'
---
apiVersion: security.istio.io/v1beta1
kind: AuthorizationPolicy
metadata: {name: backend-freeze, namespace: shop}
spec:
  selector: {matchLabels: {app: backend}}
  action: DENY
  rules:
  - to:
    - operation: {paths: ['/api/orders']}
EOF
}
# invalid: the deny shape with an unknown action. Were only the broken document dropped (instead
# of the whole change refused), the freeze would vanish and /api/orders would be allowed again.
write_invalid() { write_deny | sed 's/action: DENY/action: MAYBE/'; }
# Replace the policy file atomically (a new inode renamed over the old one).
install_policy() { "$1" >"$WORK/policy.next"; mv "$WORK/policy.next" "$CONFIG/policy.yaml"; }

mkdir -p "$CONFIG"
write_allow >"$CONFIG/policy.yaml"

# --- Pods, control plane, proxies ------------------------------------------------------------
pod frontend 10.79.0.2; pod backend 10.79.0.3; pod reporting 10.79.0.4

start_control_plane() {
  "$ZMESH" control-plane --config "$CONFIG" --ca-dir "$CA" --listen "$BRIDGE:15012" --admin 127.0.0.1:15014 \
    >>"$WORK/control-plane.log" 2>&1 &
  CP_PID=$!
}
# Wait (at most 10 s) until the status API answers.
wait_status_api() {
  for _ in $(seq 1 100); do
    curl -s -m 1 -o /dev/null "$STATUS/healthz/ready" && return 0
    kill -0 "$CP_PID" 2>/dev/null || fail "the control plane exited; see control-plane.log"
    sleep 0.1
  done
  fail "the control plane's status API did not answer within 10 s"
}

start_control_plane
for _ in $(seq 1 100); do [ -s "$CA/bootstrap-token.key" ] && break; sleep 0.1; done
[ -s "$CA/bootstrap-token.key" ] || fail "the control plane made no bootstrap-token key in 10 s"
wait_status_api

bg backend backend-app "$ZMESH" echo --listen 0.0.0.0:8080 --name backend
mkdir -p "$WORK/tokens"
for ns in "${PODS[@]}"; do
  "$ZMESH" ca token --ca-dir "$CA" --identity "spiffe://cluster.local/ns/shop/sa/$ns" --ttl 10m >"$WORK/tokens/$ns"
  ip netns exec "$ns" "$ZMESH" capture install
  bg "$ns" "$ns" "$ZMESH" proxy --control-plane "https://$BRIDGE:15012" --roots "$CA/root-cert.pem" --workload "shop/$ns" \
    --token-file "$WORK/tokens/$ns" --log-level info
done
for ip in 10.79.0.2 10.79.0.3 10.79.0.4; do
  ready=no
  for _ in $(seq 1 150); do
    curl -s -m 1 -o /dev/null "http://$ip:15021/healthz/ready" && { ready=yes; break; }
    sleep 0.1
  done
  [ "$ready" = yes ] || fail "the proxy at $ip was not ready within 15 s; see its log"
done

# --- Helpers ---------------------------------------------------------------------------------
# http POD URL...: the status code (000 when there was no answer), body and headers in files.
http() { local ns=$1; shift; ip netns exec "$ns" curl -s -m 3 -o "$WORK/body" -D "$WORK/headers" -w "%{http_code}" "$@" || true; }
header() { grep -i "^$1:" "$WORK/headers" | tr -d '\r' | cut -d' ' -f2 || true; }
ORDERS=http://10.79.0.3:8080/api/orders
ADMIN=http://10.79.0.3:8080/admin
REPORTS=http://10.79.0.3:8080/reports/daily

# The status API document at PATH, saved as FILE (empty when it does not answer).
fetch() { curl -s -m 2 "$STATUS$1" >"$WORK/$2" || : >"$WORK/$2"; }
# The control plane's version as /api/v1/proxies states it (top-level key, two spaces deep).
version_of() { sed -n 's/^  "version": "\([^"]*\)",\{0,1\}$/\1/p' "$WORK/$1"; }
# Whether the saved proxies document shows exactly $PROXIES proxies, every one connected,
# SYNCED and acknowledging the control plane's version.
every_proxy_synced() {
  local file=$1 version
  version=$(version_of "$file")
  [ -n "$version" ] || return 1
  [ "$(grep -c '"proxyId":' "$WORK/$file")" -eq "$PROXIES" ] &&
    [ "$(grep -c '"connected": true' "$WORK/$file")" -eq "$PROXIES" ] &&
    [ "$(grep -c '"state": "SYNCED"' "$WORK/$file")" -eq "$PROXIES" ] &&
    [ "$(grep -c "\"versionAcked\": \"$version\"" "$WORK/$file")" -eq "$PROXIES" ]
}
# Poll /api/v1/proxies (every 100 ms, at most TRIES times) until every proxy is SYNCED at a
# version other than NOT; prints that version, or nothing.
wait_synced_beyond() {
  local not=$1 tries=$2
  for _ in $(seq 1 "$tries"); do
    fetch /api/v1/proxies proxies.json
    if every_proxy_synced proxies.json && [ "$(version_of proxies.json)" != "$not" ]; then
      version_of proxies.json; return 0
    fi
    sleep 0.1
  done
}
# Poll POD URL every 100 ms (at most TRIES times) until it answers WANT; prints the code last seen.
wait_code() {
  local ns=$1 url=$2 want=$3 tries=$4 code=""
  for _ in $(seq 1 "$tries"); do
    code=$(http "$ns" "$url")
    [ "$code" = "$want" ] && break
    sleep 0.1
  done
  echo "$code"
}

# --- 1. Baseline: the first configuration is in force everywhere ------------------------------
V1=$(wait_synced_beyond "" 50)
result initial_synced "$([ -n "$V1" ] && echo yes || echo no)"
cp "$WORK/proxies.json" "$WORK/proxies-initial.json"
result baseline_orders "$(http frontend "$ORDERS")"
result baseline_admin "$(http frontend "$ADMIN")"
result baseline_reports "$(http reporting "$REPORTS")"
result baseline_reporting_orders "$(http reporting "$ORDERS")"

# --- 2. A valid edit reaches every proxy -----------------------------------------------------
started=$(now_ms)
install_policy write_deny
code=$(wait_code frontend "$ORDERS" 403 50)
elapsed=$(( $(now_ms) - started ))
result reload_code "$code"
result reload_ms "$elapsed"
result reload_policy "$(header x-zmesh-policy)"
V2=$(wait_synced_beyond "$V1" 50)
result all_synced "$([ -n "$V2" ] && echo yes || echo no)"
result all_synced_ms "$(( $(now_ms) - started ))"
cp "$WORK/proxies.json" "$WORK/proxies-edited.json"
result edited_reports "$(http reporting "$REPORTS")"

# --- 3. An invalid edit is refused as a whole, and the status says why ------------------------
install_policy write_invalid
result invalid_line "$(grep -n 'action: MAYBE' "$CONFIG/policy.yaml" | cut -d: -f1)"
refused=no
for _ in $(seq 1 50); do
  fetch /api/v1/resources resources.json
  if grep -q '^  "rejection": {' "$WORK/resources.json"; then refused=yes; break; fi
  sleep 0.1
done
result invalid_refused "$refused"
cp "$WORK/resources.json" "$WORK/resources-rejected.json"
result rejection_error "$(grep -o '"[^"]*policy\.yaml:[0-9]*:[0-9]*: error[^:]*: [^"]*"' "$WORK/resources.json" | head -1 | tr -d '"')"
# Give a wrong push every chance to land before looking at decisions and versions again.
sleep 1
result invalid_orders "$(http frontend "$ORDERS")"
result invalid_reports "$(http reporting "$REPORTS")"
fetch /api/v1/proxies proxies-rejected.json
result invalid_still_synced "$(every_proxy_synced proxies-rejected.json && echo yes || echo no)"
result invalid_version_kept "$([ "$(version_of proxies-rejected.json)" = "$V2" ] && echo yes || echo no)"

# --- 4. Fixing the file puts the allowing policy back -----------------------------------------
install_policy write_allow
result fixed_orders "$(wait_code frontend "$ORDERS" 200 50)"
V3=$(wait_synced_beyond "$V2" 50)
result fixed_synced "$([ -n "$V3" ] && echo yes || echo no)"
# Versions are content digests: the same policies, the same version.
result fixed_version_is_initial "$([ "$V3" = "$V1" ] && echo yes || echo no)"
fetch /api/v1/resources resources-fixed.json
result rejection_cleared "$(grep -q '^  "rejection": null' "$WORK/resources-fixed.json" && echo yes || echo no)"

# --- 5. Without the control plane, traffic flows under the last configuration ----------------
kill "$CP_PID"
stopped=no
for _ in $(seq 1 100); do kill -0 "$CP_PID" 2>/dev/null || { stopped=yes; break; }; sleep 0.1; done
result cp_stopped_on_term "$stopped"
if [ "$stopped" = yes ]; then
  status=0; wait "$CP_PID" || status=$?
  result cp_exit_status "$status"
else
  kill -9 "$CP_PID" 2>/dev/null || true; wait "$CP_PID" 2>/dev/null || true
fi
CP_PID=""
result cp_gone "$(curl -s -m 1 -o /dev/null "$STATUS/healthz/ready" && echo no || echo yes)"
result down_orders "$(http frontend "$ORDERS")"
result down_admin "$(http frontend "$ADMIN")"
result down_reports "$(http reporting "$REPORTS")"
# The proxies retry in the background meanwhile; later requests still flow.
sleep 2
ok=0
for _ in 1 2 3 4 5; do [ "$(http frontend "$ORDERS")" = 200 ] && ok=$((ok + 1)); done
result down_orders_later "$ok/5"
result down_admin_later "$(http frontend "$ADMIN")"
# An edit while the control plane is down changes nothing yet: proxies do not read files.
install_policy write_deny
sleep 0.5
result down_edit_not_applied "$(http frontend "$ORDERS")"

# --- 6. A restarted control plane resyncs every proxy -----------------------------------------
started=$(now_ms)
start_control_plane
wait_status_api
V4=$(wait_synced_beyond "$V3" 150)
result resync_synced "$([ -n "$V4" ] && echo yes || echo no)"
result resync_orders "$(wait_code frontend "$ORDERS" 403 50)"
result resync_ms "$(( $(now_ms) - started ))"
cp "$WORK/proxies.json" "$WORK/proxies-resynced.json"
result resync_version_is_edited "$([ -n "$V4" ] && [ "$V4" = "$V2" ] && echo yes || echo no)"
result resync_reports "$(http reporting "$REPORTS")"

status=0
"$ZMESH" proxy-status --control-plane "$STATUS" >"$WORK/proxy-status.txt" 2>&1 || status=$?
result proxy_status_exit "$status"
result proxy_status_synced "$(awk 'NR > 1 && NF >= 6 && $3 == "SYNCED" && $4 == "'"$V4"'"' "$WORK/proxy-status.txt" | wc -l)"

# --- 7. Crashes (SIGKILL), each followed at once by a restart with the files unchanged: the
# proxies keep enforcing meanwhile, and come back SYNCED at the version they hold (a resync with
# nothing to send). Several rounds, to see whether finding the control plane stays quick.
RESTARTS=()
for round in 1 2 3 4 5 6; do
  kill -9 "$CP_PID"; wait "$CP_PID" 2>/dev/null || true
  CP_PID=""
  if [ "$round" = 1 ]; then
    result crash_orders "$(http frontend "$ORDERS")"
    result crash_reports "$(http reporting "$REPORTS")"
  fi
  started=$(now_ms)
  start_control_plane
  wait_status_api
  V5=""
  for _ in $(seq 1 150); do
    fetch /api/v1/proxies proxies.json
    if every_proxy_synced proxies.json; then V5=$(version_of proxies.json); break; fi
    sleep 0.1
  done
  RESTARTS+=("$(( $(now_ms) - started ))")
  [ -n "$V5" ] || break
  if [ "$round" = 1 ]; then
    result crash_resync_ms "${RESTARTS[0]}"
    cp "$WORK/proxies.json" "$WORK/proxies-after-crash.json"
    result crash_resync_version_kept "$([ "$V5" = "$V4" ] && echo yes || echo no)"
    result crash_resync_orders "$(http frontend "$ORDERS")"
    result crash_resync_reports "$(http reporting "$REPORTS")"
  fi
done
result restart_resync_ms "${RESTARTS[*]}"
result restart_rounds_synced "${#RESTARTS[@]}/$([ -n "$V5" ] && echo 6 || echo incomplete)"

# --- 8. The channel is TLS: plaintext gRPC gets nothing, and an impostor control plane (its own
# CA, a configuration without the freeze) on the real one's address is refused by every proxy:
# no proxy connects to it, and the freeze stays in force.
result plaintext_grpc "$(curl -s -m 2 --http2-prior-knowledge -o /dev/null -w '%{http_code}' \
  "http://$BRIDGE:15012/zmesh.ca.v1.CertificateService/CreateCertificate" || true)"
kill -9 "$CP_PID"; wait "$CP_PID" 2>/dev/null || true
mkdir -p "$WORK/impostor-config"
cp "$CONFIG"/*.yaml "$WORK/impostor-config/"
write_allow >"$WORK/impostor-config/policy.yaml"
"$ZMESH" control-plane --config "$WORK/impostor-config" --ca-dir "$WORK/impostor-ca" --listen "$BRIDGE:15012" \
  --admin 127.0.0.1:15014 >>"$WORK/impostor.log" 2>&1 &
CP_PID=$!
wait_status_api
# Proxies retry at most every 5 s: give each two chances.
sleep 11
fetch /api/v1/proxies proxies-impostor.json
result impostor_proxies "$(grep -c '"proxyId":' "$WORK/proxies-impostor.json" || true)"
result impostor_orders "$(http frontend "$ORDERS")"
result impostor_refused_in_log "$(grep -c 'signature does not match\|does not chain to any root' "$WORK/frontend.log" || true)"
result done yes
