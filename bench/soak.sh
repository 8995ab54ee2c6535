#!/usr/bin/env bash
# Soak test on loopback (explicit mode, no root): steady HTTP load through a zmesh mesh for
# MINUTES (default 10) while
#   - every proxy's certificate rotates about once a minute (`--cert-ttl 2m`, renewed at about
#     half-life),
#   - the control plane is killed (SIGKILL) and restarted every two minutes (same CA directory,
#     same configuration directory),
#   - the DENY policy document is rewritten (atomically: a temporary file renamed over it) every
#     second, toggling a rule for an unrelated path /churn-<n> that no request of the load takes.
# The load (bench/soak_load.py, ~200 req/s) goes to `zmesh echo` behind the server proxy through
# an explicit outbound port of a client proxy: GET /allowed/... must always get 200 (an ALLOW
# policy admits the clients' principals) and GET /denied/... must always get 403 (the DENY
# policy). Most of it is kept-alive connections through the `client` proxy, whose pooled HBONE
# connection lives as long as it carries tunnels; 10 req/s are a new connection each through the
# `fresh` proxy, which dials a new mTLS connection per tunnel (--hbone-connection-per-tunnel), so
# handshakes with the certificates of the moment happen on both sides all through the rotations.
# Every 10 s the RSS and open descriptors of the proxies and the control plane are sampled.
#
#   bench/soak.sh ZMESH_BINARY [MINUTES]
#
# Verdict PASS when: no allowed request got anything but 200, no denied request anything but 403,
# every planned control-plane restart happened, each proxy renewed its certificate at least once
# per two minutes of run, every proxy ends SYNCED at the control plane's version, and for each
# proxy: last RSS <= 1.5 x RSS at minute 1 + 5 MiB, and last fd count <= first + 20. Exits 1 on
# FAIL. Logs and samples stay in the work directory it prints.
# Uses 127.0.0.81 (client), 127.0.0.82 (server, app on :8080), 127.0.0.83 (fresh), and the control plane on
# 127.0.0.1:15012 (gRPC) and 127.0.0.1:15014 (status API). Stops only what it started, by PID.
set -euo pipefail

[ $# -ge 1 ] && [ $# -le 2 ] || { echo "usage: $0 ZMESH_BINARY [MINUTES]" >&2; exit 2; }
ZMESH=$(realpath "$1")
MINUTES=${2:-10}
[ -x "$ZMESH" ] || { echo "$1 is not an executable zmesh binary" >&2; exit 2; }
[[ "$MINUTES" =~ ^[1-9][0-9]*$ ]] || { echo "MINUTES must be a whole number of minutes >= 1, not '$MINUTES'" >&2; exit 2; }
HERE=$(cd "$(dirname "$0")" && pwd)

CLIENT_IP=127.0.0.81
SERVER_IP=127.0.0.82
FRESH_IP=127.0.0.83
PROXIES=(client server fresh)
CP_GRPC=127.0.0.1:15012
CP_ADMIN=127.0.0.1:15014
STATUS="http://$CP_ADMIN"
RATE=200                 # requests per second, both classes together
SAMPLE_EVERY=10          # seconds between RSS/fd samples
RESTART_EVERY=120        # seconds between control-plane kills
DURATION=$((MINUTES * 60))

WORK=$(mktemp -d /tmp/zmesh-soak.XXXXXX)
CONFIG="$WORK/config"; CA="$WORK/ca"
mkdir -p "$CONFIG" "$WORK/tokens"

CP_PID=""; PIDS=()
cleanup() {
  for pid in "${PIDS[@]}" $CP_PID; do kill "$pid" 2>/dev/null || true; done
  wait 2>/dev/null || true
}
trap cleanup EXIT
fail_setup() { printf 'soak: setup failed: %s (logs in %s)\n' "$*" >&2; exit 1; }
now_ms() { echo $(( $(date +%s%N) / 1000000 )); }

# Nothing else may hold the addresses: a stray listener would answer instead of the mesh.
for addr in "$CP_GRPC" "$CP_ADMIN" "$CLIENT_IP:9000" "$FRESH_IP:9000" "$SERVER_IP:8080" "$SERVER_IP:15008"; do
  python3 - "$addr" <<'PY' || fail_setup "$addr is in use"
import socket, sys
host, port = sys.argv[1].rsplit(":", 1)
s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1); s.bind((host, int(port))); s.close()
PY
done

# --- Configuration -----------------------------------------------------------------------------
cat >"$CONFIG/mesh.yaml" <<YAML
apiVersion: networking.istio.io/v1
kind: WorkloadEntry
metadata: {name: client, namespace: soak}
spec: {address: $CLIENT_IP, serviceAccount: client}
---
apiVersion: networking.istio.io/v1
kind: WorkloadEntry
metadata: {name: server, namespace: soak}
spec: {address: $SERVER_IP, serviceAccount: server, labels: {app: server}, ports: {http: 8080}}
---
apiVersion: networking.istio.io/v1
kind: WorkloadEntry
metadata: {name: fresh, namespace: soak}
spec: {address: $FRESH_IP, serviceAccount: fresh}
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: server-allow, namespace: soak}
spec:
  selector: {matchLabels: {app: server}}
  action: ALLOW
  rules: [{from: [{source: {principals: ["cluster.local/ns/soak/sa/client", "cluster.local/ns/soak/sa/fresh"]}}]}]
YAML
# The DENY document, change N: /denied/* always, and on odd N also /churn-N (a path the load
# never takes), so every change is a new configuration yet no decision of the load changes. The
# rules name the app's HTTP port, as HTTP-only DENY rules would also deny plain TCP there.
write_deny_policy() {
  local n=$1
  cat <<YAML
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: server-deny, namespace: soak}
spec:
  selector: {matchLabels: {app: server}}
  action: DENY
  rules:
  - to: [{operation: {ports: ["8080"], paths: ["/denied/*"]}}]
YAML
  if (( n % 2 == 1 )); then
    printf '  - to: [{operation: {ports: ["8080"], paths: ["/churn-%d"]}}]\n' "$n"
  fi
}
install_policy() { write_deny_policy "$1" >"$WORK/policy.next"; mv "$WORK/policy.next" "$CONFIG/policy.yaml"; }
install_policy 0

# --- Control plane, app, proxies ---------------------------------------------------------------
start_control_plane() {
  "$ZMESH" control-plane --config "$CONFIG" --ca-dir "$CA" --listen "$CP_GRPC" --admin "$CP_ADMIN" \
    >>"$WORK/control-plane.log" 2>&1 &
  CP_PID=$!
  echo "$CP_PID" >"$WORK/cp.pid"
}
# Waits (at most 10 s) for the status API; prints the milliseconds it took.
wait_status_api() {
  local started; started=$(now_ms)
  for _ in $(seq 1 100); do
    if curl -s -m 1 -o /dev/null "$STATUS/healthz/ready"; then echo $(( $(now_ms) - started )); return 0; fi
    kill -0 "$CP_PID" 2>/dev/null || return 1
    sleep 0.1
  done
  return 1
}
# Whether every proxy is connected and SYNCED at the control plane's current version.
both_synced() {
  curl -s -m 2 "$STATUS/api/v1/proxies" | python3 -c '
import json, sys
doc = json.load(sys.stdin)
proxies = doc.get("proxies", [])
ok = len(proxies) == 3 and all(p.get("connected") and p.get("state") == "SYNCED"
                                and p.get("versionAcked") == doc.get("version") for p in proxies)
sys.exit(0 if ok else 1)' 2>/dev/null
}

start_control_plane
for _ in $(seq 1 100); do [ -s "$CA/bootstrap-token.key" ] && [ -s "$CA/root-cert.pem" ] && break; sleep 0.1; done
[ -s "$CA/bootstrap-token.key" ] || fail_setup "the control plane made no bootstrap-token key in 10 s"
wait_status_api >/dev/null || fail_setup "the control plane's status API did not answer within 10 s"

"$ZMESH" echo --listen "$SERVER_IP:8080" --name soak-server >"$WORK/echo.log" 2>&1 & PIDS+=($!)
for side in "${PROXIES[@]}"; do
  "$ZMESH" ca token --ca-dir "$CA" --identity "spiffe://cluster.local/ns/soak/sa/$side" \
    --ttl "$((MINUTES + 10))m" >"$WORK/tokens/$side"
done
declare -A PID_OF
start_proxy() {
  local side=$1; shift
  "$ZMESH" proxy --control-plane "https://$CP_GRPC" --roots "$CA/root-cert.pem" --token-file "$WORK/tokens/$side" \
    --workload "soak/$side" --explicit --cert-ttl 2m --log-level "${LOG_LEVEL:-info}" "$@" >"$WORK/proxy-$side.log" 2>&1 &
  PID_OF[$side]=$!; PIDS+=($!)
}
start_proxy server
start_proxy client --outbound "$CLIENT_IP:9000=$SERVER_IP:8080"
# Its HBONE client logs (at debug) each mTLS connection it made as that connection closes.
LOG_LEVEL=info,zmesh_proxy::hbone::client=debug \
  start_proxy fresh --outbound "$FRESH_IP:9000=$SERVER_IP:8080" --hbone-connection-per-tunnel

code() { curl -s -m 2 -o /dev/null -w '%{http_code}' "http://$1:9000$2" || true; }
ready=no
for _ in $(seq 1 300); do
  if [ "$(code $CLIENT_IP /allowed/ready)" = 200 ] && [ "$(code $CLIENT_IP /denied/ready)" = 403 ] &&
    [ "$(code $FRESH_IP /allowed/ready)" = 200 ] && [ "$(code $FRESH_IP /denied/ready)" = 403 ]; then
    ready=yes; break
  fi
  sleep 0.1
done
[ "$ready" = yes ] || fail_setup "the mesh did not answer 200 for /allowed and 403 for /denied within 30 s"

# --- The run -----------------------------------------------------------------------------------
echo "soak: $MINUTES min, ~$RATE req/s, work directory $WORK"
T0=$(date +%s)

python3 "$HERE/soak_load.py" "$CLIENT_IP:9000" "$FRESH_IP:9000" "$DURATION" "$RATE" "$WORK" & LOAD_PID=$!
PIDS+=($LOAD_PID)

# Policy churn: one atomic rewrite a second, for the length of the run.
(
  for n in $(seq 1 "$DURATION"); do
    sleep 1
    install_policy "$n"
    echo "$(date -u +%T) $n" >>"$WORK/churn.log"
  done
) & CHURN_PID=$!; PIDS+=($CHURN_PID)

# Sampler: RSS (KiB) and open fds of each process, and the certificates the control plane reports.
sample_of() {
  local pid=$1 rss fds
  rss=$(awk '/^VmRSS:/ {print $2}' "/proc/$pid/status" 2>/dev/null || true)
  fds=$(ls "/proc/$pid/fd" 2>/dev/null | wc -l)
  echo "${rss:-NA} $fds"
}
(
  echo "t $(for who in "${PROXIES[@]}" cp; do printf '%s_rss_kib %s_fds ' "$who" "$who"; done)" >"$WORK/samples.txt"
  for i in $(seq 0 $((DURATION / SAMPLE_EVERY))); do
    target=$((T0 + i * SAMPLE_EVERY)); now=$(date +%s)
    (( target > now )) && sleep $((target - now))
    row="$((i * SAMPLE_EVERY))"
    for who in "${PROXIES[@]}"; do row+=" $(sample_of "${PID_OF[$who]}")"; done
    echo "$row $(sample_of "$(cat "$WORK/cp.pid")")" >>"$WORK/samples.txt"
    curl -s -m 2 "$STATUS/api/v1/certificates" >"$WORK/certificates-$((i * SAMPLE_EVERY)).json" 2>/dev/null || true
  done
) & SAMPLER_PID=$!; PIDS+=($SAMPLER_PID)

# Control-plane crashes: SIGKILL and an immediate restart, every RESTART_EVERY s.
RESTARTS=0; RESTART_NOTES=()
PLANNED=$(( (DURATION - 1) / RESTART_EVERY ))
for r in $(seq 1 "$PLANNED"); do
  target=$((T0 + r * RESTART_EVERY)); now=$(date +%s)
  (( target > now )) && sleep $((target - now))
  kill -9 "$CP_PID"; wait "$CP_PID" 2>/dev/null || true
  echo "$(date -u +%T) SIGKILL control plane (restart $r)" >>"$WORK/control-plane.log"
  started=$(now_ms)
  start_control_plane
  if up_ms=$(wait_status_api); then
    synced_ms=timeout
    for _ in $(seq 1 150); do
      if both_synced; then synced_ms=$(( $(now_ms) - started )); break; fi
      sleep 0.1
    done
    RESTARTS=$((RESTARTS + 1))
    RESTART_NOTES+=("#$r up ${up_ms}ms synced ${synced_ms}ms")
  else
    RESTART_NOTES+=("#$r did not come up")
  fi
done

wait "$LOAD_PID" || true
wait "$CHURN_PID" 2>/dev/null || true
wait "$SAMPLER_PID" 2>/dev/null || true

# --- Results -----------------------------------------------------------------------------------
final_synced=no
for _ in $(seq 1 100); do both_synced && { final_synced=yes; break; }; sleep 0.1; done
curl -s -m 2 "$STATUS/api/v1/proxies" >"$WORK/proxies-final.json" || true

summary() { awk -v k="$1" '$1 == k {print $2}' "$WORK/load-summary.txt"; }
[ -s "$WORK/load-summary.txt" ] || { echo "soak: the load generator wrote no summary" >&2; exit 1; }
ALLOWED=$(summary allowed_sent); ALLOWED_BAD=$(summary allowed_wrong)
DENIED=$(summary denied_sent); DENIED_BAD=$(summary denied_wrong)
CHANGES=$(wc -l <"$WORK/churn.log" 2>/dev/null || echo 0)
declare -A RENEWED UPDATED
for who in "${PROXIES[@]}"; do
  RENEWED[$who]=$(grep -c 'certificate renewed' "$WORK/proxy-$who.log" || true)
  UPDATED[$who]=$(grep -c 'configuration updated' "$WORK/proxy-$who.log" || true)
done
RENEW_FAILED=$(cat "$WORK"/proxy-*.log | grep -c 'renewal failed' || true)
STREAM_BROKE=$(cat "$WORK"/proxy-*.log | grep -c 'configuration stream broke' || true)
HANDSHAKES=$(grep -c 'HBONE connection closed' "$WORK/proxy-fresh.log" || true)
per_proxy() { local -n map=$1; local out=""; for who in "${PROXIES[@]}"; do out+="$who ${map[$who]}, "; done; echo "${out%, }"; }
# Distinct SVID serials per identity seen in /api/v1/certificates over the run.
SERIALS=$(python3 - "$WORK" <<'PY'
import glob, json, sys
seen = {}
for path in glob.glob(sys.argv[1] + "/certificates-*.json"):
    try:
        doc = json.load(open(path))
    except ValueError:
        continue
    for c in doc.get("certificates", []):
        seen.setdefault(c["identity"].rsplit("/", 1)[-1], set()).add(c["serial"])
print(" ".join(f"{k}={len(v)}" for k, v in sorted(seen.items())) or "none")
PY
)

echo
echo "== soak: $MINUTES min (started $(date -u -d "@$T0" +%FT%TZ)) =="
echo "requests allowed class:   $ALLOWED (answered other than 200: $ALLOWED_BAD)"
echo "requests denied class:    $DENIED (answered other than 403: $DENIED_BAD)"
echo "wrong answers by kind:    $(summary wrong_kinds)"
echo "latency ms:               p50 $(summary latency_p50_ms), p99 $(summary latency_p99_ms), max $(summary latency_max_ms)"
echo "app connections opened:   $(summary connections_opened); mTLS connections the fresh proxy made: $HANDSHAKES"
echo "control-plane restarts:   $RESTARTS of $PLANNED (SIGKILL + restart) ${RESTART_NOTES[*]:-}"
echo "certificate renewals:     $(per_proxy RENEWED) (proxy logs); failed attempts $RENEW_FAILED"
echo "serials seen in status:   $SERIALS (distinct, /api/v1/certificates every ${SAMPLE_EVERY}s)"
echo "policy changes written:   $CHANGES"
echo "configurations applied:   $(per_proxy UPDATED) (proxy logs); config streams re-opened $STREAM_BROKE"
echo "proxies SYNCED at end:    $final_synced"
echo "samples (every ${SAMPLE_EVERY}s; RSS MiB, fds)   first / at 1 min / max / last"

# first/minute-1/max/last of a samples column (1-based, after t); RSS columns shown in MiB.
column_stats() {
  awk -v c="$1" -v mib="$2" 'NR > 1 && $c != "NA" {
      v = $c + 0; n++
      if (n == 1) first = v
      if ($1 + 0 <= 60) m1 = v
      if (v > max) max = v
      last = v
    } END {
      if (mib) printf "%.1f %.1f %.1f %.1f\n", first / 1024, m1 / 1024, max / 1024, last / 1024
      else printf "%d %d %d %d\n", first, m1, max, last
    }' "$WORK/samples.txt"
}
VERDICT=PASS; REASONS=()
(( ALLOWED_BAD == 0 )) || { VERDICT=FAIL; REASONS+=("$ALLOWED_BAD allowed requests failed"); }
(( DENIED_BAD == 0 )) || { VERDICT=FAIL; REASONS+=("$DENIED_BAD denied requests not answered 403"); }
(( ALLOWED > 0 && DENIED > 0 )) || { VERDICT=FAIL; REASONS+=("no load was sent"); }
(( RESTARTS == PLANNED )) || { VERDICT=FAIL; REASONS+=("only $RESTARTS of $PLANNED control-plane restarts came up"); }
MIN_RENEWALS=$(( MINUTES / 2 ))  # renewal comes every 48-72 s (half-life of 2 min, +-20 %)
for who in "${PROXIES[@]}"; do
  (( RENEWED[$who] >= MIN_RENEWALS )) ||
    { VERDICT=FAIL; REASONS+=("$who proxy renewed ${RENEWED[$who]} times, fewer than $MIN_RENEWALS"); }
done
[ "$final_synced" = yes ] || { VERDICT=FAIL; REASONS+=("the proxies were not SYNCED at the control plane's version at the end"); }
col=2
for who in "${PROXIES[@]}" cp; do
  read -r r_first r_m1 r_max r_last < <(column_stats "$col" 1)
  read -r f_first f_m1 f_max f_last < <(column_stats $((col + 1)) 0)
  printf '  %-14s RSS %s / %s / %s / %s MiB   fds %s / %s / %s / %s\n' \
    "$who$([ "$who" = cp ] && echo ' (per PID)' || echo ' proxy')" "$r_first" "$r_m1" "$r_max" "$r_last" \
    "$f_first" "$f_m1" "$f_max" "$f_last"
  if [ "$who" != cp ]; then
    awk -v l="$r_last" -v m="$r_m1" 'BEGIN { exit !(l <= 1.5 * m + 5) }' ||
      { VERDICT=FAIL; REASONS+=("$who proxy RSS $r_last MiB > 1.5 x $r_m1 + 5 MiB"); }
    (( f_last <= f_first + 20 )) || { VERDICT=FAIL; REASONS+=("$who proxy fds $f_last > $f_first + 20"); }
  fi
  col=$((col + 2))
done
echo "bounds: per proxy, last RSS <= 1.5 x RSS at 1 min + 5 MiB; last fds <= first + 20"
if [ "$VERDICT" = PASS ]; then
  echo "VERDICT: PASS"
else
  echo "VERDICT: FAIL: $(IFS=';'; echo "${REASONS[*]}")"
  echo "first failures (from $WORK/load-failures.log):"; head -5 "$WORK/load-failures.log"
  exit 1
fi
