// Package api is the local protocol between the mosaic CLI (or any local
// tool) and the daemon of its node, over a Unix socket.
//
// A connection carries one request and its response, as length-prefixed
// JSON frames. The daemon learns who is calling from the socket itself
// (SO_PEERCRED), never from the request. Frames are read with recvmsg so
// that a request can carry file descriptors (SCM_RIGHTS): that is how a
// client hands its own stdin, stdout and stderr to the daemon.
package api

import (
	"context"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"syscall"
	"time"

	"golang.org/x/sys/unix"

	"github.com/mosaic-cluster/mosaic/internal/runproto"
)

// DefaultSocket is where a node's daemon listens unless told otherwise.
const DefaultSocket = runproto.DefaultSocket

// SocketEnv overrides DefaultSocket for the CLI.
const SocketEnv = runproto.SocketEnv

// Request asks the daemon to do one thing.
type Request struct {
	Op   string          `json:"op"`
	Args json.RawMessage `json:"args,omitempty"`
}

// Response is the daemon's answer: a result or an error.
type Response struct {
	Result json.RawMessage `json:"result,omitempty"`
	Error  string          `json:"error,omitempty"`
}

// Caller is who is on the other end of the socket, as the kernel says.
type Caller struct {
	UID uint32
	GID uint32
	PID int32
}

// IsRoot reports whether the caller is root.
func (c Caller) IsRoot() bool { return c.UID == 0 }

// Conn is one connection on the socket.
type Conn struct {
	uc  *net.UnixConn
	fds []int // descriptors received and not yet taken
}

// ReadFrame reads one frame, keeping any file descriptors that came with it.
func (c *Conn) ReadFrame() ([]byte, error) {
	var hdr [4]byte
	if err := c.readFull(hdr[:]); err != nil {
		return nil, err
	}
	n := binary.BigEndian.Uint32(hdr[:])
	if n > runproto.MaxFrame {
		return nil, fmt.Errorf("frame of %d bytes is larger than %d", n, runproto.MaxFrame)
	}
	buf := make([]byte, n)
	if err := c.readFull(buf); err != nil {
		return nil, err
	}
	return buf, nil
}

func (c *Conn) readFull(buf []byte) error {
	oob := make([]byte, unix.CmsgSpace(4*16))
	for have := 0; have < len(buf); {
		n, oobn, _, _, err := c.uc.ReadMsgUnix(buf[have:], oob)
		if oobn > 0 {
			c.takeRights(oob[:oobn])
		}
		if n == 0 && err == nil {
			err = io.ErrUnexpectedEOF
		}
		if err != nil {
			if err == io.EOF && have > 0 {
				err = io.ErrUnexpectedEOF
			}
			return err
		}
		have += n
	}
	return nil
}

func (c *Conn) takeRights(oob []byte) {
	msgs, err := unix.ParseSocketControlMessage(oob)
	if err != nil {
		return
	}
	for _, m := range msgs {
		if fds, err := unix.ParseUnixRights(&m); err == nil {
			for _, fd := range fds {
				unix.CloseOnExec(fd)
			}
			c.fds = append(c.fds, fds...)
		}
	}
}

// TakeFDs returns the descriptors received so far; the caller owns them.
func (c *Conn) TakeFDs() []int {
	fds := c.fds
	c.fds = nil
	return fds
}

// WriteFrame writes one frame, with file descriptors if any.
func (c *Conn) WriteFrame(b []byte, fds ...int) error {
	if len(b) > runproto.MaxFrame {
		return fmt.Errorf("frame of %d bytes is larger than %d", len(b), runproto.MaxFrame)
	}
	msg := runproto.Frame(b)
	var oob []byte
	if len(fds) > 0 {
		oob = unix.UnixRights(fds...)
	}
	n, _, err := c.uc.WriteMsgUnix(msg, oob, nil)
	if err != nil {
		return err
	}
	if n < len(msg) {
		_, err = c.uc.Write(msg[n:])
	}
	return err
}

// WriteJSON writes v as a frame.
func (c *Conn) WriteJSON(v any, fds ...int) error {
	b, err := json.Marshal(v)
	if err != nil {
		return err
	}
	return c.WriteFrame(b, fds...)
}

// ReadJSON reads a frame into v.
func (c *Conn) ReadJSON(v any) error {
	b, err := c.ReadFrame()
	if err != nil {
		return err
	}
	return json.Unmarshal(b, v)
}

// ReadRunEvent reads the next event of a run (see runproto.DecodeRunEvent).
func (c *Conn) ReadRunEvent(e *RunEvent) error {
	b, err := c.ReadFrame()
	if err != nil {
		return err
	}
	return runproto.DecodeRunEvent(b, e)
}

// Close closes the connection and any descriptors not taken.
func (c *Conn) Close() error {
	for _, fd := range c.TakeFDs() {
		syscall.Close(fd)
	}
	return c.uc.Close()
}

// CloseWrite tells the daemon that the client sends nothing more while it
// still reads the answer: for an operation that watches for it (Hangup),
// that the client calls it off.
func (c *Conn) CloseWrite() error { return c.uc.CloseWrite() }

// Hangup returns a context that ends when the client closes its end of the
// connection or calls CloseWrite (or when ctx ends), for an operation whose
// client sends nothing after its request; stop ends the watch (and the
// context) and must be called before the connection is read again.
func (c *Conn) Hangup(ctx context.Context) (_ context.Context, stop func()) {
	hctx, cancel := context.WithCancel(ctx)
	done := make(chan struct{})
	go func() {
		defer close(done)
		var b [1]byte
		c.uc.Read(b[:]) // end of file, an error, or a byte it should not have sent
		cancel()
	}()
	return hctx, func() {
		c.uc.SetReadDeadline(time.Unix(1, 0)) // wakes the read
		<-done
		c.uc.SetReadDeadline(time.Time{})
		cancel()
	}
}

// peerCred asks the kernel who is on the other end.
func peerCred(uc *net.UnixConn) (Caller, error) {
	raw, err := uc.SyscallConn()
	if err != nil {
		return Caller{}, err
	}
	var cred *unix.Ucred
	var serr error
	if err := raw.Control(func(fd uintptr) {
		cred, serr = unix.GetsockoptUcred(int(fd), unix.SOL_SOCKET, unix.SO_PEERCRED)
	}); err != nil {
		return Caller{}, err
	}
	if serr != nil {
		return Caller{}, fmt.Errorf("read peer credentials: %w", serr)
	}
	return Caller{UID: cred.Uid, GID: cred.Gid, PID: cred.Pid}, nil
}

// Error is an error the daemon returned to the client. Its text is meant
// for the user as it is.
type Error struct{ Msg string }

func (e *Error) Error() string { return e.Msg }

// IsDaemonError reports whether err came from the daemon (as opposed to a
// failure to reach it).
func IsDaemonError(err error) bool {
	var e *Error
	return errors.As(err, &e)
}

// contextCloser closes c when ctx ends, so blocked reads and writes return.
func contextCloser(ctx context.Context, c io.Closer) (stop func() bool) {
	return context.AfterFunc(ctx, func() { c.Close() })
}
