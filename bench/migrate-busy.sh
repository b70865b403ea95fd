#!/usr/bin/env bash
# Migration between busy nodes: two nodes of a local `mosaic up` with a
# quarter of a core each (cgroup quotas), each kept busy by BUSY CPU-bound
# loops, and a process of SIZE MiB (the migrate benchmark's workload,
# internal/bench/workload/migrate.c) moved MOVES times between them; prints
# each move's freeze as the daemons report it, and their median.
# Needs root and gcc. Usage: bench/migrate-busy.sh [MOVES] [SIZE] [BUSY]
# With MOSAIC=/path/to/another/mosaic (mosaicctl and mosaicd beside it), that build runs.
set -euo pipefail
cd "$(dirname "$0")/.."
MOVES=${1:-16}
SIZE=${2:-8}
BUSY=${3:-3}
. bench/two-nodes.sh
two_nodes busy --capacity 0.25,0.25
for node in n1 n2; do
	for _ in $(seq "$BUSY"); do
		"$MOSAIC" --socket "$WORK/up/$node/mosaic.sock" run --here --pin -- sh -c 'while :; do :; done' >/dev/null 2>&1 &
	done
done
start_workload "$SIZE"
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
