package runproto

import (
	"encoding/binary"
	"encoding/json"
	"errors"
	"io"
	"net"
	"os"
	"os/signal"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// The client's end against a daemon's: the request arrives whole with its
// descriptors, events come back, controls go out, and the end of the
// connection is an error.
func TestConnRoundTrip(t *testing.T) {
	path := filepath.Join(t.TempDir(), "s.sock")
	l, err := net.Listen("unix", path)
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()

	// A request larger than a socket buffer, to be sent in pieces.
	args := RunArgs{Argv: []string{"true"}, Env: []string{"BIG=" + strings.Repeat("x", 1<<20)}, Cwd: "/"}
	req := EncodeRequest(OpRun, args)
	r, w, err := os.Pipe()
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()

	type got struct {
		req  []byte
		fds  int
		ctl  RunControl
		err  error
		data string
	}
	done := make(chan got, 1)
	go func() {
		var g got
		defer func() { done <- g }()
		c, err := l.Accept()
		if err != nil {
			g.err = err
			return
		}
		defer c.Close()
		uc := c.(*net.UnixConn)
		// The header, with the descriptor.
		hdr := make([]byte, 4)
		oob := make([]byte, unix.CmsgSpace(4))
		_, oobn, _, _, err := uc.ReadMsgUnix(hdr, oob)
		if err != nil {
			g.err = err
			return
		}
		msgs, _ := unix.ParseSocketControlMessage(oob[:oobn])
		for _, m := range msgs {
			if fds, err := unix.ParseUnixRights(&m); err == nil {
				g.fds += len(fds)
				for _, fd := range fds {
					f := os.NewFile(uintptr(fd), "passed")
					f.Write([]byte("through"))
					f.Close()
				}
			}
		}
		g.req = make([]byte, binary.BigEndian.Uint32(hdr))
		if _, g.err = io.ReadFull(uc, g.req); g.err != nil {
			return
		}
		for _, e := range []RunEvent{{Started: &RunStarted{ID: "n1.1", Node: "n2", PID: 7}}, {Error: "a <b> & \"c\"", Status: 127}} {
			b, _ := json.Marshal(e)
			uc.Write(Frame(b))
		}
		if _, g.err = io.ReadFull(uc, hdr); g.err != nil {
			return
		}
		b := make([]byte, binary.BigEndian.Uint32(hdr))
		if _, g.err = io.ReadFull(uc, b); g.err == nil {
			g.err = json.Unmarshal(b, &g.ctl)
		}
	}()

	c, err := Dial(path)
	if err != nil {
		t.Fatal(err)
	}
	if err := c.Send(OpRun, req, int(w.Fd())); err != nil {
		t.Fatal(err)
	}
	w.Close()
	if err := c.Send(OpRun, req); err == nil {
		t.Fatal("a second request was sent")
	}
	var e RunEvent
	if err := c.ReadEvent(&e); err != nil || e.Started == nil || e.Started.PID != 7 {
		t.Fatalf("first event %+v, %v", e, err)
	}
	if err := c.ReadEvent(&e); err != nil || e.Error != "a <b> & \"c\"" || e.Status != 127 {
		t.Fatalf("second event %+v, %v", e, err)
	}
	if err := c.WriteControl(RunControl{Signal: int(syscall.SIGINT), Group: true}); err != nil {
		t.Fatal(err)
	}
	g := <-done
	if g.err != nil {
		t.Fatal(g.err)
	}
	if string(g.req) != string(req) || g.fds != 1 {
		t.Fatalf("the daemon got %d bytes (want %d) and %d descriptors", len(g.req), len(req), g.fds)
	}
	if g.ctl.Signal != int(syscall.SIGINT) || !g.ctl.Group {
		t.Fatalf("control %+v", g.ctl)
	}
	if b, _ := io.ReadAll(r); string(b) != "through" {
		t.Fatalf("the passed descriptor carried %q", b)
	}
	if err := c.ReadEvent(&e); err == nil {
		t.Fatal("an event after the daemon closed")
	}
	c.Close()
}

// No daemon: the error says how to start one.
func TestDialNoDaemon(t *testing.T) {
	_, err := Dial(filepath.Join(t.TempDir(), "none.sock"))
	if err == nil || !strings.Contains(err.Error(), "no mosaic daemon is running") {
		t.Fatalf("got %v", err)
	}
	if err := DialError("/s", syscall.EACCES); !strings.Contains(err.Error(), "/s: permission denied") {
		t.Fatalf("got %v", err)
	}
	if err := DialError("/s", syscall.EMFILE); !errors.Is(err, syscall.EMFILE) {
		t.Fatalf("got %v: the cause is lost", err)
	}
}

// A daemon gone away is an error for the writer of a control, and no
// SIGPIPE: the client passes the signals it gets on to its program.
func TestControlToAClosedDaemon(t *testing.T) {
	path := filepath.Join(t.TempDir(), "s.sock")
	l, err := net.Listen("unix", path)
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	accepted := make(chan net.Conn, 1)
	go func() {
		c, _ := l.Accept()
		accepted <- c
	}()
	c, err := Dial(path)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if err := c.Send(OpRun, EncodeRequest(OpRun, RunArgs{Argv: []string{"true"}})); err != nil {
		t.Fatal(err)
	}
	if s := <-accepted; s != nil {
		s.Close()
	}
	pipes := make(chan os.Signal, 1)
	signal.Notify(pipes, syscall.SIGPIPE)
	defer signal.Stop(pipes)
	var werr error
	for range 10 { // the first write can still land in the socket's buffer
		if werr = c.WriteControl(RunControl{Signal: 1}); werr != nil {
			break
		}
	}
	if !errors.Is(werr, syscall.EPIPE) && !errors.Is(werr, syscall.ECONNRESET) {
		t.Fatalf("writing to a closed daemon: %v", werr)
	}
	select {
	case <-pipes:
		t.Fatal("SIGPIPE raised")
	case <-time.After(100 * time.Millisecond):
	}
}
