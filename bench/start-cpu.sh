#!/usr/bin/env bash
# CPU a remote start costs the daemons: RUNS `mosaic run --on n2 -- /bin/true`
# back to back from n1 of a local 2-node `mosaic up` (after 20 to warm up);
# prints each daemon's CPU (user + system, from /proc) per run, and the
# wall time per run of the loop. Needs root.
# Usage: bench/start-cpu.sh [RUNS]
# With MOSAIC=/path/to/another/mosaic (mosaicctl and mosaicd beside it), that build runs.
set -euo pipefail
cd "$(dirname "$0")/.."
RUNS=${1:-300}
. bench/two-nodes.sh
two_nodes start

cpu() { awk '{print $14 + $15}' "/proc/$(pgrep -f "mosaicd node --dir $WORK/up/$1 ")/stat"; }
for _ in $(seq 20); do "$MOSAIC" --socket "$SOCK" run --on n2 -- /bin/true; done
h0=$(cpu n1) r0=$(cpu n2) t0=$(date +%s%N)
for _ in $(seq "$RUNS"); do "$MOSAIC" --socket "$SOCK" run --on n2 -- /bin/true; done
t1=$(date +%s%N) h1=$(cpu n1) r1=$(cpu n2)
awk -v h=$((h1 - h0)) -v r=$((r1 - r0)) -v t=$((t1 - t0)) -v hz="$(getconf CLK_TCK)" -v n="$RUNS" \
	'BEGIN { printf "per remote start: home (n1) %.2f ms of CPU, running node (n2) %.2f ms; wall %.2f ms\n", h / hz / n * 1000, r / hz / n * 1000, t / n / 1e6 }'
