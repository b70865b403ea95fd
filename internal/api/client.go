package api

import (
	"context"
	"encoding/json"
	"fmt"
	"net"

	"github.com/mosaic-cluster/mosaic/internal/runproto"
)

// SocketPath picks the socket: the flag if given, else $MOSAIC_SOCKET, else
// the default.
func SocketPath(flag string) string { return runproto.SocketPath(flag) }

// Dial connects to the daemon at path. When no daemon is there the error
// says how to start one or where to point the CLI.
func Dial(ctx context.Context, path string) (*Conn, error) {
	var d net.Dialer
	c, err := d.DialContext(ctx, "unix", path)
	if err != nil {
		return nil, runproto.DialError(path, err)
	}
	return &Conn{uc: c.(*net.UnixConn)}, nil
}

// Call sends one request and decodes its result into out (if not nil).
// fds, if any, travel with the request.
func Call(ctx context.Context, path, op string, args, out any, fds ...int) error {
	c, err := Dial(ctx, path)
	if err != nil {
		return err
	}
	defer c.Close()
	stop := contextCloser(ctx, c)
	defer stop()
	if err := c.Send(op, args, fds...); err != nil {
		return err
	}
	return c.Receive(ctx, out)
}

// Send writes a request.
func (c *Conn) Send(op string, args any, fds ...int) error {
	req, err := EncodeRequest(op, args)
	if err != nil {
		return err
	}
	return c.SendEncoded(op, req, fds...)
}

// SendEncoded sends a request that EncodeRequest encoded for op.
func (c *Conn) SendEncoded(op string, req []byte, fds ...int) error {
	if err := c.WriteFrame(req, fds...); err != nil {
		return fmt.Errorf("send %s request to the daemon: %w", op, err)
	}
	return nil
}

// EncodeRequest encodes a request for op with args, as Send sends it: run
// requests by hand (runproto.EncodeRequest), others with encoding/json.
func EncodeRequest(op string, args any) ([]byte, error) {
	if a, ok := args.(RunArgs); ok {
		return runproto.EncodeRequest(op, a), nil
	}
	return encodeRequestJSON(op, args)
}

func encodeRequestJSON(op string, args any) ([]byte, error) {
	req := Request{Op: op}
	if args != nil {
		b, err := json.Marshal(args)
		if err != nil {
			return nil, fmt.Errorf("encode %s request: %w", op, err)
		}
		req.Args = b
	}
	b, err := json.Marshal(req)
	if err != nil {
		return nil, fmt.Errorf("encode %s request: %w", op, err)
	}
	return b, nil
}

// Receive reads a response and decodes its result into out.
func (c *Conn) Receive(ctx context.Context, out any) error {
	var resp Response
	if err := c.ReadJSON(&resp); err != nil {
		if ctx.Err() != nil {
			return ctx.Err()
		}
		return fmt.Errorf("read the daemon's answer: %w (did the daemon stop?)", err)
	}
	if resp.Error != "" {
		return &Error{Msg: resp.Error}
	}
	if out != nil && len(resp.Result) > 0 {
		if err := json.Unmarshal(resp.Result, out); err != nil {
			return fmt.Errorf("decode the daemon's answer: %w", err)
		}
	}
	return nil
}
