#!/usr/bin/env bash
# The mosaic demo: a heterogeneous 4-node cluster on this machine.
# Shows secure join, membership, MOSIX load dissemination, programs started
# on one node running on others as if they ran at home (output, pipes,
# exit status, Ctrl-C, ps, kill), a running program migrating between
# nodes, placement by load, a batch that spreads by itself under the MOSIX
# policy, and a node that fails and comes back. Needs root (cgroups, network namespaces).
set -euo pipefail
cd "$(dirname "$0")/.."
MOSAIC=${MOSAIC:-$PWD/bin/mosaic}
DIR=${DIR:-/tmp/mosaic-demo}
UPLOG=$(mktemp /tmp/mosaic-demo-up.XXXXXX)
BUSY=()

say()  { printf '\n\033[1m== %s\033[0m\n' "$*"; }
show() { printf '\033[2m$ %s\033[0m\n' "$*"; "$@"; }

cleanup() {
	for p in "${BUSY[@]:-}"; do [ -n "$p" ] && kill "$p" 2>/dev/null || true; done
	if [ -n "${N2_RESTARTED:-}" ]; then "$MOSAIC" --socket "$DIR/n2/mosaic.sock" node leave >/dev/null 2>&1 || true; fi
	if [ -n "${UP:-}" ] && kill -0 "$UP" 2>/dev/null; then
		kill -INT "$UP"; wait "$UP" || true
	fi
	tail -n 1 "$UPLOG"
	rm -f "$UPLOG"
}
trap cleanup EXIT

if [ "$(id -u)" != 0 ]; then echo "the demo needs root: run it with sudo" >&2; exit 1; fi
rm -rf "$DIR"

say "Start 4 nodes, each in its own network namespace, with 1, 1, 0.5 and 0.25 cores of CPU"
printf '\033[2m$ mosaic up --nodes 4 --capacity 1,1,0.5,0.25 --netns --dir %s &\033[0m\n' "$DIR"
"$MOSAIC" up --nodes 4 --capacity 1,1,0.5,0.25 --netns --dir "$DIR" >"$UPLOG" 2>&1 &
UP=$!
for _ in $(seq 600); do
	grep -q "Ctrl-C stops" "$UPLOG" && break
	kill -0 "$UP" 2>/dev/null || { cat "$UPLOG"; exit 1; }
	sleep 0.1
done
grep -q "Ctrl-C stops" "$UPLOG" || { cat "$UPLOG"; exit 1; }
sed -n '/cluster up/,/Ctrl-C/p' "$UPLOG"
# shellcheck disable=SC1091
source "$DIR/env"

say "Every node knows every other: n1 joined the others with a token, all traffic is mutual TLS"
for _ in $(seq 100); do  # until n1 has heard every node's load
	[ "$("$MOSAIC" nodes --json | grep -c '"has_load": true')" = 4 ] && break
	sleep 0.1
done
show "$MOSAIC" nodes

say "Run a program from n1 on n3: its output, input and exit status stay at home"
show "$MOSAIC" run -v --on n3 -- sh -c 'echo "hello from $(grep -o "mosaic/[^/]*/n[0-9]*" /proc/self/cgroup | head -1)"; exit 3' || echo "(exit status $?)"
printf '\033[2m$ seq 1 100 | mosaic run --on n2 -- awk "{s+=\$1} END {print s}"\033[0m\n'
seq 1 100 | "$MOSAIC" run --on n2 -- awk '{s+=$1} END {print s}'

say "Ctrl-C reaches the program where it runs; mosaic ps sees it from any node"
"$MOSAIC" run -v --on n4 -- sleep 100 &
SLEEPER=$!
sleep 1
show "$MOSAIC" --socket "$MOSAIC_SOCKET_N2" ps
show kill -INT "$SLEEPER"
wait "$SLEEPER" || echo "(mosaic run ended with status $?: 130 = died of SIGINT, as sleep would at home)"

say "Move a running program to other nodes while it runs: it goes on where it stopped, its output still comes home"
printf '\033[2m$ mosaic run -v --on n2 -- python3 -u -c "...count to 14, one tick every 0.4 s..." &\033[0m\n'
"$MOSAIC" run -v --on n2 -- python3 -u -c '
import time
total = 0
for i in range(1, 15):
    total += i * i
    print(f"tick {i:2}: sum of squares so far {total}")
    time.sleep(0.4)
' &
TICKER=$!
sleep 1.5
ID=$("$MOSAIC" ps --json | sed -n 's/.*"id": "\(n1\.[0-9]*\)".*/\1/p' | tail -1)
show "$MOSAIC" migrate "$ID" n3
sleep 1.2
show "$MOSAIC" --socket "$MOSAIC_SOCKET_N4" migrate "$ID" n4
sleep 1.2
show "$MOSAIC" migrate "$ID" home
show "$MOSAIC" ps "$ID"
wait "$TICKER"

say "A shell pipeline moves whole: the shell, the programs it runs and the pipe between them"
printf '\033[2m$ mosaic run -v --on n2 -- sh -c "for i in 1 2 ... 8; do echo line \$i; sleep 0.4; done | sed -u s/line/LINE/" &\033[0m\n'
"$MOSAIC" run -v --on n2 -- sh -c 'for i in 1 2 3 4 5 6 7 8; do echo "line $i"; sleep 0.4; done | sed -u s/line/LINE/' &
PIPELINE=$!
sleep 1.3
ID=$("$MOSAIC" ps --json | sed -n 's/.*"id": "\(n1\.[0-9]*\)".*/\1/p' | tail -1)
show "$MOSAIC" ps "$ID"
show "$MOSAIC" migrate "$ID" n3
sleep 0.8
show "$MOSAIC" migrate "$ID" home
wait "$PIPELINE"

say "Without --on, each program goes where it adds the least load: n1 and n2 have a core each, n3 half, n4 a quarter"
for i in 1 2 3 4; do
	"$MOSAIC" run -- sh -c 'while :; do :; done' &
	BUSY+=($!)
	sleep 0.3
done
sleep 2
show "$MOSAIC" ps
ID=$("$MOSAIC" ps --json | sed -n 's/.*"id": "\(n1\.[0-9]*\)".*/\1/p' | head -1)
show "$MOSAIC" --socket "$MOSAIC_SOCKET_N4" kill "$ID"
kill "${BUSY[@]}" 2>/dev/null; wait "${BUSY[@]}" 2>/dev/null || true; BUSY=()

say "Two CPU-bound programs on node n3 (half a core): its load rises, as n1 and n4 see by gossip"
for _ in 1 2; do
	"$MOSAIC" run --on n3 -- sh -c 'while :; do :; done' &
	BUSY+=($!)
done
sleep 5
show "$MOSAIC" --socket "$MOSAIC_SOCKET_N1" nodes
show "$MOSAIC" --socket "$MOSAIC_SOCKET_N4" nodes
echo "(load = runnable processes per core of capacity: 2 processes on half a core = 4; the news is a few seconds old)"
kill "${BUSY[@]}" 2>/dev/null; wait "${BUSY[@]}" 2>/dev/null || true; BUSY=()

say "A batch started on n1 spreads over the cluster by itself (the MOSIX policy) and ends sooner than on n1 alone"
JOB='x = 0
for i in range(40000000): x += i
print("job done")'
batch() {  # sets TOOK
	local start pids=()
	start=$(date +%s.%N)
	for _ in 1 2 3 4 5 6 7 8; do
		"$MOSAIC" run --here -- python3 -c "$JOB" >/dev/null &
		pids+=($!)
	done
	if [ "${1:-}" = show ]; then sleep 7; show "$MOSAIC" ps; fi
	wait "${pids[@]}"
	TOOK=$(printf '%.1f' "$(echo "$(date +%s.%N) - $start" | bc)")
}
show "$MOSAIC" policy off
echo "8 jobs started on n1 with the policy off: they stay on n1 (one core)"
batch
LOCAL=$TOOK
echo "  done in ${LOCAL} s"
for s in "$MOSAIC_SOCKET_N1" "$MOSAIC_SOCKET_N2" "$MOSAIC_SOCKET_N3" "$MOSAIC_SOCKET_N4"; do "$MOSAIC" --socket "$s" policy mosix >/dev/null; done
show "$MOSAIC" policy
echo "the same 8 jobs started on n1 with the MOSIX policy on every node: they move to where they run best"
batch show
echo "  done in ${TOOK} s (on n1 alone: ${LOCAL} s; this machine has $(nproc) CPUs for the cluster's 2.75 cores)"
show "$MOSAIC" recommend
for s in "$MOSAIC_SOCKET_N1" "$MOSAIC_SOCKET_N2" "$MOSAIC_SOCKET_N3" "$MOSAIC_SOCKET_N4"; do "$MOSAIC" --socket "$s" policy leastload >/dev/null; done

say "Kill node n2's daemon with SIGKILL: the others suspect it, then declare it dead"
show kill -9 "$(cat "$DIR/n2/daemon.lock")"
for _ in $(seq 200); do
	"$MOSAIC" nodes --json | grep -A2 '"name": "n2"' | grep -q '"state": "dead"' && break
	sleep 0.1
done
show "$MOSAIC" nodes

say "Start n2 again from its data directory: it rejoins with its certificate"
RESTART=$(grep -A1 "node n2 exited" "$UPLOG" | tail -n 1)
setsid $RESTART >"$DIR/n2-restart.log" 2>&1 < /dev/null &
N2_RESTARTED=$!
for _ in $(seq 200); do
	"$MOSAIC" nodes --json | grep -A2 '"name": "n2"' | grep -q '"state": "alive"' && break
	sleep 0.1
done
show "$MOSAIC" nodes

say "Stop the cluster: every daemon leaves gracefully, nothing is left behind"
"$MOSAIC" --socket "$MOSAIC_SOCKET_N2" node leave
# Let it finish exiting before the cluster stops (which would kill it).
for _ in $(seq 50); do kill -0 "$N2_RESTARTED" 2>/dev/null || break; sleep 0.1; done
N2_RESTARTED=
