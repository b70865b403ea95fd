#!/usr/bin/env bash
# Remote start latency of two builds at once: a 2-node `mosaic up` of each,
# side by side (127.77.11.x and 127.77.12.x), and `mosaic run --on n2 --
# /bin/true` timed on both alternately, ten rounds of RUNS each with
# `hyperfine -N`, so that the machine's changes of speed (a shared VM) fall
# on both alike. For a daemon change, where bench/remote-exec.sh's OTHER
# (another CLI on the same cluster) does not apply. Needs root; installs
# hyperfine from Debian.
# Usage: bench/start-ab.sh OTHER_MOSAIC [RUNS]   (OTHER_MOSAIC: another build's
# bin/mosaic, with its mosaicctl and mosaicd beside it; this tree's bin/ is B)
set -euo pipefail
cd "$(dirname "$0")/.."
A=${1:?usage: bench/start-ab.sh OTHER_MOSAIC [RUNS]}
RUNS=${2:-30}
B=$PWD/bin/mosaic
[ -x "$B" ] || make build >/dev/null
command -v hyperfine >/dev/null || { apt-get update -qq && apt-get install -y -qq hyperfine >/dev/null; }

WORK=$(mktemp -d /tmp/mosaic-bench-ab.XXXXXX)
PA= PB=
cleanup() {
	kill -INT $PA $PB 2>/dev/null || true
	wait 2>/dev/null || true
	rm -rf "$WORK"
}
trap cleanup EXIT
"$A" up --nodes 2 --base 127.77.11.1 --dir "$WORK/a" >"$WORK/a.log" 2>&1 &
PA=$!
"$B" up --nodes 2 --base 127.77.12.1 --dir "$WORK/b" >"$WORK/b.log" 2>&1 &
PB=$!
for c in a b; do
	for _ in $(seq 100); do
		"$B" --socket "$WORK/$c/n1/mosaic.sock" nodes 2>/dev/null | grep -q "n2 .*alive" && break
		sleep 0.2
	done
done
for r in $(seq 10); do
	hyperfine -N --warmup 3 --runs "$RUNS" --export-json "$WORK/r$r.json" \
		-n "A $A" "$A --socket $WORK/a/n1/mosaic.sock run --on n2 -- /bin/true" \
		-n "B $B" "$B --socket $WORK/b/n1/mosaic.sock run --on n2 -- /bin/true" >/dev/null
done
python3 - "$WORK"/r*.json <<'PY'
import json, statistics, sys
times = {}
for f in sys.argv[1:]:
    for r in json.load(open(f))["results"]:
        times.setdefault(r["command"], []).extend(r["times"])
for cmd, t in times.items():
    t = sorted(t)
    print(f"{cmd}: median {statistics.median(t)*1000:.2f} ms, mean {statistics.mean(t)*1000:.2f} ms, p90 {t[int(len(t)*0.9)]*1000:.2f} ms, {len(t)} runs")
PY
