#!/usr/bin/env bash
# CPU a migration costs the daemons: a process of SIZE MiB (the migrate
# benchmark's workload, internal/bench/workload/migrate.c) moved MOVES
# times between the two nodes of a local `mosaic up`; prints each move's
# freeze and the daemons' CPU seconds (user + system, from /proc) per move.
# Needs root and gcc. Usage: bench/migrate-cpu.sh [MOVES] [SIZE]
# With MOSAIC=/path/to/another/mosaic (mosaicd beside it), that build runs.
set -euo pipefail
cd "$(dirname "$0")/.."
MOVES=${1:-6}
SIZE=${2:-1024}
MOSAIC=${MOSAIC:-$PWD/bin/mosaic}
[ -x "$MOSAIC" ] || make build >/dev/null

WORK=$(mktemp -d /tmp/mosaic-bench-cpu.XXXXXX)
UP=
cleanup() {
	[ -n "$UP" ] && kill -INT "$UP" 2>/dev/null && wait "$UP" 2>/dev/null
	rm -rf "$WORK"
}
trap cleanup EXIT
gcc -O1 -o "$WORK/workload" internal/bench/workload/migrate.c

"$MOSAIC" up --nodes 2 --dir "$WORK/up" >"$WORK/up.log" 2>&1 &
UP=$!
SOCK=$WORK/up/n1/mosaic.sock
for _ in $(seq 100); do
	"$MOSAIC" --socket "$SOCK" nodes 2>/dev/null | grep -q "n2 .*alive" && break
	sleep 0.2
done
"$MOSAIC" --socket "$SOCK" run --on n1 -- "$WORK/workload" "$SIZE" >"$WORK/out" 2>&1 &
for _ in $(seq 300); do grep -q ready "$WORK/out" && break; sleep 0.2; done
grep -q ready "$WORK/out" || { echo "the workload did not start: $(cat "$WORK/out")" >&2; exit 1; }
ID=$("$MOSAIC" --socket "$SOCK" ps | awk '/workload/ {print $1; exit}')

daemons=$(pgrep -f "mosaicd node --dir $WORK/up/" | tr '\n' ' ')
cpu() { # the daemons' CPU, in clock ticks
	local t=0 p
	for p in $daemons; do t=$((t + $(awk '{print $14 + $15}' "/proc/$p/stat"))); done
	echo "$t"
}
# Two moves first: a fresh cluster's first moves are its slowest.
"$MOSAIC" --socket "$SOCK" migrate "$ID" n2 >/dev/null
"$MOSAIC" --socket "$SOCK" migrate "$ID" n1 >/dev/null
before=$(cpu)
for i in $(seq "$MOVES"); do
	to=n2; [ $((i % 2)) = 0 ] && to=n1
	"$MOSAIC" --socket "$SOCK" migrate "$ID" "$to" | sed 's/.*(pid [0-9]* there): //'
done
after=$(cpu)
"$MOSAIC" --socket "$SOCK" kill "$ID" >/dev/null 2>&1 || true
awk -v t=$((after - before)) -v hz="$(getconf CLK_TCK)" -v n="$MOVES" -v s="$SIZE" \
	'BEGIN { printf "daemons CPU per move of %d MiB: %.3f s\n", s, t / hz / n }'
