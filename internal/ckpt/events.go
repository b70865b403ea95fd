package ckpt

import (
	"encoding/binary"
	"encoding/hex"
	"errors"
	"fmt"
	"os"
	"slices"
	"strconv"
	"strings"

	"golang.org/x/sys/unix"
)

// Kernel event descriptors: eventfd, signalfd, timerfd, epoll and inotify. Each
// keeps its state in the kernel, and fdinfo shows all of it: the restore
// makes each again from that (as CRIU does), inside the process, at its
// descriptor. An epoll set's watches are added last, once every
// descriptor they name is open. Every Go program holds an epoll set and
// an eventfd (its runtime's poller), as do most event loops.

// tfdSetTicks is TFD_IOC_SET_TICKS (_IOW('T', 0, u64)): a timerfd's
// expirations not yet read, which only this ioctl can put back.
const tfdSetTicks = 0x40085400

// fdinfoField returns the value of the fdinfo line "key:".
func fdinfoField(info, key string) (string, bool) {
	for line := range strings.Lines(info) {
		if k, v, ok := strings.Cut(line, ":"); ok && k == key {
			return strings.TrimSpace(v), true
		}
	}
	return "", false
}

// hexField returns the fdinfo field key, a hexadecimal number.
func hexField(info, key string) (uint64, error) {
	v, _ := fdinfoField(info, key)
	return strconv.ParseUint(v, 16, 64)
}

// eventFile describes the event descriptor f, or says why it cannot
// move; nil and "" if it is none of these.
func eventFile(pid int, f fdEntry) (*File, string) {
	file := &File{Fd: f.Fd, Flags: f.Flags}
	unknown := func(what string) (*File, string) {
		return nil, fmt.Sprintf("%s, whose %s this kernel does not show", describeLink(f.Link), what)
	}
	switch f.Link {
	case "anon_inode:[eventfd]":
		file.Kind = FileEventfd
		var err error
		if file.Count, err = hexField(f.Info, "eventfd-count"); err != nil {
			return unknown("count")
		}
		// Shown since Linux 6.6; before, a semaphore is taken for a
		// counter (reads then take all of it at once).
		v, _ := fdinfoField(f.Info, "eventfd-semaphore")
		file.Semaphore = v == "1"
	case "anon_inode:[signalfd]":
		file.Kind = FileSignalfd
		var err error
		if file.SigMask, err = hexField(f.Info, "sigmask"); err != nil {
			return unknown("signal mask")
		}
	case "anon_inode:[timerfd]":
		file.Kind = FileTimerfd
		var err error
		v, _ := fdinfoField(f.Info, "clockid")
		if file.Clock, err = strconv.Atoi(v); err != nil {
			return unknown("clock")
		}
		v, _ = fdinfoField(f.Info, "ticks")
		if file.Count, err = strconv.ParseUint(v, 10, 64); err != nil {
			return unknown("expirations")
		}
		v, _ = fdinfoField(f.Info, "settime flags")
		flags, err := strconv.ParseUint(v, 8, 32)
		if err != nil {
			return unknown("flags")
		}
		if flags&unix.TFD_TIMER_CANCEL_ON_SET != 0 {
			return nil, describeLink(f.Link) + " that is cancelled when the clock is set (a node's clock is its own)"
		}
		for key, to := range map[string]*int64{"it_value": &file.ValueNs, "it_interval": &file.IntervalNs} {
			v, _ := fdinfoField(f.Info, key)
			var s, ns int64
			if _, err := fmt.Sscanf(v, "(%d, %d)", &s, &ns); err != nil {
				return unknown(key)
			}
			*to = s*1e9 + ns
		}
	case "anon_inode:[eventpoll]":
		file.Kind = FileEpoll
		for line := range strings.Lines(f.Info) {
			w, ok, why := parseWatch(pid, line)
			if why != "" {
				return nil, why
			}
			if ok {
				file.Watches = append(file.Watches, w)
			}
		}
	case "anon_inode:inotify":
		file.Kind = FileInotify
		var mounts map[uint64]string
		for line := range strings.Lines(f.Info) {
			if !strings.HasPrefix(line, "inotify ") {
				continue
			}
			if mounts == nil {
				var err error
				if mounts, err = mountPoints(); err != nil {
					return nil, fmt.Sprintf("an inotify descriptor, whose files could not be found (%v)", err)
				}
			}
			w, why := parseInotifyWatch(line, mounts)
			if why != "" {
				return nil, why
			}
			file.Watches = append(file.Watches, w)
		}
		slices.SortFunc(file.Watches, func(a, b Watch) int { return a.Wd - b.Wd })
	default:
		return nil, ""
	}
	return file, ""
}

// pendingEvents says whether an inotify descriptor holds events not yet
// read (a copy of it asked with FIONREAD), which cannot move: reading
// them would take them from the process. A descriptor that cannot be
// looked at is taken for one that holds some.
func pendingEvents(pid, fd int) bool {
	c, err := copyFD(pid, fd)
	if err != nil {
		return true
	}
	defer unix.Close(c)
	n, err := unix.IoctlGetInt(c, unix.TIOCINQ) // FIONREAD
	return err != nil || n > 0
}

// parseInotifyWatch reads an inotify descriptor's fdinfo line for one
// watch, "inotify wd:1 ino:98400d sdev:fe00000 mask:2 ignored_mask:0
// fhandle-bytes:8 fhandle-type:1 f_handle:0d40...", and finds the watched
// file's path from its handle (open_by_handle_at, on the mount of its
// device), by which the restore watches it again.
func parseInotifyWatch(line string, mounts map[uint64]string) (Watch, string) {
	kv := map[string]string{}
	for _, f := range strings.Fields(line)[1:] {
		if k, v, ok := strings.Cut(f, ":"); ok {
			kv[k] = v
		}
	}
	wd, err1 := strconv.ParseUint(kv["wd"], 16, 32)
	mask, err2 := strconv.ParseUint(kv["mask"], 16, 32)
	sdev, err3 := strconv.ParseUint(kv["sdev"], 16, 32)
	typ, err4 := strconv.ParseInt(kv["fhandle-type"], 16, 32)
	handle, err5 := hex.DecodeString(kv["f_handle"])
	if err := errors.Join(err1, err2, err3, err4, err5); err != nil {
		return Watch{}, "an inotify descriptor whose watches this kernel shows in a form this mosaic does not read: " + strings.TrimSpace(line)
	}
	mount, ok := mounts[unix.Mkdev(uint32(sdev>>20), uint32(sdev&0xfffff))]
	if !ok {
		return Watch{}, "an inotify watch on a file system this node does not show"
	}
	mfd, err := unix.Open(mount, unix.O_RDONLY|unix.O_DIRECTORY|unix.O_CLOEXEC, 0) // not O_PATH: open_by_handle_at refuses one
	if err != nil {
		return Watch{}, fmt.Sprintf("an inotify watch on %s, which could not be opened (%v)", mount, err)
	}
	defer unix.Close(mfd)
	fd, err := unix.OpenByHandleAt(mfd, unix.NewFileHandle(int32(typ), handle), unix.O_PATH|unix.O_CLOEXEC)
	if err != nil {
		return Watch{}, fmt.Sprintf("an inotify watch on a file of %s that cannot be found (%v)", mount, err)
	}
	path, err := os.Readlink(fmt.Sprintf("/proc/self/fd/%d", fd))
	unix.Close(fd)
	if err != nil || !strings.HasPrefix(path, "/") || strings.HasSuffix(path, " (deleted)") {
		return Watch{}, "an inotify watch on a deleted file"
	}
	return Watch{Wd: int(wd), Events: uint32(mask), Path: path}, ""
}

// mountPoints maps each device to a mount point of its, from mountinfo.
func mountPoints() (map[uint64]string, error) {
	b, err := os.ReadFile("/proc/self/mountinfo")
	if err != nil {
		return nil, err
	}
	out := map[uint64]string{}
	for line := range strings.Lines(string(b)) {
		// "36 35 98:0 /mnt1 /mnt2 rw,noatime master:1 - ext3 /dev/root rw"
		f := strings.Fields(line)
		if len(f) < 5 || f[3] != "/" {
			continue // a bind mount of a subtree: its handles may not resolve there
		}
		var major, minor uint32
		if _, err := fmt.Sscanf(f[2], "%d:%d", &major, &minor); err != nil {
			continue
		}
		dev := unix.Mkdev(major, minor)
		if _, ok := out[dev]; !ok {
			out[dev] = unescapeMount(f[4])
		}
	}
	return out, nil
}

// unescapeMount undoes mountinfo's octal escapes (\040 for a space).
func unescapeMount(s string) string {
	if !strings.Contains(s, `\`) {
		return s
	}
	var b strings.Builder
	for i := 0; i < len(s); i++ {
		if s[i] == '\\' && i+3 < len(s) {
			if v, err := strconv.ParseUint(s[i+1:i+4], 8, 8); err == nil {
				b.WriteByte(byte(v))
				i += 3
				continue
			}
		}
		b.WriteByte(s[i])
	}
	return b.String()
}

// parseWatch reads an epoll set's fdinfo line for one watch, "tfd: 3
// events: 19 data: 3 pos:0 ino:40e sdev:10", and makes sure the
// descriptor it names is still the file watched (a watch outlives the
// descriptor it was made with, while another holds the file).
func parseWatch(pid int, line string) (Watch, bool, string) {
	f := strings.Fields(line)
	if len(f) < 9 || f[0] != "tfd:" || f[2] != "events:" || f[4] != "data:" {
		return Watch{}, false, ""
	}
	var w Watch
	fd, err1 := strconv.Atoi(f[1])
	events, err2 := strconv.ParseUint(f[3], 16, 32)
	data, err3 := strconv.ParseUint(f[5], 16, 64)
	ino, err4 := strconv.ParseUint(strings.TrimPrefix(f[7], "ino:"), 16, 64)
	sdev, err5 := strconv.ParseUint(strings.TrimPrefix(f[8], "sdev:"), 16, 32)
	if err1 != nil || err2 != nil || err3 != nil || err4 != nil || err5 != nil {
		return w, false, "an epoll set whose watches this kernel shows in a form this mosaic does not read: " + strings.TrimSpace(line)
	}
	w.Fd, w.Events, w.Data = fd, uint32(events), data
	var st unix.Stat_t
	// The kernel's dev_t: 12 bits of major, 20 of minor.
	dev := unix.Mkdev(uint32(sdev>>20), uint32(sdev&0xfffff))
	if err := unix.Stat(fmt.Sprintf("/proc/%d/fd/%d", pid, fd), &st); err != nil || st.Ino != ino || st.Dev != dev {
		return w, false, fmt.Sprintf("an epoll set watching descriptor %d, since closed (the file it watches is open elsewhere)", fd)
	}
	return w, true, ""
}

// makeEvent makes the event descriptor f anew in the process; an epoll
// set without its watches (addWatches).
func makeEvent(r *remote, f File) (uint64, error) {
	nonblock := uint64(f.Flags & unix.O_NONBLOCK)
	switch f.Kind {
	case FileEventfd:
		flags := nonblock
		if f.Semaphore {
			flags |= unix.EFD_SEMAPHORE
		}
		// Made empty and written: its count is 64 bits, eventfd2's
		// initial value 32.
		fd, err := r.call(unix.SYS_EVENTFD2, 0, flags)
		if err != nil {
			return 0, fmt.Errorf("make the eventfd of descriptor %d: %w", f.Fd, err)
		}
		if f.Count > 0 {
			if _, err := r.callScratch(unix.SYS_WRITE, le64(f.Count), 0, nil, fd, r.scratch, 8); err != nil {
				r.call(unix.SYS_CLOSE, fd)
				return 0, fmt.Errorf("set the count of the eventfd of descriptor %d: %w", f.Fd, err)
			}
		}
		return fd, nil
	case FileSignalfd:
		fd, err := r.callScratch(unix.SYS_SIGNALFD4, le64(f.SigMask), 0, nil, ^uint64(0), r.scratch, 8, nonblock)
		if err != nil {
			return 0, fmt.Errorf("make the signalfd of descriptor %d: %w", f.Fd, err)
		}
		return fd, nil
	case FileTimerfd:
		fd, err := r.call(unix.SYS_TIMERFD_CREATE, uint64(f.Clock), nonblock)
		if err != nil {
			return 0, fmt.Errorf("make the timerfd of descriptor %d (clock %d): %w", f.Fd, f.Clock, err)
		}
		fail := func(what string, err error) (uint64, error) {
			r.call(unix.SYS_CLOSE, fd)
			return 0, fmt.Errorf("%s of the timerfd of descriptor %d: %w", what, f.Fd, err)
		}
		// Armed again for what was left of it, relative: a node's clock
		// is its own, the time left is not. A periodic one that expired
		// and was not read since shows no time left (the kernel arms it
		// again as it is read): it goes on from one period on.
		value := f.ValueNs
		if value == 0 && f.Count > 0 {
			value = f.IntervalNs
		}
		if value > 0 {
			spec := le64(uint64(f.IntervalNs/1e9), uint64(f.IntervalNs%1e9), uint64(value/1e9), uint64(value%1e9))
			if _, err := r.callScratch(unix.SYS_TIMERFD_SETTIME, spec, 0, nil, fd, 0, r.scratch, 0); err != nil {
				return fail("set the time", err)
			}
		}
		if f.Count > 0 {
			if _, err := r.callScratch(unix.SYS_IOCTL, le64(f.Count), 0, nil, fd, tfdSetTicks, r.scratch); err != nil {
				return fail("put back the expirations", err)
			}
		}
		return fd, nil
	case FileEpoll:
		fd, err := r.call(unix.SYS_EPOLL_CREATE1, 0)
		if err != nil {
			return 0, fmt.Errorf("make the epoll set of descriptor %d: %w", f.Fd, err)
		}
		return fd, nil
	case FileInotify:
		// Non-blocking while it is set up: the numbers taken and let go
		// leave an IN_IGNORED event each, read away here.
		fd, err := r.call(unix.SYS_INOTIFY_INIT1, unix.IN_NONBLOCK)
		if err != nil {
			return 0, fmt.Errorf("make the inotify descriptor %d: %w", f.Fd, err)
		}
		spares, err := addInotifyWatches(r, fd, f)
		if err == nil {
			err = drainIgnored(r, fd, f, spares)
		}
		if err != nil {
			r.call(unix.SYS_CLOSE, fd)
			return 0, err
		}
		if nonblock == 0 {
			if _, err := r.call(unix.SYS_FCNTL, fd, unix.F_SETFL, 0); err != nil {
				r.call(unix.SYS_CLOSE, fd)
				return 0, fmt.Errorf("make the inotify descriptor %d blocking: %w", f.Fd, err)
			}
		}
		return fd, nil
	}
	return 0, fmt.Errorf("descriptor %d is not an event descriptor", f.Fd)
}

// addInotifyWatches watches f's files again from the new inotify
// descriptor fd, each under its own watch descriptor number: the kernel
// gives the next number up each time (it does not reuse freed ones at
// once), so numbers the process no longer uses are taken and let go on a
// file it does not watch.
func addInotifyWatches(r *remote, fd uint64, f File) (spares map[int32]bool, err error) {
	spare := ""
	for _, p := range []string{"/", "/dev/null", "/proc"} {
		if !slices.ContainsFunc(f.Watches, func(w Watch) bool { return w.Path == p }) {
			spare = p
			break
		}
	}
	spares = map[int32]bool{}
	next := 1
	for _, w := range f.Watches {
		for next < w.Wd {
			wd, err := r.callScratch(unix.SYS_INOTIFY_ADD_WATCH, cString(spare), 0, nil, fd, r.scratch, unix.IN_DELETE_SELF)
			if err != nil {
				return nil, fmt.Errorf("take watch number %d of inotify descriptor %d: %w", next, f.Fd, err)
			}
			r.call(unix.SYS_INOTIFY_RM_WATCH, fd, wd)
			spares[int32(wd)] = true
			next = int(wd) + 1
		}
		wd, err := r.callScratch(unix.SYS_INOTIFY_ADD_WATCH, cString(w.Path), 0, nil, fd, r.scratch, uint64(w.Events))
		if err != nil {
			return nil, fmt.Errorf("watch %s again from inotify descriptor %d: %w", w.Path, f.Fd, err)
		}
		if int(wd) != w.Wd {
			return nil, fmt.Errorf("watch %s again from inotify descriptor %d: it got watch number %d, not %d", w.Path, f.Fd, wd, w.Wd)
		}
		next = w.Wd + 1
	}
	return spares, nil
}

// drainIgnored reads away the IN_IGNORED events the spare watches left.
// An event of a real watch among them (a watched file changed during the
// restore) cannot be given back: the restore fails, and the process
// stays where it was.
func drainIgnored(r *remote, fd uint64, f File, spares map[int32]bool) error {
	buf := make([]byte, min(scratchSize, 4096))
	for {
		n, err := r.call(unix.SYS_READ, fd, r.scratch, uint64(len(buf)))
		if err != nil {
			return nil // EAGAIN: nothing left
		}
		if err := r.read(r.scratch, buf[:n]); err != nil {
			return err
		}
		for b := buf[:n]; len(b) >= 16; {
			wd, mask, l := int32(binary.LittleEndian.Uint32(b)), binary.LittleEndian.Uint32(b[4:]), binary.LittleEndian.Uint32(b[12:])
			if !spares[wd] || mask != unix.IN_IGNORED {
				return fmt.Errorf("the files inotify descriptor %d watches changed while it was made again (an event would be lost): move it again", f.Fd)
			}
			b = b[min(uint32(len(b)), 16+l):]
		}
	}
}

// addWatches gives the epoll set at f.Fd its watches back.
func addWatches(r *remote, f File) error {
	for _, w := range f.Watches {
		// struct epoll_event is packed on x86-64: events, then data.
		ev := make([]byte, 12)
		binary.LittleEndian.PutUint32(ev, w.Events)
		binary.LittleEndian.PutUint64(ev[4:], w.Data)
		if _, err := r.callScratch(unix.SYS_EPOLL_CTL, ev, 0, nil, uint64(f.Fd), unix.EPOLL_CTL_ADD, uint64(w.Fd), r.scratch); err != nil {
			return fmt.Errorf("watch descriptor %d in the epoll set of descriptor %d again: %w", w.Fd, f.Fd, err)
		}
	}
	return nil
}
