# Shared by the end-to-end scripts, sourced inside `unshare --user --map-root-user --net --mount
# --fork` with WORK set: a private /run for network namespaces, a bridge, pods on it, and a
# record of every process started so the sourcing script can stop them by PID.
#   bridge_up GATEWAY      the bridge zbr0 at GATEWAY/24 (pods route through it)
#   pod NAME IP            a network namespace NAME with eth0 at IP/24 on the bridge
#   result NAME VALUE      a `RESULT NAME VALUE` line for the test to read
PIDS=()
GATEWAY=""

result() { printf 'RESULT %s %s\n' "$1" "$2"; }

bridge_up() {
  GATEWAY=$1
  mount -t tmpfs tmpfs /run
  mkdir -p /run/netns
  ip link set lo up
  ip link add zbr0 type bridge
  ip addr add "$GATEWAY/24" dev zbr0
  ip link set zbr0 up
}

pod() {
  local name=$1 ip=$2
  ip netns add "$name"
  ip link add "v-$name" type veth peer name eth0 netns "$name"
  ip link set "v-$name" master zbr0 up
  ip netns exec "$name" ip link set lo up
  ip netns exec "$name" ip addr add "$ip/24" dev eth0
  ip netns exec "$name" ip link set eth0 up
  ip netns exec "$name" ip route add default via "$GATEWAY"
}
