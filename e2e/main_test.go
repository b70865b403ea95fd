//go:build cluster

// Package e2e holds the multi-node and failure suites: they start real
// mosaic daemons (separate processes talking mutual TLS, in network
// namespaces where it matters) and drive them with the real CLI. They need
// root (cgroups, namespaces) and run with `go test -tags cluster ./e2e/`.
package e2e

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/mosaic-cluster/mosaic/internal/api"
)

// bin and daemonBin are the binaries under test (mosaic, mosaicd), in a
// directory every user may read.
var bin, daemonBin string

func TestMain(m *testing.M) {
	os.Exit(run(m))
}

func run(m *testing.M) int {
	if os.Geteuid() != 0 {
		fmt.Println("e2e: skipped: these suites need root (cgroups, network namespaces, other users)")
		return 0
	}
	dir, err := os.MkdirTemp("", "mosaic-e2e-bin-")
	if err != nil {
		fmt.Println(err)
		return 1
	}
	defer os.RemoveAll(dir)
	os.Chmod(dir, 0o755)
	bin, daemonBin = filepath.Join(dir, "mosaic"), filepath.Join(dir, "mosaicd")
	if pre := os.Getenv("MOSAIC_BIN_DIR"); pre != "" {
		for _, name := range []string{"mosaic", "mosaicctl", "mosaicd"} {
			b, err := os.ReadFile(filepath.Join(pre, name))
			if err == nil {
				err = os.WriteFile(filepath.Join(dir, name), b, 0o755)
			}
			if err != nil {
				fmt.Println("copy the binaries from MOSAIC_BIN_DIR:", err)
				return 1
			}
		}
	} else {
		cmd := exec.Command("go", "build", "-o", dir+"/", "../cmd/mosaic", "../cmd/mosaicctl", "../cmd/mosaicd")
		cmd.Stdout, cmd.Stderr = os.Stdout, os.Stderr
		if err := cmd.Run(); err != nil {
			fmt.Println("build mosaic:", err)
			return 1
		}
	}
	return m.Run()
}

// result is what a CLI run printed and how it ended.
type result struct {
	out, err string
	code     int
}

func (r result) String() string {
	return fmt.Sprintf("exit %d\nstdout: %s\nstderr: %s", r.code, r.out, r.err)
}

// mosaic runs the CLI and waits for it (at most a minute).
func mosaic(t *testing.T, args ...string) result {
	t.Helper()
	return mosaicAs(t, nil, args...)
}

// mosaicAs runs the CLI as another user when cred is set.
func mosaicAs(t *testing.T, cred *userCred, args ...string) result {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, bin, args...)
	cmd.Env = append(os.Environ(), "MOSAIC_SOCKET=/nonexistent/mosaic.sock")
	if cred != nil {
		cmd.SysProcAttr = cred.attr()
	}
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	err := cmd.Run()
	r := result{out: stdout.String(), err: stderr.String()}
	if ee, ok := err.(*exec.ExitError); ok {
		r.code = ee.ExitCode()
	} else if err != nil {
		t.Fatalf("run mosaic %v: %v", args, err)
	}
	return r
}

// expectFail checks that a CLI run failed with a message containing each
// of want.
func expectFail(t *testing.T, r result, want ...string) {
	t.Helper()
	if r.code == 0 {
		t.Fatalf("expected failure, got success:\n%s", r)
	}
	for _, w := range want {
		if !strings.Contains(r.err, w) {
			t.Fatalf("error message lacks %q:\n%s", w, r)
		}
	}
}

// nodes asks the daemon behind sock for its view of the cluster.
func nodes(t *testing.T, sock string) map[string]api.NodeInfo {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	var view []api.NodeInfo
	if err := api.Call(ctx, sock, api.OpNodes, nil, &view); err != nil {
		t.Fatalf("nodes via %s: %v", sock, err)
	}
	m := map[string]api.NodeInfo{}
	for _, n := range view {
		m[n.Name] = n
	}
	return m
}

// eventually polls cond until it holds or the timeout passes, and returns
// how long it took.
func eventually(t *testing.T, timeout time.Duration, what string, cond func() (bool, string)) time.Duration {
	t.Helper()
	start := time.Now()
	last := ""
	for time.Since(start) < timeout {
		ok, why := cond()
		if ok {
			return time.Since(start)
		}
		last = why
		time.Sleep(100 * time.Millisecond)
	}
	t.Fatalf("%s: not within %s: %s", what, timeout, last)
	return 0
}

func jsonString(v any) string {
	b, _ := json.Marshal(v)
	return string(b)
}

// interruptAfter starts cmd, interrupts it (SIGINT, as Ctrl-C) after d and
// returns how it ended.
func interruptAfter(t *testing.T, cmd *exec.Cmd, d time.Duration) error {
	t.Helper()
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	time.Sleep(d)
	cmd.Process.Signal(os.Interrupt)
	return cmd.Wait()
}
