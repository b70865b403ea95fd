// Package procstream carries a process's stream (ExecIn from its home,
// ExecOut from the node running it) over a TLS connection of its own.
//
// gRPC streams cost about four times the CPU per byte of a plain TLS
// connection (HTTP/2 framing in 16 KiB frames, flow-control updates,
// protobuf copies), and a process's output is bulk. So each process gets a
// dedicated connection, with a framing of its own: a frame is a type byte,
// a 4-byte big-endian length and the payload. Output and input travel as
// raw bytes (read straight into the frame's buffer, written in one TLS
// write); everything else as protobuf messages.
package procstream

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net"
	"sync"
	"sync/atomic"
	"time"

	"google.golang.org/protobuf/proto"

	"github.com/mosaic-cluster/mosaic/internal/peerpb"
)

// ALPN is the TLS application protocol of process streams; the peer port
// serves gRPC (h2) and process streams side by side. Version 2 ends each
// direction of a stream with an end frame (version 1 used TLS's
// close_notify), and a connection serves one stream after another.
const ALPN = "mosaic-proc/2"

// Frame types.
const (
	frameMessage = 0 // a protobuf ExecIn or ExecOut
	frameStdin   = 1
	frameStdout  = 2
	frameStderr  = 3
	// frameEnd ends one direction of a stream (empty). It is not TLS's
	// close_notify, after which a connection can carry nothing more: a
	// stream that ended with one each way, and nothing else amiss, leaves
	// its connection free for the next stream between the same two nodes
	// (Server.Release, Client.Finish), with no handshake to pay again.
	frameEnd = 4
)

const (
	headerSize = 5
	// MaxData is the most payload in a data frame; readers use buffers of
	// HeaderSize+MaxData to send without copying.
	MaxData  = 256 << 10
	maxFrame = 4 << 20
)

// HeaderSize is the room to leave before data given to SendData.
const HeaderSize = headerSize

// conn is one stream's end of a connection, either end.
type conn struct {
	c      net.Conn
	ctx    context.Context
	cancel context.CancelFunc
	// unbreak stops the context's end from closing the connection; false
	// if it has begun to. Calls after the first return the first's answer.
	unbreak func() bool

	wmu    sync.Mutex
	closed bool // nothing more is sent: this end's end frame went, or the connection is closing
	sent   bool // the end frame went
	broken bool // a write failed: a frame may have gone out in part

	// ended: the other end's end frame came. Reads are one goroutine's
	// at a time; Release reads it from another, after that one is done.
	ended atomic.Bool
	// dataLeft is what ReadData has still to read of the frame it is in.
	dataLeft int
}

func newConn(ctx context.Context, c net.Conn) *conn {
	ctx, cancel := context.WithCancel(ctx)
	cn := &conn{c: c, ctx: ctx, cancel: cancel}
	// Cancelling the context breaks the connection, which is what tells
	// the other end that this one is gone.
	stop := context.AfterFunc(ctx, func() { c.Close() })
	var once sync.Once
	var stopped bool
	cn.unbreak = func() bool {
		once.Do(func() { stopped = stop() })
		return stopped
	}
	return cn
}

// closeSend sends this end's end frame: nothing more comes from it in
// this stream.
func (c *conn) closeSend() error {
	c.wmu.Lock()
	defer c.wmu.Unlock()
	if c.closed {
		return nil
	}
	c.closed = true
	if _, err := c.c.Write([]byte{frameEnd, 0, 0, 0, 0}); err != nil {
		c.broken = true
		return err
	}
	c.sent = true
	return nil
}

// release ends the stream and leaves its connection open, when the
// stream ended cleanly at both ends: both end frames went through and no
// write failed. Ending the stream's context no longer closes the
// connection then. Nothing may read the stream after the end frame, and
// nothing more is written to it (writes fail once the end frame went).
func (c *conn) release() bool {
	c.wmu.Lock()
	defer c.wmu.Unlock()
	if !c.sent || c.broken || !c.ended.Load() || !c.unbreak() {
		return false
	}
	c.cancel()
	if b := batcherOf(c.c); b != nil {
		b.Rest()
	}
	return true
}

func (c *conn) writeFrame(typ byte, payload []byte) error {
	buf := make([]byte, headerSize+len(payload))
	copy(buf[headerSize:], payload)
	return c.writeBuf(typ, buf)
}

// batchOver is the size of a write above which its TLS records are
// gathered into few system calls (see BatchConn).
const batchOver = 32 << 10

// writeBuf writes a frame whose payload is buf[headerSize:], filling in
// the header in place.
func (c *conn) writeBuf(typ byte, buf []byte) error {
	buf[0] = typ
	binary.BigEndian.PutUint32(buf[1:headerSize], uint32(len(buf)-headerSize))
	c.wmu.Lock()
	defer c.wmu.Unlock()
	if c.closed {
		return io.ErrClosedPipe
	}
	var err error
	if b := batcherOf(c.c); b != nil && len(buf) > batchOver {
		err = b.Batch(func() error {
			_, err := c.c.Write(buf)
			return err
		})
	} else {
		_, err = c.c.Write(buf)
	}
	if err != nil {
		c.broken = true
	}
	return err
}

// writeData writes data as frames of type typ, without copying it: each
// frame's header and payload go as two writes, gathered into one batch.
func (c *conn) writeData(typ byte, data []byte) error {
	c.wmu.Lock()
	defer c.wmu.Unlock()
	if c.closed {
		return io.ErrClosedPipe
	}
	send := func() error {
		for off := 0; off < len(data); {
			end := min(off+maxFrame, len(data))
			var hdr [headerSize]byte
			hdr[0] = typ
			binary.BigEndian.PutUint32(hdr[1:], uint32(end-off))
			if _, err := c.c.Write(hdr[:]); err != nil {
				return err
			}
			if _, err := c.c.Write(data[off:end]); err != nil {
				return err
			}
			off = end
		}
		return nil
	}
	var err error
	if b := batcherOf(c.c); b != nil {
		err = b.Batch(send)
	} else {
		err = send()
	}
	if err != nil {
		c.broken = true
	}
	return err
}

func (c *conn) writeMessage(m proto.Message) error {
	b, err := proto.Marshal(m)
	if err != nil {
		return err
	}
	return c.writeFrame(frameMessage, b)
}

// readHeader reads the next frame's header. The other end's end frame
// reads as io.EOF, then and ever after: what follows it on the
// connection is another stream's.
func (c *conn) readHeader() (typ byte, n uint32, err error) {
	if c.ended.Load() {
		return 0, 0, io.EOF
	}
	var hdr [headerSize]byte
	if _, err := io.ReadFull(c.c, hdr[:]); err != nil {
		return 0, 0, err
	}
	n = binary.BigEndian.Uint32(hdr[1:])
	if hdr[0] == frameEnd {
		if n != 0 {
			return 0, 0, fmt.Errorf("process stream end frame of %d bytes", n)
		}
		c.ended.Store(true)
		return 0, 0, io.EOF
	}
	return hdr[0], n, nil
}

// readFrame reads the next frame. Its payload is in reuse (grown as
// needed) when reuse is not nil, else in a new buffer.
func (c *conn) readFrame(reuse *[]byte) (byte, []byte, error) {
	typ, n, err := c.readHeader()
	if err != nil {
		return 0, nil, err
	}
	if n > maxFrame {
		return 0, nil, fmt.Errorf("process stream frame of %d bytes is too large", n)
	}
	var payload []byte
	if reuse != nil && typ != frameMessage {
		if cap(*reuse) < int(n) {
			*reuse = make([]byte, n)
		}
		payload = (*reuse)[:n]
	} else {
		payload = make([]byte, n)
	}
	if _, err := io.ReadFull(c.c, payload); err != nil {
		if errors.Is(err, io.EOF) {
			err = io.ErrUnexpectedEOF
		}
		return 0, nil, err
	}
	return typ, payload, nil
}

// Server is the running node's end: it satisfies executor.ServerStream.
type Server struct{ *conn }

// NewServer wraps an accepted connection (its TLS handshake done).
func NewServer(ctx context.Context, c net.Conn) Server { return Server{newConn(ctx, c)} }

// Context ends when the connection does.
func (s Server) Context() context.Context { return s.ctx }

// Send sends a message about the process to its home.
func (s Server) Send(m *peerpb.ExecOut) error {
	switch x := m.Msg.(type) {
	case *peerpb.ExecOut_Stdout:
		return s.writeFrame(frameStdout, x.Stdout)
	case *peerpb.ExecOut_Stderr:
		return s.writeFrame(frameStderr, x.Stderr)
	}
	return s.writeMessage(m)
}

// SendData sends output that is already in buf[HeaderSize:], without a copy;
// fd is 1 or 2.
func (s Server) SendData(fd int, buf []byte) error {
	typ := byte(frameStdout)
	if fd == 2 {
		typ = frameStderr
	}
	return s.writeBuf(typ, buf)
}

// Recv receives the next message from the home; io.EOF once the home has
// closed its side (or gone away). A broken connection ends the context.
func (s Server) Recv() (*peerpb.ExecIn, error) {
	typ, payload, err := s.readFrame(nil)
	if err != nil {
		if !errors.Is(err, io.EOF) {
			s.cancel()
		}
		return nil, err
	}
	return s.decodeIn(typ, payload)
}

func (s Server) decodeIn(typ byte, payload []byte) (*peerpb.ExecIn, error) {
	switch typ {
	case frameStdin:
		return &peerpb.ExecIn{Msg: &peerpb.ExecIn_Stdin{Stdin: payload}}, nil
	case frameMessage:
		m := &peerpb.ExecIn{}
		if err := proto.Unmarshal(payload, m); err != nil {
			return nil, fmt.Errorf("bad message on a process stream: %w", err)
		}
		return m, nil
	}
	return nil, fmt.Errorf("unexpected frame type %d from the home", typ)
}

// ReadData reads the payloads of the data frames that follow as one
// stream of bytes, straight into p: an image's bytes, with no frame buffer
// to copy them out of. A frame of another type is an error. It reads no
// further than the frame it is in, so that whatever follows the data is
// left whole; Recv must not be called in the middle of a frame.
func (s Server) ReadData(p []byte) (int, error) {
	if len(p) == 0 {
		return 0, nil
	}
	for s.dataLeft == 0 {
		typ, n, err := s.readHeader()
		if err != nil {
			if !errors.Is(err, io.EOF) {
				s.cancel()
			}
			return 0, err
		}
		if typ != frameStdin || n > maxFrame {
			s.cancel()
			return 0, fmt.Errorf("a frame of type %d and %d bytes where data was expected", typ, n)
		}
		s.dataLeft = int(n)
	}
	n, err := s.c.Read(p[:min(len(p), s.dataLeft)])
	s.dataLeft -= n
	if err != nil {
		if errors.Is(err, io.EOF) {
			err = io.ErrUnexpectedEOF // in the middle of a frame
		} else {
			s.cancel()
		}
	}
	return n, err
}

// CloseSend tells the home that nothing more will come (the end frame):
// after a process's exit, so that the connection can serve again.
func (s Server) CloseSend() error { return s.closeSend() }

// Release ends the stream and reports whether its connection can serve
// another (NewServer over it again): the stream ended cleanly at both
// ends (end frames both ways, no failed write). If not, the caller closes
// it (Close).
func (s Server) Release() bool { return s.release() }

// Close ends the connection, unless Release let it go.
func (s Server) Close() error {
	s.cancel()
	return nil
}

// Client is the home's end: it satisfies executor.Conn.
type Client struct {
	*conn
	data *[]byte // the buffer output is received in, reused
}

// NewClient wraps a dialed connection (its TLS handshake done). Cancelling
// ctx breaks it.
func NewClient(ctx context.Context, c net.Conn) Client {
	return Client{conn: newConn(ctx, c), data: new([]byte)}
}

// Send sends a message for the process.
func (c Client) Send(m *peerpb.ExecIn) error {
	if x, ok := m.Msg.(*peerpb.ExecIn_Stdin); ok {
		return c.writeFrame(frameStdin, x.Stdin)
	}
	return c.writeMessage(m)
}

// SendData sends bulk input (an image, on an image connection) without
// copying it.
func (c Client) SendData(b []byte) error { return c.writeData(frameStdin, b) }

// Recv receives the next message about the process; io.EOF once the
// running node has said all and closed. The bytes of a Stdout or Stderr
// message are valid until the next Recv: output is written out at once,
// and its buffer serves again.
func (c Client) Recv() (*peerpb.ExecOut, error) {
	typ, payload, err := c.readFrame(c.data)
	if err != nil {
		return nil, err
	}
	switch typ {
	case frameStdout:
		return &peerpb.ExecOut{Msg: &peerpb.ExecOut_Stdout{Stdout: payload}}, nil
	case frameStderr:
		return &peerpb.ExecOut{Msg: &peerpb.ExecOut_Stderr{Stderr: payload}}, nil
	case frameMessage:
		m := &peerpb.ExecOut{}
		if err := proto.Unmarshal(payload, m); err != nil {
			return nil, fmt.Errorf("bad message on a process stream: %w", err)
		}
		return m, nil
	}
	return nil, fmt.Errorf("unexpected frame type %d from the running node", typ)
}

// CloseSend tells the running node that nothing more will come (the end
// frame); the connection stays open for reading.
func (c Client) CloseSend() error { return c.closeSend() }

// Close breaks the stream and closes its connection.
func (c Client) Close() error {
	c.cancel()
	return c.c.Close()
}

// Detach makes ending the stream's context no longer break the
// connection, for Finish to end the stream cleanly after it; false if
// the context has ended already (the connection is closed or closing).
func (c Client) Detach() bool { return c.unbreak() }

// Finish ends the stream of a process that is over, after Detach: it
// sends the end frame (unless CloseSend did) and waits for the running
// node's, which must follow the process's exit with nothing in between.
// It returns the connection, free for another stream, or an error after
// closing it. Ending ctx, or finishWait passing, gives up.
func (c Client) Finish(ctx context.Context) (net.Conn, error) {
	fail := func(err error) (net.Conn, error) {
		c.c.Close()
		c.cancel()
		return nil, err
	}
	if err := c.closeSend(); err != nil {
		return fail(err)
	}
	if err := c.c.SetReadDeadline(time.Now().Add(finishWait)); err != nil {
		return fail(err)
	}
	stop := context.AfterFunc(ctx, func() { c.c.SetReadDeadline(time.Now()) })
	defer stop()
	if _, _, err := c.readFrame(c.data); !errors.Is(err, io.EOF) || !c.ended.Load() {
		if err == nil {
			err = errors.New("the running node sent more after the process's exit")
		}
		return fail(fmt.Errorf("end a process stream: %w", err))
	}
	if !stop() || c.c.SetReadDeadline(time.Time{}) != nil || !c.release() {
		return fail(errors.New("the process stream did not end cleanly"))
	}
	return c.c, nil
}

// finishWait bounds Finish's wait for the running node's end frame, which
// it sends right after the exit.
const finishWait = 5 * time.Second
