#!/usr/bin/env bash
# Memory per open connection of a zmesh proxy pair on loopback: N client connections, each
# after one request kept open (keep-alive), through the client-side proxy, HBONE, and the
# server-side proxy to an echo app. Prints each proxy's RSS before and after, and per connection.
#   usage: bench/conn-memory.sh [ZMESH_BINARY] [CONNECTIONS]
set -euo pipefail
ZMESH=${1:-target/release/zmesh}; N=${2:-2000}
source "$(dirname "$0")/pair.sh"
trap pair_stop EXIT
pair_start 127.0.0.62 127.0.0.63
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
