package executor

import (
	"context"
	"io"
	"log/slog"
	"strings"
	"testing"

	"github.com/mosaic-cluster/mosaic/internal/peerpb"
)

// fakeStream is a ServerStream fed from a slice; only the refusal paths,
// which start nothing, are tested with it (the rest runs real processes in
// e2e/).
type fakeStream struct {
	in  []*peerpb.ExecIn
	out []*peerpb.ExecOut
}

func (f *fakeStream) Send(m *peerpb.ExecOut) error { f.out = append(f.out, m); return nil }
func (f *fakeStream) Context() context.Context     { return context.Background() }
func (f *fakeStream) Recv() (*peerpb.ExecIn, error) {
	if len(f.in) == 0 {
		return nil, io.EOF
	}
	m := f.in[0]
	f.in = f.in[1:]
	return m, nil
}

func TestOnlyTheHomeStartsItsProcesses(t *testing.T) {
	e := New(Config{Node: "n3", Log: slog.New(slog.DiscardHandler)})
	cases := []struct {
		from string
		st   *peerpb.ExecStart
		want string
	}{
		{"n2", &peerpb.ExecStart{Id: "n1.5", Home: "n1", Argv: []string{"true"}}, "may not start process n1.5"},
		{"n2", &peerpb.ExecStart{Id: "n1.5", Home: "n2", Argv: []string{"true"}}, "may not start process n1.5"},
		{"n1", &peerpb.ExecStart{Id: "n1.5", Home: "n1"}, "no program given"},
	}
	for _, c := range cases {
		s := &fakeStream{in: []*peerpb.ExecIn{{Msg: &peerpb.ExecIn_Start{Start: c.st}}}}
		if err := e.Serve(c.from, s); err != nil {
			t.Fatalf("Serve: %v", err)
		}
		if len(s.out) != 1 || s.out[0].GetFailure() == nil || !strings.Contains(s.out[0].GetFailure().GetMessage(), c.want) {
			t.Fatalf("from %s, %+v: answered %v, want a refusal with %q", c.from, c.st, s.out, c.want)
		}
	}
	s := &fakeStream{in: []*peerpb.ExecIn{{Msg: &peerpb.ExecIn_Stdin{Stdin: []byte("x")}}}}
	if err := e.Serve("n1", s); err == nil {
		t.Fatal("a stream that does not begin with a start was served")
	}
}
