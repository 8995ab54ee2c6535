#!/usr/bin/env bash
# New mTLS connections per second through a zmesh proxy pair on loopback, for quick A/B runs
# between builds (the shared envoy-pair harness gives the figures in BENCHMARKS.md). The client
# side opens a new HBONE connection (TCP + TLS 1.3 + HTTP/2) per tunnel; wrk sends every request
# with `Connection: close`, so each request costs one handshake. As in the harness, the load tool
# and the client-side proxy share CPU 0, the server-side proxy and the app CPU 1.
#   usage: bench/conn-rate.sh [ZMESH_BINARY] [SECONDS]
#   PERF=server|client records a perf profile of that proxy into $PWD/perf-<side>.data
set -euo pipefail
ZMESH=${1:-target/release/zmesh}; DURATION=${2:-10}
ON_CLIENT="taskset -c 0"; ON_SERVER="taskset -c 1"
source "$(dirname "$0")/pair.sh"
trap pair_stop EXIT
pair_start 127.0.0.72 127.0.0.73 --hbone-connection-per-tunnel
cpu() { awk '{print $14 + $15}' "/proc/$1/stat"; } # utime + stime, clock ticks
ticks=$(getconf CLK_TCK)
case "${PERF:-}" in
  server) perf record -g -o "$PWD/perf-server.data" -p "$SERVER" -- sleep "$DURATION" >/dev/null 2>&1 & PIDS+=($!) ;;
  client) perf record -g -o "$PWD/perf-client.data" -p "$CLIENT" -- sleep "$DURATION" >/dev/null 2>&1 & PIDS+=($!) ;;
esac
c0=$(cpu $CLIENT); s0=$(cpu $SERVER)
out=$(taskset -c 0 wrk -t1 -c16 -d"${DURATION}s" -H 'Connection: close' http://127.0.0.72:9000/ 2>&1)
c1=$(cpu $CLIENT); s1=$(cpu $SERVER)
rate=$(awk '/Requests\/sec/ {print $2}' <<<"$out")
total=$(awk '/requests in/ {print $1}' <<<"$out")
errors=$(grep -E "Non-2xx|Socket errors" <<<"$out" || true)
echo "new connections/s: $rate ($total in ${DURATION}s) ${errors}"
awk -v c=$((c1 - c0)) -v s=$((s1 - s0)) -v n="$total" -v t="$ticks" \
  'BEGIN { printf "CPU per connection: client side %.0f us, server side %.0f us\n", c/t/n*1e6, s/t/n*1e6 }'
if [[ -n "${PERF:-}" ]]; then sleep 1; fi # let perf write its file
