package runproto

import (
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"syscall"

	"golang.org/x/sys/unix"
)

// DefaultSocket is where a node's daemon listens unless told otherwise.
const DefaultSocket = "/run/mosaic/mosaic.sock"

// SocketEnv overrides DefaultSocket for the CLI.
const SocketEnv = "MOSAIC_SOCKET"

// SocketPath picks the socket: the flag if given, else $MOSAIC_SOCKET, else
// the default.
func SocketPath(flag string) string {
	if flag != "" {
		return flag
	}
	if env := os.Getenv(SocketEnv); env != "" {
		return env
	}
	return DefaultSocket
}

// DialError says why the daemon at path could not be reached, and how to
// start one or where to point the CLI when none is there.
func DialError(path string, err error) error {
	switch {
	case errors.Is(err, fs.ErrNotExist) || errors.Is(err, syscall.ECONNREFUSED) || errors.Is(err, syscall.ENOENT):
		return fmt.Errorf("no mosaic daemon is running at %s: start one with `mosaic node --dir DIR` (or `mosaic up`), "+
			"or point the CLI at a running node with --socket or %s (for `mosaic up`, `source DIR/env`)", path, SocketEnv)
	case errors.Is(err, fs.ErrPermission):
		return fmt.Errorf("cannot reach the mosaic daemon at %s: permission denied", path)
	}
	return fmt.Errorf("connect to the mosaic daemon at %s: %w", path, err)
}

// Conn is the client's end of a run: its request goes out with the
// client's descriptors, then events come in and controls go out, both
// at once from different goroutines. It is a socket under an *os.File
// (which the runtime polls) rather than a net.UnixConn, for the reason in
// the package's comment.
type Conn struct {
	fd int      // until Send
	f  *os.File // from Send on
}

// Dial connects to the daemon at path.
func Dial(path string) (*Conn, error) {
	fd, err := unix.Socket(unix.AF_UNIX, unix.SOCK_STREAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		return nil, fmt.Errorf("connect to the mosaic daemon at %s: %w", path, err)
	}
	for {
		err = unix.Connect(fd, &unix.SockaddrUnix{Name: path})
		if err != unix.EINTR {
			break
		}
	}
	if err != nil {
		unix.Close(fd)
		return nil, DialError(path, err)
	}
	return &Conn{fd: fd}, nil
}

// Send sends the request (from EncodeRequest) with the descriptors fds.
// It is called once, before anything is read or written.
func (c *Conn) Send(op string, req []byte, fds ...int) error {
	if c.f != nil {
		return errors.New("a run connection carries one request")
	}
	if len(req) > MaxFrame {
		return fmt.Errorf("send %s request to the daemon: the request is %d bytes, more than %d (is the environment that large?)", op, len(req), MaxFrame)
	}
	msg := Frame(req)
	// The socket is still blocking: the whole message goes, however
	// large, the descriptors with its first byte.
	var rights []byte
	if len(fds) > 0 {
		rights = unix.UnixRights(fds...)
	}
	for len(msg) > 0 {
		n, err := unix.SendmsgN(c.fd, msg, rights, nil, unix.MSG_NOSIGNAL)
		if err == unix.EINTR {
			continue
		}
		if err != nil {
			return fmt.Errorf("send %s request to the daemon: %w", op, err)
		}
		msg, rights = msg[n:], nil
	}
	if err := unix.SetNonblock(c.fd, true); err != nil {
		return fmt.Errorf("send %s request to the daemon: %w", op, err)
	}
	c.f = os.NewFile(uintptr(c.fd), "mosaic daemon")
	return nil
}

// ReadEvent reads the next event (see DecodeRunEvent).
func (c *Conn) ReadEvent(e *RunEvent) error {
	if c.f == nil {
		return errors.New("no request sent")
	}
	var hdr [4]byte
	if _, err := io.ReadFull(c.f, hdr[:]); err != nil {
		return err
	}
	n := binary.BigEndian.Uint32(hdr[:])
	if n > MaxFrame {
		return fmt.Errorf("frame of %d bytes is larger than %d", n, MaxFrame)
	}
	b := make([]byte, n)
	if _, err := io.ReadFull(c.f, b); err != nil {
		if err == io.EOF {
			err = io.ErrUnexpectedEOF
		}
		return err
	}
	return DecodeRunEvent(b, e)
}

// WriteControl sends a control to the daemon.
func (c *Conn) WriteControl(ctl RunControl) error {
	if c.f == nil {
		return errors.New("no request sent")
	}
	b, err := json.Marshal(ctl)
	if err != nil {
		return err
	}
	// Sent with MSG_NOSIGNAL: a daemon gone away is an error here, not a
	// SIGPIPE, which the client would take for its program's and pass on.
	rc, err := c.f.SyscallConn()
	if err != nil {
		return err
	}
	msg := Frame(b)
	var serr error
	if err := rc.Write(func(fd uintptr) bool {
		for len(msg) > 0 {
			var n int
			n, serr = unix.SendmsgN(int(fd), msg, nil, nil, unix.MSG_NOSIGNAL)
			if serr == unix.EINTR {
				continue
			}
			if serr != nil {
				return serr != unix.EAGAIN // wait until writable
			}
			msg = msg[n:]
		}
		return true
	}); err != nil {
		return err
	}
	return serr
}

// Frame is b as a frame of the protocol: its length (4 bytes, big-endian),
// then b.
func Frame(b []byte) []byte {
	msg := make([]byte, 4+len(b))
	binary.BigEndian.PutUint32(msg, uint32(len(b)))
	copy(msg[4:], b)
	return msg
}

// Close ends the connection.
func (c *Conn) Close() error {
	if c.f != nil {
		return c.f.Close()
	}
	return unix.Close(c.fd)
}
