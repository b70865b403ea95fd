package executor

import (
	"os"
	"path/filepath"
	"testing"

	"github.com/mosaic-cluster/mosaic/internal/peerpb"
)

// The stub started ahead runs the program the process was started with,
// found as its start found it.
func TestStartedProgram(t *testing.T) {
	dir := t.TempDir()
	prog := filepath.Join(dir, "prog")
	if err := os.WriteFile(prog, []byte("#!/bin/sh\n"), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dir, "data"), nil, 0o644); err != nil {
		t.Fatal(err)
	}
	for _, c := range []struct {
		argv []string
		cwd  string
		env  []string
		want string
	}{
		{[]string{prog, "x"}, "/", nil, prog},
		{[]string{"./prog"}, dir, nil, prog},
		{[]string{"prog"}, "/", []string{"HOME=/", "PATH=relative:" + dir}, prog},
		{[]string{"data"}, "/", []string{"PATH=" + dir}, ""}, // not executable
		{[]string{"prog"}, "/", []string{"PATH=/nonexistent"}, ""},
		{nil, "/", nil, ""},
	} {
		got := startedProgram(&peerpb.ExecStart{Argv: c.argv, Cwd: c.cwd, Env: c.env})
		if got != c.want {
			t.Errorf("startedProgram(%q in %s, %q) = %q, want %q", c.argv, c.cwd, c.env, got, c.want)
		}
	}
	link := filepath.Join(dir, "link")
	if err := os.Symlink(prog, link); err != nil {
		t.Fatal(err)
	}
	if same, err := sameFile(link, prog); err != nil || !same {
		t.Errorf("sameFile(a link, its target) = %v, %v", same, err)
	}
	if same, _ := sameFile(prog, filepath.Join(dir, "data")); same {
		t.Error("sameFile says two files are one")
	}
}
