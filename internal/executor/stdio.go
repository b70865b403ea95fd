package executor

import (
	"errors"
	"fmt"
	"os"
	"sync"
	"time"

	"golang.org/x/sys/unix"

	"github.com/mosaic-cluster/mosaic/internal/peerpb"
	"github.com/mosaic-cluster/mosaic/internal/procstream"
	"github.com/mosaic-cluster/mosaic/internal/pty"
)

const pipeSize = 1 << 20

// stdio is a process's standard descriptors as this node holds them: three
// pipes, or one pseudo-terminal.
type stdio struct {
	child []*os.File // what the process gets as 0, 1, 2

	mu     sync.Mutex
	stdin  *os.File // our end: we write, the process reads
	stdout *os.File // our ends: we read
	stderr *os.File
	master *os.File // the terminal's master side (tty mode): stdin and stdout
}

func newStdio(st *peerpb.ExecStart) (*stdio, error) {
	s := &stdio{}
	if t := st.Tty; t != nil {
		m, sl, err := pty.Open(int(st.Uid), int(st.Gid))
		if err != nil {
			return nil, err
		}
		fd := int(sl.Fd())
		if t.HasModes {
			if err := pty.SetModes(fd, ttyModes(t)); err != nil {
				m.Close()
				sl.Close()
				return nil, fmt.Errorf("set terminal modes: %w", err)
			}
		}
		pty.SetSize(fd, uint16(t.Rows), uint16(t.Cols))
		s.master = m
		s.child = []*os.File{sl, sl, sl}
		return s, nil
	}
	var pipes [3][2]*os.File
	for i := range pipes {
		r, w, err := os.Pipe()
		if err != nil {
			for _, p := range pipes[:i] {
				p[0].Close()
				p[1].Close()
			}
			return nil, fmt.Errorf("make pipes: %w", err)
		}
		pipes[i] = [2]*os.File{r, w}
	}
	// Pipes of 1 MiB (the kernel's default is 64 KiB): a program that
	// writes fast fills them while the relay sends, and every read takes
	// more at a time. Where the system does not allow it, the default does.
	for _, p := range pipes {
		unix.FcntlInt(p[0].Fd(), unix.F_SETPIPE_SZ, pipeSize)
	}
	s.stdin, s.stdout, s.stderr = pipes[0][1], pipes[1][0], pipes[2][0]
	s.child = []*os.File{pipes[0][0], pipes[1][1], pipes[2][1]}
	return s, nil
}

func ttyModes(t *peerpb.Tty) pty.Modes {
	return pty.Modes{Rows: uint16(t.Rows), Cols: uint16(t.Cols), Iflag: t.Iflag, Oflag: t.Oflag, Cflag: t.Cflag,
		Lflag: t.Lflag, Cc: t.Cc, Ispeed: t.Ispeed, Ospeed: t.Ospeed}
}

func (s *stdio) childFiles() []*os.File { return s.child }

// closeChildEnds closes our copies of the process's ends once it has them
// (or failed to start), so that EOF and SIGPIPE work.
func (s *stdio) closeChildEnds() {
	seen := map[*os.File]bool{}
	for _, f := range s.child {
		if !seen[f] {
			f.Close()
			seen[f] = true
		}
	}
}

// outReader relays one output of the process.
type outReader struct {
	f  *os.File
	fd int // 1 or 2
}

func (s *stdio) readers() []outReader {
	if s.master != nil {
		return []outReader{{s.master, 1}}
	}
	return []outReader{{s.stdout, 1}, {s.stderr, 2}}
}

// relay sends the output until it ends (EOF; EIO on a terminal whose last
// user is gone; closed or cut by us), then says so.
func (r outReader) relay(out *sender) {
	// Read after room for a frame header, so that a stream that can send
	// a buffer as it is (procstream) does not copy it.
	buf := make([]byte, procstream.HeaderSize+chunk)
	for {
		n, err := r.f.Read(buf[procstream.HeaderSize:])
		if n > 0 && out.sendData(r.fd, buf[:procstream.HeaderSize+n]) != nil {
			return
		}
		if err != nil {
			break
		}
	}
	m := &peerpb.ExecOut{Msg: &peerpb.ExecOut_StdoutEof{StdoutEof: true}}
	if r.fd == 2 {
		m = &peerpb.ExecOut{Msg: &peerpb.ExecOut_StderrEof{StderrEof: true}}
	}
	out.send(m)
}

func (s *stdio) writeStdin(b []byte) error {
	s.mu.Lock()
	w := s.stdin
	if s.master != nil {
		w = s.master
	}
	s.mu.Unlock()
	if w == nil {
		return errors.New("stdin is closed")
	}
	_, err := w.Write(b)
	if s.master != nil {
		typedSuspend(s.master, b)
	}
	return err
}

// stdinEOF passes on the end of the user's input. On a terminal there is
// no such thing (the user types ^D, which travels as a byte).
func (s *stdio) stdinEOF() {
	if s.master == nil {
		s.closeStdin()
	}
}

func (s *stdio) closeStdin() {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.stdin != nil {
		s.stdin.Close()
		s.stdin = nil
	}
}

func (s *stdio) resize(t *peerpb.Tty) {
	if s.master != nil && t != nil {
		pty.SetSize(int(s.master.Fd()), uint16(t.Rows), uint16(t.Cols))
	}
}

// cut closes our read end of the process's stdout (1) or stderr (2): its
// reader at home is gone, and the process's next write fails as it would
// at home.
func (s *stdio) cut(fd int) {
	s.mu.Lock()
	defer s.mu.Unlock()
	switch {
	case s.master != nil:
		// One terminal carries both; a terminal whose user has gone away
		// is a hangup.
		s.master.SetReadDeadline(time.Now())
	case fd == 1:
		s.stdout.Close()
	case fd == 2:
		s.stderr.Close()
	}
}

// cutReaders makes the relays stop reading now.
func (s *stdio) cutReaders() {
	for _, f := range []*os.File{s.stdout, s.stderr, s.master} {
		if f != nil {
			f.SetReadDeadline(time.Now())
		}
	}
}

func (s *stdio) close() {
	s.closeStdin()
	for _, f := range []*os.File{s.stdout, s.stderr, s.master} {
		if f != nil {
			f.Close()
		}
	}
}
