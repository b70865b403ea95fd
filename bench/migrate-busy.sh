#!/usr/bin/env bash
# Migration between busy nodes: two nodes of a local `mosaic up` with a
# quarter of a core each (cgroup quotas), each kept busy by BUSY CPU-bound
# loops, and a process of SIZE MiB (the migrate benchmark's workload,
# internal/bench/workload/migrate.c) moved MOVES times between them; prints
# each move's freeze as the daemons report it, and their median.
# Needs root and gcc. Usage: bench/migrate-busy.sh [MOVES] [SIZE] [BUSY]
# With MOSAIC=/path/to/another/mosaic (mosaicd beside it), that build runs.
set -euo pipefail
cd "$(dirname "$0")/.."
MOVES=${1:-16}
SIZE=${2:-8}
BUSY=${3:-3}
MOSAIC=${MOSAIC:-$PWD/bin/mosaic}
[ -x "$MOSAIC" ] || make build >/dev/null

WORK=$(mktemp -d /tmp/mosaic-bench-busy.XXXXXX)
UP=
cleanup() {
	[ -n "$UP" ] && kill -INT "$UP" 2>/dev/null && wait "$UP" 2>/dev/null
	rm -rf "$WORK"
}
trap cleanup EXIT
gcc -O1 -o "$WORK/workload" internal/bench/workload/migrate.c

"$MOSAIC" up --nodes 2 --capacity 0.25,0.25 --dir "$WORK/up" >"$WORK/up.log" 2>&1 &
UP=$!
SOCK=$WORK/up/n1/mosaic.sock
for _ in $(seq 100); do
	"$MOSAIC" --socket "$SOCK" nodes 2>/dev/null | grep -q "n2 .*alive" && break
	sleep 0.2
done
for node in n1 n2; do
	for _ in $(seq "$BUSY"); do
		"$MOSAIC" --socket "$WORK/up/$node/mosaic.sock" run --here --pin -- sh -c 'while :; do :; done' >/dev/null 2>&1 &
	done
done
"$MOSAIC" --socket "$SOCK" run --on n1 -- "$WORK/workload" "$SIZE" >"$WORK/out" 2>&1 &
for _ in $(seq 300); do grep -q ready "$WORK/out" && break; sleep 0.2; done
grep -q ready "$WORK/out" || { echo "the workload did not start: $(cat "$WORK/out")" >&2; exit 1; }
ID=$("$MOSAIC" --socket "$SOCK" ps | awk '/workload/ {print $1; exit}')
# Two moves first: a fresh cluster's first moves are its slowest.
"$MOSAIC" --socket "$SOCK" migrate "$ID" n2 >/dev/null
"$MOSAIC" --socket "$SOCK" migrate "$ID" n1 >/dev/null
for i in $(seq "$MOVES"); do
	to=n2; [ $((i % 2)) = 0 ] && to=n1
	"$MOSAIC" --socket "$SOCK" migrate "$ID" "$to" | sed 's/.*(pid [0-9]* there): //'
	sleep 0.3
done | tee "$WORK/moves"
# "... frozen 12.3 ms ..." in each line: the median.
grep -o 'frozen [0-9.]* ms' "$WORK/moves" | awk '{print $2}' | sort -n |
	awk -v s="$SIZE" -v b="$BUSY" '{v[NR] = $1} END {
		printf "median freeze of %d moves of %d MiB between quarter-core nodes each running %d busy loops: %.1f ms\n",
			NR, s, b, (NR % 2) ? v[(NR + 1) / 2] : (v[NR / 2] + v[NR / 2 + 1]) / 2 }'
