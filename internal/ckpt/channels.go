package ckpt

import (
	"encoding/binary"
	"errors"
	"fmt"
	"os"
	"slices"
	"strconv"
	"strings"

	"golang.org/x/sys/unix"
)

// Channels: pipes and socket pairs every end of which the process holds
// itself (the self-pipe of an event loop, the socket pair Python's
// asyncio wakes itself with). Nobody else can tell the copy from the
// original, so they move: made again in the restored process, with what
// was written into them and not yet read, their buffer sizes and a
// socket's shut-down directions. A pipe or socket anyone else holds an
// end of (another process, the home's relay) pins the process, as do
// sockets with a name, connected elsewhere, or with descriptors in
// flight.

// Channel is a pipe or socket pair of the process's own.
type Channel struct {
	Kind     string // FilePipe or FileSocket
	SockType int    // a socket pair's SOCK_STREAM, SOCK_DGRAM or SOCK_SEQPACKET
	PipeSize int    // a pipe's capacity (F_GETPIPE_SZ)
	// Held says which ends the process holds (a pipe whose writers all
	// closed: only its read end). For a pipe end 0 reads, 1 writes.
	Held [2]bool
	// Queued is what end i would read next: a pipe's content (end 0);
	// a socket's messages (a stream's bytes as one).
	Queued [2][][]byte
	// Unconnected: a lone local socket, never connected (made again with
	// socket(2), not as a pair). A socket whose peer closed is a pair of
	// which only end 0 is held.
	Unconnected bool
	// A socket end's shut-down directions (RCV_SHUTDOWN 1, SEND_SHUTDOWN
	// 2) and SO_RCVBUF and SO_SNDBUF as getsockopt gives them.
	Shutdown [2]int
	RcvBuf   [2]int
	SndBuf   [2]int
}

// chanEnd is a descriptor that may be an end of a channel.
type chanEnd struct {
	f   fdEntry
	ino uint64
	at  int // its index in the dumped files
}

// resolveChannels decides, for the pipe and socket descriptors ends,
// which are ends of channels of the process's own: it fills in their
// files (Kind, Channel, End) and returns the channels, with what they
// hold if content; what pins the process, by descriptor, in why.
func resolveChannels(pid int, ends []chanEnd, files []File, content bool) (chans []Channel, why map[int]string, err error) {
	why = map[int]string{}
	if len(ends) == 0 {
		return nil, why, nil
	}
	pipes := map[uint64][]chanEnd{}
	var sockets []chanEnd
	for _, e := range ends {
		if strings.HasPrefix(e.f.Link, "pipe:") {
			pipes[e.ino] = append(pipes[e.ino], e)
		} else {
			sockets = append(sockets, e)
		}
	}
	// Socket pairs: each end's peer, from the kernel (sock_diag).
	byIno := map[uint64]chanEnd{}
	for _, e := range sockets {
		byIno[e.ino] = e
	}
	type pair struct{ a, b chanEnd }
	var pairs []pair
	var lone []chanEnd // its peer closed, or never connected
	unconnected := map[uint64]bool{}
	paired := map[uint64]bool{}
	for _, e := range sockets {
		if paired[e.ino] {
			continue
		}
		d, err := unixDiag(uint32(e.ino))
		if err != nil {
			why[e.f.Fd] = "a network or local socket" // not AF_UNIX, or not ours to see
			continue
		}
		peer, ok := byIno[uint64(d.peer)]
		switch {
		case d.named:
			why[e.f.Fd] = "a local socket with a name"
		case d.peer == 0:
			lone = append(lone, e)
			unconnected[e.ino] = d.state != tcpEstablished
		case !ok:
			why[e.f.Fd] = "a network or local socket"
		default:
			paired[e.ino], paired[peer.ino] = true, true
			pairs = append(pairs, pair{e, peer})
		}
	}
	// Nobody else may hold any of them.
	links := map[string]bool{}
	for ino := range pipes {
		links[fmt.Sprintf("pipe:[%d]", ino)] = true
	}
	for _, p := range pairs {
		links[fmt.Sprintf("socket:[%d]", p.a.ino)] = true
		links[fmt.Sprintf("socket:[%d]", p.b.ino)] = true
	}
	for _, e := range lone {
		links[fmt.Sprintf("socket:[%d]", e.ino)] = true
	}
	// Looked for at the freeze only: it reads every process's
	// descriptors (2.6 ms with 70 processes here), too much for Movable,
	// which `mosaic ps` and the policies ask about every process often.
	others := map[string]int{}
	if content {
		if others, err = heldElsewhere([]int{pid}, links); err != nil {
			return nil, nil, err
		}
	}
	for ino, es := range pipes {
		c := Channel{Kind: FilePipe}
		bad := ""
		if other := others[fmt.Sprintf("pipe:[%d]", ino)]; other != 0 {
			bad = fmt.Sprintf("a pipe process %d holds too", other)
		}
		for _, e := range es {
			switch {
			case e.f.Flags&unix.O_DIRECT != 0:
				bad = "a pipe of packets (O_DIRECT)"
			case e.f.Flags&unix.O_ACCMODE == unix.O_RDONLY:
				c.Held[0] = true
			case e.f.Flags&unix.O_ACCMODE == unix.O_WRONLY:
				c.Held[1] = true
			default:
				bad = "a pipe opened for reading and writing"
			}
		}
		if bad != "" {
			for _, e := range es {
				why[e.f.Fd] = bad
			}
			continue
		}
		if content {
			if err := readPipe(pid, es[0].f.Fd, &c); err != nil {
				return nil, nil, fmt.Errorf("read what its pipe (descriptor %d) holds: %w", es[0].f.Fd, err)
			}
		}
		chans = append(chans, c)
		for _, e := range es {
			end := 0
			if e.f.Flags&unix.O_ACCMODE == unix.O_WRONLY {
				end = 1
			}
			files[e.at] = File{Fd: e.f.Fd, Kind: FilePipe, Flags: e.f.Flags, Channel: len(chans), End: end}
		}
	}
	for _, p := range pairs {
		if other := others[fmt.Sprintf("socket:[%d]", p.a.ino)] + others[fmt.Sprintf("socket:[%d]", p.b.ino)]; other != 0 {
			why[p.a.f.Fd], why[p.b.f.Fd] = "a socket pair another process holds an end of", "a socket pair another process holds an end of"
			continue
		}
		c := Channel{Kind: FileSocket, Held: [2]bool{true, true}}
		if bad, err := readSocketPair(pid, [2]int{p.a.f.Fd, p.b.f.Fd}, &c, content); err != nil {
			return nil, nil, fmt.Errorf("read the socket pair of descriptors %d and %d: %w", p.a.f.Fd, p.b.f.Fd, err)
		} else if bad != "" {
			why[p.a.f.Fd], why[p.b.f.Fd] = bad, bad
			continue
		}
		chans = append(chans, c)
		files[p.a.at] = File{Fd: p.a.f.Fd, Kind: FileSocket, Flags: p.a.f.Flags, Channel: len(chans), End: 0}
		files[p.b.at] = File{Fd: p.b.f.Fd, Kind: FileSocket, Flags: p.b.f.Flags, Channel: len(chans), End: 1}
	}
	for _, e := range lone {
		if others[fmt.Sprintf("socket:[%d]", e.ino)] != 0 {
			why[e.f.Fd] = "a local socket another process holds"
			continue
		}
		c := Channel{Kind: FileSocket, Held: [2]bool{true, false}, Unconnected: unconnected[e.ino]}
		if bad, err := readLoneSocket(pid, e.f.Fd, &c, content); err != nil {
			return nil, nil, fmt.Errorf("read the socket of descriptor %d: %w", e.f.Fd, err)
		} else if bad != "" {
			why[e.f.Fd] = bad
			continue
		}
		chans = append(chans, c)
		files[e.at] = File{Fd: e.f.Fd, Kind: FileSocket, Flags: e.f.Flags, Channel: len(chans), End: 0}
	}
	return chans, why, nil
}

// readLoneSocket reads a local socket whose peer closed (what is left to
// read in it), or that was never connected.
func readLoneSocket(pid, fd int, c *Channel, content bool) (string, error) {
	s, err := copyFD(pid, fd)
	if err != nil {
		return "", err
	}
	defer unix.Close(s)
	return readSocketEnd(s, 0, c, content && !c.Unconnected)
}

// copyFD returns a descriptor of this process on the open file of
// descriptor fd of process pid (pidfd_getfd), to look at; the caller
// closes it.
func copyFD(pid, fd int) (int, error) {
	pidfd, err := unix.PidfdOpen(pid, 0)
	if err != nil {
		return -1, err
	}
	defer unix.Close(pidfd)
	return unix.PidfdGetfd(pidfd, fd, 0)
}

// heldElsewhere returns, for each of the links ("pipe:[N]"), a process
// other than those of pids that holds it, if any. It reads every
// process's descriptors, which is why it is asked only about a process
// that holds channels of its own, or a tree with pipes between them.
func heldElsewhere(pids []int, links map[string]bool) (map[string]int, error) {
	procs, err := os.ReadDir("/proc")
	if err != nil {
		return nil, err
	}
	out := map[string]int{}
	for _, p := range procs {
		other, err := strconv.Atoi(p.Name())
		if err != nil || slices.Contains(pids, other) {
			continue
		}
		dir := "/proc/" + p.Name() + "/fd/"
		fds, err := os.ReadDir(dir)
		if err != nil {
			continue // gone, or a kernel thread
		}
		for _, fd := range fds {
			if l, err := os.Readlink(dir + fd.Name()); err == nil && links[l] {
				out[l] = other
			}
		}
	}
	return out, nil
}

// readPipe reads what the pipe at descriptor fd of pid holds, without
// taking it (tee), and its capacity.
func readPipe(pid, fd int, c *Channel) error {
	// Opened through /proc as a reader of its own: the process is frozen,
	// and nobody else holds it.
	src, err := unix.Open(fmt.Sprintf("/proc/%d/fd/%d", pid, fd), unix.O_RDONLY|unix.O_NONBLOCK|unix.O_CLOEXEC, 0)
	if err != nil {
		return err
	}
	defer unix.Close(src)
	if c.PipeSize, err = unix.FcntlInt(uintptr(src), unix.F_GETPIPE_SZ, 0); err != nil {
		return err
	}
	var p [2]int
	if err := unix.Pipe2(p[:], unix.O_CLOEXEC|unix.O_NONBLOCK); err != nil {
		return err
	}
	defer unix.Close(p[0])
	defer unix.Close(p[1])
	if _, err := unix.FcntlInt(uintptr(p[1]), unix.F_SETPIPE_SZ, c.PipeSize); err != nil {
		return err
	}
	n, err := unix.Tee(src, p[1], c.PipeSize, unix.SPLICE_F_NONBLOCK)
	if errors.Is(err, unix.EAGAIN) || n == 0 {
		return nil // empty
	} else if err != nil {
		return err
	}
	data := make([]byte, n)
	if _, err := unix.Read(p[0], data); err != nil {
		return err
	}
	c.Queued[0] = [][]byte{data}
	return nil
}

// readSocketPair reads each end's queued messages without taking them
// (MSG_PEEK, stepping with SO_PEEK_OFF), their buffer sizes and
// shut-down state; or says why the pair cannot move.
func readSocketPair(pid int, fds [2]int, c *Channel, content bool) (string, error) {
	pidfd, err := unix.PidfdOpen(pid, 0)
	if err != nil {
		return "", err
	}
	defer unix.Close(pidfd)
	for i, fd := range fds {
		s, err := unix.PidfdGetfd(pidfd, fd, 0)
		if err != nil {
			return "", err
		}
		bad, err := readSocketEnd(s, i, c, content)
		unix.Close(s)
		if bad != "" || err != nil {
			return bad, err
		}
	}
	return "", nil
}

func readSocketEnd(s, i int, c *Channel, content bool) (string, error) {
	var err error
	if c.SockType, err = unix.GetsockoptInt(s, unix.SOL_SOCKET, unix.SO_TYPE); err != nil {
		return "", err
	}
	if on, _ := unix.GetsockoptInt(s, unix.SOL_SOCKET, unix.SO_PASSCRED); on != 0 {
		return "a socket pair that passes credentials", nil
	}
	if c.RcvBuf[i], err = unix.GetsockoptInt(s, unix.SOL_SOCKET, unix.SO_RCVBUF); err != nil {
		return "", err
	}
	if c.SndBuf[i], err = unix.GetsockoptInt(s, unix.SOL_SOCKET, unix.SO_SNDBUF); err != nil {
		return "", err
	}
	if d, err := unixDiagOf(s); err == nil {
		c.Shutdown[i] = d.shutdown
	} else {
		return "", err
	}
	if !content {
		return "", nil
	}
	// Peeked one message (or a stream's bytes) at a time, the peek
	// offset stepping on; set back as it was.
	old, err := unix.GetsockoptInt(s, unix.SOL_SOCKET, unix.SO_PEEK_OFF)
	if err != nil {
		return "", err
	}
	if err := unix.SetsockoptInt(s, unix.SOL_SOCKET, unix.SO_PEEK_OFF, 0); err != nil {
		return "", err
	}
	defer unix.SetsockoptInt(s, unix.SOL_SOCKET, unix.SO_PEEK_OFF, old)
	buf := make([]byte, max(c.RcvBuf[i], 64<<10))
	oob := make([]byte, 256)
	for {
		n, oobn, _, _, err := unix.Recvmsg(s, buf, oob, unix.MSG_PEEK|unix.MSG_DONTWAIT)
		if errors.Is(err, unix.EAGAIN) {
			return "", nil
		} else if err != nil {
			return "", err
		}
		if oobn > 0 {
			// Descriptors in flight came to us with the peek: let them go.
			if msgs, err := unix.ParseSocketControlMessage(oob[:oobn]); err == nil {
				for _, m := range msgs {
					if fds, err := unix.ParseUnixRights(&m); err == nil {
						for _, fd := range fds {
							unix.Close(fd)
						}
					}
				}
			}
			return "a socket pair with descriptors or credentials in flight", nil
		}
		if n == 0 && c.SockType == unix.SOCK_STREAM {
			return "", nil // the end of a stream shut down
		} else if n == 0 {
			// An empty datagram does not move the peek offset on.
			return "a socket pair with an empty message queued", nil
		}
		c.Queued[i] = append(c.Queued[i], append([]byte(nil), buf[:n]...))
	}
}

// unixDiagInfo is what sock_diag tells of a local socket.
type unixDiagInfo struct {
	peer     uint32
	named    bool
	shutdown int
	state    int
}

// tcpEstablished is TCP_ESTABLISHED, a connected local socket's state.
const tcpEstablished = 1

// unixDiagOf asks about the socket s.
func unixDiagOf(s int) (unixDiagInfo, error) {
	var st unix.Stat_t
	if err := unix.Fstat(s, &st); err != nil {
		return unixDiagInfo{}, err
	}
	return unixDiag(uint32(st.Ino))
}

// unixDiag asks the kernel (NETLINK_SOCK_DIAG) about the local socket
// of inode ino: its peer, whether it has a name, its shut-down state.
// Neither /proc nor getsockopt says who a socket's peer is.
func unixDiag(ino uint32) (unixDiagInfo, error) {
	const (
		udiagShowName = 0x1
		udiagShowPeer = 0x4
		attrName      = 0
		attrPeer      = 2
		attrShutdown  = 6
	)
	nl, err := unix.Socket(unix.AF_NETLINK, unix.SOCK_DGRAM|unix.SOCK_CLOEXEC, unix.NETLINK_SOCK_DIAG)
	if err != nil {
		return unixDiagInfo{}, err
	}
	defer unix.Close(nl)
	req := make([]byte, 16+24)
	binary.LittleEndian.PutUint32(req[0:], uint32(len(req)))
	binary.LittleEndian.PutUint16(req[4:], unix.SOCK_DIAG_BY_FAMILY)
	binary.LittleEndian.PutUint16(req[6:], unix.NLM_F_REQUEST)
	binary.LittleEndian.PutUint32(req[8:], 1) // sequence
	req[16] = unix.AF_UNIX
	binary.LittleEndian.PutUint32(req[20:], ^uint32(0)) // every state
	binary.LittleEndian.PutUint32(req[24:], ino)
	binary.LittleEndian.PutUint32(req[28:], udiagShowName|udiagShowPeer)
	binary.LittleEndian.PutUint32(req[32:], ^uint32(0)) // no cookie
	binary.LittleEndian.PutUint32(req[36:], ^uint32(0))
	if err := unix.Sendto(nl, req, 0, &unix.SockaddrNetlink{Family: unix.AF_NETLINK}); err != nil {
		return unixDiagInfo{}, err
	}
	buf := make([]byte, 8192)
	n, _, err := unix.Recvfrom(nl, buf, 0)
	if err != nil {
		return unixDiagInfo{}, err
	}
	for b := buf[:n]; len(b) >= 16; {
		l, typ := int(binary.LittleEndian.Uint32(b)), binary.LittleEndian.Uint16(b[4:])
		if l < 16 || l > len(b) {
			break
		}
		data := b[16:l]
		b = b[min(len(b), (l+3)&^3):]
		switch typ {
		case unix.NLMSG_ERROR:
			if len(data) >= 4 {
				if e := int32(binary.LittleEndian.Uint32(data)); e != 0 {
					return unixDiagInfo{}, unix.Errno(-e)
				}
			}
			continue
		case unix.SOCK_DIAG_BY_FAMILY:
		default:
			continue
		}
		if len(data) < 16 {
			break
		}
		info := unixDiagInfo{state: int(data[2])} // struct unix_diag_msg: family, type, state
		// Attributes (struct nlattr: length, type, value, aligned to 4)
		// follow struct unix_diag_msg.
		for b := data[16:]; len(b) >= 4; {
			l, typ := int(binary.LittleEndian.Uint16(b)), binary.LittleEndian.Uint16(b[2:])
			if l < 4 || l > len(b) {
				break
			}
			v := b[4:l]
			switch typ {
			case attrName:
				info.named = len(v) > 0
			case attrPeer:
				if len(v) >= 4 {
					info.peer = binary.LittleEndian.Uint32(v)
				}
			case attrShutdown:
				if len(v) >= 1 {
					info.shutdown = int(v[0])
				}
			}
			b = b[min(len(b), (l+3)&^3):]
		}
		return info, nil
	}
	return unixDiagInfo{}, fmt.Errorf("no answer about socket %d", ino)
}

// makeChannels makes the image's channels in the process, with what they
// held, at descriptors from hi up (above all of the image's, so that
// placing those does not close them); it returns each channel's two ends.
func makeChannels(r *remote, chans []Channel, hi int) ([][2]int, error) {
	ends := make([][2]int, len(chans))
	for k, c := range chans {
		var err error
		if ends[k], err = makeChannel(r, c, hi); err != nil {
			for _, e := range ends[:k] {
				closeEnds(r, e)
			}
			return nil, fmt.Errorf("make its %s again: %w", describeChannel(c), err)
		}
	}
	return ends, nil
}

// closeEnds closes a channel's ends in the process (-1: none).
func closeEnds(r *remote, ends [2]int) {
	for _, fd := range ends {
		if fd >= 0 {
			r.call(unix.SYS_CLOSE, uint64(fd))
		}
	}
}

func describeChannel(c Channel) string {
	if c.Kind == FilePipe {
		return "pipe"
	}
	return "socket pair"
}

func makeChannel(r *remote, c Channel, hi int) ([2]int, error) {
	// Made low (one fd, or the pair in the scratch), then moved above hi.
	var low []uint64
	if c.Unconnected {
		fd, err := r.call(unix.SYS_SOCKET, unix.AF_UNIX, uint64(c.SockType|unix.SOCK_CLOEXEC), 0)
		if err != nil {
			return [2]int{}, err
		}
		low = []uint64{fd}
	} else {
		var pair [8]byte
		var err error
		if c.Kind == FilePipe {
			_, err = r.callScratch(unix.SYS_PIPE2, nil, 0, pair[:], r.scratch, unix.O_CLOEXEC)
		} else {
			_, err = r.callScratch(unix.SYS_SOCKETPAIR, nil, 0, pair[:], unix.AF_UNIX, uint64(c.SockType|unix.SOCK_CLOEXEC), 0, r.scratch)
		}
		if err != nil {
			return [2]int{}, err
		}
		low = []uint64{uint64(binary.LittleEndian.Uint32(pair[:])), uint64(binary.LittleEndian.Uint32(pair[4:]))}
	}
	ends := [2]int{-1, -1} // a lone socket has no end 1
	for i, fd := range low {
		moved, err := r.call(unix.SYS_FCNTL, fd, unix.F_DUPFD_CLOEXEC, uint64(hi))
		r.call(unix.SYS_CLOSE, fd)
		if err != nil {
			for _, rest := range low[i+1:] {
				r.call(unix.SYS_CLOSE, rest)
			}
			closeEnds(r, ends)
			return [2]int{}, fmt.Errorf("move it above descriptor %d: %w", hi, err)
		}
		ends[i] = int(moved)
	}
	fail := func(err error) ([2]int, error) {
		closeEnds(r, ends)
		return [2]int{}, err
	}
	if c.Kind == FilePipe {
		if _, err := r.call(unix.SYS_FCNTL, uint64(ends[1]), unix.F_SETPIPE_SZ, uint64(c.PipeSize)); err != nil {
			return fail(fmt.Errorf("make it %d bytes large: %w", c.PipeSize, err))
		}
		if len(c.Queued[0]) > 0 {
			w, err := os.OpenFile(fmt.Sprintf("/proc/%d/fd/%d", r.tid, ends[1]), os.O_WRONLY|unix.O_NONBLOCK, 0)
			if err != nil {
				return fail(err)
			}
			for _, b := range c.Queued[0] {
				if _, err = w.Write(b); err != nil {
					break
				}
			}
			w.Close()
			if err != nil {
				return fail(fmt.Errorf("put back what it held: %w", err))
			}
		}
		return ends, nil
	}
	// A socket pair: buffers as large (the kernel doubles what it is
	// given), then each end's messages sent from the other end, then the
	// directions shut down.
	for i := range 2 {
		for _, o := range []struct{ opt, v int }{{unix.SO_SNDBUF, c.SndBuf[i] / 2}, {unix.SO_RCVBUF, c.RcvBuf[i] / 2}} {
			if o.v <= 0 {
				continue
			}
			v := make([]byte, 4)
			binary.LittleEndian.PutUint32(v, uint32(o.v))
			if _, err := r.callScratch(unix.SYS_SETSOCKOPT, v, 0, nil, uint64(ends[i]), unix.SOL_SOCKET, uint64(o.opt), r.scratch, 4); err != nil {
				return fail(fmt.Errorf("set its buffer size: %w", err))
			}
		}
	}
	if len(c.Queued[0])+len(c.Queued[1]) > 0 {
		if err := fillSocketPair(r.tid, ends, c); err != nil {
			return fail(fmt.Errorf("put back its messages: %w", err))
		}
	}
	for i := range 2 {
		if c.Shutdown[i] == 0 {
			continue
		}
		how := uint64(c.Shutdown[i] - 1) // 1 SHUT_RD+1, 2 SHUT_WR+1, 3 SHUT_RDWR+1
		if _, err := r.call(unix.SYS_SHUTDOWN, uint64(ends[i]), how); err != nil {
			return fail(fmt.Errorf("shut it down: %w", err))
		}
	}
	return ends, nil
}

// fillSocketPair sends each end's messages from the other end, through
// copies of the process's sockets.
func fillSocketPair(pid int, ends [2]int, c Channel) error {
	pidfd, err := unix.PidfdOpen(pid, 0)
	if err != nil {
		return err
	}
	defer unix.Close(pidfd)
	for i := range 2 {
		if len(c.Queued[i]) == 0 {
			continue
		}
		from, err := unix.PidfdGetfd(pidfd, ends[1-i], 0) // close-on-exec by itself
		if err != nil {
			return err
		}
		for _, m := range c.Queued[i] {
			if _, err = unix.SendmsgN(from, m, nil, nil, unix.MSG_DONTWAIT|unix.MSG_NOSIGNAL); err != nil {
				break
			}
		}
		unix.Close(from)
		if err != nil {
			return err
		}
	}
	return nil
}
