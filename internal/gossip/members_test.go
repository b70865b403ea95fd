package gossip

import (
	"testing"
	"time"

	"github.com/mosaic-cluster/mosaic/internal/peerpb"
)

const (
	alive   = peerpb.State_ALIVE
	suspect = peerpb.State_SUSPECT
	dead    = peerpb.State_DEAD
	left    = peerpb.State_LEFT
)

// newTestCore is node "me" at incarnation 5, knowing only itself.
func newTestCore(t *testing.T) *Core {
	t.Helper()
	c, err := New(Config{Name: "me", Addr: "10.0.0.1:7946", Incarnation: 5, Meta: &peerpb.NodeMeta{Cores: 2}}, epoch)
	if err != nil {
		t.Fatal(err)
	}
	return c
}

// gossipTo delivers updates to c piggybacked on a PING from "peer".
func gossipTo(c *Core, updates ...*peerpb.MemberUpdate) []Message {
	return c.Step(epoch, &peerpb.Envelope{From: "peer", Kind: peerpb.Kind_PING, Seq: 1, Updates: updates})
}

func upd(name string, st peerpb.State, inc uint64) *peerpb.MemberUpdate {
	return &peerpb.MemberUpdate{Name: name, Addr: "10.0.0.9:7946", State: st, Incarnation: inc, Meta: &peerpb.NodeMeta{Cores: uint32(inc)}}
}

func TestUpdateRules(t *testing.T) {
	tests := []struct {
		rule     string
		known    peerpb.State // what we hold about x (at incarnation 3); unknown when unknown is set
		unknown  bool
		update   peerpb.State
		inc      uint64
		want     peerpb.State
		wantInc  uint64
		accepted bool
	}{
		{"ALIVE about an unknown member is accepted", 0, true, alive, 1, alive, 1, true},
		{"SUSPECT about an unknown member teaches us of it", 0, true, suspect, 1, suspect, 1, true},
		{"DEAD about an unknown member teaches us of it", 0, true, dead, 1, dead, 1, true},
		{"ALIVE at a higher incarnation wins", alive, false, alive, 4, alive, 4, true},
		{"ALIVE at the same incarnation loses", alive, false, alive, 3, alive, 3, false},
		{"ALIVE at the same incarnation does not clear SUSPECT", suspect, false, alive, 3, suspect, 3, false},
		{"ALIVE at a higher incarnation clears SUSPECT (refutation)", suspect, false, alive, 4, alive, 4, true},
		{"ALIVE at a higher incarnation revives DEAD (restart)", dead, false, alive, 4, alive, 4, true},
		{"ALIVE at a higher incarnation revives LEFT (rejoin)", left, false, alive, 4, alive, 4, true},
		{"ALIVE at the same incarnation does not revive DEAD", dead, false, alive, 3, dead, 3, false},
		{"SUSPECT at the same incarnation beats ALIVE", alive, false, suspect, 3, suspect, 3, true},
		{"SUSPECT at a higher incarnation beats ALIVE", alive, false, suspect, 4, suspect, 4, true},
		{"SUSPECT at a lower incarnation loses to ALIVE", alive, false, suspect, 2, alive, 3, false},
		{"SUSPECT at the same incarnation is old news to SUSPECT", suspect, false, suspect, 3, suspect, 3, false},
		{"SUSPECT at a higher incarnation renews SUSPECT", suspect, false, suspect, 4, suspect, 4, true},
		{"SUSPECT does not override DEAD", dead, false, suspect, 4, dead, 3, false},
		{"SUSPECT does not override LEFT", left, false, suspect, 4, left, 3, false},
		{"DEAD at the same incarnation beats ALIVE", alive, false, dead, 3, dead, 3, true},
		{"DEAD at the same incarnation beats SUSPECT", suspect, false, dead, 3, dead, 3, true},
		{"DEAD at a lower incarnation loses", alive, false, dead, 2, alive, 3, false},
		{"DEAD is old news to DEAD", dead, false, dead, 4, dead, 3, false},
		{"DEAD does not override LEFT", left, false, dead, 4, left, 3, false},
		{"LEFT at the same incarnation beats ALIVE", alive, false, left, 3, left, 3, true},
		{"LEFT at the same incarnation overrides DEAD", dead, false, left, 3, left, 3, true},
		{"LEFT at a lower incarnation loses", alive, false, left, 2, alive, 3, false},
		{"LEFT is old news to LEFT", left, false, left, 4, left, 3, false},
	}
	for _, tt := range tests {
		t.Run(tt.rule, func(t *testing.T) {
			c := newTestCore(t)
			if !tt.unknown {
				c.Preload(epoch, []*peerpb.MemberUpdate{upd("x", tt.known, 3)})
				c.broadcasts = newBroadcastQueue()
			}
			if got := accepts(tt.known, 3, tt.update, tt.inc); !tt.unknown && got != tt.accepted {
				t.Errorf("accepts(%v@3, %v@%d) = %v, want %v", tt.known, tt.update, tt.inc, got, tt.accepted)
			}
			gossipTo(c, upd("x", tt.update, tt.inc))
			m := c.members["x"]
			if m == nil {
				t.Fatal("x unknown after the update")
			}
			if m.state != tt.want || m.inc != tt.wantInc {
				t.Errorf("x is %v@%d, want %v@%d", m.state, m.inc, tt.want, tt.wantInc)
			}
			if _, queued := c.broadcasts.byName["x"]; queued != tt.accepted {
				t.Errorf("update re-gossiped = %v, want %v (accepted news is passed on, the rest is not)", queued, tt.accepted)
			}
			if tt.accepted && tt.want == alive && m.meta.GetCores() != uint32(tt.inc) {
				t.Errorf("meta not taken from the accepted ALIVE")
			}
		})
	}
}

func TestRulesAboutSelf(t *testing.T) {
	tests := []struct {
		rule    string
		update  peerpb.State
		inc     uint64
		leaving bool
		wantInc uint64 // our incarnation afterwards; 5 = unchanged
	}{
		{"SUSPECT at our incarnation is refuted", suspect, 5, false, 6},
		{"SUSPECT above our incarnation is refuted above it", suspect, 9, false, 10},
		{"SUSPECT below our incarnation is stale", suspect, 4, false, 5},
		{"DEAD at our incarnation is refuted", dead, 5, false, 6},
		{"DEAD below our incarnation is stale", dead, 2, false, 5},
		{"LEFT while not leaving is refuted", left, 5, false, 6},
		{"ALIVE above our incarnation (a previous life) is outbid", alive, 7, false, 8},
		{"ALIVE at our incarnation is ours", alive, 5, false, 5},
		{"SUSPECT while leaving is not refuted", suspect, 5, true, 5},
		{"DEAD while leaving is not refuted", dead, 5, true, 5},
	}
	for _, tt := range tests {
		t.Run(tt.rule, func(t *testing.T) {
			c := newTestCore(t)
			c.Preload(epoch, []*peerpb.MemberUpdate{upd("peer", alive, 1)})
			if tt.leaving {
				c.Leave(epoch)
			}
			c.broadcasts = newBroadcastQueue()
			out := gossipTo(c, &peerpb.MemberUpdate{Name: "me", Addr: "10.0.0.1:7946", State: tt.update, Incarnation: tt.inc})
			if got := c.Incarnation(); got != tt.wantInc {
				t.Fatalf("incarnation = %d, want %d", got, tt.wantInc)
			}
			refuted := tt.wantInc != 5
			if len(out) != 1 {
				t.Fatalf("got %d messages, want the ACK", len(out))
			}
			var carried *peerpb.MemberUpdate
			for _, u := range out[0].Env.Updates {
				if u.Name == "me" {
					carried = u
				}
			}
			if refuted != (carried != nil) {
				t.Fatalf("ACK carries %v about us, refuted = %v", carried, refuted)
			}
			if refuted && (carried.State != alive || carried.Incarnation != tt.wantInc || carried.Meta.GetCores() != 2) {
				t.Errorf("refutation = %v, want ALIVE@%d with our meta", carried, tt.wantInc)
			}
			if want := alive; tt.leaving {
				if c.self.state != left {
					t.Errorf("leaving node is %v, want LEFT", c.self.state)
				}
			} else if c.self.state != want {
				t.Errorf("we are %v, want %v", c.self.state, want)
			}
		})
	}
}

func TestFullTablesTeachButDoNotReGossipKnownNews(t *testing.T) {
	c := newTestCore(t)
	c.Preload(epoch, []*peerpb.MemberUpdate{upd("a", alive, 1), upd("b", alive, 1)})
	c.broadcasts = newBroadcastQueue()
	c.Step(epoch, &peerpb.Envelope{From: "s", Kind: peerpb.Kind_PUSH_PULL_REPLY, Updates: []*peerpb.MemberUpdate{
		upd("s", alive, 1),   // the sender about itself: news to pass on
		upd("new", alive, 1), // someone the sender knew: old news
		upd("a", dead, 1),    // a change to someone we knew: news
		upd("b", alive, 1),   // nothing new
	}})
	for name, want := range map[string]bool{"s": true, "new": false, "a": true, "b": false} {
		if _, got := c.broadcasts.byName[name]; got != want {
			t.Errorf("%s re-gossiped = %v, want %v", name, got, want)
		}
	}
	if len(c.Members()) != 5 {
		t.Errorf("members = %v, want me, a, b, new, s", c.Members())
	}
}

func TestPushPullIsAnsweredWithTheFullTable(t *testing.T) {
	c := newTestCore(t)
	c.Preload(epoch, []*peerpb.MemberUpdate{upd("a", alive, 1), upd("b", dead, 2)})
	out := c.Step(epoch, &peerpb.Envelope{From: "j", Kind: peerpb.Kind_PUSH_PULL, Updates: []*peerpb.MemberUpdate{
		{Name: "j", Addr: "10.0.0.7:7946", State: alive, Incarnation: 1},
	}})
	if len(out) != 1 || out[0].Env.Kind != peerpb.Kind_PUSH_PULL_REPLY || out[0].To != "j" || out[0].Addr != "10.0.0.7:7946" {
		t.Fatalf("answer = %v, want one PUSH_PULL_REPLY to j at its address", out)
	}
	got := map[string]peerpb.State{}
	for _, u := range out[0].Env.Updates {
		got[u.Name] = u.State
	}
	want := map[string]peerpb.State{"me": alive, "a": alive, "b": dead, "j": alive}
	if len(got) != len(want) {
		t.Fatalf("table = %v, want %v", got, want)
	}
	for k, v := range want {
		if got[k] != v {
			t.Errorf("table[%s] = %v, want %v", k, got[k], v)
		}
	}
}

func TestJoinSendsTableToEachSeedButSelf(t *testing.T) {
	c := newTestCore(t)
	out := c.Join(epoch, []string{"10.0.0.1:7946", "10.0.0.2:7946", "10.0.0.2:7946", "", "10.0.0.3:7946"})
	if len(out) != 2 {
		t.Fatalf("Join sent %d messages, want 2 (own address, duplicates and empties skipped)", len(out))
	}
	for _, m := range out {
		if m.To != "" || m.Env.Kind != peerpb.Kind_PUSH_PULL || len(m.Env.Updates) != 1 || m.Env.Updates[0].Name != "me" {
			t.Errorf("join message = %v", m)
		}
	}
}

func TestSetMetaAnnouncesAHigherIncarnation(t *testing.T) {
	c := newTestCore(t)
	c.Preload(epoch, []*peerpb.MemberUpdate{upd("peer", alive, 1)})
	c.SetMeta(&peerpb.NodeMeta{Cores: 8})
	out := gossipTo(c)
	u := out[0].Env.Updates[0]
	if u.Name != "me" || u.Incarnation != 6 || u.Meta.GetCores() != 8 {
		t.Errorf("piggyback = %v, want ALIVE me@6 with 8 cores", u)
	}
}

func TestEventsRecordStateChanges(t *testing.T) {
	c := newTestCore(t)
	gossipTo(c, upd("x", alive, 1))
	gossipTo(c, upd("x", suspect, 1))
	gossipTo(c, upd("x", alive, 2))
	got := c.Events()
	want := []Event{
		{Name: "x", New: alive, Discovered: true, Incarnation: 1},
		{Name: "x", Old: alive, New: suspect, Incarnation: 1},
		{Name: "x", Old: suspect, New: alive, Incarnation: 2},
	}
	if len(got) != len(want) {
		t.Fatalf("events = %v, want %v", got, want)
	}
	for i := range want {
		got[i].At = time.Time{}
		if got[i] != want[i] {
			t.Errorf("event %d = %+v, want %+v", i, got[i], want[i])
		}
	}
	if len(c.Events()) != 0 {
		t.Error("Events did not drain")
	}
}

func TestBadInputIsIgnored(t *testing.T) {
	c := newTestCore(t)
	bad := []*peerpb.Envelope{
		nil,
		{},
		{From: "me", Kind: peerpb.Kind_PING},
		{From: "x", Kind: peerpb.Kind(42)},
		{From: "x", Kind: peerpb.Kind_PING, Updates: []*peerpb.MemberUpdate{nil, {}, {Name: "y", State: peerpb.State(9), Addr: "a"}, {Name: "z"}}},
		{From: "x", Kind: peerpb.Kind_PING, Loads: []*peerpb.LoadReport{nil, {}, {Node: "me", AgeMs: 1}, {Node: "ghost"}}},
		{From: "x", Kind: peerpb.Kind_PING_REQ},
		{From: "x", Kind: peerpb.Kind_PING_REQ, Target: "me"},
		{From: "x", Kind: peerpb.Kind_PING_REQ, Target: "nowhere"},
		{From: "x", Kind: peerpb.Kind_ACK, Seq: 12345},
		{From: "x", Kind: peerpb.Kind_PUSH_PULL_REPLY, Updates: []*peerpb.MemberUpdate{{Name: "w", State: alive, Incarnation: 1}}},
	}
	for _, env := range bad {
		c.Step(epoch, env)
	}
	c.SetLocalLoad(epoch, nil)
	c.Tick(epoch.Add(time.Hour))
	if got := c.Members(); len(got) != 1 {
		t.Errorf("bad input added members: %v", got)
	}
	if got := c.Loads(epoch); len(got) != 0 {
		t.Errorf("bad input added loads: %v", got)
	}
}

func TestConfigDefaultsAndValidation(t *testing.T) {
	cfg, err := Config{Name: "a", Addr: "h:1"}.withDefaults()
	if err != nil {
		t.Fatal(err)
	}
	want := Config{Name: "a", Addr: "h:1", Interval: time.Second, PingTimeout: time.Second / 2, IndirectChecks: 3,
		SuspicionMult: 4, RetransmitMult: 4, MaxPiggyback: 16, WindowSize: 16,
		PushPullInterval: 30 * time.Second, ReconnectInterval: 30 * time.Second}
	if cfg != want {
		t.Errorf("defaults = %+v, want %+v", cfg, want)
	}
	for _, bad := range []Config{
		{Addr: "h:1"},
		{Name: "a"},
		{Name: "a", Addr: "h:1", Interval: -1},
		{Name: "a", Addr: "h:1", WindowSize: -1},
		{Name: "a", Addr: "h:1", Interval: time.Second, PingTimeout: time.Second},
	} {
		if _, err := New(bad, epoch); err == nil {
			t.Errorf("New(%+v) accepted an invalid config", bad)
		}
	}
	for _, tt := range []struct {
		n       int
		suspect time.Duration
		retrans int
		sync    time.Duration
	}{
		{1, 4 * time.Second, 4, 30 * time.Second},
		{9, 4 * time.Second, 4, 30 * time.Second},
		{100, 8 * time.Second, 12, 3 * 30 * time.Second},
		{1000, 12 * time.Second, 16, 6 * 30 * time.Second},
	} {
		if got := cfg.suspicionTimeout(tt.n); got != tt.suspect {
			t.Errorf("suspicionTimeout(%d) = %v, want %v", tt.n, got, tt.suspect)
		}
		if got := cfg.retransmitLimit(tt.n); got != tt.retrans {
			t.Errorf("retransmitLimit(%d) = %d, want %d", tt.n, got, tt.retrans)
		}
		if got := cfg.pushPullPeriod(tt.n); got != tt.sync {
			t.Errorf("pushPullPeriod(%d) = %v, want %v", tt.n, got, tt.sync)
		}
	}
}
