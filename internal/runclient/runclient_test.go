package runclient

import (
	"slices"
	"testing"
)

// Parse takes exactly the run command lines it can parse, and leaves the
// rest to the full CLI.
func TestParse(t *testing.T) {
	for _, c := range []struct {
		argv []string
		ok   bool
		want Options
		prog []string
	}{
		{argv: []string{"run", "--on", "n2", "--", "sh", "-c", "x"}, ok: true, want: Options{On: "n2"}, prog: []string{"sh", "-c", "x"}},
		{argv: []string{"run", "--here", "-v", "ls", "-l", "--on", "x"}, ok: true, want: Options{Here: true, Verbose: true}, prog: []string{"ls", "-l", "--on", "x"}},
		{argv: []string{"--socket", "/s", "run", "true"}, ok: true, want: Options{Socket: "/s"}, prog: []string{"true"}},
		{argv: []string{"--socket=/s", "run", "--on=n3", "--pin", "true"}, ok: true, want: Options{Socket: "/s", On: "n3", Pin: true}, prog: []string{"true"}},
		{argv: []string{"run", "--socket", "/t", "--", "--help"}, ok: true, want: Options{Socket: "/t"}, prog: []string{"--help"}},
		{argv: []string{"run", "--verbose", "--on", "-x", "-"}, ok: true, want: Options{Verbose: true, On: "-x"}, prog: []string{"-"}},
		{argv: []string{"run", "--help"}},
		{argv: []string{"run", "-h", "true"}},
		{argv: []string{"run", "--bogus", "true"}},
		{argv: []string{"run", "---on", "n2", "true"}},
		{argv: []string{"run", "--here=false", "true"}},
		{argv: []string{"run", "-vv", "true"}},
		{argv: []string{"run", "--on"}},
		{argv: []string{"run", "--on", "n2"}},
		{argv: []string{"run"}},
		{argv: []string{"run", "--"}},
		{argv: []string{"ps"}},
		{argv: []string{"--socket"}},
		{argv: []string{"--socket", "/s"}},
		{argv: []string{"-v", "run", "true"}},
		{},
	} {
		o, prog, ok := Parse(c.argv)
		if ok != c.ok {
			t.Errorf("%q: ok %v, want %v", c.argv, ok, c.ok)
			continue
		}
		if ok && (o != c.want || !slices.Equal(prog, c.prog)) {
			t.Errorf("%q: %+v %q, want %+v %q", c.argv, o, prog, c.want, c.prog)
		}
	}
}
