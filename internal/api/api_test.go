package api

import (
	"context"
	"encoding/json"
	"errors"
	"io"
	"log/slog"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"go.uber.org/goleak"
)

func TestMain(m *testing.M) {
	// Re-exec mode: act as a client for TestPeerCredIsTheKernels.
	if sock := os.Getenv("MOSAIC_API_TEST_CLIENT"); sock != "" {
		var who Caller
		// The client claims to be root in its arguments; the server must not care.
		if err := Call(context.Background(), sock, "whoami", map[string]any{"uid": 0}, &who); err != nil {
			os.Stderr.WriteString(err.Error())
			os.Exit(1)
		}
		json.NewEncoder(os.Stdout).Encode(who)
		os.Exit(0)
	}
	goleak.VerifyTestMain(m)
}

func startServer(t *testing.T, handlers map[string]Handler) string {
	t.Helper()
	path := filepath.Join(publicDir(t), "s.sock")
	srv, err := Listen(path, handlers, slog.New(slog.DiscardHandler))
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- srv.Serve(ctx) }()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("Serve: %v", err)
		}
	})
	return path
}

// publicDir is a temporary directory that other users may enter.
func publicDir(t *testing.T) string {
	t.Helper()
	dir, err := os.MkdirTemp("", "mosaic-api-test-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	if err := os.Chmod(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	return dir
}

func whoami(ctx context.Context, c Caller, args json.RawMessage, conn *Conn) (any, error) {
	return c, nil
}

func TestCallAndError(t *testing.T) {
	path := startServer(t, map[string]Handler{
		"whoami": whoami,
		"fail": func(ctx context.Context, c Caller, args json.RawMessage, conn *Conn) (any, error) {
			return nil, errors.New("node \"n9\" is not known")
		},
	})
	ctx := context.Background()
	var who Caller
	if err := Call(ctx, path, "whoami", nil, &who); err != nil {
		t.Fatal(err)
	}
	if who.UID != uint32(os.Getuid()) || who.PID != int32(os.Getpid()) {
		t.Fatalf("caller = %+v, want uid %d pid %d", who, os.Getuid(), os.Getpid())
	}
	err := Call(ctx, path, "fail", nil, nil)
	if !IsDaemonError(err) || err.Error() != `node "n9" is not known` {
		t.Fatalf("error = %v, want the daemon's message", err)
	}
	err = Call(ctx, path, "nope", nil, nil)
	if !IsDaemonError(err) || !strings.Contains(err.Error(), `"nope"`) {
		t.Fatalf("unknown op error = %v", err)
	}
}

func TestPeerCredIsTheKernels(t *testing.T) {
	if os.Getuid() != 0 {
		t.Skip("needs root to run a client as another user")
	}
	path := startServer(t, map[string]Handler{"whoami": whoami})
	// The test binary lives in a directory only root may enter: copy it.
	bin := filepath.Join(publicDir(t), "client")
	self, err := os.ReadFile(os.Args[0])
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(bin, self, 0o755); err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(bin)
	cmd.Env = append(os.Environ(), "MOSAIC_API_TEST_CLIENT="+path)
	cmd.SysProcAttr = &syscall.SysProcAttr{Credential: &syscall.Credential{Uid: 65534, Gid: 65534}}
	out, err := cmd.Output()
	if err != nil {
		t.Fatalf("client as uid 65534: %v", err)
	}
	var who Caller
	if err := json.Unmarshal(out, &who); err != nil {
		t.Fatalf("decode %q: %v", out, err)
	}
	if who.UID != 65534 || who.GID != 65534 {
		t.Fatalf("server saw %+v, want uid/gid 65534", who)
	}
}

func TestPassFDs(t *testing.T) {
	path := startServer(t, map[string]Handler{
		"hello": func(ctx context.Context, c Caller, args json.RawMessage, conn *Conn) (any, error) {
			fds := conn.TakeFDs()
			if len(fds) != 1 {
				return nil, errors.New("want one descriptor")
			}
			f := os.NewFile(uintptr(fds[0]), "out")
			defer f.Close()
			_, err := f.WriteString("hello through the daemon\n")
			return "ok", err
		},
	})
	r, w, err := os.Pipe()
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	if err := Call(context.Background(), path, "hello", nil, nil, int(w.Fd())); err != nil {
		t.Fatal(err)
	}
	w.Close()
	got, _ := io.ReadAll(r)
	if string(got) != "hello through the daemon\n" {
		t.Fatalf("read %q", got)
	}
}

func TestNoDaemon(t *testing.T) {
	path := filepath.Join(t.TempDir(), "none.sock")
	err := Call(context.Background(), path, "whoami", nil, nil)
	if err == nil || !strings.Contains(err.Error(), "no mosaic daemon is running at "+path) || !strings.Contains(err.Error(), "mosaic node") {
		t.Fatalf("error = %v", err)
	}
}

func TestSecondListenerRefused(t *testing.T) {
	path := startServer(t, map[string]Handler{"whoami": whoami})
	_, err := Listen(path, nil, slog.New(slog.DiscardHandler))
	if err == nil || !strings.Contains(err.Error(), "already listening") {
		t.Fatalf("second Listen = %v, want already listening", err)
	}
}

func TestStaleSocketReplaced(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "s.sock")
	srv, err := Listen(path, nil, slog.New(slog.DiscardHandler))
	if err != nil {
		t.Fatal(err)
	}
	// Simulate a daemon that died: the socket file stays but nobody listens.
	srv.ln.SetUnlinkOnClose(false)
	srv.Close()
	srv2, err := Listen(path, nil, slog.New(slog.DiscardHandler))
	if err != nil {
		t.Fatalf("Listen over a stale socket: %v", err)
	}
	srv2.Close()
}

// A client that calls an operation off (CloseWrite) still gets its answer;
// the operation sees the hangup and decides what that answer is.
func TestHangup(t *testing.T) {
	path := startServer(t, map[string]Handler{
		"wait": func(ctx context.Context, c Caller, args json.RawMessage, conn *Conn) (any, error) {
			hctx, stop := conn.Hangup(ctx)
			defer stop()
			select {
			case <-hctx.Done():
				return "called off", nil
			case <-time.After(10 * time.Second):
				return "not called off", nil
			}
		},
		"quick": func(ctx context.Context, c Caller, args json.RawMessage, conn *Conn) (any, error) {
			hctx, stop := conn.Hangup(ctx)
			stop() // the watch ends with the operation, whatever the client does
			if hctx.Err() == nil {
				return nil, errors.New("the context outlived the watch")
			}
			return "done", nil
		},
	})
	ctx := context.Background()
	c, err := Dial(ctx, path)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if err := c.Send("wait", nil); err != nil {
		t.Fatal(err)
	}
	time.Sleep(50 * time.Millisecond)
	if err := c.CloseWrite(); err != nil {
		t.Fatal(err)
	}
	var got string
	if err := c.Receive(ctx, &got); err != nil || got != "called off" {
		t.Fatalf("answer %q, %v; want \"called off\"", got, err)
	}
	if err := Call(ctx, path, "quick", nil, &got); err != nil || got != "done" {
		t.Fatalf("answer %q, %v", got, err)
	}
}
