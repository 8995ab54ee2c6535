# zmesh's plug-in for the shared sidecar-pair benchmark (../shared/bench/envoy-pair/run.sh):
#
#   cargo build --release -p zmesh
#   ZMESH=$PWD/target/release/zmesh PROXY=custom CUSTOM_NAME=zmesh CUSTOM_CC_CLIENT_CMD=hooks \
#     CUSTOM_HOOKS=$PWD/bench/zmesh-hooks.sh bash ../shared/bench/envoy-pair/run.sh
#
# (CUSTOM_CC_CLIENT_CMD only has to be non-empty: it turns on the new-connection test, whose
# client this hook starts.)
#
# The pair: the load tool → zmesh outbound (explicit port, client SVID) → HBONE (HTTP/2 CONNECT
# over mTLS 1.3) → zmesh inbound (server SVID, L7: every request parsed, path-normalized and
# authorized against an AuthorizationPolicy on the client's principal) → the backend. Each proxy
# runs on one worker thread, placed on the CPU the runner chooses.

custom_start() {
  local zmesh=${ZMESH:?set ZMESH to the zmesh binary}
  local dir="$RUN/zmesh"
  mkdir -p "$dir/config"
  cat >"$dir/config/mesh.yaml" <<YAML
apiVersion: networking.istio.io/v1
kind: WorkloadEntry
metadata: {name: server, namespace: default}
spec: {address: 127.0.0.1, serviceAccount: server, labels: {app: server}, ports: {http-app: $P_BACKEND}}
---
apiVersion: networking.istio.io/v1
kind: WorkloadEntry
metadata: {name: client, namespace: default}
spec: {address: 127.0.0.2, serviceAccount: client, labels: {app: client}}
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: server-access, namespace: default}
spec:
  selector: {matchLabels: {app: server}}
  rules:
  - from: [{source: {principals: ["cluster.local/ns/default/sa/client"]}}]
    to: [{operation: {methods: ["GET", "POST"], paths: ["/*"]}}]
YAML
  local common=(--config "$dir/config" --roots "$CERTS/ca.crt" --explicit --hbone-port "$P_CUSTOM_IN" --concurrency 1 --log-level warn)
  "${ON_B[@]}" "$zmesh" proxy "${common[@]}" --workload default/server --cert "$CERTS/server.crt" --key "$CERTS/server.key" \
    --health 127.0.0.1:17021 --metrics 127.0.0.1:17020 --admin 127.0.0.1:17000 >"$RUN/custom-server.log" 2>&1 &
  track custom server $!
  "${ON_A[@]}" "$zmesh" proxy "${common[@]}" --workload default/client --cert "$CERTS/client.crt" --key "$CERTS/client.key" \
    --outbound "127.0.0.1:$P_CUSTOM_OUT=127.0.0.1:$P_BACKEND" >"$RUN/custom-client.log" 2>&1 &
  track custom client $!
  # For the new-connection test: a client-side proxy that dials a new mTLS connection per tunnel.
  "${ON_A[@]}" "$zmesh" proxy "${common[@]}" --workload default/client --cert "$CERTS/client.crt" --key "$CERTS/client.key" \
    --hbone-connection-per-tunnel --hbone-listen "127.0.0.3:$P_CUSTOM_IN" --health 127.0.0.3:15021 --metrics 127.0.0.3:15020 --admin 127.0.0.3:15000 --http-proxy 127.0.0.3:15080 \
    --outbound "127.0.0.1:$P_CUSTOM_CC_OUT=127.0.0.1:$P_BACKEND" >"$RUN/custom-cc-client.log" 2>&1 &
  track custom cc-client $!
}
