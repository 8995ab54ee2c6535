#!/usr/bin/env bash
# Runs inside `unshare --user --map-root-user --net --mount --fork`: pods in network namespaces
# joined by a bridge, each with capture and a zmesh proxy, plus an `infra` pod without a proxy
# that serves the JWKS (python's http.server), the CEL authorizer (`zmesh authz-server`, HTTP and
# gRPC) and OPA's Envoy plugin (gRPC). Drives HTTP/1.1 and h2c traffic with curl and prints
# `RESULT <name> <value>` lines. Everything it starts is stopped by PID on exit.
# Arguments: ZMESH WORK OPA_ENVOY_BINARY (an ext_authz gRPC server deciding with OPA; zmesh_testkit::opa_envoy)
set -euo pipefail
ZMESH="$1"; WORK="$2"; OPA="$3"; HERE="$(cd "$(dirname "$0")" && pwd)"
source "$HERE/pods.sh"
cleanup() { for pid in "${PIDS[@]}"; do kill "$pid" 2>/dev/null || true; done; wait 2>/dev/null || true; }
trap cleanup EXIT
bridge_up 10.78.0.1
bg() { local ns=$1; shift; ip netns exec "$ns" "$@" >>"$WORK/$ns.log" 2>&1 & PIDS+=($!); }
wait_for() { for _ in $(seq 1 150); do ip netns exec "$1" curl -s -m 1 -o /dev/null "$2" && return 0; sleep 0.1; done; echo "not up: $1 $2" >&2; }
wait_tcp() { for _ in $(seq 1 150); do ip netns exec "$1" bash -c "exec 3<>/dev/tcp/$2/$3" 2>/dev/null && return 0; sleep 0.1; done; echo "not up: $1 $2:$3" >&2; }

pod frontend 10.78.0.2; pod api 10.78.0.3; pod orders 10.78.0.4; pod payments 10.78.0.5
pod ledger 10.78.0.6; pod limited 10.78.0.7; pod broken 10.78.0.8; pod infra 10.78.0.9; pod catalog 10.78.0.10

# The infra pod: keys, authorizers.
mkdir -p "$WORK/jwks"
python3 "$HERE/jwt_tokens.py" keys "$WORK/jwks"
bg infra python3 -m http.server 8000 --bind 10.78.0.9 --directory "$WORK/jwks"
bg infra "$ZMESH" authz-server --rules "$HERE/security-rules.yaml" --http 10.78.0.9:9000 --grpc 10.78.0.9:9001
bg infra python3 "$HERE/py_authz.py" 10.78.0.9 9002
bg infra "$OPA" -addr 10.78.0.9:9191 -query data.zmesh.authz.allow -policy "$HERE/security-opa.rego"
wait_for infra http://10.78.0.9:8000/jwks.json
wait_tcp infra 10.78.0.9 9000; wait_tcp infra 10.78.0.9 9001; wait_tcp infra 10.78.0.9 9191; wait_tcp infra 10.78.0.9 9002

"$ZMESH" ca init --dir "$WORK/ca" >/dev/null
for p in frontend:shop/frontend api:shop/api-gateway orders:shop/orders payments:shop/payments \
         ledger:shop/ledger limited:shop/limited broken:shop/broken catalog:shop/catalog; do
  ns=${p%%:*}; workload=${p#*:}
  [ "$ns" = frontend ] || bg "$ns" "$ZMESH" echo --listen 0.0.0.0:8080 --name "$ns"
  ip netns exec "$ns" "$ZMESH" capture install
  bg "$ns" "$ZMESH" proxy --config "$WORK/config" --ca-dir "$WORK/ca" --workload "$workload" --log-level info
done
for ip in 10.78.0.2 10.78.0.3 10.78.0.4 10.78.0.5 10.78.0.6 10.78.0.7 10.78.0.8 10.78.0.10; do
  wait_for frontend "http://$ip:15021/healthz/ready"
done

# http NAME ARGS...: one curl from the frontend pod over HTTP/1.1, one over h2c; prints
# `NAME <status>` and `NAME_h2 <status>`, keeping each body and headers for the checks after it.
http() {
  local name=$1; shift
  local code
  code=$(ip netns exec frontend curl -s -m 8 -o "$WORK/$name.body" -D "$WORK/$name.headers" -w "%{http_code}" "$@" || true)
  result "$name" "$code"
  code=$(ip netns exec frontend curl -s -m 8 --http2-prior-knowledge -o "$WORK/$name.h2.body" -D "$WORK/$name.h2.headers" -w "%{http_code}" "$@" || true)
  result "${name}_h2" "$code"
}
body() { tr -d '\n' < "$WORK/$1.body"; }
header() { grep -i "^$2:" "$WORK/$1.headers" | head -n1 | cut -d' ' -f2- | tr -d '\r'; }
token() { python3 "$HERE/jwt_tokens.py" token "$WORK/jwks" "$@"; }
API=http://10.78.0.3:8080

# RequestAuthentication + require-JWT (the seed's pair).
http jwt_valid -H "Authorization: Bearer $(token rsa api.example.test 600)" $API/orders
result jwt_valid_sub_to_app "$(body jwt_valid | grep -c '"x-jwt-sub":"user-1"' || true)"
result jwt_valid_token_removed "$(body jwt_valid | grep -ci 'authorization' || true)"
http jwt_valid_ec -H "Authorization: Bearer $(token ec api.example.test 600)" $API/orders
http jwt_missing $API/orders
result jwt_missing_body "$(body jwt_missing)"
http jwt_expired -H "Authorization: Bearer $(token rsa api.example.test -600)" $API/orders
result jwt_expired_body "$(body jwt_expired)"
result jwt_expired_www "$(header jwt_expired www-authenticate | cut -c1-6)"
http jwt_wrong_audience -H "Authorization: Bearer $(token rsa other.example.test 600)" $API/orders
http jwt_unknown_kid -H "Authorization: Bearer $(token stranger api.example.test 600 rotated)" $API/orders
http jwt_bad_signature -H "Authorization: Bearer $(token stranger api.example.test 600 rsa)" $API/orders
http jwt_garbage -H "Authorization: Bearer not.a.token" $API/orders
http jwt_query "$API/orders?access_token=$(token rsa api.example.test 600)"
# JWKS never fetched: a token fails closed (401); a request without one passes.
http jwks_unreachable_token -H "Authorization: Bearer $(token rsa api.example.test 600)" http://10.78.0.8:8080/public
http jwks_unreachable_no_token http://10.78.0.8:8080/public

# CUSTOM over HTTP to the CEL authorizer: allowed with its header, denied with its answer.
http cel_http_allowed -H 'x-user: alice' http://10.78.0.4:8080/orders/1
result cel_http_allowed_header "$(body cel_http_allowed | grep -c '"x-authz":"cel"' || true)"
http cel_http_denied -H 'x-user: mallory' http://10.78.0.4:8080/orders/1
result cel_http_denied_body "$(body cel_http_denied)"
http cel_http_not_matched http://10.78.0.4:8080/health
# CUSTOM over gRPC to the CEL authorizer.
http cel_grpc_allowed -H 'x-user: alice' http://10.78.0.5:8080/pay
http cel_grpc_denied -H 'x-user: mallory' http://10.78.0.5:8080/pay
result cel_grpc_denied_body "$(body cel_grpc_denied)"
# CUSTOM over gRPC to OPA (an independent authorizer).
http opa_allowed http://10.78.0.6:8080/public/report
http opa_denied http://10.78.0.6:8080/private/report
result opa_denied_header "$(header opa_denied x-opa-reason)"
# CUSTOM over HTTP to an authorizer written independently of zmesh (Python).
http py_http_allowed -H 'x-user: alice' http://10.78.0.10:8080/items
result py_http_allowed_header "$(body py_http_allowed | grep -c '"x-py-authz":"GET /items"' || true)"
http py_http_denied -H 'x-user: mallory' http://10.78.0.10:8080/items
result py_http_denied_body "$(body py_http_denied)"
result py_http_denied_header "$(header py_http_denied x-authz-reason)"
# Authorizer down: fail closed.
http authorizer_down http://10.78.0.8:8080/custom/x

# Local rate limit: 2 tokens a minute, then 429 with Envoy's body and the configured header.
for i in 1 2; do ip netns exec frontend curl -s -m 5 -o /dev/null http://10.78.0.7:8080/ || true; done
code=$(ip netns exec frontend curl -s -m 5 -o "$WORK/limited.body" -D "$WORK/limited.headers" -w "%{http_code}" http://10.78.0.7:8080/ || true)
result rate_limited "$code"
result rate_limited_body "$(body limited)"
result rate_limited_header "$(header limited x-local-rate-limit)"
code=$(ip netns exec frontend curl -s -m 5 --http2-prior-knowledge -o /dev/null -w "%{http_code}" http://10.78.0.7:8080/ || true)
result rate_limited_h2 "$code"
# Read whole, then searched: `curl | grep -q` would fail under pipefail when grep stops early.
ip netns exec frontend curl -s -m 3 -o "$WORK/limited.metrics" http://10.78.0.7:15020/stats/prometheus || true
result rate_limit_metric "$(grep -c 'zmesh_local_rate_limit_total{.*result="rate_limited"' "$WORK/limited.metrics" || true)"
result done 1
