package ckpt

import (
	"encoding/binary"
	"fmt"
	"strconv"
	"strings"

	"golang.org/x/sys/unix"
)

// Kernel event descriptors: eventfd, signalfd, timerfd and epoll. Each
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
		v, _ := fdinfoField(f.Info, "eventfd-count")
		n, err := strconv.ParseUint(v, 16, 64)
		if err != nil {
			return unknown("count")
		}
		file.Count = n
		// Shown since Linux 6.6; before, a semaphore is taken for a
		// counter (reads then take all of it at once).
		v, _ = fdinfoField(f.Info, "eventfd-semaphore")
		file.Semaphore = v == "1"
	case "anon_inode:[signalfd]":
		file.Kind = FileSignalfd
		v, _ := fdinfoField(f.Info, "sigmask")
		mask, err := strconv.ParseUint(v, 16, 64)
		if err != nil {
			return unknown("signal mask")
		}
		file.SigMask = mask
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
	default:
		return nil, ""
	}
	return file, ""
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
	}
	return 0, fmt.Errorf("descriptor %d is not an event descriptor", f.Fd)
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
