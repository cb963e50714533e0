#!/usr/bin/env bash
# Group-call benchmarks of issue 5 (BENCHMARKS.md, "Floor-grant and switch latency" and "Group
# calls per second"), self-contained: builds the release binaries, provisions a load network with
# `floorcast-load provision`, starts its `floorcast` nodes, runs `floorcast-load` against them and
# stops the nodes again (also on failure or Ctrl-C). Nothing is left running.
#
#   tools/bench-groups.sh ramp   [extra floorcast-load options]   # the highest level with no loss
#   tools/bench-groups.sh switch [extra floorcast-load options]   # grant/switch latency at GROUP_CALLS
#   tools/bench-groups.sh cycle  [extra floorcast-load options]   # group calls per second, SLOTS
#
# Settings (environment):
#   NODES=3        TCFs; every group is homed at node 0 (--groups-at 0), its members are spread
#                  over all nodes (--layout spread), so most listeners are on other nodes
#   GROUP_CALLS=30      group calls (switch), MEMBERS=11 members per group (10 listeners)
#   SLOTS=10       concurrent cycling group calls (cycle); CYCLE_SPURT_MS=0 (a spurt per cycle)
#   DURATION=20    traffic seconds; RAMP_START=20 RAMP_STEP=10 RAMP_MAX=200 RAMP_STEP_S=20
#   BASE_PORT=5721 SIP port of node 0; OUT=/tmp/floorcast-bench-groups (network, JSON reports)
#   RELEASE_DELAY_MS  pause between a talker's last packet and its release (ramp 40, else 0)
#   MAX_LOSS=0 MAX_P99_MS=50  the SLO of a level or run (loss fraction, mouth-to-ear p99)
#   WORKERS=1      media workers per node (3 nodes share the 2 cores)
#   PORT_QUARANTINE_MS  a freed media port's quarantine (node default 5000; cycle: 1000, since
#                  cycles use up legs × rate × quarantine port pairs)
#   MAX_TRANSACTIONS    the nodes' sip.max_transactions (node default 65536; cycle: 1048576,
#                  since finished transactions are kept 32 s)
#   SIP_RT=N       the nodes' sip.realtime_priority (node default 10: SCHED_FIFO SIP threads
#                  while lightly loaded; 0: ordinary scheduling)
#   NO_BUILD=1     use the binaries already built
#   FLOORCAST=path the node binary to run (another build, for A/B runs)
set -euo pipefail

mode=${1:-}
[ $# -gt 0 ] && shift
case "$mode" in
ramp | switch | cycle) ;;
*)
    sed -n '2,27p' "$0"
    exit 2
    ;;
esac

root=$(cd "$(dirname "$0")/.." && pwd)
target=${CARGO_TARGET_DIR:-$root/target}
NODES=${NODES:-3}
GROUP_CALLS=${GROUP_CALLS:-30}
MEMBERS=${MEMBERS:-11}
SLOTS=${SLOTS:-10}
CYCLE_SPURT_MS=${CYCLE_SPURT_MS:-0}
DURATION=${DURATION:-20}
RAMP_START=${RAMP_START:-20}
RAMP_STEP=${RAMP_STEP:-10}
RAMP_MAX=${RAMP_MAX:-200}
RAMP_STEP_S=${RAMP_STEP_S:-20}
BASE_PORT=${BASE_PORT:-5721}
OUT=${OUT:-/tmp/floorcast-bench-groups}
WORKERS=${WORKERS:-1}
limits=()
if [ "$mode" = cycle ]; then
    PORT_QUARANTINE_MS=${PORT_QUARANTINE_MS:-1000}
    MAX_TRANSACTIONS=${MAX_TRANSACTIONS:-1048576}
fi
[ -n "${PORT_QUARANTINE_MS:-}" ] && limits+=(--port-quarantine-ms "$PORT_QUARANTINE_MS")
[ -n "${MAX_TRANSACTIONS:-}" ] && limits+=(--max-transactions "$MAX_TRANSACTIONS")
[ -n "${SIP_RT:-}" ] && limits+=(--sip-realtime-priority "$SIP_RT")

if [ -z "${NO_BUILD:-}" ]; then
    (cd "$root" && cargo build --release --quiet --bin floorcast --bin floorcast-load)
fi
floorcast=${FLOORCAST:-$target/release/floorcast}
load=$target/release/floorcast-load

provisioned=$GROUP_CALLS
[ "$mode" = ramp ] && provisioned=$RAMP_MAX
[ "$mode" = cycle ] && provisioned=$SLOTS
net=$OUT/net-$mode-$NODES
rm -rf "$net"
mkdir -p "$OUT"
layout=(--layout spread --groups-at 0)
[ "$NODES" = 1 ] && layout=(--layout home)
"$load" provision --out "$net" --nodes "$NODES" --groups "$provisioned" --members "$MEMBERS" \
    --base-port "$BASE_PORT" --media-base 10000 --media-ports 22700 --workers "$WORKERS" \
    "${layout[@]}" "${limits[@]}" >/dev/null

ulimit -n "$(ulimit -Hn)" 2>/dev/null || true
pids=()
stop_nodes() {
    for pid in "${pids[@]}"; do
        kill -TERM "$pid" 2>/dev/null || true
    done
    for pid in "${pids[@]}"; do
        for _ in $(seq 50); do
            kill -0 "$pid" 2>/dev/null || break
            sleep 0.1
        done
        kill -KILL "$pid" 2>/dev/null || true
        wait "$pid" 2>/dev/null || true
    done
    pids=()
}
trap stop_nodes EXIT INT TERM
node_args=()
for ((node = 0; node < NODES; node++)); do
    "$floorcast" run --config "$net/node-$node.toml" 2>"$OUT/node-$node-$mode.log" &
    pids+=("$!")
    node_args+=(--node-pid "$!")
done
sleep 1.5 # the nodes bind and see each other's heartbeats
for pid in "${pids[@]}"; do
    kill -0 "$pid" 2>/dev/null || {
        echo "a node did not start; see $OUT/node-*-$mode.log" >&2
        exit 1
    }
done
echo "== $(date -u +%FT%TZ) $mode: $NODES node(s), $MEMBERS members per group; uptime:$(uptime | sed 's/.*load average/ load average/')" >&2

# The ramp (fan-out capacity) releases 40 ms after the last packet, as the one-node ramps in
# BENCHMARKS.md did: a release overtaking the talker's last packets under scheduling delays
# beyond the node's 60 ms release grace would otherwise cap every level (tools/README.md).
[ "$mode" = ramp ] && RELEASE_DELAY_MS=${RELEASE_DELAY_MS:-40}
common=(--release-delay-ms "${RELEASE_DELAY_MS:-0}" --max-loss "${MAX_LOSS:-0}" --max-p99-ms "${MAX_P99_MS:-50}" --quiet "${node_args[@]}")
status=0
case "$mode" in
ramp)
    "$load" run "$net/scenario.toml" --ramp --ramp-start "$RAMP_START" --ramp-step "$RAMP_STEP" \
        --ramp-max "$RAMP_MAX" --ramp-step-s "$RAMP_STEP_S" --receivers 2 "${common[@]}" \
        --json "$OUT/ramp-$NODES.json" "$@" || status=$?
    ;;
switch)
    "$load" run "$net/scenario.toml" --groups "$GROUP_CALLS" --duration "$DURATION" "${common[@]}" \
        --json "$OUT/switch-$NODES-$GROUP_CALLS.json" "$@" || status=$?
    ;;
cycle)
    "$load" run "$net/scenario.toml" --cycle --cycle-spurt-ms "$CYCLE_SPURT_MS" --groups "$SLOTS" \
        --duration "$DURATION" --setup-interval-ms 0 "${common[@]}" \
        --json "$OUT/cycle-$NODES-$SLOTS.json" "$@" || status=$?
    ;;
esac
echo "== uptime after:$(uptime | sed 's/.*load average/ load average/')" >&2
exit "$status"
