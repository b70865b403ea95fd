package main

import (
	"os/exec"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/mosaic-cluster/mosaic/internal/api"
)

// What `mosaic ps ID` shows as the command, a shell takes back as the very
// same arguments.
func TestShellQuotedRoundTrip(t *testing.T) {
	bash, err := exec.LookPath("bash")
	if err != nil {
		t.Fatal("this test needs bash")
	}
	argv := []string{"A=b", "python3", "-c", "\nimport time\nprint('it''s', \"x\")\n\tdone\\n", "", "a b", "it's",
		"--size=1G", "$HOME", "`id`", "*", "é ü", "bell\a\x7f\x01f", "~user", "!", "#c", "semi;colon"}
	quoted := shellQuoted(argv)
	if strings.Contains(quoted, "\n") {
		t.Fatalf("shellQuoted gave more than one line: %q", quoted)
	}
	out, err := exec.Command(bash, "-c", `printf '%s\0' `+quoted).Output()
	if err != nil {
		t.Fatalf("bash -c 'printf ... %s': %v", quoted, err)
	}
	got := strings.Split(strings.TrimSuffix(string(out), "\x00"), "\x00")
	if !slices.Equal(got, argv) {
		t.Fatalf("bash read %q back as\n%q\nwant\n%q", quoted, got, argv)
	}
	if q := shellQuoted([]string{"sleep", "30"}); q != "sleep 30" {
		t.Errorf("plain words are quoted: %q", q)
	}
}

// The table's command is one line, cut on a character, not in the middle
// of one.
func TestCommandOneLine(t *testing.T) {
	got := command([]string{"python3", "-c", "x = 0\nfor i in range(9):\n    x += i"}, 0)
	if want := "python3 -c x = 0 for i in range(9): x += i"; got != want {
		t.Errorf("command = %q, want %q", got, want)
	}
	got = command([]string{"echo", strings.Repeat("é", 80)}, 20)
	if want := "echo " + strings.Repeat("é", 12) + "..."; got != want {
		t.Errorf("command cut = %q, want %q", got, want)
	}
}

// `mosaic ps ID` is one line a field, whatever the command holds.
func TestPrintProc(t *testing.T) {
	var b strings.Builder
	printProc(&b, api.ProcInfo{ID: "n1.7", User: "alice", UID: 1000, Home: "n1", Node: "n2", PID: 41, State: "running",
		Started: time.Now().Add(-5 * time.Second), CPUSeconds: 4.5, CPUPercent: 90, Migrations: 1,
		Argv: []string{"python3", "-c", "import time\ntime.sleep(9)"}})
	lines := strings.Split(strings.TrimSuffix(b.String(), "\n"), "\n")
	want := map[string]string{
		"moved":   "once",
		"cpu":     "4.50s (90%)",
		"command": `python3 -c $'import time\ntime.sleep(9)'`,
		"runs on": "n2, pid 41 there",
	}
	for _, l := range lines {
		if len(l) < 11 {
			t.Fatalf("line %q is no field", l)
		}
		k, v := strings.TrimSpace(l[:11]), l[11:]
		if w, ok := want[k]; ok {
			if v != w {
				t.Errorf("%s: %q, want %q", k, v, w)
			}
			delete(want, k)
		}
	}
	if len(want) > 0 {
		t.Errorf("missing fields %v in:\n%s", want, b.String())
	}
}
