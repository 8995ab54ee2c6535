#!/usr/bin/env bash
# What the request-level security stages add to a request through a zmesh proxy pair on
# loopback: the same pair and placement as bench/conn-rate.sh (load tool and client-side proxy on
# CPU 0, server-side proxy and app on CPU 1), at full load over kept-alive connections, in three
# configurations of the server side:
#   plain  — the pair's AuthorizationPolicy only;
#   jwt    — plus a RequestAuthentication (ES256 key, inline JWKS) and a policy requiring a
#            request principal; every request carries the same token, so after the first it is a
#            verified-token cache hit (the case that must cost under 5 µs more than plain);
#   extauthz — plus a CUSTOM policy whose provider is `zmesh authz-server` (HTTP) on CPU 1: one
#            authorizer round trip per request.
# Prints requests/s and the server-side proxy's CPU per request for each, and the difference to
# plain. The shared envoy-pair harness sends no request headers, so these variants are measured
# here. Tokens are minted with PyJWT (python3 -m pip install pyjwt cryptography).
#   usage: bench/admission-cost.sh [ZMESH_BINARY] [SECONDS] [ROUNDS]
set -euo pipefail
ZMESH=${1:-target/release/zmesh}; DURATION=${2:-10}; ROUNDS=${3:-3}
ON_CLIENT="taskset -c 0"; ON_SERVER="taskset -c 1"
source "$(dirname "$0")/pair.sh"
KEYS=$(mktemp -d)
EXTRA_PIDS=()
cleanup_all() { for pid in "${EXTRA_PIDS[@]}"; do kill "$pid" 2>/dev/null || true; done; pair_stop 2>/dev/null || true; rm -rf "$KEYS"; }
trap cleanup_all EXIT

# One ES256 key, its JWKS and a token valid for an hour.
python3 - "$KEYS" <<'PY'
import json, sys, time
import jwt
from cryptography.hazmat.primitives.asymmetric import ec
key = ec.generate_private_key(ec.SECP256R1())
public = json.loads(jwt.algorithms.ECAlgorithm.to_jwk(key.public_key()))
public.update({"kid": "bench", "alg": "ES256"})
open(f"{sys.argv[1]}/jwks.json", "w").write(json.dumps({"keys": [public]}))
now = int(time.time())
claims = {"iss": "https://issuer.bench", "sub": "load", "aud": "bench", "iat": now, "exp": now + 3600}
open(f"{sys.argv[1]}/token", "w").write(jwt.encode(claims, key, algorithm="ES256", headers={"kid": "bench"}))
PY
TOKEN=$(cat "$KEYS/token")
JWKS=$(cat "$KEYS/jwks.json")

cat >"$KEYS/rules.yaml" <<'YAML'
default: deny
rules:
- name: load
  when: request.method == "GET"
  action: allow
YAML

config_for() {
  case "$1" in
    plain) echo "" ;;
    jwt) cat <<YAML
apiVersion: security.istio.io/v1
kind: RequestAuthentication
metadata: {name: jwt, namespace: bench}
spec:
  selector: {matchLabels: {app: server}}
  jwtRules:
  - issuer: https://issuer.bench
    audiences: [bench]
    jwks: '$JWKS'
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: require-jwt, namespace: bench}
spec:
  selector: {matchLabels: {app: server}}
  action: DENY
  rules: [{from: [{source: {notRequestPrincipals: ['*']}}]}]
YAML
    ;;
    extauthz) cat <<YAML
apiVersion: v1
kind: ConfigMap
metadata: {name: istio, namespace: istio-system}
data:
  mesh: |
    extensionProviders:
    - name: cel
      envoyExtAuthzHttp: {service: 127.0.0.75, port: 8000, timeout: 1s}
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: ext, namespace: bench}
spec:
  selector: {matchLabels: {app: server}}
  action: CUSTOM
  provider: {name: cel}
  rules: [{}]
YAML
    ;;
  esac
}

cpu() { awk '{print $14 + $15}' "/proc/$1/stat"; }
ticks=$(getconf CLK_TCK)
declare -A RATE CPU
$ON_SERVER "$ZMESH" authz-server --rules "$KEYS/rules.yaml" --http 127.0.0.75:8000 --log-level error & EXTRA_PIDS+=($!)
for round in $(seq 1 "$ROUNDS"); do
  for variant in plain jwt extauthz; do
    PAIR_CONFIG=$(config_for "$variant") pair_start 127.0.0.72 127.0.0.73
    header=()
    [ "$variant" = jwt ] && header=(-H "Authorization: Bearer $TOKEN")
    code=$(curl -s -o /dev/null -w '%{http_code}' "${header[@]}" http://127.0.0.72:9000/)
    [ "$code" = 200 ] || { echo "$variant: the first request got $code, not 200" >&2; exit 1; }
    s0=$(cpu "$SERVER")
    out=$(taskset -c 0 timeout $((DURATION + 30)) wrk -t1 -c16 -d"${DURATION}s" "${header[@]}" http://127.0.0.72:9000/ 2>&1)
    s1=$(cpu "$SERVER")
    total=$(awk '/requests in/ {print $1}' <<<"$out")
    if grep -q "Non-2xx" <<<"$out"; then echo "$variant: non-2xx responses: $out" >&2; exit 1; fi
    rate=$(awk '/Requests\/sec/ {print $2}' <<<"$out")
    us=$(awk -v s=$((s1 - s0)) -v n="$total" -v t="$ticks" 'BEGIN { printf "%.2f", s/t/n*1e6 }')
    echo "round $round $variant: $rate requests/s, server-side proxy CPU $us us/request"
    RATE[$variant]+="$rate "; CPU[$variant]+="$us "
    pair_stop; PIDS=()
  done
done
median() { tr ' ' '\n' | grep -v '^$' | sort -g | awk '{a[NR]=$1} END {print (NR%2 ? a[(NR+1)/2] : (a[NR/2]+a[NR/2+1])/2)}'; }
plain_cpu=$(median <<<"${CPU[plain]}")
for variant in plain jwt extauthz; do
  c=$(median <<<"${CPU[$variant]}"); r=$(median <<<"${RATE[$variant]}")
  awk -v v="$variant" -v r="$r" -v c="$c" -v p="$plain_cpu" 'BEGIN { printf "median %-8s %9.0f requests/s  server CPU %6.2f us/request  (+%.2f us over plain)\n", v, r, c, c - p }'
done
