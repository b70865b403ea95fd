#!/usr/bin/env bash
# CPU a migration costs the daemons: a process of SIZE MiB (the migrate
# benchmark's workload, internal/bench/workload/migrate.c) moved MOVES
# times between the two nodes of a local `mosaic up`; prints each move's
# freeze and the daemons' CPU seconds (user + system, from /proc) per move.
# Needs root and gcc. Usage: bench/migrate-cpu.sh [MOVES] [SIZE]
# With MOSAIC=/path/to/another/mosaic (mosaicctl and mosaicd beside it), that build runs.
set -euo pipefail
cd "$(dirname "$0")/.."
MOVES=${1:-6}
SIZE=${2:-1024}
. bench/two-nodes.sh
two_nodes cpu
start_workload "$SIZE"

daemons=$(pgrep -f "mosaicd node --dir $WORK/up/" | tr '\n' ' ')
cpu() { # the daemons' CPU, in clock ticks
	local t=0 p
	for p in $daemons; do t=$((t + $(awk '{print $14 + $15}' "/proc/$p/stat"))); done
	echo "$t"
}
before=$(cpu)
for i in $(seq "$MOVES"); do
	to=n2; [ $((i % 2)) = 0 ] && to=n1
	"$MOSAIC" --socket "$SOCK" migrate "$ID" "$to" | sed 's/.*(pid [0-9]* there): //'
done
after=$(cpu)
"$MOSAIC" --socket "$SOCK" kill "$ID" >/dev/null 2>&1 || true
awk -v t=$((after - before)) -v hz="$(getconf CLK_TCK)" -v n="$MOVES" -v s="$SIZE" \
	'BEGIN { printf "daemons CPU per move of %d MiB: %.3f s\n", s, t / hz / n }'
