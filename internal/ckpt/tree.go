package ckpt

import (
	"fmt"
	"os"
	"slices"
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
// Pipes between them (a shell's pipeline) are the tree's: made once, in
// the first stub, before the others are forked from it (sharedPipes,
// gatherShared, makeTreePipes). What this version refuses (pinned, with
// the reason): a descendant that shares another open file with another of
// the tree (fork's inheritance of a regular file, an event descriptor, a
// socket pair: each would come back with its own), one of another user
// or in another process group or session, one running a set-user-ID
// program, one that shares its parent's memory (vfork), and one ended
// and not yet waited for, stopped or traced (checkMember).

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
	root, err := groupOf(f.pid)
	if err != nil {
		return err
	}
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
		if g, err := groupOf(pid); err != nil {
			return err
		} else if g != root {
			return &PinnedError{Reason: childReason(pid, "it is in another process group or session")}
		}
		if st, err := os.Stat(c.Exe); err == nil && st.Mode()&(os.ModeSetuid|os.ModeSetgid) != 0 {
			return &PinnedError{Reason: childReason(pid, fmt.Sprintf("it runs %s, a set-user-ID or set-group-ID program", c.Exe))}
		}
	}
	// Open files shared between two of them.
	type held struct{ proc, fd int }
	byID := map[fileID][]held{}
	for i, im := range imgs {
		for _, file := range im.Files {
			switch {
			case file.Kind == FileStdio, file.Kind == FileDup, file.Kind == FileDevice:
				continue // the node's; the lower descriptor's; stateless
			case file.Kind == FilePipe && file.Path != "":
				continue // a pipe of the tree's (gatherShared)
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
				same, err := sameOpenFile(procs[h.proc].pid, h.fd, procs[i].pid, file.Fd)
				if err != nil {
					return err
				}
				if same {
					what := file.Kind
					if file.Path != "" {
						what = describeLink(file.Path)
					}
					return &PinnedError{Reason: fmt.Sprintf("its processes %d and %d share an open file (%s, descriptors %d and %d), which this version cannot make again shared",
						procs[h.proc].pid, procs[i].pid, what, h.fd, file.Fd)}
				}
			}
			byID[id] = append(byID[id], held{i, file.Fd})
		}
	}
	return nil
}

// sharedPipes returns the pipes ("pipe:[N]") two or more of the
// processes pids hold ends of, and nobody else: those the tree carries
// (gatherShared). One that another process holds too pins, as before
// (resolveChannels).
func sharedPipes(pids []int) (map[string]bool, error) {
	holders := map[string]map[int]bool{}
	for _, p := range pids {
		fds, err := readFDs(p)
		if err != nil {
			return nil, fmt.Errorf("list the descriptors of %d: %w", p, err)
		}
		for _, f := range fds {
			if strings.HasPrefix(f.Link, "pipe:") {
				if holders[f.Link] == nil {
					holders[f.Link] = map[int]bool{}
				}
				holders[f.Link][p] = true
			}
		}
	}
	shared := map[string]bool{}
	for l, h := range holders {
		if len(h) > 1 {
			shared[l] = true
		}
	}
	if len(shared) == 0 {
		return shared, nil
	}
	// Read every process's descriptors: only for a tree with such pipes.
	others, err := heldElsewhere(pids, shared)
	if err != nil {
		return nil, err
	}
	for l := range others {
		delete(shared, l)
	}
	return shared, nil
}

// gatherShared makes the tree's pipes (Image.Shared) of its processes'
// descriptors on them (dumpFiles left each a FilePipe with its link in
// Path): which ends are held, and what the pipe holds.
func gatherShared(img *Image, f *Frozen) error {
	procs := append([]*Frozen{f}, f.children...)
	index := map[string]int{}
	for i, im := range append([]*Image{img}, img.Children...) {
		for j := range im.Files {
			file := &im.Files[j]
			if file.Kind != FilePipe || file.Path == "" {
				continue
			}
			k, ok := index[file.Path]
			if !ok {
				c := Channel{Kind: FilePipe}
				if err := readPipe(procs[i].pid, file.Fd, &c); err != nil {
					return fmt.Errorf("read what a pipe of its processes holds: %w", err)
				}
				img.Shared = append(img.Shared, c)
				k = len(img.Shared) - 1
				index[file.Path] = k
			}
			img.Shared[k].Held[file.End] = true
			file.Shared = k + 1
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

// groupOf is the process's group and session ids.
func groupOf(pid int) ([2]int, error) {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return [2]int{}, fmt.Errorf("read the status of %d: %w", pid, err)
	}
	s := string(b)
	f := strings.Fields(s[strings.LastIndexByte(s, ')')+1:])
	if len(f) < 4 {
		return [2]int{}, fmt.Errorf("read the status of %d: %q", pid, s)
	}
	var g [2]int
	fmt.Sscan(f[2], &g[0])
	fmt.Sscan(f[3], &g[1])
	return g, nil
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
	tree, err := makeTreePipes(s, procs)
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
		if rss[i], err = beginRestore(st, procs[i], opt); err != nil {
			dead[i] = true // beginRestore killed it
			return nil, err
		}
		rss[i].tree = tree
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

// makeTreePipes makes the tree's pipes (Image.Shared) in the first
// process's stub, with what they held, above every descriptor of every
// image and kept across exec, so that each stub forked from it has them.
func makeTreePipes(s *Stub, procs []*Image) (treePipes, error) {
	tree := treePipes{chans: procs[0].Shared}
	if len(tree.chans) == 0 {
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
	for _, e := range tree.ends {
		for _, fd := range e {
			if fd < 0 {
				continue
			}
			if _, err := s.r.call(unix.SYS_FCNTL, uint64(fd), unix.F_SETFD, 0); err != nil {
				return tree, fmt.Errorf("keep a pipe of its processes for their exec: %w", err)
			}
		}
	}
	return tree, nil
}

// forkStubs makes the stubs of an image's descendants (procs[1:], parents
// first), each forked by its parent's stub with the id it had (through
// the namespace's init), then made to execute its program, so that it is
// its own (its /proc/PID/exe), and prepared as PrepareStub does. On
// failure they are killed (not s, whose caller kills it).
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
		}
		return nil
	})
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
