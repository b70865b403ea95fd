package home

import (
	"errors"
	"fmt"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"golang.org/x/sys/unix"

	"github.com/mosaic-cluster/mosaic/internal/api"
	"github.com/mosaic-cluster/mosaic/internal/peerpb"
)

// relay moves the process's input, output, signals and job control
// between the user's descriptors, the client and the process's stream, and
// returns when the process is over (nil) or lost (an error for the client).
func (h *Home) relay(p *proc, s *stream, conn *api.Conn, events *eventWriter, stdio *userStdio) error {
	in, err := newPump(stdio.in, p.deliver)
	if err != nil {
		s.send(&peerpb.ExecIn{Msg: &peerpb.ExecIn_Signal{Signal: &peerpb.Signal{Number: int32(syscall.SIGKILL), Group: true}}})
		return err
	}
	go in.run()
	defer in.stop()
	p.mu.Lock()
	p.pump = in
	p.mu.Unlock()

	// What the client sends: signals, resizes, foreground changes. If it
	// goes away before the program ends (killed, say), the program dies:
	// nobody is left at home to answer for it.
	finished := make(chan struct{})
	defer close(finished)
	go func() {
		for {
			var c api.RunControl
			if err := conn.ReadJSON(&c); err != nil {
				select {
				case <-finished:
				default:
					h.cfg.Log.Debug("client gone: killing its process", "id", p.id)
					p.deliver(&peerpb.ExecIn{Msg: &peerpb.ExecIn_Signal{Signal: &peerpb.Signal{Number: int32(syscall.SIGKILL), Group: true}}})
				}
				return
			}
			switch {
			case c.Signal != 0:
				p.deliver(&peerpb.ExecIn{Msg: &peerpb.ExecIn_Signal{Signal: &peerpb.Signal{Number: int32(c.Signal), Group: c.Group}}})
			case c.Resize != nil:
				p.deliver(&peerpb.ExecIn{Msg: &peerpb.ExecIn_Resize{Resize: &peerpb.Tty{Rows: uint32(c.Resize.Rows), Cols: uint32(c.Resize.Cols)}}})
			case c.Foreground != nil:
				in.pause(!*c.Foreground)
			}
		}
	}()

	out := stdio.out
	write := func(fd int, b []byte) {
		if out[fd] == nil {
			return
		}
		if _, err := out[fd].Write(b); err != nil {
			// The reader is gone (EPIPE) or the descriptor is unusable:
			// the process's next write fails as it would at home.
			out[fd] = nil
			m := &peerpb.ExecIn{Msg: &peerpb.ExecIn_StdoutClosed{StdoutClosed: true}}
			if fd == 2 {
				m = &peerpb.ExecIn{Msg: &peerpb.ExecIn_StderrClosed{StderrClosed: true}}
			}
			p.deliver(m)
		}
	}
	closeOut := func(fd int) {
		// Our copy of the user's descriptor is the last one (the client
		// let go of its own), so closing it is what the program closing
		// its stdout means to the reader at home: EOF.
		if out[fd] != nil {
			out[fd].Close()
			out[fd] = nil
		}
	}
	for {
		m, err := s.conn.Recv()
		if err != nil {
			return h.lost(p, s, err)
		}
		switch x := m.Msg.(type) {
		case *peerpb.ExecOut_Stdout:
			write(1, x.Stdout)
		case *peerpb.ExecOut_Stderr:
			write(2, x.Stderr)
		case *peerpb.ExecOut_StdoutEof:
			closeOut(1)
		case *peerpb.ExecOut_StderrEof:
			closeOut(2)
		case *peerpb.ExecOut_Stopped:
			p.setState("stopped")
			in.pause(true)
			events.send(api.RunEvent{Stopped: int(x.Stopped)})
		case *peerpb.ExecOut_Continued:
			p.setState("running")
			events.send(api.RunEvent{Continued: true})
		case *peerpb.ExecOut_Moved:
			if next := h.switchOver(p, s, x.Moved); next != nil {
				s = next
			}
		case *peerpb.ExecOut_Checkpointed:
			if p.checkpointed(x.Checkpointed) {
				p.setState("checkpointed")
				return fail(api.StatusCheckpointed, "process %s was stopped after its checkpoint: `mosaic restore IMAGE` brings it back", p.id)
			}
		case *peerpb.ExecOut_MigrateFailed:
			p.endMigration(migrateResult{err: errors.New(x.MigrateFailed)})
		case *peerpb.ExecOut_Exit:
			p.endMigration(migrateResult{err: fmt.Errorf("process %s exited", p.id)})
			p.checkpointed(&peerpb.Checkpointed{Error: fmt.Sprintf("process %s exited", p.id)})
			p.setState("exited")
			events.send(api.RunEvent{Exit: &api.RunExit{Code: int(x.Exit.Code), Signal: int(x.Exit.Signal), Core: x.Exit.CoreDumped}})
			return nil
		}
	}
}

func (p *proc) setState(st string) {
	p.mu.Lock()
	p.state = st
	p.mu.Unlock()
}

// lost records that the process's stream broke before it exited, and says
// why for the client.
func (h *Home) lost(p *proc, s *stream, err error) error {
	p.endMigration(migrateResult{err: fmt.Errorf("process %s is lost: %v", p.id, err)})
	p.checkpointed(&peerpb.Checkpointed{Error: fmt.Sprintf("process %s is lost: %v", p.id, err)})
	p.mu.Lock()
	p.state, p.lost = "lost", time.Now()
	p.mu.Unlock()
	h.mu.Lock()
	closing := h.closed
	h.mu.Unlock()
	h.cfg.Log.Warn("process lost", "id", p.id, "node", s.node, "err", err)
	if closing {
		return fail(api.StatusLost, "process %s was killed: its home node %s is shutting down", p.id, h.cfg.Node)
	}
	if s.node == h.cfg.Node {
		return fail(api.StatusLost, "process %s is lost: %v", p.id, err)
	}
	return fail(api.StatusLost, "process %s is lost: node %s, where it ran, is dead or unreachable (%v)", p.id, s.node, err)
}

// pump relays the user's stdin to the process. It reads only when the
// descriptor is readable and the pump is not paused, so that a job that is
// stopped or in the background leaves the terminal to its shell, and it
// can be stopped while nothing is to be read (a pipe or terminal that
// stays open). It never changes the descriptor's flags: the descriptor is
// shared with the user's shell.
type pump struct {
	fd     int
	send   func(*peerpb.ExecIn) error
	wakeR  int
	wakeW  int
	paused atomic.Bool // the job is stopped or in the background
	held   atomic.Bool // the process is moving
	quit   atomic.Bool
	done   chan struct{}
	once   sync.Once
}

func newPump(fd int, send func(*peerpb.ExecIn) error) (*pump, error) {
	var fds [2]int
	if err := unix.Pipe2(fds[:], unix.O_NONBLOCK|unix.O_CLOEXEC); err != nil {
		return nil, err
	}
	return &pump{fd: fd, send: send, wakeR: fds[0], wakeW: fds[1], done: make(chan struct{})}, nil
}

func (p *pump) hold(held bool) {
	p.held.Store(held)
	p.wake()
}

func (p *pump) wake() { unix.Write(p.wakeW, []byte{0}) }

func (p *pump) pause(paused bool) {
	p.paused.Store(paused)
	p.wake()
}

func (p *pump) stop() {
	p.once.Do(func() {
		p.quit.Store(true)
		p.wake()
		<-p.done
		unix.Close(p.wakeR)
		unix.Close(p.wakeW)
	})
}

func (p *pump) run() {
	defer close(p.done)
	fd := p.fd
	buf := make([]byte, 32<<10)
	var drain [64]byte
	for !p.quit.Load() {
		fds := []unix.PollFd{{Fd: int32(p.wakeR), Events: unix.POLLIN}}
		if !p.paused.Load() && !p.held.Load() {
			fds = append(fds, unix.PollFd{Fd: int32(fd), Events: unix.POLLIN})
		}
		if _, err := unix.Poll(fds, -1); err != nil {
			if errors.Is(err, unix.EINTR) {
				continue
			}
			return
		}
		if fds[0].Revents != 0 {
			unix.Read(p.wakeR, drain[:])
			continue
		}
		if len(fds) < 2 || fds[1].Revents == 0 {
			continue
		}
		if fds[1].Revents&unix.POLLNVAL != 0 {
			return
		}
		n, err := unix.Read(fd, buf)
		if errors.Is(err, unix.EINTR) || errors.Is(err, unix.EAGAIN) {
			continue
		}
		if n > 0 {
			data := append([]byte(nil), buf[:n]...)
			if p.send(&peerpb.ExecIn{Msg: &peerpb.ExecIn_Stdin{Stdin: data}}) != nil {
				return
			}
			continue
		}
		// End of input (or an error reading it).
		p.send(&peerpb.ExecIn{Msg: &peerpb.ExecIn_StdinEof{StdinEof: true}})
		return
	}
}
