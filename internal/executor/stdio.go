package executor

import (
	"errors"
	"fmt"
	"os"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"golang.org/x/sys/unix"

	"github.com/mosaic-cluster/mosaic/internal/bufpool"
	"github.com/mosaic-cluster/mosaic/internal/ckpt"
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

	// The output relays; a migration holds them (they stop without
	// reporting an end) and lets them go again if the process stays.
	relays  sync.WaitGroup
	holding atomic.Bool
	// home names the three pipes for the engine (ckpt.Stdio): taken when
	// they are made, as our ends may be closed before a move.
	home ckpt.Stdio
	// bufs lends the relays their buffers: a chunk each, which a fresh
	// allocation would zero and fault in for every process, however
	// short (a millisecond of a daemon's CPU per `/bin/true` here).
	bufs *bufpool.Pool
}

func newStdio(st *peerpb.ExecStart, bufs *bufpool.Pool) (*stdio, error) {
	s := &stdio{bufs: bufs}
	if t := st.Tty; t != nil {
		m, sl, err := pty.Open(int(st.Uid), int(st.Gid))
		if err != nil {
			return nil, err
		}
		s.master = m
		s.child = []*os.File{sl, sl, sl}
		id := streamID(sl)
		s.home = ckpt.Stdio{id, id, id}
		if err := s.setTerminal(t); err != nil {
			m.Close()
			sl.Close()
			return nil, err
		}
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
	s.stdin, s.stdout, s.stderr = pipes[0][1], pipes[1][0], pipes[2][0]
	s.child = []*os.File{pipes[0][0], pipes[1][1], pipes[2][1]}
	// (Set and read through the child's ends: Fd on ours would make them
	// blocking, and their read deadlines would stop working.)
	for k, f := range s.child {
		unix.FcntlInt(f.Fd(), unix.F_SETPIPE_SZ, pipeSize)
		s.home[k] = streamID(f)
	}
	return s, nil
}

// streamID is f's device and inode, which name it to the engine.
func streamID(f *os.File) ckpt.StreamID {
	var st unix.Stat_t
	if err := unix.Fstat(int(f.Fd()), &st); err != nil {
		return ckpt.StreamID{}
	}
	return ckpt.StreamID{Dev: st.Dev, Ino: st.Ino}
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

// startRelays starts relaying the process's output to out.
func (s *stdio) startRelays(out *sender) {
	for _, r := range s.readers() {
		s.relays.Add(1)
		go func() {
			defer s.relays.Done()
			r.relay(out, &s.holding, s.bufs)
		}()
	}
}

// holdRelays stops the relays where they are, all they read sent.
func (s *stdio) holdRelays() {
	s.holding.Store(true)
	s.cutReaders()
	s.relays.Wait()
}

// releaseRelays starts the relays again after holdRelays.
func (s *stdio) releaseRelays(out *sender) {
	for _, f := range []*os.File{s.stdout, s.stderr, s.master} {
		if f != nil {
			f.SetReadDeadline(time.Time{})
		}
	}
	s.holding.Store(false)
	s.startRelays(out)
}

// drainOutput sends what the process wrote and no relay read yet (the
// relays are held, the process frozen: this is all it wrote).
func (s *stdio) drainOutput(out *sender) error {
	buf := s.bufs.Get(procstream.HeaderSize + chunk)
	defer s.bufs.Put(buf)
	for _, r := range s.readers() {
		for {
			n, err := readNow(r.f, buf[procstream.HeaderSize:])
			if n > 0 {
				if err := out.sendData(r.fd, buf[:procstream.HeaderSize+n]); err != nil {
					return err
				}
			}
			if n == 0 || err != nil {
				break
			}
		}
	}
	return nil
}

// withFd runs fn with f's descriptor, leaving it as it is (f.Fd would
// make it blocking, and f's read deadlines would stop working).
func withFd(f *os.File, fn func(fd int) error) error {
	rc, err := f.SyscallConn()
	if err != nil {
		return err
	}
	var ferr error
	if err := rc.Control(func(fd uintptr) { ferr = fn(int(fd)) }); err != nil {
		return err
	}
	return ferr
}

// readNow reads what f holds without waiting (and past a read deadline:
// f's descriptor is non-blocking, the poller's).
func readNow(f *os.File, b []byte) (int, error) {
	rc, err := f.SyscallConn()
	if err != nil {
		return 0, err
	}
	var n int
	var rerr error
	if err := rc.Control(func(fd uintptr) {
		for {
			n, rerr = unix.Read(int(fd), b)
			if !errors.Is(rerr, unix.EINTR) {
				break
			}
		}
	}); err != nil {
		return 0, err
	}
	if n < 0 {
		n = 0
	}
	if errors.Is(rerr, unix.EAGAIN) {
		rerr = nil
	}
	return n, rerr
}

// takeInput takes the input that process pid has not read yet out of its
// stdin (pipe or terminal), to go with it.
func (s *stdio) takeInput(pid int) []byte {
	f, err := os.OpenFile("/proc/"+strconv.Itoa(pid)+"/fd/0", os.O_RDONLY|unix.O_NONBLOCK|unix.O_NOCTTY, 0)
	if err != nil {
		return nil // it closed its stdin
	}
	defer f.Close()
	var got []byte
	withFd(f, func(fd int) error {
		if s.master != nil {
			// A line being typed is not readable in canonical mode:
			// switch that off for the time of the read.
			if t, err := unix.IoctlGetTermios(fd, unix.TCGETS); err == nil && t.Lflag&unix.ICANON != 0 {
				raw := *t
				raw.Lflag &^= unix.ICANON
				raw.Cc[unix.VMIN], raw.Cc[unix.VTIME] = 0, 0
				if unix.IoctlSetTermios(fd, unix.TCSETS, &raw) == nil {
					defer unix.IoctlSetTermios(fd, unix.TCSETS, t)
				}
			}
		}
		buf := make([]byte, 64<<10)
		for {
			n, err := unix.Read(fd, buf)
			if n > 0 {
				got = append(got, buf[:n]...)
			}
			if n <= 0 || err != nil {
				return nil
			}
		}
	})
	return got
}

// terminal describes the process's terminal as it is now (the program may
// have changed its modes), or nil.
func (s *stdio) terminal() *peerpb.Tty {
	if s.master == nil {
		return nil
	}
	var m pty.Modes
	if err := withFd(s.master, func(fd int) (err error) { m, err = pty.Get(fd); return err }); err != nil {
		return nil
	}
	return &peerpb.Tty{Rows: uint32(m.Rows), Cols: uint32(m.Cols), Iflag: m.Iflag, Oflag: m.Oflag, Cflag: m.Cflag,
		Lflag: m.Lflag, Cc: m.Cc, Ispeed: m.Ispeed, Ospeed: m.Ospeed, HasModes: true}
}

// relay sends the output until it ends (EOF; EIO on a terminal whose last
// user is gone; closed or cut by us), then says so; held, it stops without
// a word.
func (r outReader) relay(out *sender, holding *atomic.Bool, bufs *bufpool.Pool) {
	// Read after room for a frame header, so that a stream that can send
	// a buffer as it is (procstream) does not copy it. (Every stream's
	// SendData is done with the buffer when it returns.)
	buf := bufs.Get(procstream.HeaderSize + chunk)
	defer bufs.Put(buf)
	for {
		n, err := r.f.Read(buf[procstream.HeaderSize:])
		if n > 0 && out.sendData(r.fd, buf[:procstream.HeaderSize+n]) != nil {
			return
		}
		if err != nil {
			if holding.Load() && errors.Is(err, os.ErrDeadlineExceeded) {
				return
			}
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

// giveBack puts input taken by takeInput back, for a process that stays:
// through our end of its pipe, or, if we closed it (the input had ended),
// through a new one opened on the same pipe.
func (s *stdio) giveBack(pid int, b []byte) error {
	if len(b) == 0 {
		return nil
	}
	if !s.inputEnded() {
		return s.writeStdin(b)
	}
	f, err := os.OpenFile("/proc/"+strconv.Itoa(pid)+"/fd/0", os.O_WRONLY, 0)
	if err != nil {
		return err
	}
	defer f.Close()
	_, err = f.Write(b)
	return err
}

// inputEnded says the user's input has ended and the process's pipe was
// closed (it reads end of file once it has read what is in it).
func (s *stdio) inputEnded() bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.master == nil && s.stdin == nil
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
		withFd(s.master, func(fd int) error { return pty.SetSize(fd, uint16(t.Rows), uint16(t.Cols)) })
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

// unread says whether the process's output pipes (or terminal) hold
// bytes the relays have not read yet.
func (s *stdio) unread() bool {
	for _, f := range []*os.File{s.stdout, s.stderr, s.master} {
		if f == nil {
			continue
		}
		n := 0
		withFd(f, func(fd int) (err error) { n, err = unix.IoctlGetInt(fd, unix.TIOCINQ); return err })
		if n > 0 {
			return true
		}
	}
	return false
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

// setTerminal gives the process's terminal the modes and size t says (a
// process that moves keeps its terminal as it had set it).
func (s *stdio) setTerminal(t *peerpb.Tty) error {
	if s.master == nil || len(s.child) == 0 {
		return nil
	}
	fd := int(s.child[0].Fd())
	if t.HasModes {
		if err := pty.SetModes(fd, ttyModes(t)); err != nil {
			return fmt.Errorf("set terminal modes: %w", err)
		}
	}
	pty.SetSize(fd, uint16(t.Rows), uint16(t.Cols)) // best effort: a size is no reason to fail
	return nil
}
