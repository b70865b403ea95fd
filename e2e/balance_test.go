//go:build cluster

package e2e

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/mosaic-cluster/mosaic/internal/api"
	"github.com/mosaic-cluster/mosaic/internal/up"
)

// busy is a CPU-bound program that runs for secs seconds of wall time and
// says so.
func busy(secs int) []string {
	return []string{"/usr/bin/python3", "-c", fmt.Sprintf("import time\ne = time.time() + %d\nn = 0\nwhile time.time() < e: n += 1\nprint('done', flush=True)", secs)}
}

// procsByID is `mosaic ps --json` of every user's processes, by ID.
func procsByID(t *testing.T, sock string) map[string]api.ProcInfo {
	t.Helper()
	var ps []api.ProcInfo
	if err := api.Call(context.Background(), sock, api.OpPs, api.PsArgs{All: true}, &ps); err != nil {
		t.Fatalf("ps: %v", err)
	}
	m := map[string]api.ProcInfo{}
	for _, p := range ps {
		m[p.ID] = p
	}
	return m
}

func setPolicy(t *testing.T, sock string, args ...string) {
	t.Helper()
	if r := mosaic(t, append([]string{"--socket", sock, "policy"}, args...)...); r.code != 0 {
		t.Fatalf("mosaic policy %v: %v", args, r)
	}
}

// TestBalance runs the MOSIX policy live on four nodes of unequal
// capacity: work started on one node spreads by itself, each process
// moves a bounded number of times and settles, pinned processes stay,
// manual mode only recommends, a node that refuses guests gets none, and
// a drained node sends its guests away and keeps its own.
func TestBalance(t *testing.T) {
	c := startClusterCfg(t, up.Config{Dir: t.TempDir(), Nodes: 4, Capacities: []float64{1, 1, 0.5, 0.5},
		Memories: []uint64{400 << 20, 0, 0, 0}, ExtraArgs: []string{"--policy", "mosix"}})
	n1, n2, n3 := c.Node("n1"), c.Node("n2"), c.Node("n3")
	for _, n := range c.Nodes {
		eventually(t, 20*time.Second, n.Name+" hears every node's load", func() (bool, string) {
			view := nodes(t, n.Socket)
			for _, m := range view {
				if !m.HasLoad || m.Policy != "mosix" {
					return false, jsonString(view)
				}
			}
			return len(view) == 4, jsonString(view)
		})
	}

	t.Run("work started on one node spreads and settles", func(t *testing.T) {
		var jobs []*background
		for range 6 {
			jobs = append(jobs, startBackground(t, n1.Socket, nil, append([]string{"--here", "--"}, busy(35)...)...))
		}
		pinned := startBackground(t, n1.Socket, nil, append([]string{"--here", "--pin", "--"}, busy(35)...)...)
		var ids []string
		for _, j := range jobs {
			ids = append(ids, j.id())
		}
		pid := pinned.id()
		spread := func() (bool, string) {
			ps := procsByID(t, n1.Socket)
			where := map[string]int{}
			for _, id := range ids {
				where[ps[id].Node]++
			}
			return len(where) == 4 && where["n1"] <= 2, jsonString(where)
		}
		for deadline := time.Now().Add(20 * time.Second); ; time.Sleep(200 * time.Millisecond) {
			ok, where := spread()
			if ok {
				break
			}
			if time.Now().After(deadline) {
				log, _ := os.ReadFile(n1.Log)
				var moves []string
				for _, l := range strings.Split(string(log), "\n") {
					if strings.Contains(l, "policy mov") {
						moves = append(moves, l)
					}
				}
				t.Fatalf("the jobs did not spread within 20s: %s; n1's moves:\n%s", where, strings.Join(moves, "\n"))
			}
		}
		// Settled: the moves stop (none for 6 s), well before the jobs
		// end, and no job moved more than the stability bound allows in
		// its run of 35 s: 1 + log2(35/4 + 1) = 4 (the rule itself needs
		// one or two).
		var after map[string]api.ProcInfo
		total := func(ps map[string]api.ProcInfo) (n int) {
			for _, id := range ids {
				n += ps[id].Migrations
			}
			return n
		}
		last, quiet := -1, 0
		for deadline := time.Now().Add(20 * time.Second); quiet < 6; time.Sleep(time.Second) {
			after = procsByID(t, n1.Socket)
			if n := total(after); n != last {
				last, quiet = n, 0
			} else {
				quiet++
			}
			if time.Now().After(deadline) {
				t.Fatalf("the jobs still move 20 s after they spread: %s", jsonString(after))
			}
		}
		for _, id := range ids {
			if after[id].Migrations > 4 {
				t.Errorf("%s moved %d times", id, after[id].Migrations)
			}
		}
		t.Logf("settled after %d moves of 6 jobs", last)
		if p := after[pid]; p.Node != "n1" || p.Migrations != 0 {
			t.Errorf("the pinned process moved: %s", jsonString(p))
		}
		for _, j := range append(jobs, pinned) {
			if out, code := j.finish(); out != "done\n" || code != 0 {
				t.Errorf("a job ended with %d: %q", code, out)
			}
		}
	})

	t.Run("manual mode recommends and moves nothing", func(t *testing.T) {
		setPolicy(t, n1.Socket, "--manual")
		var jobs []*background
		var ids []string
		// Longer than the test needs them: a job that ended would not be
		// listed, and must not count as one that moved.
		for range 4 {
			j := startBackground(t, n1.Socket, nil, append([]string{"--here", "--"}, busy(60)...)...)
			jobs = append(jobs, j)
			ids = append(ids, j.id())
		}
		eventually(t, 10*time.Second, "recommendations for n1's jobs", func() (bool, string) {
			var rec api.RecommendResult
			if err := api.Call(context.Background(), n2.Socket, api.OpRecommend, api.RecommendArgs{}, &rec); err != nil {
				return false, err.Error()
			}
			for _, m := range rec.Moves {
				if m.From == "n1" && m.To != "n1" && strings.HasPrefix(m.ID, "n1.") && m.Reason != "" {
					return true, ""
				}
			}
			return false, jsonString(rec)
		})
		if r := mosaic(t, "--socket", n1.Socket, "recommend"); r.code != 0 || !strings.Contains(r.out, "n1.") {
			t.Errorf("mosaic recommend: %v", r)
		}
		ps := procsByID(t, n1.Socket)
		for _, id := range ids {
			if ps[id].Node != "n1" || ps[id].Migrations != 0 {
				t.Errorf("in manual mode %s moved: %s", id, jsonString(ps[id]))
			}
		}
		setPolicy(t, n1.Socket, "--auto")
		// (A move a second at most, each measured first: seconds on a
		// quiet machine, more on a busy one.)
		eventually(t, 30*time.Second, "back in automatic mode, the jobs spread", func() (bool, string) {
			ps := procsByID(t, n1.Socket)
			away := 0
			for _, id := range ids {
				if ps[id].Node != "" && ps[id].Node != "n1" {
					away++
				}
			}
			return away >= 2, jsonString(ps)
		})
		for i, j := range jobs {
			mosaic(t, "--socket", n1.Socket, "kill", ids[i])
			j.finish()
		}
	})

	t.Run("a node that takes no guests gets none", func(t *testing.T) {
		setPolicy(t, n2.Socket, "--no-guests")
		eventually(t, 10*time.Second, "n1 learns that n2 takes no guests", func() (bool, string) {
			v := nodes(t, n1.Socket)
			return v["n2"].NoGuests, jsonString(v["n2"])
		})
		r := runOn(t, n1.Socket, nil, nil, "run", "--on", "n2", "--", "true")
		if r.code == 0 || !strings.Contains(r.stderr, "takes no guests") {
			t.Errorf("run --on a node without guests: %v", r)
		}
		var jobs []*background
		var ids []string
		for range 5 {
			j := startBackground(t, n1.Socket, nil, append([]string{"--here", "--"}, busy(10)...)...)
			jobs = append(jobs, j)
			ids = append(ids, j.id())
		}
		time.Sleep(5 * time.Second)
		ps := procsByID(t, n1.Socket)
		for _, id := range ids {
			if ps[id].Node == "n2" {
				t.Errorf("%s went to n2, which takes no guests", id)
			}
		}
		// Moved there by hand, it stays, and the error says why (the
		// target's refusal, not a wait for an image it will not take).
		if _, err := migrate(t, n1.Socket, nil, ids[0], "n2"); err == nil || !strings.Contains(err.Error(), "takes no guests") {
			t.Errorf("migrate to a node without guests: %v", err)
		}
		if p := procsByID(t, n1.Socket)[ids[0]]; p.Node == "n2" || p.State != "running" {
			t.Errorf("after a refused move, %s: %+v", ids[0], p)
		}
		for _, j := range jobs {
			j.finish()
		}
		setPolicy(t, n2.Socket, "--guests")
	})

	t.Run("drain sends the guests away and keeps the node's own", func(t *testing.T) {
		setPolicy(t, n1.Socket, "off") // n3's guests come from n1; n1 must not send more
		// (n3 takes guests and n1 is back to mosix however this ends: the
		// subtests after it need both.)
		t.Cleanup(func() {
			mosaic(t, "--socket", n1.Socket, "drain", "n3", "--undo")
			setPolicy(t, n1.Socket, "mosix")
		})
		var guests []*background
		var ids []string
		for _, flags := range [][]string{{"--pin"}, nil} {
			// A user's pin keeps policies off, not an administrator's drain.
			j := startBackground(t, n1.Socket, nil, append(append(flags, "--on", "n3", "--"), busy(15)...)...)
			guests = append(guests, j)
			ids = append(ids, j.id())
		}
		own := startBackground(t, n3.Socket, nil, append([]string{"--here", "--"}, busy(15)...)...)
		ownID := own.id()
		r := mosaic(t, "--socket", n1.Socket, "drain", "n3", "--json")
		if r.code != 0 {
			t.Fatalf("drain: %v", r)
		}
		var res api.DrainResult
		if err := json.Unmarshal([]byte(r.out), &res); err != nil || len(res.Moved) != 2 {
			t.Fatalf("drain result %q: %v", r.out, err)
		}
		ps := procsByID(t, n1.Socket)
		for _, id := range ids {
			if ps[id].Node == "n3" {
				t.Errorf("%s is still on n3 after the drain", id)
			}
		}
		if p := psOne(t, n3.Socket, ownID); p.Node != "n3" || p.State != "running" {
			t.Errorf("n3's own process after the drain: %s", jsonString(p))
		}
		if r := runOn(t, n1.Socket, nil, nil, "run", "--on", "n3", "--", "true"); r.code == 0 {
			t.Errorf("a drained node took a new guest: %v", r)
		}
		for _, j := range append(guests, own) {
			if out, code := j.finish(); out != "done\n" || code != 0 {
				t.Errorf("a job ended with %d: %q", code, out)
			}
		}
		if r := mosaic(t, "--socket", n1.Socket, "drain", "n3", "--undo"); r.code != 0 {
			t.Fatalf("drain --undo: %v", r)
		}
		if r := runOn(t, n1.Socket, nil, nil, "run", "--on", "n3", "--", "true"); r.code != 0 {
			t.Errorf("after drain --undo, n3 refuses: %v", r)
		}
	})

	t.Run("memory ushering moves a process before the node runs out", func(t *testing.T) {
		// Three mostly sleeping processes grow to 160 MiB each on n1, which
		// offers 400 MiB: together they would exceed it. One must leave
		// once n1 is 90% full, before it is over.
		grow := []string{"/usr/bin/python3", "-c", "import time\nb = []\nfor i in range(40):\n    b.append(bytearray(4 << 20))\n    time.sleep(0.5)\ntime.sleep(3)\nprint('done', len(b), flush=True)"}
		var jobs []*background
		for range 3 {
			jobs = append(jobs, startBackground(t, n1.Socket, nil, append([]string{"--here", "--"}, grow...)...))
		}
		ids := map[string]bool{}
		for _, j := range jobs {
			ids[j.id()] = true
		}
		var worst uint64
		ushered := false
		deadline := time.Now().Add(30 * time.Second)
		for time.Now().Before(deadline) && !ushered {
			if v := nodes(t, n1.Socket)["n1"]; v.MemTotal > 0 {
				worst = max(worst, v.MemTotal-min(v.MemFree, v.MemTotal))
				if v.MemFree == 0 {
					t.Errorf("n1 ran out of memory: %s", jsonString(v))
					break
				}
			}
			for id, p := range procsByID(t, n1.Socket) {
				if ids[id] && p.Node != "n1" {
					ushered = true
				}
			}
			time.Sleep(100 * time.Millisecond)
		}
		if !ushered {
			t.Fatalf("no process left n1 as its memory filled (most used seen: %d MiB of 400)", worst>>20)
		}
		if log, err := os.ReadFile(n1.Log); err != nil || !regexp.MustCompile(`policy moved a process.*reason="memory \d+% used here"`).Match(log) {
			t.Errorf("n1's log (%v) shows no move for memory:\n%s", err, log)
		}
		for _, j := range jobs {
			if out, code := j.finish(); out != "done 40\n" || code != 0 {
				t.Errorf("a growing job ended with %d: %q", code, out)
			}
		}
		t.Logf("n1 used at most %d MiB of its 400 before a process was ushered away", worst>>20)
	})

	t.Run("a node that dies with guests draws no storm of retries", func(t *testing.T) {
		var jobs []*background
		ids := map[string]*background{}
		for range 6 {
			j := startBackground(t, n1.Socket, nil, append([]string{"--here", "--"}, busy(20)...)...)
			jobs = append(jobs, j)
			ids[j.id()] = j
		}
		var onN4 string
		eventually(t, 15*time.Second, "a job runs on n4", func() (bool, string) {
			ps := procsByID(t, n1.Socket)
			for id := range ids {
				if ps[id].Node == "n4" {
					onN4 = id
					return true, ""
				}
			}
			return false, jsonString(ps)
		})
		killed := time.Now()
		if err := c.Kill("n4"); err != nil {
			t.Fatal(err)
		}
		for id, j := range ids {
			out, code := j.finish()
			switch {
			case id == onN4 && code == 0:
				t.Errorf("%s ran on n4, which died, and ended well: %q", id, out)
			case id != onN4 && (code != 0 || out != "done\n"):
				t.Errorf("%s ended with %d: %q", id, code, out)
			}
		}
		// Every node may try n4 once before it learns it is dead (then the
		// target waits out its backoff); no more.
		for _, n := range []*up.Node{n1, n2, n3} {
			log, _ := os.ReadFile(n.Log)
			tries := 0
			for _, line := range strings.Split(string(log), "\n") {
				if strings.Contains(line, "policy move failed") && strings.Contains(line, "to=n4") {
					if at, err := time.Parse(time.RFC3339Nano, strings.TrimPrefix(strings.Fields(line)[0], "time=")); err == nil && at.After(killed) {
						tries++
					}
				}
			}
			if tries > 1 {
				t.Errorf("%s tried to move %d processes to the dead n4", n.Name, tries)
			}
		}
		restartAndWait(t, c, "n4")
	})

	t.Run("bad input", func(t *testing.T) {
		expectFail(t, mosaic(t, "--socket", n1.Socket, "policy", "best"), "no policy \"best\"")
		expectFail(t, mosaic(t, "--socket", n1.Socket, "drain", "n9"), "n9")
		expectFail(t, mosaic(t, "--socket", n1.Socket, "recommend", "--policy", "best"), "no policy")
	})
}

// TestBenchMemory runs the memory ushering benchmark end to end, small:
// with no policy the jobs outgrow n1 where they started; with mosix one
// at least leaves it.
func TestBenchMemory(t *testing.T) {
	out, err := exec.Command(daemonBin, "bench", "memory", "--memory", "128MiB", "--grow", "48MiB", "--policies", "off,mosix").CombinedOutput()
	if err != nil {
		t.Fatalf("mosaicd bench memory: %v\n%s", err, out)
	}
	rows := map[string][]string{}
	for _, l := range strings.Split(string(out), "\n") {
		if f := strings.Fields(l); len(f) > 0 && (f[0] == "off" || f[0] == "mosix") {
			rows[f[0]] = f
		}
	}
	// policy, peak, MiB, / offer, over it, moves, first move..., makespan, ended on...
	off, mosix := rows["off"], rows["mosix"]
	if len(off) < 8 || len(mosix) < 8 {
		t.Fatalf("no row for each policy:\n%s", out)
	}
	if off[5] != "0" || off[4] == "0.0s" {
		t.Errorf("with no policy the jobs should stay and outgrow n1 (moves, time over its memory: %s, %s):\n%s", off[5], off[4], out)
	}
	if mosix[5] == "0" {
		t.Errorf("with mosix no job left n1:\n%s", out)
	}
}
