#!/usr/bin/env bash
# Runs inside `unshare --user --map-root-user --net --mount --fork`: starts `zmesh up` (the
# built-in demo in the default shape, in namespaces of its own, with `default` as third
# argument, and with `edit` also editing its policies; `zmesh up --loopback` with `loopback`; `zmesh up --isolate` with `isolate`; with
# `config`, the user's own WorkloadEntries and app on loopback; with `seeds`, the seed
# configurations as written in the default shape, the directory given as fourth argument), waits
# for the summary to show every flow as expected (or every proxy synced), runs commands as a
# workload with `zmesh exec`, stops `up` with Ctrl-C (SIGINT) and checks that nothing it started
# is left. Prints `RESULT <name> <value>` lines for the test.
set -euo pipefail
ZMESH="$1"; WORK="$2"; MODE="${3:-loopback}"; SEEDS="${4:-}"
UP_PID=""
cleanup() { [ -n "$UP_PID" ] && kill -9 "$UP_PID" 2>/dev/null || true; }
trap cleanup EXIT
result() { printf 'RESULT %s %s\n' "$1" "$2"; }
descendants() {
  local parent
  for parent in "$@"; do
    local kids
    kids=$(grep -lx "PPid:[[:space:]]*$parent" /proc/[0-9]*/status 2>/dev/null | cut -d/ -f3 | tr '\n' ' ' || true)
    if [ -n "$kids" ]; then echo "$kids"; descendants $kids; fi
  done
  return 0
}

mount -t tmpfs tmpfs /run
mkdir -p /run/netns
ip link set lo up

ARGS=(up --state-dir "$WORK/state" --summary-ms 500)
[ "$MODE" = isolate ] && ARGS+=(--isolate)
[ "$MODE" = loopback ] && ARGS+=(--loopback)
if [ "$MODE" = config ]; then
  # The user's own mesh: two WorkloadEntries, one app the user runs, one policy.
  mkdir -p "$WORK/mine"
  cat >"$WORK/mine/workloads.yaml" <<'YAML'
apiVersion: networking.istio.io/v1
kind: WorkloadEntry
metadata: {name: hello, namespace: demo}
spec: {address: 127.0.9.2, serviceAccount: hello, labels: {app: hello}, ports: {http: 8080}}
---
apiVersion: networking.istio.io/v1
kind: WorkloadEntry
metadata: {name: client, namespace: demo}
spec: {address: 127.0.9.3, serviceAccount: client, labels: {app: client}}
YAML
  policy() { printf 'apiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata: {name: hello, namespace: demo}\nspec:\n  selector: {matchLabels: {app: hello}}\n  rules: [{to: [{operation: {paths: [%s]}}]}]\n' "$1"; }
  policy /hello >"$WORK/mine/policy.yaml"
  "$ZMESH" echo --listen 127.0.9.2:8080 --name hello >"$WORK/app.log" 2>&1 &
  APP_PID=$!
  ARGS+=(--loopback --config "$WORK/mine")
fi
[ "$MODE" = seeds ] && ARGS+=(--config "$SEEDS")
if [ "$MODE" = fallback ]; then
  # No `unshare` to be found: user namespaces cannot be made, and `up` says what that costs.
  env PATH=/nonexistent "$ZMESH" "${ARGS[@]}" >"$WORK/up.out" 2>"$WORK/up.err" &
elif [ "$MODE" = namespaced-config ]; then
  # The user's WorkloadEntries on loopback addresses cannot live in namespaces: a clear refusal.
  mkdir -p "$WORK/mine"
  printf 'apiVersion: networking.istio.io/v1\nkind: WorkloadEntry\nmetadata: {name: hello, namespace: demo}\nspec: {address: 127.0.9.2, serviceAccount: hello}\n' >"$WORK/mine/w.yaml"
  status=0
  timeout 60 "$ZMESH" up --state-dir "$WORK/state" --config "$WORK/mine" >"$WORK/up.out" 2>"$WORK/up.err" || status=$?
  result refused_status "$status"
  result refused_says_loopback "$(grep -c 'demo/hello has the loopback address 127.0.9.2.*zmesh up --loopback' "$WORK/up.err" || true)"
  result up_json_left "$([ -e "$WORK/state/up.json" ] && echo yes || echo no)"
  exit 0
else
  "$ZMESH" "${ARGS[@]}" >"$WORK/up.out" 2>"$WORK/up.err" &
fi
UP_PID=$!
started=$(date +%s%N)
seen=no
for _ in $(seq 1 300); do
  if [ "$MODE" = config ] || [ "$MODE" = seeds ]; then
    grep -q 'proxies 2/2 SYNCED' "$WORK/up.out" && { seen=yes; break; }
  elif grep -Eq '^summary: ([0-9]+)/\1 flows as expected' "$WORK/up.out"; then seen=yes; break; fi
  kill -0 "$UP_PID" 2>/dev/null || break
  sleep 0.1
done
result all_flows_as_expected "$seen"
result seconds_to_summary "$(( ($(date +%s%N) - started) / 1000000000 ))"
result proxies_synced "$(grep -c 'proxies [0-9]*/[0-9]* SYNCED' "$WORK/up.out" || true)"
result loopback_warning "$(grep -c 'STRICT does not hold against local processes' "$WORK/up.err" || true)"
result no_user_namespaces "$(grep -c '^User namespaces are not available here (cannot run `unshare`' "$WORK/up.err" || true)"
result user_namespace "$(grep -c 'inside a user namespace, no root' "$WORK/up.out" || true)"
# The inner `up` (default shape) or `up` itself: the PID recorded for `zmesh exec`.
INNER_PID=$(sed -n 's/^ *"pid": *\([0-9]*\),*$/\1/p' "$WORK/state/up.json" 2>/dev/null | head -1)

if [ "$MODE" = default ]; then
  # STRICT holds against a process outside every workload: from here (the host's side) the apps'
  # addresses are not even routable, and from `up`'s own namespace, beside the bridge, a
  # plaintext connection is captured by the destination proxy, which refuses it.
  result outside_direct "$(curl -s -m 3 -o /dev/null -w '%{http_code}' -X POST http://10.88.1.2:8080/api/v2/payments/process || true)"
  result outside_beside_bridge "$(nsenter -t "$INNER_PID" -U -n --preserve-credentials curl -s -m 3 -o /dev/null -w '%{http_code}' -X POST http://10.88.1.2:8080/api/v2/payments/process || true)"
  # The same path to production/api-gateway (PERMISSIVE) gets an answer from its proxy: the
  # address is routable and captured, so the silence above is STRICT refusing plaintext.
  result beside_bridge_permissive "$(nsenter -t "$INNER_PID" -U -n --preserve-credentials curl -s -m 3 -o /dev/null -w '%{http_code}' http://10.88.2.2:8080/api/v1/orders || true)"
fi

if [ "$MODE" = orphan ]; then
  # The supervising `up` killed outright: the inner `up` stops everything it started anyway.
  before=$(descendants "$UP_PID" | tr '\n' ' ')
  kill -9 "$UP_PID"; wait "$UP_PID" 2>/dev/null || true; UP_PID=""
  left=0
  for _ in $(seq 1 150); do
    left=0
    for pid in $before; do kill -0 "$pid" 2>/dev/null && left=$((left + 1)); done
    [ "$left" = 0 ] && break
    sleep 0.1
  done
  result orphan_started "$(echo "$before" | wc -w)"
  result orphan_left "$left"
  exit 0
fi

if [ "$MODE" = edit ]; then
  # Allow GET: the summary's expectation for the GET flow follows the edit, and the verdict
  # counts what was observed since every proxy had it.
  sed -i "s/methods: \['POST'\]/methods: ['POST', 'GET']/" "$WORK/state/config/policies.yaml"
  seen=no
  for _ in $(seq 1 200); do
    grep -Eq '^summary: ([0-9]+)/\1 flows as expected under generation ([2-9]|[0-9]{2,}) ' "$WORK/up.out" && { seen=yes; break; }
    sleep 0.1
  done
  result edit_all_as_expected "$seen"
  result edit_get_expected "$(grep -E 'order-service +→ fintech-core/payment-processor +GET ' "$WORK/up.out" | tail -1 | sed -n 's/.* expect \([A-Z]*\) .*/\1/p')"
  result edit_get_allowed "$(grep -E 'order-service +→ fintech-core/payment-processor +GET ' "$WORK/up.out" | tail -1 | sed -n 's/.* allowed *\([0-9]*\) .*/\1/p')"

  # A refused edit is shown with its file:line and stays until it is fixed.
  printf 'apiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata: {name: broken, namespace: fintech-core}\nspec:\n  action: MAYBE\n' >"$WORK/state/config/broken.yaml"
  refused=no
  for _ in $(seq 1 100); do grep -Eq 'broken\.yaml:[0-9]+:[0-9]+: error' "$WORK/up.out" && { refused=yes; break; }; sleep 0.1; done
  result refused_shown "$refused"
  sleep 2
  result refused_still_shown "$(awk '/^\[/{block=""} {block=block $0 "\n"} END{printf "%s", block}' "$WORK/up.out" | grep -c 'broken\.yaml:[0-9]*:[0-9]*: error' || true)"
  rm "$WORK/state/config/broken.yaml"
  fixed=no
  for _ in $(seq 1 100); do
    last=$(awk '/^\[/{block=""} {block=block $0 "\n"} END{printf "%s", block}' "$WORK/up.out")
    if [ -n "$last" ] && ! grep -q 'edit refused' <<<"$last"; then fixed=yes; break; fi
    sleep 0.1
  done
  result refused_cleared "$fixed"
fi

if [ "$MODE" = loopback ] || [ "$MODE" = fallback ]; then
  # What the loopback warning says: a local process reaches the app past its proxy.
  result loopback_direct "$(curl -s -m 3 -o /dev/null -w '%{http_code}' -X POST http://127.0.1.2:8080/api/v2/payments/process || true)"
fi

if [ "$MODE" = config ]; then
  get() { "$ZMESH" exec --state-dir "$WORK/state" demo/client -- curl -s -m 5 -o /dev/null -w '%{http_code}' "http://hello.demo:8080$1" || true; }
  result mine_allowed "$(get /hello)"
  result mine_denied "$(get /other)"
  policy /other >"$WORK/mine/.policy.tmp" && mv "$WORK/mine/.policy.tmp" "$WORK/mine/policy.yaml"
  edited=$(date +%s%N); code=""
  for _ in $(seq 1 50); do code=$(get /other); [ "$code" = 200 ] && break; sleep 0.05; done
  result mine_after_edit "$code"
  result mine_edit_ms "$(( ($(date +%s%N) - edited) / 1000000 ))"
  kill "$APP_PID" 2>/dev/null || true
fi

if [ "$MODE" = seeds ]; then
  # The seeds' Deployments got addresses; what zmesh does not enforce is listed with file:line.
  result seeds_stand_ins "$(grep -c '^  addresses    given to default/example-app, fintech-core/payment-processor' "$WORK/up.out" || true)"
  result seeds_not_enforced "$(grep -c '^    .*seed-configs/.*:[0-9]*:[0-9]*: warning\[ZM[0-9]*\]' "$WORK/up.out" || true)"
  result seeds_network_policy "$(grep -c '05-network-policy.yaml:2:1: warning\[ZM2011\]' "$WORK/up.out" || true)"
  result seeds_rate_limit "$(grep -c '07-advanced.yaml:42:11: warning\[ZM2002\]' "$WORK/up.out" || true)"
  # payment-processor-access admits only order-service (and checkout-service): example-app is
  # refused. In namespaces there is no DNS: the caller dials payment-processor's address.
  result seeds_denied "$("$ZMESH" exec --state-dir "$WORK/state" default/example-app -- curl -s -m 5 -o /dev/null -w '%{http_code}' -X POST http://10.88.10.3:8443/api/v2/payments/process || true)"
fi

if [ "$MODE" != config ] && [ "$MODE" != seeds ]; then
# A command run as order-service reaches payment-processor through the mesh by name (loopback:
# through its proxy's HTTP proxy port) or by address (isolate: captured in its namespace).
if [ "$MODE" = loopback ] || [ "$MODE" = fallback ]; then target=payment-processor.fintech-core; else target=10.88.1.2; fi
code=$("$ZMESH" exec --state-dir "$WORK/state" order-service -- curl -s -m 5 -o "$WORK/exec.body" -w '%{http_code}' -X POST "http://$target:8080/api/v2/payments/process" || true)
result exec_allowed "$code"
result exec_peer "$(tr -d '\n' < "$WORK/exec.body" 2>/dev/null | sed -n 's/.*URI=\(spiffe:[^"]*\)".*/\1/p')"
code=$("$ZMESH" exec --state-dir "$WORK/state" fintech-core/reporting-job -- curl -s -m 5 -o /dev/null -w '%{http_code}' -X POST "http://$target:8080/api/v2/payments/process" || true)
result exec_denied "$code"
fi
result proxy_status "$("$ZMESH" proxy-status >/dev/null 2>&1 && echo synced || echo not-synced)"

# Collect what `up` started (and what the inner `up` started), then stop it the way a user does.
children=$(descendants "$UP_PID" | tr '\n' ' ')
result children_started "$(echo "$children" | wc -w)"
kill -INT "$UP_PID"
status=0
for _ in $(seq 1 150); do kill -0 "$UP_PID" 2>/dev/null || break; sleep 0.1; done
if kill -0 "$UP_PID" 2>/dev/null; then result up_exited no; else wait "$UP_PID" || status=$?; result up_exited yes; fi
UP_PID=""
result up_status "$status"
left=0
for pid in $children; do kill -0 "$pid" 2>/dev/null && left=$((left + 1)); done
result processes_left "$left"
result netns_left "$(ip netns list | wc -l)"
result bridge_left "$(ip link show zmesh0 >/dev/null 2>&1 && echo yes || echo no)"
result up_json_left "$([ -e "$WORK/state/up.json" ] && echo yes || echo no)"
