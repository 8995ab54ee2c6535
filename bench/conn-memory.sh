#!/usr/bin/env bash
# Memory per open connection of a zmesh proxy pair on loopback: N client connections, each
# after one request kept open (keep-alive), through the client-side proxy, HBONE, and the
# server-side proxy to an echo app. Prints each proxy's RSS before and after, and per connection.
#   usage: bench/conn-memory.sh [ZMESH_BINARY] [CONNECTIONS]
set -euo pipefail
ZMESH=${1:-target/release/zmesh}; N=${2:-2000}
WORK=$(mktemp -d); PIDS=()
cleanup() { for pid in "${PIDS[@]}"; do kill "$pid" 2>/dev/null || true; done; rm -rf "$WORK"; }
trap cleanup EXIT
mkdir -p "$WORK/config"
cat >"$WORK/config/mesh.yaml" <<YAML
apiVersion: networking.istio.io/v1
kind: WorkloadEntry
metadata: {name: client, namespace: bench}
spec: {address: 127.0.0.62, serviceAccount: client}
---
apiVersion: networking.istio.io/v1
kind: WorkloadEntry
metadata: {name: server, namespace: bench}
spec: {address: 127.0.0.63, serviceAccount: server, labels: {app: server}, ports: {http: 8080}}
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: server, namespace: bench}
spec:
  selector: {matchLabels: {app: server}}
  rules: [{from: [{source: {principals: ["cluster.local/ns/bench/sa/client"]}}]}]
YAML
"$ZMESH" ca init --dir "$WORK/ca" >/dev/null
"$ZMESH" echo --listen 127.0.0.63:8080 >/dev/null 2>&1 & PIDS+=($!)
"$ZMESH" proxy --config "$WORK/config" --ca-dir "$WORK/ca" --workload bench/server --explicit --concurrency 1 --log-level error & SERVER=$!; PIDS+=($SERVER)
"$ZMESH" proxy --config "$WORK/config" --ca-dir "$WORK/ca" --workload bench/client --explicit --concurrency 1 --log-level error \
  --outbound 127.0.0.62:9000=127.0.0.63:8080 & CLIENT=$!; PIDS+=($CLIENT)
for _ in $(seq 1 100); do curl -s -m 1 -o /dev/null http://127.0.0.62:9000/ && break; sleep 0.1; done
rss() { awk '/VmRSS/ {print $2}' "/proc/$1/status"; }
before_client=$(rss $CLIENT); before_server=$(rss $SERVER)
python3 - "$N" <<'PY' &
import socket, sys, time
n = int(sys.argv[1]); conns = []
for i in range(n):
    s = socket.create_connection(("127.0.0.62", 9000))
    s.sendall(b"GET /hold HTTP/1.1\r\nHost: server\r\n\r\n")
    data = b""
    while b"\r\n\r\n" not in data:
        data += s.recv(4096)
    conns.append(s)
print(f"{n} connections open", flush=True)
time.sleep(30)
PY
HOLDER=$!; PIDS+=($HOLDER)
for _ in $(seq 1 600); do
  [[ $(ss -Htn state established "( sport = :9000 )" | wc -l) -ge $N ]] && break; sleep 0.1
done
sleep 2
after_client=$(rss $CLIENT); after_server=$(rss $SERVER)
echo "connections: $N"
echo "client proxy RSS: ${before_client} KiB -> ${after_client} KiB; $(( (after_client - before_client) * 1024 / N )) bytes per connection"
echo "server proxy RSS: ${before_server} KiB -> ${after_server} KiB; $(( (after_server - before_server) * 1024 / N )) bytes per connection"
