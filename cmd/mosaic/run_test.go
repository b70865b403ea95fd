package main

import (
	"slices"
	"testing"

	"github.com/spf13/pflag"
)

// The fast path takes exactly the run command lines it can parse, and
// leaves the rest to cobra.
func TestParseRun(t *testing.T) {
	for _, c := range []struct {
		argv   []string
		ok     bool
		socket string
		on     string
		here   bool
		prog   []string
	}{
		{argv: []string{"run", "--on", "n2", "--", "sh", "-c", "x"}, ok: true, on: "n2", prog: []string{"sh", "-c", "x"}},
		{argv: []string{"run", "--here", "-v", "ls", "-l", "--on", "x"}, ok: true, here: true, prog: []string{"ls", "-l", "--on", "x"}},
		{argv: []string{"--socket", "/s", "run", "true"}, ok: true, socket: "/s", prog: []string{"true"}},
		{argv: []string{"--socket=/s", "run", "--on=n3", "true"}, ok: true, socket: "/s", on: "n3", prog: []string{"true"}},
		{argv: []string{"run", "--socket", "/t", "--", "--help"}, ok: true, socket: "/t", prog: []string{"--help"}},
		{argv: []string{"run", "--help"}},
		{argv: []string{"run", "-h", "true"}},
		{argv: []string{"run", "--bogus", "true"}},
		{argv: []string{"run", "--on"}},
		{argv: []string{"run"}},
		{argv: []string{"run", "--"}},
		{argv: []string{"ps"}},
		{argv: []string{"--socket"}},
		{argv: []string{"--socket", "/s"}},
		{argv: []string{"-v", "run", "true"}},
		{},
	} {
		g, f, prog, ok := parseRun(c.argv)
		if ok != c.ok {
			t.Errorf("%q: ok %v, want %v", c.argv, ok, c.ok)
			continue
		}
		if !ok {
			continue
		}
		if g.socket != c.socket || f.on != c.on || f.here != c.here || !slices.Equal(prog, c.prog) {
			t.Errorf("%q: socket %q on %q here %v prog %q", c.argv, g.socket, f.on, f.here, prog)
		}
	}
}

// cobra's run command and the fast path know the same flags.
func TestRunFlagsShared(t *testing.T) {
	names := func(fs *pflag.FlagSet) []string {
		var n []string
		fs.VisitAll(func(f *pflag.Flag) { n = append(n, f.Name) })
		slices.Sort(n)
		return n
	}
	g := &globals{}
	cmd := newRunCmd(g)
	fast := pflag.NewFlagSet("run", pflag.ContinueOnError)
	(&runFlags{}).define(fast)
	if a, b := names(cmd.Flags()), names(fast); !slices.Equal(a, b) {
		t.Fatalf("cobra's run has flags %v, the fast path %v", a, b)
	}
}
