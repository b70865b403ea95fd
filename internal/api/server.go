package api

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"runtime/debug"
	"sync"
	"syscall"
	"time"
)

// requestTimeout bounds the wait for a request after a connection opens.
const requestTimeout = 10 * time.Second

// Handler serves one operation. It returns the result to send (marshaled as
// JSON) or an error whose text the user will read. A handler that streams
// may use conn directly and return (nil, nil) after writing its response.
type Handler func(ctx context.Context, caller Caller, args json.RawMessage, conn *Conn) (any, error)

// Server accepts connections on the daemon's socket.
type Server struct {
	ln       *net.UnixListener
	path     string
	handlers map[string]Handler
	log      *slog.Logger

	wg     sync.WaitGroup
	mu     sync.Mutex
	conns  map[*Conn]struct{}
	closed bool
}

// Listen opens the socket at path. A socket left behind by a daemon that
// died is replaced; one that a live daemon still answers is an error. The
// socket is open to every local user: each operation decides what its
// caller may do from the caller's credentials.
func Listen(path string, handlers map[string]Handler, log *slog.Logger) (*Server, error) {
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		return nil, fmt.Errorf("create socket directory: %w", err)
	}
	if _, err := os.Lstat(path); err == nil {
		c, err := net.DialTimeout("unix", path, time.Second)
		if err == nil {
			c.Close()
			return nil, fmt.Errorf("a mosaic daemon is already listening on %s: stop it first or choose another --socket", path)
		}
		if err := os.Remove(path); err != nil && !errors.Is(err, fs.ErrNotExist) {
			return nil, fmt.Errorf("remove stale socket %s: %w", path, err)
		}
	}
	ln, err := net.ListenUnix("unix", &net.UnixAddr{Name: path, Net: "unix"})
	if err != nil {
		return nil, fmt.Errorf("listen on %s: %w", path, err)
	}
	ln.SetUnlinkOnClose(true)
	if err := os.Chmod(path, 0o666); err != nil {
		ln.Close()
		return nil, fmt.Errorf("open socket %s to local users: %w", path, err)
	}
	return &Server{ln: ln, path: path, handlers: handlers, log: log, conns: map[*Conn]struct{}{}}, nil
}

// Path is the socket's path.
func (s *Server) Path() string { return s.path }

// Serve accepts connections until ctx ends or Close is called. It waits for
// the handlers it started before it returns.
func (s *Server) Serve(ctx context.Context) error {
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	stop := context.AfterFunc(ctx, func() { s.Close() })
	defer stop()
	defer s.wg.Wait()
	for {
		uc, err := s.ln.AcceptUnix()
		if err != nil {
			s.mu.Lock()
			closed := s.closed
			s.mu.Unlock()
			if closed || errors.Is(err, net.ErrClosed) {
				return nil
			}
			return fmt.Errorf("accept on %s: %w", s.path, err)
		}
		c := &Conn{uc: uc}
		if !s.track(c) {
			c.Close()
			return nil
		}
		s.wg.Add(1)
		go func() {
			defer s.wg.Done()
			defer s.untrack(c)
			s.serveConn(ctx, c)
		}()
	}
}

func (s *Server) track(c *Conn) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closed {
		return false
	}
	s.conns[c] = struct{}{}
	return true
}

func (s *Server) untrack(c *Conn) {
	s.mu.Lock()
	delete(s.conns, c)
	s.mu.Unlock()
	c.Close()
}

// Close stops accepting and closes every open connection.
func (s *Server) Close() error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closed {
		return nil
	}
	s.closed = true
	for c := range s.conns {
		c.uc.Close()
	}
	return s.ln.Close()
}

func (s *Server) serveConn(ctx context.Context, c *Conn) {
	// A bug in one operation must not take the node down with it.
	defer func() {
		if r := recover(); r != nil {
			s.log.Error("local API operation panicked", "panic", r, "stack", string(debug.Stack()))
			c.WriteJSON(Response{Error: fmt.Sprintf("internal error in the daemon: %v (its log has the details)", r)})
		}
	}()
	caller, err := peerCred(c.uc)
	if err != nil {
		s.log.Warn("reject local connection", "err", err)
		return
	}
	// A client has a few seconds to say what it wants; it cannot hold a
	// connection (and a goroutine) open without asking anything.
	c.uc.SetReadDeadline(time.Now().Add(requestTimeout))
	var req Request
	err = c.ReadJSON(&req)
	c.uc.SetReadDeadline(time.Time{})
	if err != nil {
		if !errors.Is(err, net.ErrClosed) {
			c.WriteJSON(Response{Error: fmt.Sprintf("read request: %v", err)})
		}
		return
	}
	h, ok := s.handlers[req.Op]
	if !ok {
		c.WriteJSON(Response{Error: fmt.Sprintf("this daemon does not know the operation %q: is the CLI newer than the daemon? (`mosaic version`)", req.Op)})
		return
	}
	res, err := h(ctx, caller, req.Args, c)
	if err != nil {
		c.WriteJSON(Response{Error: err.Error()})
		return
	}
	if res == nil {
		return
	}
	b, err := json.Marshal(res)
	if err != nil {
		c.WriteJSON(Response{Error: fmt.Sprintf("encode result: %v", err)})
		return
	}
	if err := c.WriteJSON(Response{Result: b}); err != nil && !errors.Is(err, syscall.EPIPE) {
		s.log.Debug("write response", "op", req.Op, "err", err)
	}
}
