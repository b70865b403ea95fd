package gossip

import (
	"testing"
	"time"

	"github.com/mosaic-cluster/mosaic/internal/peerpb"
)

func TestWindowNamingAnUnknownNodeTriggersARepairSync(t *testing.T) {
	c := newTestCore(t)
	c.Preload(epoch, []*peerpb.MemberUpdate{upd("a", alive, 1), upd("b", alive, 1)})
	ping := func(at time.Time, from string, about ...string) []Message {
		env := &peerpb.Envelope{From: from, Kind: peerpb.Kind_PING, Seq: 1}
		for _, n := range about {
			env.Loads = append(env.Loads, &peerpb.LoadReport{Node: n})
		}
		return c.Step(at, env)
	}
	syncs := func(out []Message) (to []string) {
		for _, m := range out {
			if m.Env.Kind == peerpb.Kind_PUSH_PULL {
				to = append(to, m.To)
			}
		}
		return to
	}
	if got := syncs(ping(epoch, "a", "a", "b")); len(got) != 0 {
		t.Fatalf("a window of known nodes triggered syncs to %v", got)
	}
	if got := syncs(ping(epoch, "a", "a", "stranger")); len(got) != 1 || got[0] != "a" {
		t.Fatalf("a window naming a stranger: syncs to %v, want one to the sender a", got)
	}
	if got := syncs(ping(epoch.Add(time.Second/2), "b", "stranger")); len(got) != 0 {
		t.Fatalf("a second repair within the rate limit: syncs to %v", got)
	}
	// A PING from an unknown sender: the sync goes to a member we can reach.
	got := syncs(ping(epoch.Add(3*time.Second), "stranger"))
	if len(got) != 1 || (got[0] != "a" && got[0] != "b") {
		t.Fatalf("a PING from a stranger: syncs to %v, want one to a or b", got)
	}
}
