package ckpt

import (
	"encoding/binary"
	"errors"
	"fmt"
	"maps"
	"os"
	"slices"
	"strconv"
	"strings"

	"golang.org/x/sys/unix"
)

// Process trees. A process moves with its descendants: its PID namespace
// keeps them its own (and ends them with it), so a shell script, make, or
// a program with a helper process moves whole. Each descendant is frozen
// and captured as a process of its own (Image.Children, parents first);
// the restore makes each again as a child of its parent's stub, with the
// id it had, before any of them is restored into (restoreTree).
//
// Pipes and socket pairs between them (a shell's pipeline, a duplex
// multiprocessing.Pipe), regular files and event descriptors other than
// epoll sets they share as one open file (a shell's redirection; an
// eventfd made before a fork) and memory they share (a semaphore) are the
// tree's: made once, in the first stub, before the others are forked from
// it (sharedChannels, gatherShared, shareFiles, shareMemory,
// makeTreeShared). Process groups (a shell's jobs) and sessions without a
// terminal are made again too (checkGroups, setGroups, forkStubs).
// What this version refuses (pinned, with the reason): a descendant that
// shares another open file with another of the tree (an epoll set: each
// would come back with its own), one of another user,
// in a session or process group none of the tree leads, or leading a
// session with a terminal, one running a set-user-ID program, one that
// shares its parent's memory (vfork), and one ended and not yet waited
// for, stopped or traced (checkMember).

// Descendants lists the process's descendants (as this node sees their
// ids), parents before their children: what moves with it.
func Descendants(pid int) []int {
	tree, _ := descendants(pid)
	out := make([]int, len(tree))
	for i, m := range tree {
		out[i] = m.pid
	}
	return out
}

// checkTree refuses a tree of frozen processes (img and its Children,
// frozen as f and f.children) the restore could not make again as it is.
func checkTree(img *Image, f *Frozen) error {
	procs := append([]*Frozen{f}, f.children...)
	imgs := append([]*Image{img}, img.Children...)
	for i, c := range img.Children {
		pid := f.children[i].pid
		if err := checkVfork(f.parents[i], pid); err != nil {
			return err
		}
		if c.UID != img.UID || c.GID != img.GID || !slices.Equal(c.Groups, img.Groups) {
			return &PinnedError{Reason: childReason(pid, "it runs with other credentials than the process")}
		}
		if st, err := os.Stat(c.Exe); err == nil && st.Mode()&(os.ModeSetuid|os.ModeSetgid) != 0 {
			return &PinnedError{Reason: childReason(pid, fmt.Sprintf("it runs %s, a set-user-ID or set-group-ID program", c.Exe))}
		}
	}
	if err := checkGroups(imgs, procs, f.parents); err != nil {
		return err
	}
	return shareFiles(imgs, procs)
}

// shareFiles finds the open files two or more of a tree's processes hold
// (kcmp across processes): a regular file, a directory, an eventfd, a
// timerfd or a signalfd (made before a fork) becomes the tree's
// (Image.SharedFiles, File.SharedFile); any other kind pins, as does one
// with locks taken through it.
func shareFiles(imgs []*Image, procs []*Frozen) error {
	type held struct{ proc, file int }
	byID := map[fileID][]held{}
	root := imgs[0]
	root.SharedFiles = nil
	for i, im := range imgs {
		for j := range im.Files {
			file := &im.Files[j]
			file.SharedFile = 0
			switch {
			case file.Kind == FileStdio, file.Kind == FileDup, file.Kind == FileDevice:
				continue // the node's; the lower descriptor's; stateless
			case (file.Kind == FilePipe || file.Kind == FileSocket) && file.Path != "":
				continue // a channel of the tree's (gatherShared)
			}
			var st unix.Stat_t
			if err := unix.Stat(fmt.Sprintf("/proc/%d/fd/%d", procs[i].pid, file.Fd), &st); err != nil {
				return fmt.Errorf("look at descriptor %d of %d: %w", file.Fd, procs[i].pid, err)
			}
			id := fileID{st.Dev, st.Ino}
			for _, h := range byID[id] {
				if h.proc == i {
					continue
				}
				first := &imgs[h.proc].Files[h.file]
				same, err := sameOpenFile(procs[h.proc].pid, first.Fd, procs[i].pid, file.Fd)
				if err != nil {
					return err
				}
				if !same {
					continue
				}
				what := file.Kind
				if file.Path != "" {
					what = describeLink(file.Path)
				}
				canShare := file.Kind == FileRegular || file.Kind == FileDirectory ||
					file.Kind == FileEventfd || file.Kind == FileTimerfd || file.Kind == FileSignalfd
				if !canShare || lockedThrough(im, file.Fd) || lockedThrough(imgs[h.proc], first.Fd) {
					why := "which this version cannot make again shared"
					if canShare {
						why = "with locks taken through it, which this version cannot make again shared"
					}
					return &PinnedError{Reason: fmt.Sprintf("its processes %d and %d share an open file (%s, descriptors %d and %d), %s",
						procs[h.proc].pid, procs[i].pid, what, first.Fd, file.Fd, why)}
				}
				if first.SharedFile == 0 {
					root.SharedFiles = append(root.SharedFiles, *first)
					first.SharedFile = len(root.SharedFiles)
				}
				file.SharedFile = first.SharedFile
				break
			}
			byID[id] = append(byID[id], held{i, j})
		}
	}
	return nil
}

// lockedThrough says whether the image holds a lock through descriptor fd.
func lockedThrough(img *Image, fd int) bool {
	return slices.ContainsFunc(img.Locks, func(l Lock) bool { return l.Fd == fd })
}

// treeEnd is a descriptor's link ("pipe:[N]", "socket:[N]") that is an
// end of one of a tree's channels: pair names the channel (a pipe's own
// link; a socket pair's lower-numbered end's), end which end of it a
// socket is (a pipe's end follows from its flags: -1).
type treeEnd struct {
	pair string
	end  int
}

// sharedChannels returns the pipes and socket pairs whose ends two or
// more of the processes pids hold, and nobody else: those the tree
// carries (gatherShared), by the link of each end. One that another
// process holds too pins, as before (resolveChannels), as does a socket
// whose peer no process of the tree holds. Whether another process holds
// one is asked only if elsewhere: it reads every process's descriptors,
// too much for Movable.
func sharedChannels(pids []int, elsewhere bool) (map[string]treeEnd, error) {
	holders := map[string]map[int]bool{}
	for _, p := range pids {
		fds, err := readFDs(p)
		if err != nil {
			return nil, fmt.Errorf("list the descriptors of %d: %w", p, err)
		}
		for _, f := range fds {
			if strings.HasPrefix(f.Link, "pipe:") || strings.HasPrefix(f.Link, "socket:") {
				if holders[f.Link] == nil {
					holders[f.Link] = map[int]bool{}
				}
				holders[f.Link][p] = true
			}
		}
	}
	shared := map[string]treeEnd{}
	for l, h := range holders {
		if strings.HasPrefix(l, "pipe:") {
			if len(h) > 1 {
				shared[l] = treeEnd{l, -1}
			}
			continue
		}
		var ino uint32
		if _, err := fmt.Sscanf(l, "socket:[%d]", &ino); err != nil {
			continue
		}
		d, err := unixDiag(ino)
		if err != nil || d.named || d.peer == 0 {
			continue // not a local socket pair: resolveChannels says why
		}
		peer := fmt.Sprintf("socket:[%d]", d.peer)
		if holders[peer] == nil || len(h) == 1 && maps.Equal(h, holders[peer]) {
			continue // its peer is outside, or both ends are one process's own
		}
		te := treeEnd{fmt.Sprintf("socket:[%d]", min(ino, d.peer)), 0}
		if ino > d.peer {
			te.end = 1
		}
		shared[l] = te
	}
	if len(shared) == 0 || !elsewhere {
		return shared, nil
	}
	// Read every process's descriptors: only for a tree with such
	// channels.
	links := map[string]bool{}
	for l := range shared {
		links[l] = true
	}
	others, err := heldElsewhere(pids, links)
	if err != nil {
		return nil, err
	}
	for l := range others {
		pair := shared[l].pair
		for m, te := range shared {
			if te.pair == pair {
				delete(shared, m)
			}
		}
	}
	return shared, nil
}

// gatherShared makes the tree's channels (Image.Shared) of its
// processes' descriptors on them (dumpFiles left each a FilePipe or
// FileSocket with its channel's name in Path): which ends are held, and
// what each holds.
func gatherShared(img *Image, f *Frozen) error {
	procs := append([]*Frozen{f}, f.children...)
	index := map[string]int{}
	for i, im := range append([]*Image{img}, img.Children...) {
		for j := range im.Files {
			file := &im.Files[j]
			if file.Kind != FilePipe && file.Kind != FileSocket || file.Path == "" {
				continue
			}
			k, ok := index[file.Path]
			if !ok {
				c := Channel{Kind: file.Kind}
				if file.Kind == FilePipe {
					if err := readPipe(procs[i].pid, file.Fd, &c); err != nil {
						return fmt.Errorf("read what a pipe of its processes holds: %w", err)
					}
				}
				img.Shared = append(img.Shared, c)
				k = len(img.Shared) - 1
				index[file.Path] = k
			}
			c := &img.Shared[k]
			if c.Kind == FileSocket && !c.Held[file.End] {
				if err := readTreeSocket(procs[i].pid, file.Fd, file.End, c); err != nil {
					return fmt.Errorf("read a socket pair of its processes (descriptor %d of %d): %w", file.Fd, procs[i].pid, err)
				}
			}
			c.Held[file.End] = true
			file.Shared = k + 1
		}
	}
	for _, c := range img.Shared {
		if c.Kind == FileSocket && !(c.Held[0] && c.Held[1]) {
			return fmt.Errorf("a socket pair of its processes has an end none of them holds")
		}
	}
	return nil
}

// readTreeSocket reads end end of a socket pair, descriptor fd of
// process pid, into c (what it would read next, its buffers, its shut
// down directions).
func readTreeSocket(pid, fd, end int, c *Channel) error {
	s, err := copyFD(pid, fd)
	if err != nil {
		return err
	}
	defer unix.Close(s)
	bad, err := readSocketEnd(s, end, c, true)
	if err == nil && bad != "" {
		err = &PinnedError{Reason: fmt.Sprintf("descriptor %d of %d is %s", fd, pid, bad)}
	}
	return err
}

// shareMemory finds the shared memory objects (a shared mapping of no
// file, or of one deleted) that two or more of a tree's processes map,
// and records them as the tree's (Image.SharedMem, VMA.SharedMem): made
// again once, or each process would come back with a copy of its own,
// and a lock in it (a multiprocessing pool's) would hold nobody back.
func shareMemory(img *Image, f *Frozen) error {
	procs := append([]*Frozen{f}, f.children...)
	imgs := append([]*Image{img}, img.Children...)
	type use struct{ proc, vma int }
	uses := map[fileID][]use{}
	var order []fileID
	for i, p := range procs {
		for k := range imgs[i].VMAs {
			id, ok := p.objects[k]
			if !ok {
				continue
			}
			if uses[id] == nil {
				order = append(order, id)
			}
			uses[id] = append(uses[id], use{i, k})
		}
	}
	img.SharedMem = nil
	for _, id := range order {
		us := uses[id]
		if !slices.ContainsFunc(us, func(u use) bool { return u.proc != us[0].proc }) {
			continue // one process's own
		}
		var size uint64
		for _, u := range us {
			v := &imgs[u.proc].VMAs[u.vma]
			size = max(size, v.Offset+v.End-v.Start)
			v.SharedMem = len(img.SharedMem) + 1
		}
		img.SharedMem = append(img.SharedMem, size)
	}
	return nil
}

// mapTreeMemory maps a process's share of its tree's shared memory
// (VMA.SharedMem) from the memory files made for it (mems), over what
// the layout put there.
func mapTreeMemory(r *remote, vmas []VMA, mems []int) error {
	var calls []sysCall
	var mapped []VMA
	for _, v := range vmas {
		if v.SharedMem == 0 {
			continue
		}
		if v.SharedMem < 0 || v.SharedMem > len(mems) || !v.Shared {
			return fmt.Errorf("%w: a mapping at %#x of shared memory the image does not have", ErrCorrupt, v.Start)
		}
		calls = append(calls, sc(unix.SYS_MMAP, v.Start, v.End-v.Start, uint64(v.Prot), unix.MAP_SHARED|unix.MAP_FIXED, uint64(mems[v.SharedMem-1]), v.Offset))
		mapped = append(mapped, v)
	}
	if len(calls) == 0 {
		return nil
	}
	errs, _, err := r.batch(calls)
	if err != nil {
		return err
	}
	for i, v := range mapped {
		if errs[i] != nil {
			return fmt.Errorf("map the memory shared with its other processes at %#x: %w", v.Start, errs[i])
		}
	}
	return nil
}

// kcmpVM is KCMP_VM: do two processes share one address space?
const kcmpVM = 1

// checkVfork refuses a child that shares its parent's memory: one made
// by vfork (or posix_spawn) that has not yet executed its program, whose
// parent waits for it in the kernel. Made again as two processes, each
// with a copy, the parent would wait forever. It lasts until the exec:
// a moment.
func checkVfork(parent, child int) error {
	r, _, errno := unix.Syscall6(unix.SYS_KCMP, uintptr(parent), uintptr(child), kcmpVM, 0, 0, 0)
	if errno == 0 && r == 0 {
		return &PinnedError{Reason: childReason(child, "it shares its parent's memory (vfork), until it starts its program"), Momentary: true}
	}
	return nil
}

// checkGroups records the process groups of a tree's processes (Group,
// Foreground), which the restore makes again (setGroups), and refuses
// what it could not: a process in another session (one that called
// setsid), or in a group whose leader is not one of the tree's children.
func checkGroups(imgs []*Image, procs []*Frozen, parents []int) error {
	type group struct{ pgid, sid, host, ttyNr int }
	groups := make([]group, len(procs))
	leads := map[int]bool{}    // the children's ids
	sessions := map[int]bool{} // the children that lead a session of their own
	sidOf := map[int]int{}     // this node's id of each to its session
	var tty int                // the terminal's foreground group, as this node sees it
	for i, p := range procs {
		st, err := readStatus(p.pid)
		if err != nil {
			return fmt.Errorf("read the status of %d: %w", p.pid, err)
		}
		g := &groups[i]
		if g.pgid, g.sid, err = st.nsGroup(); err != nil {
			return err
		}
		fg := 0
		if g.host, fg, g.ttyNr, err = hostGroup(p.pid); err != nil {
			return err
		}
		sidOf[p.pid] = g.sid
		if i == 0 {
			tty = fg
			continue
		}
		leads[imgs[i].Pid] = true
		if g.sid == imgs[i].Pid {
			sessions[g.sid] = true
		}
	}
	root := groups[0]
	for i := 1; i < len(procs); i++ {
		g, c := groups[i], imgs[i]
		if err := checkGroup(procs[i].pid, g.pgid, g.sid, root.pgid, root.sid, leads, sessions); err != nil {
			return err
		}
		// A session of its own is made by the child's stub before its
		// children are forked from it: each must be in its parent's
		// session, or lead one, and such a session must have no
		// terminal (the node gives the process's only).
		c.Session = g.sid == c.Pid
		switch {
		case c.Session && g.ttyNr != 0:
			return &PinnedError{Reason: childReason(procs[i].pid, "it leads a session with a terminal of its own")}
		case !c.Session && g.sid != sidOf[parents[i-1]]:
			return &PinnedError{Reason: childReason(procs[i].pid, "it is in another session than its parent")}
		}
		c.Group = 0
		if g.pgid != root.pgid {
			c.Group = g.pgid
		}
	}
	// The terminal's foreground group, from this node's id of it to the
	// processes' (0 for the process's own group, or no terminal).
	imgs[0].Foreground = 0
	if tty > 0 && tty != root.host {
		for i, g := range groups {
			if g.host == tty && imgs[i].Group != 0 {
				imgs[0].Foreground = imgs[i].Group
			}
		}
	}
	return nil
}

// checkGroup refuses a descendant pid whose group and session (pgid,
// sid) the restore could not make again, beside the process's: a session
// none of the descendants (sessions, their ids as they see them) leads,
// or a group none of them (leads) leads.
func checkGroup(pid, pgid, sid, rootPgid, rootSid int, leads, sessions map[int]bool) error {
	switch {
	case sid != rootSid && !sessions[sid]:
		return &PinnedError{Reason: childReason(pid, fmt.Sprintf("it is in session %d, whose first process is not one of those that move", sid))}
	case pgid != rootPgid && !leads[pgid]:
		return &PinnedError{Reason: childReason(pid, fmt.Sprintf("it is in process group %d, whose first process is not one of those that move", pgid))}
	}
	return nil
}

// hostGroup is the process's group and its terminal's foreground group
// (0 or -1 without one), as this node sees their ids, and its terminal's
// device number (0: none).
func hostGroup(pid int) (pgid, tty, ttyNr int, err error) {
	f, err := statFields(pid)
	// state ppid pgrp session tty_nr tpgid
	if err == nil && len(f) < 6 {
		err = fmt.Errorf("short /proc/%d/stat", pid)
	}
	var n [3]int // pgrp, tty_nr, tpgid
	for i, k := range []int{2, 4, 5} {
		if err == nil {
			n[i], err = strconv.Atoi(f[k])
		}
	}
	if err != nil {
		return 0, 0, 0, fmt.Errorf("read the status of %d: %w", pid, err)
	}
	return n[0], n[2], n[1], nil
}

// setGroups puts each of a tree's new processes (stubs, of procs) into
// the process group it was in (Image.Group): the leaders make theirs,
// then the others go into theirs, a leader that was itself in another
// group last (a group lasts while it has a process). Then, where the
// process has a terminal, it gives the terminal's foreground to the
// group that had it.
func setGroups(stubs []*Stub, procs []*Image) error {
	lead := map[int]bool{}
	for _, p := range procs[1:] {
		if p.Group != 0 {
			lead[p.Group] = true
		}
	}
	for g := range lead {
		if k := slices.IndexFunc(procs, func(p *Image) bool { return p.Pid == g }); k < 1 {
			return fmt.Errorf("%w: a process group %d that none of its child processes leads", ErrCorrupt, g)
		}
	}
	if fg := procs[0].Foreground; fg != 0 && !lead[fg] {
		return fmt.Errorf("%w: a terminal's foreground group %d that none of its processes is in", ErrCorrupt, fg)
	}
	if len(lead) == 0 {
		return nil // all in the process's group, as they were forked
	}
	id := map[int]int{} // a process's id in the image to the new one's
	for i, p := range procs {
		seen, err := seenID(stubs[i].pid)
		if err != nil {
			return err
		}
		id[p.Pid] = seen
	}
	st, err := readStatus(stubs[0].pid)
	if err != nil {
		return err
	}
	rootGroup, _, err := st.nsGroup()
	if err != nil {
		return err
	}
	into := func(i int) error {
		g := rootGroup
		if procs[i].Group != 0 {
			g = id[procs[i].Group]
		}
		if _, err := stubs[i].r.call(unix.SYS_SETPGID, 0, uint64(g)); err != nil {
			return fmt.Errorf("put process %d into its process group: %w", procs[i].Pid, err)
		}
		return nil
	}
	for i := 1; i < len(procs); i++ {
		// (A session's leader leads its group already.)
		if lead[procs[i].Pid] && !procs[i].Session {
			if _, err := stubs[i].r.call(unix.SYS_SETPGID, 0, 0); err != nil {
				return fmt.Errorf("make the process group of %d: %w", procs[i].Pid, err)
			}
		}
	}
	for _, leaders := range []bool{false, true} {
		for i := 1; i < len(procs); i++ {
			p := procs[i]
			if lead[p.Pid] == leaders && (p.Group != 0 || leaders) && p.Group != p.Pid {
				if err := into(i); err != nil {
					return err
				}
			}
		}
	}
	if fg := procs[0].Foreground; fg != 0 {
		return setForeground(stubs[0], id[fg])
	}
	return nil
}

// setForeground gives the stub's terminal's foreground to group pgid
// (tcsetpgrp, which only a process of the terminal's session may do); a
// stub without a terminal (an image restored without one) has none to
// give.
func setForeground(s *Stub, pgid int) error {
	fd, err := s.r.callScratch(unix.SYS_OPENAT, cString("/dev/tty"), 0, nil, atFDCWD, s.r.scratch, unix.O_RDWR|unix.O_NOCTTY|unix.O_CLOEXEC)
	if errors.Is(err, unix.ENXIO) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("open its terminal: %w", err)
	}
	var b [4]byte
	binary.LittleEndian.PutUint32(b[:], uint32(pgid))
	_, err = s.r.callScratch(unix.SYS_IOCTL, b[:], 0, nil, fd, unix.TIOCSPGRP, s.r.scratch)
	if _, cerr := s.r.call(unix.SYS_CLOSE, fd); err == nil && cerr != nil {
		err = cerr
	}
	if err != nil {
		return fmt.Errorf("give its terminal to process group %d: %w", pgid, err)
	}
	return nil
}

// sameOpenFile says whether descriptor fa of process a and fb of b are one
// open file (kcmp(KCMP_FILE)). Without kcmp (CONFIG_KCMP) it cannot tell,
// and says no; nor for a descriptor closed meanwhile (Movable looks at a
// running process).
func sameOpenFile(a, fa, b, fb int) (bool, error) {
	r, _, errno := unix.Syscall6(unix.SYS_KCMP, uintptr(a), uintptr(b), kcmpFile, uintptr(fa), uintptr(fb), 0)
	switch {
	case errno == unix.ENOSYS || errno == unix.EBADF:
		return false, nil
	case errno != 0:
		return false, fmt.Errorf("compare descriptor %d of %d and %d of %d (kcmp): %w", fa, a, fb, b, errno)
	}
	return r == 0, nil
}

// restoreTree restores a process with its descendants: first each is made
// as a child of its parent's stub, with the id it had (forkStubs), while
// every stub is still bare; then each is laid out, the stream's memory
// written into whose it is, and each given the rest of its state, the
// descendants before the process. Go and Abort act on all of them.
func restoreTree(s *Stub, img *Image, opt RestoreOptions, pages func(write func(PageRun) error) error) (_ *Restored, err error) {
	step := opt.Step
	if step == nil {
		step = func(string) {}
	}
	procs := append([]*Image{img}, img.Children...)
	tree, err := makeTreeShared(s, procs)
	if err != nil {
		s.Kill()
		return nil, err
	}
	stubs, err := forkStubs(s, procs, opt)
	if err != nil {
		return nil, err
	}
	// Each process is a stub, then being restored, then restored; one
	// that failed was killed where it failed. The others go on failure.
	rss := make([]*restoring, len(procs))
	done := make([]*Restored, len(procs))
	dead := make([]bool, len(procs))
	defer func() {
		if err == nil {
			return
		}
		for i := range procs {
			switch {
			case dead[i]:
			case done[i] != nil:
				done[i].kill()
			case rss[i] != nil:
				rss[i].fail()
			default:
				stubs[i].Kill() // nothing if beginRestore used (and killed) it
			}
		}
	}()
	for i, st := range stubs {
		if rss[i], err = beginRestore(st, procs[i], opt, tree); err != nil {
			dead[i] = true // beginRestore killed it
			return nil, err
		}
	}
	step("layout")
	if err := pages(func(p PageRun) error {
		if p.Proc < 0 || p.Proc >= len(rss) {
			return fmt.Errorf("%w: memory of a process the image does not have", ErrCorrupt)
		}
		return rss[p.Proc].write(p)
	}); err != nil {
		return nil, err
	}
	step("memory")
	for i := len(rss) - 1; i >= 0; i-- {
		r, err := rss[i].finish()
		if err != nil {
			dead[i] = true // finish killed it
			return nil, err
		}
		done[i] = r
	}
	root := done[0]
	root.children = done[1:]
	step("state")
	return root, nil
}

// makeTreeShared makes the tree's pipes (Image.Shared), with what they
// held, its shared memory (Image.SharedMem) as memory files, and opens
// its shared files (Image.SharedFiles) at their offsets, in the first
// process's stub, above every descriptor of every image and
// kept across exec, so that each stub forked from it has them.
func makeTreeShared(s *Stub, procs []*Image) (treeShared, error) {
	tree := treeShared{chans: procs[0].Shared, files: procs[0].SharedFiles}
	if len(tree.chans) == 0 && len(tree.files) == 0 && len(procs[0].SharedMem) == 0 {
		return tree, nil
	}
	hi := 3
	for _, im := range procs {
		for _, f := range im.Files {
			hi = max(hi, f.Fd+1)
		}
	}
	var err error
	if tree.ends, err = makeChannels(s.r, tree.chans, hi); err != nil {
		return tree, err
	}
	var keep []int
	for _, e := range tree.ends {
		for _, fd := range e {
			if fd >= 0 {
				keep = append(keep, fd)
			}
		}
	}
	for _, size := range procs[0].SharedMem {
		// memfd_create("mosaic-shared", 0): kept across the exec.
		low, err := s.r.callScratch(unix.SYS_MEMFD_CREATE, cString("mosaic-shared"), 0, nil, s.r.scratch, 0)
		if err != nil {
			return tree, fmt.Errorf("make the memory its processes share: %w", err)
		}
		fd, err := s.r.call(unix.SYS_FCNTL, low, unix.F_DUPFD, uint64(hi))
		s.r.call(unix.SYS_CLOSE, low)
		if err != nil {
			return tree, fmt.Errorf("move the memory its processes share above descriptor %d: %w", hi, err)
		}
		tree.mems = append(tree.mems, int(fd))
		if _, err := s.r.call(unix.SYS_FTRUNCATE, fd, size); err != nil {
			return tree, fmt.Errorf("make the memory its processes share %d bytes large: %w", size, err)
		}
	}
	for _, f := range tree.files {
		var low uint64
		seek := false // an event descriptor has no position
		switch f.Kind {
		case FileRegular, FileDirectory:
			low, err = openFile(s.r, f)
			seek = true
		case FileEventfd, FileTimerfd, FileSignalfd:
			low, err = makeEvent(s.r, f)
		default:
			return tree, fmt.Errorf("%w: an open file of its processes of kind %q", ErrCorrupt, f.Kind)
		}
		if err != nil {
			return tree, err
		}
		fd, err := s.r.call(unix.SYS_FCNTL, low, unix.F_DUPFD, uint64(hi))
		s.r.call(unix.SYS_CLOSE, low)
		if err != nil {
			return tree, fmt.Errorf("move %s above descriptor %d: %w", f.name(), hi, err)
		}
		tree.fds = append(tree.fds, int(fd))
		if !seek {
			continue
		}
		if _, err := s.r.call(unix.SYS_LSEEK, fd, uint64(f.Pos), 0); err != nil {
			return tree, fmt.Errorf("seek %s to %d: %w", f.Path, f.Pos, err)
		}
	}
	for _, fd := range keep {
		if _, err := s.r.call(unix.SYS_FCNTL, uint64(fd), unix.F_SETFD, 0); err != nil {
			return tree, fmt.Errorf("keep a pipe of its processes for their exec: %w", err)
		}
	}
	return tree, nil
}

// forkStubs makes the stubs of an image's descendants (procs[1:], parents
// first), each forked by its parent's stub with the id it had (through
// the namespace's init), then made to execute its program, so that it is
// its own (its /proc/PID/exe), and prepared as PrepareStub does; then put
// into their process groups (setGroups). On failure they are killed (not
// s, whose caller kills it).
func forkStubs(s *Stub, procs []*Image, opt RestoreOptions) ([]*Stub, error) {
	init := opt.Init
	stubs := []*Stub{s}
	byPid := map[int]*Stub{procs[0].Pid: s}
	err := withPidSetter(opt.Init, func(ids *pidSetter) error {
		for _, c := range procs[1:] {
			parent := byPid[c.Parent]
			if parent == nil {
				return fmt.Errorf("%w: its process %d has no parent %d in the image", ErrCorrupt, c.Pid, c.Parent)
			}
			if ids != nil {
				if err := ids.next(c.Pid); err != nil {
					return err
				}
			}
			child, err := parent.fork(c.Exe)
			if err != nil {
				return err
			}
			stubs = append(stubs, child)
			byPid[c.Pid] = child
			if init != 0 {
				if seen, err := seenID(child.pid); err != nil {
					return err
				} else if seen != c.Pid {
					return fmt.Errorf("its child process %d came back as %d: the id is taken in its PID namespace", c.Pid, seen)
				}
			}
			if opt.Prepare != nil {
				if err := opt.Prepare(child.pid, c); err != nil {
					return err
				}
			}
			if c.Session {
				// Before its children are forked, which are in it.
				if _, err := child.r.call(unix.SYS_SETSID); err != nil {
					return fmt.Errorf("make the session of its process %d: %w", c.Pid, err)
				}
			}
		}
		return nil
	})
	if err == nil {
		err = setGroups(stubs, procs)
	}
	if err != nil {
		for _, st := range stubs {
			st.Kill()
		}
		return nil, err
	}
	return stubs, nil
}

// fork makes a child of the stub that executes exe (as the stub's user,
// with the stub's descriptors), stopped at its exec and prepared as a
// stub in turn. The child must not gain privileges by it: its credentials
// are checked to be its parent's.
func (s *Stub) fork(exe string) (*Stub, error) {
	if err := ptrace(unix.PTRACE_SETOPTIONS, s.pid, 0, unix.PTRACE_O_TRACESYSGOOD|unix.PTRACE_O_EXITKILL|unix.PTRACE_O_TRACECLONE|unix.PTRACE_O_TRACEFORK); err != nil {
		return nil, fmt.Errorf("set trace options of a new process: %w", err)
	}
	pid, err := s.r.clone(uint64(unix.SIGCHLD), unix.PTRACE_EVENT_FORK)
	if err != nil {
		return nil, fmt.Errorf("fork a new process: %w", err)
	}
	ok := false
	defer func() {
		if !ok {
			(&Restored{pid: pid}).kill()
		}
	}()
	c, err := s.r.forThread(pid)
	if err != nil {
		return nil, err
	}
	// execve(exe, {exe, NULL}, {NULL}), its arguments in the scratch page.
	path := cString(exe)
	if len(path)+24 > scratchSize {
		return nil, fmt.Errorf("the path of %s is too long", exe)
	}
	argv := (uint64(len(path)) + 7) &^ 7
	args := append(append(path, make([]byte, argv-uint64(len(path)))...), le64(c.scratch, 0, 0)...)
	if err := c.write(c.scratch, args); err != nil {
		return nil, err
	}
	_, err = c.call(unix.SYS_EXECVE, c.scratch, c.scratch+argv, c.scratch+argv+16)
	if c.mem != nil {
		c.mem.Close()
	}
	if err != nil {
		return nil, fmt.Errorf("execute %s in a new process: %w", exe, err)
	}
	// From the exec's return, on to the SIGTRAP a traced exec sends,
	// where PrepareStub takes it.
	if err := ptrace(unix.PTRACE_CONT, pid, 0, 0); err != nil {
		return nil, fmt.Errorf("run the new process to its exec: %w", err)
	}
	if err := sameCreds(s.pid, pid); err != nil {
		return nil, err
	}
	st, err := PrepareStub(pid)
	ok = true // PrepareStub kills it on failure
	if err != nil {
		return nil, err
	}
	return st, nil
}

// sameCreds refuses a child whose credentials differ from its parent's
// (a set-user-ID program, honoured as the node traces it).
func sameCreds(parent, child int) error {
	want, err := readStatus(parent)
	if err != nil {
		return err
	}
	got, err := readStatus(child)
	if err != nil {
		return err
	}
	for _, k := range []string{"Uid", "Gid", "Groups", "CapEff", "CapPrm"} {
		a, _ := want.field(k)
		b, _ := got.field(k)
		if a != b {
			return fmt.Errorf("a new process got other credentials than its parent by its exec (%s %s, not %s)", k, b, a)
		}
	}
	return nil
}
