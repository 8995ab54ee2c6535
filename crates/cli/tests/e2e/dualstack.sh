#!/usr/bin/env bash
# Runs inside `unshare --user --map-root-user --net --mount --fork`: pods with an IPv4 and an
# IPv6 address each (fd00:78::/64 on the same bridge), apps listening on both families,
# proxies with transparent capture. Prints `RESULT <name> <value>` lines: IPv6 from an app is
# captured and carried over mTLS like IPv4, and IPv6 that would go around a proxy reaches no
# app. Everything it starts is stopped by PID on exit.
set -euo pipefail
ZMESH="$1"; WORK="$2"
source "$(dirname "$0")/pods.sh"
cleanup() { for pid in "${PIDS[@]}"; do kill "$pid" 2>/dev/null || true; done; wait 2>/dev/null || true; }
trap cleanup EXIT
bg() { local ns=$1; shift; ip netns exec "$ns" "$@" >>"$WORK/$ns.log" 2>&1 & PIDS+=($!); }
# IPv6 next to a pod's IPv4 (`nodad`: usable at once, no duplicate detection to wait for).
v6() { ip netns exec "$1" ip -6 addr add "$2/64" dev eth0 nodad; }

bridge_up 10.78.0.1
ip -6 addr add fd00:78::1/64 dev zbr0 nodad
pod client 10.78.0.2; v6 client fd00:78::2
pod server 10.78.0.3; v6 server fd00:78::3
pod server6 10.78.0.4; v6 server6 fd00:78::4
pod plain 10.78.0.5; v6 plain fd00:78::5

"$ZMESH" ca init --dir "$WORK/ca" >/dev/null
for ns in server server6; do bg "$ns" "$ZMESH" echo --listen '[::]:8080' --name "$ns"; done
for p in client:fintech/order-service server:fintech/payments server6:fintech/payments-v6; do
  ns=${p%%:*}; workload=${p#*:}
  ip netns exec "$ns" "$ZMESH" capture install 2>>"$WORK/$ns.log"
  bg "$ns" "$ZMESH" proxy --config "$WORK/config" --ca-dir "$WORK/ca" --workload "$workload" --log-level warn
done
for ip in 10.78.0.2 10.78.0.3 '[fd00:78::4]'; do
  for _ in $(seq 1 100); do curl -g -s -m 1 -o /dev/null "http://$ip:15021/healthz/ready" && break; sleep 0.1; done
done

http() { local ns=$1; shift; ip netns exec "$ns" curl -g -s -m 5 -o "$WORK/body" -w "%{http_code}" "$@" || true; }
identity() { tr -d '\n' < "$WORK/body" | grep -c 'URI=spiffe://cluster.local/ns/fintech/sa/order-service' || true; }

result capture_installed "$(grep -c 'capture installed (IPv4 and IPv6)' "$WORK/client.log" "$WORK/server.log" "$WORK/server6.log" | grep -c ':1$' || true)"
# The IPv4 twin: through both proxies, the app sees the caller's identity, the DENY applies.
result v4_allowed "$(http client http://10.78.0.3:8080/public)"
result v4_allowed_identity "$(identity)"
result v4_denied "$(http client http://10.78.0.3:8080/private)"
# The same over IPv6 to the workload known by its IPv6 address.
result v6_allowed "$(http client 'http://[fd00:78::4]:8080/public')"
result v6_allowed_identity "$(identity)"
result v6_denied "$(http client 'http://[fd00:78::4]:8080/private')"
result v6_denied_body "$(cat "$WORK/body")"
# The proxy's health port answers on IPv6 too.
result v6_health "$(http plain 'http://[fd00:78::4]:15021/healthz/ready')"
# IPv6 around the proxies: a pod without a proxy straight to the app (STRICT mTLS refuses
# what inbound capture sends to the proxy), and an app to a workload's IPv6 address the mesh
# does not know (not its registered one): the connection leaves as plaintext and the
# workload's proxy takes only traffic for its own address.
result v6_plain_to_app "$(http plain 'http://[fd00:78::4]:8080/public')"
result v6_plain_to_unregistered_address "$(http plain 'http://[fd00:78::3]:8080/public')"
result v6_app_to_unregistered_address "$(http client 'http://[fd00:78::3]:8080/private')"

# A pod whose IPv6 cannot be captured (no ip6tables on PATH): install fails while the pod has
# an IPv6 address, and succeeds, capturing IPv4 only, once IPv6 is disabled.
mkdir -p "$WORK/v4-only-tools"
for tool in iptables iptables-restore; do ln -sf "$(command -v "$tool")" "$WORK/v4-only-tools/$tool"; done
pod nov6 10.78.0.6; v6 nov6 fd00:78::6
result no_ip6tables_with_ipv6 "$(ip netns exec nov6 env PATH="$WORK/v4-only-tools" "$ZMESH" capture install 2>"$WORK/nov6.err" && echo installed || echo refused)"
result no_ip6tables_with_ipv6_error "$(grep -c 'IPv6 traffic would bypass the proxy' "$WORK/nov6.err" || true)"
ip netns exec nov6 sh -c 'for c in all default lo eth0; do echo 1 > /proc/sys/net/ipv6/conf/$c/disable_ipv6; done'
result no_ip6tables_ipv6_disabled "$(ip netns exec nov6 env PATH="$WORK/v4-only-tools" "$ZMESH" capture install 2>"$WORK/nov6.err" && echo installed || echo refused)"
result ipv4_still_captured "$(ip netns exec nov6 iptables -t nat -S ZMESH_REDIRECT | grep -c 'to-ports 15001' || true)"
