# A zmesh proxy pair on loopback for the bench scripts (sourced): an echo app at
# $SERVER_IP:8080, its proxy, and a client-side proxy whose explicit outbound port
# $CLIENT_IP:9000 leads to the app through HBONE. The server admits the client by principal.
#   pair_start CLIENT_IP SERVER_IP [extra client proxy args...]
# PAIR_CONFIG, if set, is more YAML for the mesh (a RequestAuthentication, a CUSTOM policy…).
# Set ON_CLIENT / ON_SERVER to a command prefix (e.g. `taskset -c 0`) to place each side.
# Leaves CLIENT and SERVER (proxy PIDs), PIDS (everything started) and WORK set; pair_stop
# ends them.
ON_CLIENT=${ON_CLIENT:-}; ON_SERVER=${ON_SERVER:-}
PIDS=()
pair_stop() { for pid in "${PIDS[@]}"; do kill "$pid" 2>/dev/null || true; done; rm -rf "$WORK"; }

pair_start() {
  local client_ip=$1 server_ip=$2; shift 2
  WORK=$(mktemp -d)
  mkdir -p "$WORK/config"
  cat >"$WORK/config/mesh.yaml" <<YAML
apiVersion: networking.istio.io/v1
kind: WorkloadEntry
metadata: {name: client, namespace: bench}
spec: {address: $client_ip, serviceAccount: client}
---
apiVersion: networking.istio.io/v1
kind: WorkloadEntry
metadata: {name: server, namespace: bench}
spec: {address: $server_ip, serviceAccount: server, labels: {app: server}, ports: {http: 8080}}
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: server, namespace: bench}
spec:
  selector: {matchLabels: {app: server}}
  rules: [{from: [{source: {principals: ["cluster.local/ns/bench/sa/client"]}}]}]
YAML
  if [[ -n "${PAIR_CONFIG:-}" ]]; then printf -- '---\n%s\n' "$PAIR_CONFIG" >>"$WORK/config/mesh.yaml"; fi
  "$ZMESH" ca init --dir "$WORK/ca" >/dev/null
  $ON_SERVER "$ZMESH" echo --listen "$server_ip:8080" >/dev/null 2>&1 & PIDS+=($!)
  $ON_SERVER "$ZMESH" proxy --config "$WORK/config" --ca-dir "$WORK/ca" --workload bench/server --explicit \
    --concurrency 1 --log-level error & SERVER=$!; PIDS+=($SERVER)
  $ON_CLIENT "$ZMESH" proxy --config "$WORK/config" --ca-dir "$WORK/ca" --workload bench/client --explicit \
    --concurrency 1 --log-level error --outbound "$client_ip:9000=$server_ip:8080" "$@" & CLIENT=$!; PIDS+=($CLIENT)
  for _ in $(seq 1 100); do curl -s -m 1 -o /dev/null "http://$client_ip:9000/" && return 0; sleep 0.1; done
  echo "the proxy pair did not answer within 10 s" >&2
  return 1
}
