package ckpt

import (
	"fmt"
	"os"
	"slices"
	"strings"

	"golang.org/x/sys/unix"
)

// Descriptors. A process carries its standard descriptors (the pipes or
// terminal to its home, which the node that restores it provides anew),
// regular files and directories opened by path, which it reopens at the
// same offset with the same flags, and the stateless devices. Anything
// else it cannot carry: dumpFiles says what.

// PinnedError says why a process cannot move: it holds something the
// engine cannot carry. The text is for its user.
type PinnedError struct{ Reason string }

func (e *PinnedError) Error() string { return "the process cannot move: " + e.Reason }

// dumpFiles lists the process's open descriptors and the file locks it
// holds through them, or why it cannot move with them.
func dumpFiles(pid int) ([]File, []Lock, error) {
	fds, err := readFDs(pid)
	if err != nil {
		return nil, nil, fmt.Errorf("list open descriptors: %w", err)
	}
	var out []File
	var locks []Lock
	var cannot []string
	for _, f := range fds {
		ls, err := parseLocks(pid, f.Fd, f.Locks)
		if err != nil {
			return nil, nil, err
		}
		locks = append(locks, ls...)
		if strings.HasPrefix(f.Link, "/") && !strings.HasSuffix(f.Link, " (deleted)") {
			if st, err := os.Stat(f.Link); err == nil && st.Mode().IsRegular() {
				out = append(out, File{Fd: f.Fd, Kind: FileRegular, Path: f.Link, Flags: f.Flags, Pos: f.Pos})
				continue
			} else if err == nil && st.IsDir() {
				// Programs hold directories to fsync them (sqlite3 does, at
				// every commit), to walk them, or for the *at calls. Its
				// position is the file system's cookie, which the same
				// directory takes back.
				out = append(out, File{Fd: f.Fd, Kind: FileDirectory, Path: f.Link, Flags: f.Flags, Pos: f.Pos})
				continue
			}
			if statelessDevices[f.Link] {
				out = append(out, File{Fd: f.Fd, Kind: FileDevice, Path: f.Link, Flags: f.Flags})
				continue
			}
		}
		if f.Fd <= 2 {
			// Its pipe or terminal to its home (or whatever the node that
			// restores it gives in their place).
			out = append(out, File{Fd: f.Fd, Kind: FileStdio, Path: f.Link, Flags: f.Flags})
			continue
		}
		cannot = append(cannot, fmt.Sprintf("descriptor %d (%s)", f.Fd, describeLink(f.Link)))
	}
	if len(cannot) > 0 {
		return nil, nil, &PinnedError{Reason: "it holds " + strings.Join(cannot, ", ")}
	}
	return out, locks, nil
}

// statelessDevices are the devices every node has and that keep no state
// for an open file: opened again by path, they are the same to the process.
var statelessDevices = map[string]bool{
	"/dev/null": true, "/dev/zero": true, "/dev/full": true, "/dev/random": true, "/dev/urandom": true,
}

// describeLink says in words what a /proc/PID/fd link is.
func describeLink(l string) string {
	switch {
	case strings.HasPrefix(l, "socket:"):
		return "a network or local socket"
	case strings.HasPrefix(l, "pipe:"):
		return "a pipe"
	case strings.Contains(l, "inotify"):
		return "an inotify watch"
	case strings.Contains(l, "eventfd"), strings.Contains(l, "eventpoll"), strings.Contains(l, "signalfd"), strings.Contains(l, "timerfd"):
		return "a kernel event descriptor, " + l
	case strings.HasSuffix(l, " (deleted)"):
		return "a deleted file, " + strings.TrimSuffix(l, " (deleted)")
	case strings.HasPrefix(l, "/dev/"):
		return "the device " + l
	}
	return l
}

// restoreFiles reopens the image's files, directories and devices at
// their descriptors, and closes the standard ones the process had closed
// (the stub was given all three).
func restoreFiles(r *remote, files []File) error {
	for fd := range 3 {
		if !slices.ContainsFunc(files, func(f File) bool { return f.Fd == fd }) {
			r.call(unix.SYS_CLOSE, uint64(fd))
		}
	}
	for _, f := range files {
		switch f.Kind {
		case FileStdio:
			continue
		case FileRegular, FileDevice, FileDirectory:
		default:
			return fmt.Errorf("descriptor %d is of a kind this mosaic does not know (%q): restore it with the version that made the image", f.Fd, f.Kind)
		}
		flags := f.Flags &^ (unix.O_CREAT | unix.O_EXCL | unix.O_TRUNC | unix.O_CLOEXEC | unix.O_NOCTTY)
		fd, err := r.callScratch(unix.SYS_OPENAT, cString(f.Path), 0, nil, atFDCWD, r.scratch, uint64(flags), 0)
		if err != nil {
			return fmt.Errorf("reopen %s as descriptor %d: %w", f.Path, f.Fd, err)
		}
		if int(fd) != f.Fd {
			if _, err := r.call(unix.SYS_DUP3, fd, uint64(f.Fd), uint64(f.Flags&unix.O_CLOEXEC)); err != nil {
				return fmt.Errorf("move %s to descriptor %d: %w", f.Path, f.Fd, err)
			}
			r.call(unix.SYS_CLOSE, fd)
		} else if f.Flags&unix.O_CLOEXEC != 0 {
			r.call(unix.SYS_FCNTL, fd, unix.F_SETFD, unix.FD_CLOEXEC)
		}
		if f.Kind == FileDevice {
			continue // no position to keep
		}
		if _, err := r.call(unix.SYS_LSEEK, uint64(f.Fd), uint64(f.Pos), 0); err != nil {
			return fmt.Errorf("seek %s to %d: %w", f.Path, f.Pos, err)
		}
	}
	return nil
}
