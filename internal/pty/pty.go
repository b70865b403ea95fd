// Package pty opens pseudo-terminals and sets their modes and size. The
// few ioctls it needs are in x/sys/unix; a dependency for them is not worth
// it.
package pty

import (
	"fmt"
	"os"
	"strconv"

	"golang.org/x/sys/unix"
)

// Open returns a new pseudo-terminal: the master side, and the slave side
// the process will use as its terminal. The slave belongs to uid (group
// gid), mode 0620, as a login's terminal would.
func Open(uid, gid int) (master, slave *os.File, err error) {
	m, err := os.OpenFile("/dev/ptmx", os.O_RDWR|unix.O_NOCTTY|unix.O_CLOEXEC, 0)
	if err != nil {
		return nil, nil, fmt.Errorf("open a pseudo-terminal: %w", err)
	}
	fail := func(what string, err error) (*os.File, *os.File, error) {
		m.Close()
		return nil, nil, fmt.Errorf("%s of a pseudo-terminal: %w", what, err)
	}
	// unlockpt, ptsname. (Through SyscallConn, not m.Fd(), which would
	// make the master blocking: its reads could then no longer be cut
	// short by a deadline, and a migration that drains it waited forever
	// for output that did not come.)
	var n uint32
	rc, err := m.SyscallConn()
	if err != nil {
		return fail("unlock", err)
	}
	var ierr error
	if err := rc.Control(func(fd uintptr) {
		if ierr = unix.IoctlSetPointerInt(int(fd), unix.TIOCSPTLCK, 0); ierr != nil {
			ierr = fmt.Errorf("unlock: %w", ierr)
			return
		}
		if n, ierr = unix.IoctlGetUint32(int(fd), unix.TIOCGPTN); ierr != nil {
			ierr = fmt.Errorf("name: %w", ierr)
		}
	}); err != nil {
		return fail("unlock", err)
	}
	if ierr != nil {
		return fail("set up", ierr)
	}
	name := "/dev/pts/" + strconv.Itoa(int(n))
	s, err := os.OpenFile(name, os.O_RDWR|unix.O_NOCTTY|unix.O_CLOEXEC, 0)
	if err != nil {
		return fail("open slave", err)
	}
	if err := s.Chown(uid, gid); err != nil {
		s.Close()
		return fail("give", err)
	}
	if err := s.Chmod(0o620); err != nil {
		s.Close()
		return fail("set mode", err)
	}
	return m, s, nil
}

// Modes are a terminal's settings (struct termios) and size.
type Modes struct {
	Rows, Cols                 uint16
	Iflag, Oflag, Cflag, Lflag uint32
	Cc                         []byte
	Ispeed, Ospeed             uint32
}

// Get reads the modes and size of the terminal open as fd.
func Get(fd int) (Modes, error) {
	t, err := unix.IoctlGetTermios(fd, unix.TCGETS)
	if err != nil {
		return Modes{}, err
	}
	ws, err := unix.IoctlGetWinsize(fd, unix.TIOCGWINSZ)
	if err != nil {
		return Modes{}, err
	}
	return Modes{
		Rows: ws.Row, Cols: ws.Col,
		Iflag: t.Iflag, Oflag: t.Oflag, Cflag: t.Cflag, Lflag: t.Lflag,
		Cc: append([]byte(nil), t.Cc[:]...), Ispeed: t.Ispeed, Ospeed: t.Ospeed,
	}, nil
}

// SetModes applies m's settings (not its size) to the terminal open as fd.
func SetModes(fd int, m Modes) error {
	t, err := unix.IoctlGetTermios(fd, unix.TCGETS)
	if err != nil {
		return err
	}
	t.Iflag, t.Oflag, t.Cflag, t.Lflag = m.Iflag, m.Oflag, m.Cflag, m.Lflag
	copy(t.Cc[:], m.Cc)
	t.Ispeed, t.Ospeed = m.Ispeed, m.Ospeed
	return unix.IoctlSetTermios(fd, unix.TCSETS, t)
}

// SetSize sets the terminal's window size; the kernel sends SIGWINCH to its
// foreground process group.
func SetSize(fd int, rows, cols uint16) error {
	return unix.IoctlSetWinsize(fd, unix.TIOCSWINSZ, &unix.Winsize{Row: rows, Col: cols})
}

// MakeRaw puts the terminal open as fd in raw mode (as cfmakeraw) and
// returns its previous modes, for Restore.
func MakeRaw(fd int) (*unix.Termios, error) {
	old, err := unix.IoctlGetTermios(fd, unix.TCGETS)
	if err != nil {
		return nil, err
	}
	t := *old
	t.Iflag &^= unix.IGNBRK | unix.BRKINT | unix.PARMRK | unix.ISTRIP | unix.INLCR | unix.IGNCR | unix.ICRNL | unix.IXON
	t.Oflag &^= unix.OPOST
	t.Lflag &^= unix.ECHO | unix.ECHONL | unix.ICANON | unix.ISIG | unix.IEXTEN
	t.Cflag &^= unix.CSIZE | unix.PARENB
	t.Cflag |= unix.CS8
	t.Cc[unix.VMIN] = 1
	t.Cc[unix.VTIME] = 0
	if err := unix.IoctlSetTermios(fd, unix.TCSETS, &t); err != nil {
		return nil, err
	}
	return old, nil
}

// Restore puts back modes saved by MakeRaw.
func Restore(fd int, t *unix.Termios) error {
	return unix.IoctlSetTermios(fd, unix.TCSETS, t)
}

// IsTerminal reports whether fd is a terminal.
func IsTerminal(fd int) bool {
	_, err := unix.IoctlGetTermios(fd, unix.TCGETS)
	return err == nil
}
