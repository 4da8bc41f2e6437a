#!/bin/bash
# Counts client sockets whose moves out of FIN_WAIT1 no program on
# sock:inet_sock_set_state saw, though the kernel holds them as timewait sockets.
# Run as root from this directory: ./repro.sh [ROUNDS] (2 connections a round, both
# closed by the client; the server never closes). Needs bpftrace and, for portx's
# side, target/debug/portx. See ../missed-moves.md.
set -u
cd "$(dirname "$0")"
ROUNDS=${1:-300}
PORTX=${PORTX:-../../target/debug/portx}
OUT=$(mktemp -d)
# run_cnt counts only while BPF statistics are on; put back as found.
STATS=$(sysctl -n kernel.bpf_stats_enabled)
sysctl -qw kernel.bpf_stats_enabled=1
ip netns del pxmissed 2>/dev/null
ip netns add pxmissed && ip -n pxmissed link set lo up
bpftrace trace.bt > "$OUT/bt" 2>/dev/null &
BT=$!
for _ in $(seq 50); do grep -q Attaching "$OUT/bt" 2>/dev/null && break; sleep 0.2; done
"$PORTX" trace --json --netns pxmissed > "$OUT/px" 2> "$OUT/px.err" &
PX=$!
for _ in $(seq 50); do grep -q tracing "$OUT/px.err" 2>/dev/null && break; sleep 0.2; done
ip netns exec pxmissed python3 sink.py > /dev/null &
SINK=$!
sleep 0.5
ip netns exec pxmissed python3 client.py "$ROUNDS" > "$OUT/ports"
sleep 1
ip netns exec pxmissed ss -tanoH state fin-wait-2 state time-wait > "$OUT/ss"
# Program runs and runs the kernel skipped, of every program either tool holds.
for p in $PX $BT; do
    for f in /proc/$p/fdinfo/*; do
        grep -q prog_type "$f" 2>/dev/null || continue
        echo "$(cat /proc/$p/comm) $(grep -E 'prog_type|run_cnt|recursion_misses' "$f" | tr -s '\t\n' '  ')"
    done
done
kill -INT $PX $BT; wait $PX $BT 2>/dev/null
kill $SINK; wait $SINK 2>/dev/null
ip netns del pxmissed
python3 - "$OUT" <<'PY'
import json, sys
out = sys.argv[1]
ports = [int(p) for p in open(f"{out}/ports").read().split()]
px, bt = {}, {}
for l in open(f"{out}/px"):
    e = json.loads(l)
    if e.get("event") == "state" and e.get("dport") == 9003:
        px.setdefault(e["sport"], []).append((e["old_state"], e["new_state"]))
names = {4: "FIN_WAIT1", 5: "FIN_WAIT2", 7: "CLOSE"}
for l in open(f"{out}/bt"):
    f = l.split()
    if len(f) == 4:
        bt.setdefault(int(f[1]), []).append((names.get(int(f[2])), names.get(int(f[3]))))
timewait = {int(l.split()[3].rsplit(":", 1)[1]) for l in open(f"{out}/ss") if "timewait" in l}
moved = [("FIN_WAIT1", "FIN_WAIT2"), ("FIN_WAIT2", "CLOSE")]
for name, seen in (("portx", px), ("bpftrace", bt)):
    lost = [p for p in ports if p in timewait and not any(m in seen.get(p, []) for m in moved)]
    print(f"{name}: {len(ports)} closed, {len(timewait)} timewait, {len(lost)} seen in neither move out of FIN_WAIT1: {lost}")
PY
rm -rf "$OUT"
sysctl -qw kernel.bpf_stats_enabled="$STATS"
