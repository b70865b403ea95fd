package runproto

import (
	"bytes"
	"encoding/json"
	"math"
	"reflect"
	"slices"
	"testing"
)

// runRequests are run requests worth encoding: every optional field unset
// and set, and strings that JSON must escape.
func runRequests() []RunArgs {
	return []RunArgs{
		{},
		{Argv: []string{}, Env: []string{}},
		{Argv: []string{"/bin/true"}, Env: []string{"PATH=/usr/bin:/bin", "HOME=/root"}, Cwd: "/tmp", Umask: 0o22},
		{Argv: []string{"nice"}, Cwd: "/", Nice: -20, IOPrio: 3 << 13, SchedPolicy: 5, Ignored: []int{1}},
		{
			Argv:  []string{"sh", "-c", `echo "a\b" <x> & 'y'` + "\n\t\r\b\f\x00\x1f\x7f"},
			Env:   []string{"A=\u2028\u2029", "B=\xff\xfe bad \xc3", "C=héllo, 世界 🎉", "D=" + string([]byte{0xed, 0xa0, 0x80})},
			Cwd:   "/home/ü ser/dir with spaces",
			Umask: 0o777,
			Rlimits: []Rlimit{
				{Resource: 0, Cur: math.MaxUint64, Max: math.MaxUint64},
				{Resource: 7, Cur: 1024, Max: 1 << 20},
			},
			Nice:    19,
			Ignored: []int{1, 2},
			On:      "n2",
			Here:    true,
			Pin:     true,
			Image:   true,
			Tty: &TtyModes{Rows: 50, Cols: 132, Iflag: 0x500, Oflag: 5, Cflag: 0xbf, Lflag: 0x8a3b,
				Cc: []byte{3, 28, 127, 21, 4, 0, 1, 0, 17, 19, 26, 0, 18, 15, 23, 22, 0, 0, 0}, Ispeed: 15, Ospeed: 15},
		},
		{Argv: []string{"x"}, Tty: &TtyModes{}},
		{Argv: []string{"x"}, Tty: &TtyModes{Rows: 1, Cc: []byte{}}},
	}
}

// TestRunRequestAsJSON: the hand-made encoding is encoding/json's, byte for
// byte, and the daemon's decoding gets the request back.
func TestRunRequestAsJSON(t *testing.T) {
	for i, a := range runRequests() {
		checkRunRequest(t, i, a)
	}
}

func checkRunRequest(t *testing.T, i int, a RunArgs) {
	t.Helper()
	got := EncodeRequest(OpRun, a)
	want := mustMarshal(t, request{Op: OpRun, Args: mustMarshal(t, a)})
	if !bytes.Equal(got, want) {
		t.Fatalf("%d: encoded\n%s\nencoding/json gives\n%s", i, got, want)
	}
	var req request
	if err := json.Unmarshal(got, &req); err != nil || req.Op != OpRun {
		t.Fatalf("%d: the daemon cannot read %s: %v", i, got, err)
	}
	var back, viaJSON RunArgs
	if err := json.Unmarshal(req.Args, &back); err != nil {
		t.Fatalf("%d: %v", i, err)
	}
	json.Unmarshal(mustMarshal(t, a), &viaJSON)
	if !reflect.DeepEqual(back, viaJSON) {
		t.Fatalf("%d: decoded %+v, want %+v", i, back, viaJSON)
	}
}

func mustMarshal(t *testing.T, v any) []byte {
	b, err := json.Marshal(v)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// request is internal/api's Request, as the daemon decodes it.
type request struct {
	Op   string          `json:"op"`
	Args json.RawMessage `json:"args,omitempty"`
}

func FuzzRunRequestAsJSON(f *testing.F) {
	for _, a := range runRequests() {
		var arg, env string
		if len(a.Argv) > 0 {
			arg = a.Argv[len(a.Argv)-1]
		}
		if len(a.Env) > 0 {
			env = a.Env[len(a.Env)-1]
		}
		f.Add(arg, env, a.Cwd, a.On, uint32(0o22), uint64(1), []byte{3, 4}, true)
	}
	f.Fuzz(func(t *testing.T, arg, env, cwd, on string, umask uint32, limit uint64, cc []byte, tty bool) {
		a := RunArgs{Argv: []string{arg, env}, Env: []string{env}, Cwd: cwd, On: on, Umask: umask,
			Rlimits: []Rlimit{{Resource: int(umask % 16), Cur: limit, Max: limit}}}
		if tty {
			a.Tty = &TtyModes{Rows: uint16(umask), Cols: uint16(umask >> 16), Lflag: umask, Cc: cc}
		}
		checkRunRequest(t, 0, a)
	})
}

// The events every run gets take the hand-written path, and decode as
// encoding/json decodes them; anything else is encoding/json's.
func TestDecodeRunEvent(t *testing.T) {
	fast := []RunEvent{
		{Started: &RunStarted{ID: "n1.4121", Node: "n2", PID: 2}},
		{Started: &RunStarted{ID: "héllo.1", Node: "", PID: 0}},
		{Exit: &RunExit{Code: 7}},
		{Exit: &RunExit{Code: 0, Signal: 11, Core: true}},
		{Exit: &RunExit{Code: 0, Signal: 9}},
		{Exit: &RunExit{Code: 255, Core: true}},
		{Exit: &RunExit{Code: -1}},
	}
	slow := []RunEvent{
		{Started: &RunStarted{ID: "a<b", Node: "n\"2", PID: 3}}, // escaped strings
		{Stopped: 20},
		{Continued: true},
		{Error: "no such node", Status: 127},
		{},
	}
	for _, want := range append(fast, slow...) {
		b, err := json.Marshal(want)
		if err != nil {
			t.Fatal(err)
		}
		var byHand RunEvent
		tookFast := decodeStartedEvent(b, &byHand) || decodeExitEvent(b, &byHand)
		var got RunEvent
		if err := DecodeRunEvent(b, &got); err != nil {
			t.Fatalf("%s: %v", b, err)
		}
		if !reflect.DeepEqual(got, want) {
			t.Fatalf("%s: got %+v, want %+v", b, got, want)
		}
		if isFast := slices.ContainsFunc(fast, func(e RunEvent) bool { return reflect.DeepEqual(e, want) }); tookFast != isFast {
			t.Fatalf("%s: read by hand %v, want %v", b, tookFast, isFast)
		}
	}
	var e RunEvent
	for _, bad := range []string{`{"exit":{"code":01}}`, `{"exit":{"code":1}}x`, `{"started":{"id":"a","node":"b","pid":1.5}}`, ``} {
		if err := DecodeRunEvent([]byte(bad), &e); err == nil {
			t.Fatalf("%q decoded as %+v", bad, e)
		}
	}
}

// Whatever the hand-written path accepts, encoding/json reads the same.
func FuzzDecodeRunEvent(f *testing.F) {
	f.Add([]byte(`{"started":{"id":"n1.1","node":"n1","pid":2}}`))
	f.Add([]byte(`{"exit":{"code":0,"signal":9,"core":true}}`))
	f.Add([]byte(`{"exit":{"code":-0}}`))
	f.Fuzz(func(t *testing.T, b []byte) {
		var byHand RunEvent
		if !decodeStartedEvent(b, &byHand) && !decodeExitEvent(b, &byHand) {
			return
		}
		var want RunEvent
		if err := json.Unmarshal(b, &want); err != nil {
			t.Fatalf("%q read by hand as %+v, but encoding/json: %v", b, byHand, err)
		}
		if !reflect.DeepEqual(byHand, want) {
			t.Fatalf("%q: by hand %+v, encoding/json %+v", b, byHand, want)
		}
	})
}
