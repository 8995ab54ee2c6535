#!/usr/bin/env bash
# Runs inside `unshare --user --map-root-user --net --mount --fork`: builds the pods (network
# namespaces joined by a bridge), starts apps and proxies with transparent capture, drives
# traffic with curl, and prints `RESULT <name> <value>` lines for the test to check. Everything
# it starts is stopped by PID on exit; the namespaces vanish with this process.
set -euo pipefail
ZMESH="$1"; WORK="$2"
source "$(dirname "$0")/pods.sh"
cleanup() { for pid in "${PIDS[@]}"; do kill "$pid" 2>/dev/null || true; done; wait 2>/dev/null || true; }
trap cleanup EXIT
bridge_up 10.77.0.1
bg() { local ns=$1; shift; ip netns exec "$ns" "$@" >>"$WORK/$ns.log" 2>&1 & PIDS+=($!); }

declare -A PROXY_PID
pod client 10.77.0.2; pod server 10.77.0.3; pod plain 10.77.0.4; pod intruder 10.77.0.5; pod ledger 10.77.0.6

"$ZMESH" ca init --dir "$WORK/ca" >/dev/null
bg server "$ZMESH" echo --listen 0.0.0.0:8080 --name payments
bg server "$ZMESH" echo --listen 0.0.0.0:9090 --name payments-metrics
bg server "$ZMESH" echo --listen 0.0.0.0:9100 --tcp
# Ports the WorkloadEntry does not declare: the proxy detects HTTP or TCP from the first bytes.
bg server "$ZMESH" echo --listen 0.0.0.0:7070 --name payments-undeclared
bg server "$ZMESH" echo --listen 0.0.0.0:7100 --tcp
bg ledger "$ZMESH" echo --listen 0.0.0.0:8080 --name ledger
for p in client:fintech-core/order-service server:fintech-core/payment-processor intruder:fintech-core/intruder ledger:production/ledger; do
  ns=${p%%:*}; workload=${p#*:}
  ip netns exec "$ns" "$ZMESH" capture install
  bg "$ns" "$ZMESH" proxy --config "$WORK/config" --ca-dir "$WORK/ca" --workload "$workload" --log-level warn
  PROXY_PID[$ns]=$!
done
for ip in 10.77.0.2 10.77.0.3 10.77.0.5 10.77.0.6; do
  for _ in $(seq 1 100); do curl -s -m 1 -o /dev/null "http://$ip:15021/healthz/ready" && break; sleep 0.1; done
done

http() { local ns=$1; shift; ip netns exec "$ns" curl -s -m 5 -o "$WORK/body" -D "$WORK/headers" -w "%{http_code}" "$@" || true; }

result post_allowed "$(http client -X POST -H 'x-forwarded-client-cert: By=spoofed;URI=spiffe://evil' http://10.77.0.3:8080/api/v2/payments/process)"
result post_allowed_xfcc "$(tr -d '\n' < "$WORK/body" | sed -n 's/.*"x-forwarded-client-cert":"\([^"]*\)".*/\1/p')"
result h2c_allowed "$(http client --http2-prior-knowledge -X POST http://10.77.0.3:8080/api/v2/payments/process)"
result get_denied "$(http client http://10.77.0.3:8080/api/v2/payments/process)"
result get_denied_body "$(cat "$WORK/body")"
result get_denied_policy "$(grep -i '^x-zmesh-policy' "$WORK/headers" | tr -d '\r' | cut -d' ' -f2)"
result other_path_denied "$(http client -X POST http://10.77.0.3:8080/api/v2/refunds)"
result other_sa_denied "$(http intruder -X POST http://10.77.0.3:8080/api/v2/payments/process)"
result tcp_echo "$(ip netns exec client bash -c 'exec 3<>/dev/tcp/10.77.0.3/9100; printf ping >&3; timeout 3 head -c 4 <&3' 2>/dev/null || echo failed)"
result tcp_other_sa "$(ip netns exec intruder bash -c 'exec 3<>/dev/tcp/10.77.0.3/9100; printf ping >&3; timeout 3 head -c 4 <&3' 2>/dev/null || echo refused)"
result detected_http_allowed "$(http client -X POST http://10.77.0.3:7070/api/v2/payments/process)"
result detected_http_xfcc "$(tr -d '\n' < "$WORK/body" | grep -c 'URI=spiffe://cluster.local/ns/fintech-core/sa/order-service' || true)"
result detected_http_denied "$(http client http://10.77.0.3:7070/api/v2/payments/process)"
result detected_http_denied_body "$(cat "$WORK/body")"
result detected_tcp_echo "$(ip netns exec client bash -c 'exec 3<>/dev/tcp/10.77.0.3/7100; printf ping >&3; timeout 3 head -c 4 <&3' 2>/dev/null || echo failed)"
result detected_tcp_other_sa "$(ip netns exec intruder bash -c 'exec 3<>/dev/tcp/10.77.0.3/7100; printf ping >&3; timeout 3 head -c 4 <&3' 2>/dev/null || echo refused)"
result plain_strict "$(http plain http://10.77.0.3:8080/api/v2/payments/process)"
result plain_port_disable "$(http plain http://10.77.0.3:9090/metrics)"
result plain_health "$(http plain http://10.77.0.3:15021/healthz/ready)"
result plain_permissive_public "$(http plain http://10.77.0.6:8080/public)"
result namespace_isolation "$(http client http://10.77.0.6:8080/private)"
# Health and metrics ports are reachable from the network and serve only health and metrics;
# the admin port (configuration, certificates) is on the proxy's loopback only.
result health_port_config_dump "$(http plain http://10.77.0.3:15021/config_dump)"
result metrics_port_certs "$(http plain http://10.77.0.3:15020/certs)"
result admin_port_from_network "$(http plain http://10.77.0.3:15000/config_dump)"
result admin_port_on_loopback "$(ip netns exec server curl -s -m 3 -o /dev/null -w '%{http_code}' http://127.0.0.1:15000/config_dump || true)"
# Traffic to a proxy's own ports — on the workload's own address (outbound capture, inbound
# capture) or through HBONE to another proxy's — is refused, never dialled in a loop.
fds() { ls "/proc/$1/fd" | wc -l; }
before_client=$(fds "${PROXY_PID[client]}"); before_server=$(fds "${PROXY_PID[server]}")
result own_port_outbound "$(http client http://10.77.0.2:15001/)"
result own_port_inbound "$(http client http://10.77.0.2:15006/)"
result peer_proxy_port "$(http client http://10.77.0.3:15006/)"
sleep 1
result self_dial_fds "$(( $(fds "${PROXY_PID[client]}") - before_client + $(fds "${PROXY_PID[server]}") - before_server ))"
result metrics "$(ip netns exec plain curl -s -m 3 http://10.77.0.3:15020/stats/prometheus | grep -c '^istio_' || true)"
# Host-based rules cannot be bypassed: the app receives exactly the authority the policy decided
# on — with two Host headers (HTTP/1.1), and with a `host` header next to a different
# `:authority` (h2c), in either order.
ledger_saw() { tr -d '\n' < "$WORK/body" | sed -n 's/.*"host":"\([^"]*\)".*/\1/p'; }
result host_public_allowed "$(http client -H 'Host: public.example' http://10.77.0.6:8080/public)"
result host_admin_denied "$(http client -H 'Host: admin.internal' http://10.77.0.6:8080/public)"
result two_hosts_code "$(http client -H 'Host: admin.internal' -H 'Host: public.example' http://10.77.0.6:8080/public)"
result two_hosts_app_saw "$(ledger_saw)"
h2() { ip netns exec client python3 "$(dirname "$0")/h2_raw.py" 10.77.0.6 8080 :method=GET :scheme=http :path=/public "$@" 2>/dev/null | tr -d '\n' || true; }
result h2_authority_admin "$(h2 :authority=admin.internal host=public.example)"
h2_public=$(h2 :authority=public.example host=admin.internal)
result h2_authority_public_app_authority "$(printf '%s' "$h2_public" | sed -n 's/.*"authority":"\([^"]*\)".*/\1/p')"
result h2_authority_public_app_host "$(printf '%s' "$h2_public" | sed -n 's/.*"host":"\([^"]*\)".*/\1/p')"
# The health port under a flood of idle connections from one pod (held 4 s): the proxy holds at
# most its limit of them, mesh requests keep working, and the log stays small.
log_before=$(wc -c < "$WORK/server.log")
fds_before=$(fds "${PROXY_PID[server]}")
ip netns exec plain python3 - >"$WORK/flood.out" 2>&1 <<'PY' &
import resource, socket, time
soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
held = []
for _ in range(min(3000, hard - 64)):
    try:
        held.append(socket.create_connection(("10.77.0.3", 15021), timeout=0.5))
    except OSError:
        pass
print(len(held), flush=True)
time.sleep(4)
PY
FLOOD=$!
sleep 2.5
result flood_fds "$(( $(fds "${PROXY_PID[server]}") - fds_before ))"
result flood_mesh_request "$(http client -X POST http://10.77.0.3:8080/api/v2/payments/process)"
wait "$FLOOD" || true
result flood_connections "$(head -1 "$WORK/flood.out")"
result flood_log_bytes "$(( $(wc -c < "$WORK/server.log") - log_before ))"
