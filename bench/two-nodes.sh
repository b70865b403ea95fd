# Sourced by the bench scripts: a local 2-node `mosaic up`, and the
# migrate benchmark's workload (internal/bench/workload/migrate.c) on n1.
# MOSAIC=/path/to/another/mosaic (mosaicctl and mosaicd beside it) runs that build.

# two_nodes NAME [UP FLAGS...]: starts the cluster in a temporary directory
# (removed at exit, the cluster stopped) and waits until n2 is alive. Sets
# MOSAIC, WORK and SOCK (n1's socket).
two_nodes() {
	local name=$1
	shift
	MOSAIC=${MOSAIC:-$PWD/bin/mosaic}
	[ -x "$MOSAIC" ] || make build >/dev/null
	WORK=$(mktemp -d "/tmp/mosaic-bench-$name.XXXXXX")
	UP=
	trap 'two_nodes_cleanup' EXIT
	"$MOSAIC" up --nodes 2 "$@" --dir "$WORK/up" >"$WORK/up.log" 2>&1 &
	UP=$!
	SOCK=$WORK/up/n1/mosaic.sock
	for _ in $(seq 100); do
		"$MOSAIC" --socket "$SOCK" nodes 2>/dev/null | grep -q "n2 .*alive" && break
		sleep 0.2
	done
}

two_nodes_cleanup() {
	[ -n "$UP" ] && kill -INT "$UP" 2>/dev/null && wait "$UP" 2>/dev/null
	rm -rf "$WORK"
}

# start_workload SIZE: builds the workload (gcc) and runs it, SIZE MiB, on
# n1, waits until it has touched its memory, and moves it there and back
# once (a fresh cluster's first moves are its slowest). Sets ID.
start_workload() {
	gcc -O1 -o "$WORK/workload" internal/bench/workload/migrate.c
	"$MOSAIC" --socket "$SOCK" run --on n1 -- "$WORK/workload" "$1" >"$WORK/out" 2>&1 &
	for _ in $(seq 300); do grep -q ready "$WORK/out" && break; sleep 0.2; done
	grep -q ready "$WORK/out" || { echo "the workload did not start: $(cat "$WORK/out")" >&2; exit 1; }
	ID=$("$MOSAIC" --socket "$SOCK" ps | awk '/workload/ {print $1; exit}')
	"$MOSAIC" --socket "$SOCK" migrate "$ID" n2 >/dev/null
	"$MOSAIC" --socket "$SOCK" migrate "$ID" n1 >/dev/null
}
