#!/usr/bin/env bash
# Remote start latency: `mosaic run --on OTHER -- /bin/true` on a local
# 4-node cluster, beside a local /bin/true and OpenSSH on a loopback port,
# plain and multiplexed (ControlMaster). Needs root; installs hyperfine and
# OpenSSH from Debian. Usage: bench/remote-exec.sh [RUNS]
# With OTHER=/path/to/another/mosaic, that CLI's remote start is timed in the
# same runs (to compare two builds on the same cluster and machine state).
set -euo pipefail
cd "$(dirname "$0")/.."
RUNS=${1:-300}
MOSAIC=${MOSAIC:-$PWD/bin/mosaic} # another build: MOSAIC=/its/bin/mosaic (mosaicctl and mosaicd beside it)
[ -x "$MOSAIC" ] || make build >/dev/null
if ! command -v hyperfine >/dev/null || [ ! -x /usr/sbin/sshd ]; then
	apt-get update -qq && apt-get install -y -qq hyperfine openssh-server openssh-client >/dev/null
fi

WORK=$(mktemp -d /tmp/mosaic-bench-exec.XXXXXX)
UP=
BENCHUSER=mosaic-bench
cleanup() {
	[ -n "$UP" ] && kill -INT "$UP" 2>/dev/null && wait "$UP" 2>/dev/null
	ssh -O exit -o ControlPath="$WORK/cm" "$BENCHUSER@127.0.0.1" 2>/dev/null || true
	[ -f "$WORK/sshd.pid" ] && kill "$(cat "$WORK/sshd.pid")" 2>/dev/null
	userdel "$BENCHUSER" 2>/dev/null || true
	rm -rf "$WORK"
}
trap cleanup EXIT

# An OpenSSH server on 127.0.0.1:2222, and a user with a plain /bin/sh and
# no start-up files: ssh runs the command through the user's shell, and a
# shell that sources a heavy rc file (root's here) would be measured too.
mkdir -p /run/sshd "$WORK/home"
id "$BENCHUSER" >/dev/null 2>&1 || useradd -M -d "$WORK/home" -s /bin/sh "$BENCHUSER"
usermod -p '*' "$BENCHUSER"  # unlocked for key login, no password
ssh-keygen -q -t ed25519 -N '' -f "$WORK/host_key"
ssh-keygen -q -t ed25519 -N '' -f "$WORK/user_key"
cp "$WORK/user_key.pub" "$WORK/authorized_keys"
chmod 644 "$WORK/authorized_keys"
chmod 755 "$WORK"
cat >"$WORK/sshd_config" <<CONF
Port 2222
ListenAddress 127.0.0.1
HostKey $WORK/host_key
AuthorizedKeysFile $WORK/authorized_keys
PasswordAuthentication no
KbdInteractiveAuthentication no
UsePAM no
StrictModes no
PidFile $WORK/sshd.pid
CONF
/usr/sbin/sshd -f "$WORK/sshd_config"
SSH="ssh -p 2222 -i $WORK/user_key -o StrictHostKeyChecking=no -o UserKnownHostsFile=/dev/null -o BatchMode=yes -o LogLevel=ERROR"
for _ in $(seq 50); do $SSH $BENCHUSER@127.0.0.1 true 2>/dev/null && break; sleep 0.1; done
$SSH -o ControlMaster=yes -o ControlPath="$WORK/cm" -o ControlPersist=300 -N -f $BENCHUSER@127.0.0.1

# A 4-node cluster.
"$MOSAIC" up --nodes 4 --dir "$WORK/cluster" >"$WORK/up.log" 2>&1 &
UP=$!
for _ in $(seq 600); do grep -q "Ctrl-C stops" "$WORK/up.log" && break; sleep 0.1; done
export MOSAIC_SOCKET=$WORK/cluster/n1/mosaic.sock

# Rounds: every command runs RUNS/10 times in each of 10 rounds, so that a
# change in the machine's speed during the benchmark (this is a shared VM)
# falls on all commands alike rather than on whichever ran last.
ROUNDS=10
PER=$((RUNS >= ROUNDS ? RUNS / ROUNDS : 1))
for r in $(seq $ROUNDS); do
	hyperfine -N --warmup 3 --runs "$PER" --export-json "$WORK/fast.$r.json" \
		-n "local /bin/true" "/bin/true" \
		-n "mosaic run --here" "$MOSAIC run --here -- /bin/true" \
		-n "mosaic run --on n2" "$MOSAIC run --on n2 -- /bin/true" \
		-n "ssh, ControlMaster" "$SSH -o ControlPath=$WORK/cm $BENCHUSER@127.0.0.1 /bin/true" \
		${OTHER:+-n "other: run --on n2" "$OTHER run --on n2 -- /bin/true"} >/dev/null
done
hyperfine -N --warmup 3 --runs "$PER" --export-json "$WORK/ssh.json" \
	-n "ssh" "$SSH $BENCHUSER@127.0.0.1 /bin/true" >/dev/null

python3 - "$WORK"/fast.*.json "$WORK/ssh.json" <<'PY'
import json, statistics, sys
times = {}
for f in sys.argv[1:]:
    for r in json.load(open(f))["results"]:
        times.setdefault(r["command"], []).extend(r["times"])
print(f"{'command':<22} {'median ms':>10} {'mean ms':>9} {'p90 ms':>8} {'runs':>5}")
for cmd, t in times.items():
    t = sorted(t)
    print(f"{cmd:<22} {statistics.median(t)*1000:>10.2f} {statistics.mean(t)*1000:>9.2f} {t[int(len(t)*0.9)]*1000:>8.2f} {len(t):>5}")
ssh, mosaic = statistics.median(times["ssh, ControlMaster"]), statistics.median(times["mosaic run --on n2"])
print(f"remote start, multiplexed ssh / mosaic: {ssh/mosaic:.2f}x")
PY
