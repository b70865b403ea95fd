package ckpt

import (
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"syscall"

	"golang.org/x/sys/unix"
)

// Descriptors. A process carries its standard descriptors (the pipes or
// terminal to its home, which the node that restores it provides anew),
// regular files and directories opened by path, which it reopens at the
// same offset with the same flags, and the stateless devices. Anything
// else it cannot carry: dumpFiles says what.

// PinnedError says why a process cannot move: it holds something the
// engine cannot carry. The text is for its user.
type PinnedError struct {
	Reason string
	// Momentary: what pins it passes by itself in a moment (an inotify
	// descriptor with events not yet read): trying again soon may do.
	Momentary bool
}

func (e *PinnedError) Error() string { return "the process cannot move: " + e.Reason }

// ghostLimit bounds the content of deleted and memory files a process
// carries (CRIU's "ghost files" stop at 1 MiB each by default): it
// travels in the image's header, which each end holds in memory whole.
const ghostLimit = 64 << 20

// fileID is an inode: descriptors that share an open file share one.
type fileID struct{ dev, ino uint64 }

// dumpFiles lists the process's open descriptors and the file locks it
// holds through them, or why it cannot move with them. With content, a
// deleted or memory file's data is read into the image; without, only
// what could pin the process is looked at (Movable).
func dumpFiles(pid int, content bool, home Stdio, shared map[string]treeEnd) (*dumpedFiles, error) {
	fds, err := readFDs(pid)
	if err != nil {
		return nil, fmt.Errorf("list open descriptors: %w", err)
	}
	var out []File
	var locks []Lock
	var cannot []string
	byID := map[fileID][]int{} // the descriptors in out, by inode
	var ghostBytes int64
	var sharedMaps map[fileID]bool
	var ends []chanEnd
	channels := false // a pipe or socket besides stdio
	nMomentary := 0   // reasons in cannot that pass by themselves
	for _, f := range fds {
		var st unix.Stat_t
		var id fileID
		if err := unix.Stat(fmt.Sprintf("/proc/%d/fd/%d", pid, f.Fd), &st); err == nil {
			id = fileID{st.Dev, st.Ino}
			// A descriptor that shares an open file with one before it
			// (dup) is made again the same way, whatever the file: a
			// program's copy of its standard output stays its output.
			if to, err := sharedOpenFile(pid, f.Fd, byID[id]); err != nil {
				return nil, err
			} else if to >= 0 {
				// Its locks are the lower descriptor's, already listed.
				out = append(out, File{Fd: f.Fd, Kind: FileDup, Dup: to + 1, Flags: f.Flags})
				continue
			}
		}
		ls, err := parseLocks(pid, f.Fd, f.Locks)
		if err != nil {
			return nil, err
		}
		locks = append(locks, ls...)
		var file *File
		deleted := strings.HasSuffix(f.Link, " (deleted)")
		switch {
		case homeStream(home, f.Fd, id) > 0:
			// (First: a terminal has a path too.)
			file = &File{Fd: f.Fd, Kind: FileStdio, Path: f.Link, Flags: f.Flags, Stream: homeStream(home, f.Fd, id)}
		case strings.HasPrefix(f.Link, "/") && !deleted:
			st, why := byPath(pid, f.Link, id)
			if why != "" {
				// Renamed or deleted between the link's read and now: the
				// link will say where it went, or that it is deleted.
				cannot = append(cannot, fmt.Sprintf("descriptor %d (%s, %s)", f.Fd, describeLink(f.Link), why))
				nMomentary++
				continue
			}
			if st != nil && st.Mode().IsRegular() {
				file = &File{Fd: f.Fd, Kind: FileRegular, Path: f.Link, Flags: f.Flags, Pos: f.Pos}
			} else if st != nil && st.IsDir() {
				// Programs hold directories to fsync them (sqlite3 does, at
				// every commit), to walk them, or for the *at calls. Its
				// position is the file system's cookie, which the same
				// directory takes back.
				file = &File{Fd: f.Fd, Kind: FileDirectory, Path: f.Link, Flags: f.Flags, Pos: f.Pos}
			} else if statelessDevices[f.Link] {
				file = &File{Fd: f.Fd, Kind: FileDevice, Path: f.Link, Flags: f.Flags}
			}
		case shared[f.Link].pair != "" && strings.HasPrefix(f.Link, "socket:"):
			// A socket pair between it and others of its tree (see
			// sharedChannels), named by its first end.
			te := shared[f.Link]
			file = &File{Fd: f.Fd, Kind: FileSocket, Path: te.pair, Flags: f.Flags, End: te.end}
		case shared[f.Link].pair != "":
			// A pipe between it and others of its tree.
			end := 0
			switch f.Flags & unix.O_ACCMODE {
			case unix.O_WRONLY:
				end = 1
			case unix.O_RDWR:
				cannot = append(cannot, fmt.Sprintf("descriptor %d (a pipe opened for reading and writing)", f.Fd))
				continue
			}
			file = &File{Fd: f.Fd, Kind: FilePipe, Path: f.Link, Flags: f.Flags, End: end}
		case strings.HasPrefix(f.Link, "pipe:") || strings.HasPrefix(f.Link, "socket:"):
			// Decided below, with the rest of its pipe or pair.
			ends = append(ends, chanEnd{f: f, ino: st.Ino, at: len(out)})
			if f.Fd > 2 || home.known() {
				channels = true
			}
			file = &File{Fd: f.Fd}
		case f.Link == "anon_inode:inotify" && pendingEvents(pid, f.Fd):
			cannot = append(cannot, fmt.Sprintf("descriptor %d (an inotify descriptor with events not yet read, for a moment)", f.Fd))
			nMomentary++
			continue
		case strings.HasPrefix(f.Link, "anon_inode:"):
			g, why := eventFile(pid, f)
			if why != "" {
				cannot = append(cannot, fmt.Sprintf("descriptor %d (%s)", f.Fd, why))
				continue
			}
			file = g
		case strings.HasPrefix(f.Link, "/") && deleted && id != (fileID{}) && st.Mode&unix.S_IFMT == unix.S_IFREG:
			g, why := ghostFile(pid, f, &st, byID[id])
			if why != "" {
				cannot = append(cannot, fmt.Sprintf("descriptor %d (%s)", f.Fd, why))
				continue
			}
			if sharedMaps == nil {
				if sharedMaps, err = sharedMappedFiles(pid); err != nil {
					return nil, err
				}
			}
			if sharedMaps[id] {
				cannot = append(cannot, fmt.Sprintf("descriptor %d (%s, which it also maps shared: the two would part)", f.Fd, describeLink(f.Link)))
				continue
			}
			if g.Same == 0 {
				ghostBytes += min(st.Blocks*512, st.Size)
				if ghostBytes > ghostLimit {
					cannot = append(cannot, fmt.Sprintf("descriptor %d (%s, and with it %d MiB of deleted or memory files, more than the %d MiB a move carries)",
						f.Fd, describeLink(f.Link), ghostBytes>>20, ghostLimit>>20))
					continue
				}
				if content {
					if g.Extents, err = readExtents(pid, f.Fd, st.Size); err != nil {
						return nil, fmt.Errorf("read the content of %s (descriptor %d): %w", describeLink(f.Link), f.Fd, err)
					}
				}
			}
			file = g
		}
		if file == nil && f.Fd <= 2 && !home.known() {
			// Its pipe or terminal to its home (or whatever the node that
			// restores it gives in their place).
			file = &File{Fd: f.Fd, Kind: FileStdio, Path: f.Link, Flags: f.Flags}
		}
		if file == nil {
			cannot = append(cannot, fmt.Sprintf("descriptor %d (%s)", f.Fd, describeLink(f.Link)))
			continue
		}
		if id != (fileID{}) {
			byID[id] = append(byID[id], f.Fd)
		}
		out = append(out, *file)
	}
	var chans []Channel
	if channels {
		var why map[int]string
		if chans, why, err = resolveChannels(pid, ends, out, content); err != nil {
			return nil, err
		}
		for _, e := range ends {
			if r, ok := why[e.f.Fd]; ok && (e.f.Fd > 2 || home.known()) {
				cannot = append(cannot, fmt.Sprintf("descriptor %d (%s)", e.f.Fd, r))
			}
		}
		// What they hold travels in the header too.
		var held int64
		for _, c := range chans {
			for _, q := range c.Queued {
				for _, m := range q {
					held += int64(len(m))
				}
			}
		}
		if ghostBytes <= ghostLimit && ghostBytes+held > ghostLimit {
			cannot = append(cannot, fmt.Sprintf("%d MiB in its deleted or memory files, pipes and socket pairs, more than the %d MiB a move carries", (ghostBytes+held)>>20, ghostLimit>>20))
		}
	}
	for _, e := range ends {
		// Any other end not of a channel (fd > 2) has its reason above;
		// one of the first three is its pipe or terminal to its home
		// (when the home's are not known).
		if out[e.at].Kind == "" && e.f.Fd <= 2 && !home.known() {
			out[e.at] = File{Fd: e.f.Fd, Kind: FileStdio, Path: e.f.Link, Flags: e.f.Flags}
		}
	}
	if len(cannot) > 0 {
		return nil, &PinnedError{Reason: "it holds " + strings.Join(cannot, ", "), Momentary: nMomentary == len(cannot)}
	}
	return &dumpedFiles{files: out, locks: locks, channels: chans}, nil
}

// byPath stats the file a descriptor's link names, as the process sees
// its file system (through /proc/PID/root: the process has a mount
// namespace, and /proc, of its own), and says why not if that name no
// longer leads to the descriptor's file id: it was renamed, replaced or
// deleted since the link was read (sqlite3 deletes its journal while
// holding it). A file reopened by that name would be another file, or
// none. A nil result with no reason: not a file it can be reopened by.
func byPath(pid int, link string, id fileID) (os.FileInfo, string) {
	st, err := os.Stat(fmt.Sprintf("/proc/%d/root%s", pid, link))
	if err != nil {
		if errors.Is(err, os.ErrNotExist) && id != (fileID{}) {
			return nil, "deleted or renamed just now"
		}
		return nil, ""
	}
	if sys, ok := st.Sys().(*syscall.Stat_t); ok && id != (fileID{}) && (fileID{sys.Dev, sys.Ino}) != id {
		return nil, "its name taken by another file just now"
	}
	return st, ""
}

// homeStream is 1 + which of its home's streams (Stdio) descriptor fd's
// file id is, or 0: its own number's if that one is it (a terminal is all
// three).
func homeStream(home Stdio, fd int, id fileID) int {
	if id == (fileID{}) {
		return 0
	}
	is := func(k int) bool { return home[k] == StreamID{id.dev, id.ino} }
	if fd <= 2 && is(fd) {
		return fd + 1
	}
	for k := range home {
		if is(k) {
			return k + 1
		}
	}
	return 0
}

// dumpedFiles is what dumpFiles found.
type dumpedFiles struct {
	files    []File
	locks    []Lock
	channels []Channel
}

// kcmpFile is KCMP_FILE: do two descriptors name one open file?
const kcmpFile = 0

// sharedOpenFile returns which of the descriptors earlier (of fd's inode)
// fd shares its open file with, or -1. kcmp(2) tells, as nothing in /proc
// does. A kernel without it (CONFIG_KCMP) cannot tell: then each is
// opened on its own, as before mosaic knew of shared ones.
func sharedOpenFile(pid, fd int, earlier []int) (int, error) {
	for _, e := range earlier {
		if same, err := sameOpenFile(pid, e, pid, fd); err != nil {
			return -1, err
		} else if same {
			return e, nil
		}
	}
	return -1, nil
}

// ghostFile describes a deleted regular file or a memory file open at f,
// or says why it cannot move. same are the descriptors before it that
// hold the same file (opened again, not shared): the first of them has
// the content.
func ghostFile(pid int, f fdEntry, st *unix.Stat_t, same []int) (*File, string) {
	name := strings.TrimSuffix(f.Link, " (deleted)")
	g := &File{Fd: f.Fd, Flags: f.Flags, Pos: f.Pos}
	proc := fmt.Sprintf("/proc/%d/fd/%d", pid, f.Fd)
	if mname, ok := strings.CutPrefix(name, "/memfd:"); ok {
		var fs unix.Statfs_t
		if err := unix.Statfs(proc, &fs); err == nil && fs.Type == unix.HUGETLBFS_MAGIC {
			return nil, "a memory file of huge pages, " + mname
		}
		g.Kind, g.Path = FileMemfd, mname
	} else {
		if st.Nlink > 0 {
			// Unlinked under the name it was opened by, still linked
			// under another: a copy would part from that one.
			return nil, "a file deleted under one name that lives on under another, " + name
		}
		g.Kind, g.Path = FileDeleted, name
	}
	if len(same) > 0 {
		g.Same = same[0] + 1
		return g, ""
	}
	g.Mode, g.Size = st.Mode&0o7777, st.Size
	if g.Kind == FileMemfd {
		fd, err := unix.Open(proc, unix.O_RDONLY|unix.O_CLOEXEC, 0)
		if err != nil {
			return nil, fmt.Sprintf("a memory file, %s, that cannot be read (%v)", g.Path, err)
		}
		seals, err := unix.FcntlInt(uintptr(fd), unix.F_GET_SEALS, 0)
		unix.Close(fd)
		if err != nil {
			return nil, fmt.Sprintf("a memory file, %s, whose seals cannot be read (%v)", g.Path, err)
		}
		g.Seals = seals
	}
	return g, ""
}

// sharedMappedFiles are the files process pid maps shared.
func sharedMappedFiles(pid int) (map[fileID]bool, error) {
	vs, err := readMaps(pid)
	if err != nil {
		return nil, fmt.Errorf("read the mappings of %d: %w", pid, err)
	}
	out := map[fileID]bool{}
	for _, v := range vs {
		if id, ok := v.fileID(); ok && v.Shared {
			out[id] = true
		}
	}
	return out, nil
}

// readExtents reads the data of descriptor fd of process pid, a file of
// size bytes, skipping its holes.
func readExtents(pid, fd int, size int64) ([]Extent, error) {
	f, err := os.Open(fmt.Sprintf("/proc/%d/fd/%d", pid, fd))
	if err != nil {
		return nil, err
	}
	defer f.Close()
	raw := int(f.Fd())
	var out []Extent
	for off := int64(0); off < size; {
		data, err := unix.Seek(raw, off, unix.SEEK_DATA)
		if errors.Is(err, unix.ENXIO) {
			break // nothing but a hole from off on
		} else if err != nil {
			data = off // a file system that cannot tell: all of it
		}
		hole, err := unix.Seek(raw, data, unix.SEEK_HOLE)
		if err != nil {
			hole = size
		}
		hole = min(hole, size)
		if hole <= data {
			break
		}
		b := make([]byte, hole-data)
		n, err := f.ReadAt(b, data)
		if err != nil && !errors.Is(err, io.EOF) {
			return nil, err
		}
		out = append(out, Extent{Off: data, Data: b[:n]})
		off = hole
	}
	return out, nil
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
// their descriptors, makes its deleted and memory files anew with their
// content, shares open files between descriptors that shared them, and
// closes the standard ones the process had closed (the stub was given all
// three).
func restoreFiles(r *remote, files []File, chans []Channel, tree treeShared) error {
	hi := 3
	for _, f := range files {
		hi = max(hi, f.Fd+1)
	}
	// The stub has its home's streams at 0, 1 and 2; a process that held
	// one elsewhere (dup2(2, 1), or only above 2) gets it there, from a
	// copy kept out of the way until all are placed.
	streams, err := keepStreams(r, files, hi)
	if err != nil {
		return err
	}
	defer func() {
		for _, fd := range streams {
			if fd >= 0 {
				r.call(unix.SYS_CLOSE, uint64(fd))
			}
		}
	}()
	for fd := range 3 {
		if !slices.ContainsFunc(files, func(f File) bool { return f.Fd == fd }) {
			r.call(unix.SYS_CLOSE, uint64(fd))
		}
	}
	chEnds, err := makeChannels(r, chans, hi)
	if err != nil {
		return err
	}
	defer func() {
		for _, e := range chEnds {
			closeEnds(r, e)
		}
	}()
	defer func() {
		for _, e := range tree.ends {
			closeEnds(r, e) // this process's copies; those it holds are placed
		}
		for _, fd := range slices.Concat(tree.fds, tree.mems) {
			r.call(unix.SYS_CLOSE, uint64(fd))
		}
	}()
	placed := map[[3]int]bool{}
	var ghosts, epolls []File
	for _, f := range files {
		var fd uint64
		var err error
		switch f.Kind {
		case FileStdio:
			if f.Stream == 0 || f.Stream-1 == f.Fd {
				continue // where the stub has it
			}
			if _, err := r.call(unix.SYS_DUP3, uint64(streams[f.Stream-1]), uint64(f.Fd), uint64(f.Flags&unix.O_CLOEXEC)); err != nil {
				return fmt.Errorf("give descriptor %d its home's stream %d: %w", f.Fd, f.Stream-1, err)
			}
			continue
		case FileDup:
			// Its open file was made at a lower descriptor already.
			if _, err := r.call(unix.SYS_DUP3, uint64(f.Dup-1), uint64(f.Fd), uint64(f.Flags&unix.O_CLOEXEC)); err != nil {
				return fmt.Errorf("share descriptor %d's open file at %d: %w", f.Dup-1, f.Fd, err)
			}
			continue
		case FileRegular, FileDevice, FileDirectory:
			if f.SharedFile != 0 {
				// One open file of the tree's: offset and flags set.
				if err := placeShared(r, f, tree); err != nil {
					return err
				}
				continue
			}
			if fd, err = openFile(r, f); err != nil {
				return err
			}
		case FileDeleted, FileMemfd:
			if fd, err = restoreGhost(r, f); err != nil {
				return err
			}
			if f.Same == 0 {
				ghosts = append(ghosts, f)
			}
		case FilePipe, FileSocket:
			// Its own channel, or a pipe of its tree's.
			ends, cs, k, table := chEnds, chans, f.Channel-1, 0
			if f.Shared != 0 {
				ends, cs, k, table = tree.ends, tree.chans, f.Shared-1, 1
			}
			if k < 0 || k >= len(ends) || f.End < 0 || f.End > 1 || cs[k].Kind != f.Kind || ends[k][f.End] < 0 {
				return fmt.Errorf("descriptor %d names a %s the image does not have", f.Fd, f.Kind)
			}
			src, key := uint64(ends[k][f.End]), [3]int{table, k, f.End}
			if placed[key] {
				if f.Kind != FilePipe {
					return fmt.Errorf("descriptor %d is a second open file of one socket", f.Fd)
				}
				// Another open file of the same end (opened again
				// through /proc): so again.
				flags := f.Flags &^ (unix.O_CLOEXEC | unix.O_NOFOLLOW)
				if fd, err = r.callScratch(unix.SYS_OPENAT, cString(fmt.Sprintf("/proc/self/fd/%d", src)), 0, nil, atFDCWD, r.scratch, uint64(flags), 0); err != nil {
					return fmt.Errorf("open its pipe again as descriptor %d: %w", f.Fd, err)
				}
				break
			}
			placed[key] = true
			if _, err := r.call(unix.SYS_DUP3, src, uint64(f.Fd), uint64(f.Flags&unix.O_CLOEXEC)); err != nil {
				return fmt.Errorf("put its %s at descriptor %d: %w", describeChannel(cs[k]), f.Fd, err)
			}
			if _, err := r.call(unix.SYS_FCNTL, uint64(f.Fd), unix.F_SETFL, uint64(f.Flags&(unix.O_NONBLOCK|unix.O_APPEND))); err != nil {
				return fmt.Errorf("set the flags of descriptor %d: %w", f.Fd, err)
			}
			continue
		case FileEventfd, FileSignalfd, FileTimerfd, FileEpoll, FileInotify:
			if f.SharedFile != 0 {
				// The tree's (an eventfd, timerfd or signalfd), made
				// with its state.
				if err := placeShared(r, f, tree); err != nil {
					return err
				}
				continue
			}
			if fd, err = makeEvent(r, f); err != nil {
				return err
			}
			if f.Kind == FileEpoll && len(f.Watches) > 0 {
				epolls = append(epolls, f)
			}
		default:
			return fmt.Errorf("descriptor %d is of a kind this mosaic does not know (%q): restore it with the version that made the image", f.Fd, f.Kind)
		}
		if int(fd) != f.Fd {
			if _, err := r.call(unix.SYS_DUP3, fd, uint64(f.Fd), uint64(f.Flags&unix.O_CLOEXEC)); err != nil {
				return fmt.Errorf("move %s to descriptor %d: %w", f.Path, f.Fd, err)
			}
			r.call(unix.SYS_CLOSE, fd)
		} else if f.Flags&unix.O_CLOEXEC != 0 {
			r.call(unix.SYS_FCNTL, fd, unix.F_SETFD, unix.FD_CLOEXEC)
		}
		switch f.Kind {
		case FileRegular, FileDirectory, FileDeleted, FileMemfd:
		default:
			continue // no position to keep
		}
		if _, err := r.call(unix.SYS_LSEEK, uint64(f.Fd), uint64(f.Pos), 0); err != nil {
			return fmt.Errorf("seek %s to %d: %w", f.Path, f.Pos, err)
		}
	}
	for _, f := range epolls {
		if err := addWatches(r, f); err != nil {
			return err
		}
	}
	// Permissions and seals last: every descriptor is open by now, as
	// the process opened them before it took its own rights away.
	for _, g := range ghosts {
		// As the process: it may only do to its own file what it could.
		if _, err := r.call(unix.SYS_FCHMOD, uint64(g.Fd), uint64(g.Mode)); err != nil {
			return fmt.Errorf("set the permissions of %s: %w", describeGhost(g), err)
		}
		if g.Seals != 0 {
			if _, err := r.call(unix.SYS_FCNTL, uint64(g.Fd), unix.F_ADD_SEALS, uint64(g.Seals)); err != nil {
				return fmt.Errorf("seal %s: %w", describeGhost(g), err)
			}
		}
	}
	return nil
}

// placeShared puts one of the tree's open files (File.SharedFile, made
// by makeTreeShared with its offset, flags or count) at f's descriptor.
func placeShared(r *remote, f File, tree treeShared) error {
	k := f.SharedFile - 1
	if k < 0 || k >= len(tree.fds) || tree.files[k].Kind != f.Kind {
		return fmt.Errorf("descriptor %d names an open file of its processes the image does not have", f.Fd)
	}
	if _, err := r.call(unix.SYS_DUP3, uint64(tree.fds[k]), uint64(f.Fd), uint64(f.Flags&unix.O_CLOEXEC)); err != nil {
		return fmt.Errorf("put %s, open in its other processes too, at descriptor %d: %w", f.name(), f.Fd, err)
	}
	return nil
}

// name says which open file f is, for a message: its path, or (an event
// descriptor's) its kind.
func (f File) name() string {
	if f.Path != "" {
		return f.Path
	}
	return "its " + f.Kind
}

// openFile opens a file, directory or device again as the descriptor f
// says (not at its number yet).
func openFile(r *remote, f File) (uint64, error) {
	flags := f.Flags &^ (unix.O_CREAT | unix.O_EXCL | unix.O_TRUNC | unix.O_CLOEXEC | unix.O_NOCTTY)
	fd, err := r.callScratch(unix.SYS_OPENAT, cString(f.Path), 0, nil, atFDCWD, r.scratch, uint64(flags), 0)
	if err != nil {
		return 0, fmt.Errorf("reopen %s as descriptor %d: %w", f.Path, f.Fd, err)
	}
	return fd, nil
}

// treeShared are the pipes, open files and shared memory of a process's
// tree (Image.Shared, Image.SharedFiles, Image.SharedMem), made in the
// first process's stub before the others were forked from it: each
// process has them at ends, fds and mems.
type treeShared struct {
	chans []Channel
	ends  [][2]int
	files []File
	fds   []int
	mems  []int // a memory file per Image.SharedMem
}

// keepStreams copies the stub's descriptors 0, 1 and 2 (its home's
// streams) above hi, if the image places one of them elsewhere, and
// returns the copies' numbers (-1: not copied).
func keepStreams(r *remote, files []File, hi int) ([3]int, error) {
	streams := [3]int{-1, -1, -1}
	moved := slices.ContainsFunc(files, func(f File) bool {
		return f.Kind == FileStdio && f.Stream != 0 && f.Stream-1 != f.Fd
	})
	if !moved {
		return streams, nil
	}
	for k := range streams {
		fd, err := r.call(unix.SYS_FCNTL, uint64(k), unix.F_DUPFD_CLOEXEC, uint64(hi))
		if err != nil {
			if errors.Is(err, unix.EBADF) {
				continue // the stub was not given it
			}
			return streams, fmt.Errorf("keep its home's stream %d: %w", k, err)
		}
		streams[k] = int(fd)
	}
	return streams, nil
}

// restoreGhost makes a deleted or memory file open at f.Fd anew, in the
// process (so that it is the process's own, as its user), with its
// content, and returns a descriptor of it opened with f's flags.
func restoreGhost(r *remote, f File) (uint64, error) {
	from := f.Same - 1
	if f.Same == 0 {
		tmp, err := makeGhost(r, f)
		if err != nil {
			return 0, err
		}
		defer r.call(unix.SYS_CLOSE, tmp)
		if err := fillGhost(r.tid, int(tmp), f); err != nil {
			return 0, fmt.Errorf("write the content of %s: %w", describeGhost(f), err)
		}
		from = int(tmp)
	}
	// Opened again through /proc, as the process opened it: its access
	// mode and status flags, an open file of its own. (O_NOFOLLOW, which
	// Python's tempfile uses, said how to find the file then; the link in
	// /proc is one to follow.)
	flags := f.Flags &^ (unix.O_CREAT | unix.O_EXCL | unix.O_TRUNC | unix.O_CLOEXEC | unix.O_NOCTTY | unix.O_TMPFILE | unix.O_NOFOLLOW)
	fd, err := r.callScratch(unix.SYS_OPENAT, cString(fmt.Sprintf("/proc/self/fd/%d", from)), 0, nil, atFDCWD, r.scratch, uint64(flags), 0)
	if err != nil {
		return 0, fmt.Errorf("open %s as descriptor %d: %w", describeGhost(f), f.Fd, err)
	}
	return fd, nil
}

// makeGhost creates the file, empty: a memory file of the same name, or a
// file in no directory (O_TMPFILE) of the directory the deleted one was
// in, on the same file system as far as this node's is the same.
func makeGhost(r *remote, f File) (uint64, error) {
	if f.Kind == FileMemfd {
		fd, err := r.callScratch(unix.SYS_MEMFD_CREATE, cString(f.Path), 0, nil, r.scratch, unix.MFD_CLOEXEC|unix.MFD_ALLOW_SEALING)
		if err != nil {
			return 0, fmt.Errorf("make %s: %w", describeGhost(f), err)
		}
		return fd, nil
	}
	dir := filepath.Dir(f.Path)
	fd, err := r.callScratch(unix.SYS_OPENAT, cString(dir), 0, nil, atFDCWD, r.scratch, unix.O_TMPFILE|unix.O_RDWR|unix.O_CLOEXEC, 0o600)
	if err == nil {
		return fd, nil
	}
	if !errors.Is(err, unix.EOPNOTSUPP) && !errors.Is(err, unix.EISDIR) && !errors.Is(err, unix.EINVAL) {
		if errors.Is(err, unix.ENOENT) {
			return 0, fmt.Errorf("make %s: its directory %s is not on this node", describeGhost(f), dir)
		}
		return 0, fmt.Errorf("make %s in %s: %w", describeGhost(f), dir, err)
	}
	// A file system without O_TMPFILE: a name of our own, gone at once.
	name := filepath.Join(dir, fmt.Sprintf(".mosaic-deleted-%d-%d", r.tid, f.Fd))
	fd, err = r.callScratch(unix.SYS_OPENAT, cString(name), 0, nil, atFDCWD, r.scratch, unix.O_CREAT|unix.O_EXCL|unix.O_RDWR|unix.O_CLOEXEC, 0o600)
	if err != nil {
		return 0, fmt.Errorf("make %s in %s: %w", describeGhost(f), dir, err)
	}
	if _, err := r.callScratch(unix.SYS_UNLINKAT, cString(name), 0, nil, atFDCWD, r.scratch, 0); err != nil {
		r.call(unix.SYS_CLOSE, fd)
		return 0, fmt.Errorf("remove the name %s it was made under: %w", name, err)
	}
	return fd, nil
}

// fillGhost writes f's content into descriptor fd of process pid.
func fillGhost(pid, fd int, f File) error {
	w, err := os.OpenFile(fmt.Sprintf("/proc/%d/fd/%d", pid, fd), os.O_WRONLY, 0)
	if err != nil {
		return err
	}
	defer w.Close()
	if err := w.Truncate(f.Size); err != nil {
		return err
	}
	for _, e := range f.Extents {
		if _, err := w.WriteAt(e.Data, e.Off); err != nil {
			return err
		}
	}
	return w.Close()
}

func describeGhost(f File) string {
	if f.Kind == FileMemfd {
		return "the memory file " + f.Path
	}
	return "the deleted file " + f.Path
}
