package daemon

import (
	"testing"
	"time"

	"github.com/mosaic-cluster/mosaic/internal/peerpb"
)

// The home says where a process runs; the running node says how it is
// doing; a node still reporting a copy it is discarding (the process just
// moved away from it) is not believed over the home.
func TestMergeProcs(t *testing.T) {
	now := time.Now()
	started := now.Add(-10 * time.Second).UnixMilli()
	entries := []*peerpb.ProcInfo{
		{Id: "n1.1", FromHome: true, Node: "n2", Pid: 7, User: "alice", Uid: 1000, State: "running", Migrations: 2, StartedUnixMs: started},
		{Id: "n1.1", Node: "n2", Pid: 7, CpuSeconds: 5, Rss: 4096, Nice: 6, State: "running", StartedUnixMs: started},
		{Id: "n1.1", Node: "n3", Pid: 40, CpuSeconds: 9, State: "running", StartedUnixMs: started},                         // the old copy
		{Id: "n2.3", Node: "n2", Pid: 8, CpuSeconds: 1, User: "bob", Home: "n2", State: "running", StartedUnixMs: started}, // its home did not answer
	}
	got := mergeProcs(entries, now)
	if len(got) != 2 {
		t.Fatalf("got %d processes, want 2: %+v", len(got), got)
	}
	p := got[0]
	if p.ID != "n1.1" || p.Node != "n2" || p.PID != 7 || p.CPUSeconds != 5 || p.RSS != 4096 || p.Nice != 6 || p.User != "alice" || p.Migrations != 2 {
		t.Fatalf("merged %+v", p)
	}
	if q := got[1]; q.ID != "n2.3" || q.Node != "n2" || q.User != "bob" {
		t.Fatalf("merged %+v", q)
	}
}
