package spawn

import (
	"bytes"
	"debug/elf"
	"encoding/binary"
	"errors"
	"fmt"
	"os"
	"strings"
	"syscall"

	"golang.org/x/sys/unix"
)

// A Namespace is a PID namespace and a mount namespace for one program,
// held by a tiny init that is PID 1 in it. The program runs in it as
// PID 2 (the first process started there after the init), so that the
// number it sees for itself, and its threads' numbers, can be given back
// when it is restored on another node, where the same numbers are free
// because the namespace is new (docs/ARCHITECTURE.md, "A PID namespace
// per process").
//
// The program is not the init, because an init ignores every signal it
// has no handler for, even from outside (Ctrl-C would do nothing), and
// because its end would kill everything else in the namespace at once.
// The init does three things: it makes its mounts receive the node's
// mounts but not send its own (MS_SLAVE), mounts a /proc that shows the
// namespace's numbers (so /proc/2 is the program itself, as getpid says),
// and reaps whatever the program leaves orphaned. It is killed, and with
// it what is left in the namespace, when the program ends or moves away.
//
// The program stays a child of the daemon (the Spawner's thread forks it
// into the namespace with setns), so the daemon waits for it, traces it
// and sees its stops as for any child; getppid() is 0 for it, on every
// node.
type Namespace struct {
	// Init is the namespace's PID 1, a child of the Spawner's thread.
	Init *os.Process
	pid  *os.File // its /proc/PID/ns/pid
	mnt  *os.File // its /proc/PID/ns/mnt
}

// End kills the init, and with it (the kernel does it) every process
// still in the namespace, without waiting for it: the init's exit takes
// its mount namespace down, which waits for an RCU grace period
// (0.4 ms on an idle node, more on a busy one), and a process's exit
// need not be reported that much later. Close waits.
func (n *Namespace) End() error {
	if n == nil || n.Init == nil {
		return nil
	}
	err := n.Init.Kill()
	if errors.Is(err, os.ErrProcessDone) {
		err = nil
	}
	return err
}

// Close ends the namespace (End) and waits for its init.
func (n *Namespace) Close() error {
	if n == nil || n.Init == nil {
		return nil
	}
	n.pid.Close()
	n.mnt.Close()
	err := n.End()
	n.Init.Wait()
	n.Init = nil
	return err
}

// alive says whether the namespace's init still runs (a spare could have
// been killed while it waited). The init is the Spawner's child: looking
// leaves it to be reaped by Close.
func (n *Namespace) alive() bool {
	var info unix.Siginfo
	err := unix.Waitid(unix.P_PID, n.Init.Pid, &info, unix.WEXITED|unix.WNOHANG|unix.WNOWAIT, nil)
	return err == nil && info.Signo == 0 // no SIGCHLD: nothing happened to it
}

// initProgram is the init, as machine code: it is the whole program, so
// that starting it costs an exec of one page and holding it a few pages
// of memory. A Go init would cost milliseconds and megabytes per process,
// and a C one a compiler on every node. The source, for GNU as with
// .intel_syntax noprefix, is beside each line; its first write tells the
// Spawner whether the mounts succeeded (0, or the error number).
var initProgram = []byte{
	0xb8, 0xa5, 0x00, 0x00, 0x00, //       mov eax, SYS_mount
	0x31, 0xff, //                         xor edi, edi
	0x48, 0x8d, 0x35, 0xb9, 0x00, 0x00, 0x00, // lea rsi, [rip+slash]
	0x31, 0xd2, //                         xor edx, edx
	0x41, 0xba, 0x00, 0x40, 0x08, 0x00, // mov r10d, MS_REC|MS_SLAVE
	0x45, 0x31, 0xc0, //                   xor r8d, r8d
	0x0f, 0x05, //                         syscall
	0x48, 0x85, 0xc0, //                   test rax, rax
	0x78, 0x26, //                         js fail
	0xb8, 0xa5, 0x00, 0x00, 0x00, //       mov eax, SYS_mount
	0x48, 0x8d, 0x3d, 0x9d, 0x00, 0x00, 0x00, // lea rdi, [rip+proc]
	0x48, 0x8d, 0x35, 0x9b, 0x00, 0x00, 0x00, // lea rsi, [rip+slashproc]
	0x48, 0x89, 0xfa, //                   mov rdx, rdi
	0x41, 0xba, 0x0e, 0x00, 0x00, 0x00, // mov r10d, MS_NOSUID|MS_NODEV|MS_NOEXEC
	0x45, 0x31, 0xc0, //                   xor r8d, r8d
	0x0f, 0x05, //                         syscall
	0x48, 0x85, 0xc0, //                   test rax, rax
	0x78, 0x00, //                         js fail (falls through to it with 0)
	0xf7, 0xd8, //                 fail:   neg eax
	0x50,                         //       push rax
	0xb8, 0x01, 0x00, 0x00, 0x00, //       mov eax, SYS_write
	0xbf, 0x01, 0x00, 0x00, 0x00, //       mov edi, 1
	0x48, 0x89, 0xe6, //                   mov rsi, rsp
	0xba, 0x01, 0x00, 0x00, 0x00, //       mov edx, 1
	0x0f, 0x05, //                         syscall
	0x58,       //                         pop rax
	0x84, 0xc0, //                         test al, al
	0x74, 0x0c, //                         jz ok
	0xb8, 0x3c, 0x00, 0x00, 0x00, //       mov eax, SYS_exit
	0xbf, 0x01, 0x00, 0x00, 0x00, //       mov edi, 1
	0x0f, 0x05, //                         syscall
	0xb8, 0x03, 0x00, 0x00, 0x00, // ok:   mov eax, SYS_close
	0xbf, 0x01, 0x00, 0x00, 0x00, //       mov edi, 1
	0x0f, 0x05, //                         syscall
	0x68, 0x00, 0x00, 0x01, 0x00, //       push 1<<(SIGCHLD-1)
	0xb8, 0x0e, 0x00, 0x00, 0x00, //       mov eax, SYS_rt_sigprocmask
	0x31, 0xff, //                         xor edi, edi (SIG_BLOCK)
	0x48, 0x89, 0xe6, //                   mov rsi, rsp
	0x31, 0xd2, //                         xor edx, edx
	0x41, 0xba, 0x08, 0x00, 0x00, 0x00, // mov r10d, 8
	0x0f, 0x05, //                         syscall
	0xb8, 0x3d, 0x00, 0x00, 0x00, // reap: mov eax, SYS_wait4
	0x48, 0xc7, 0xc7, 0xff, 0xff, 0xff, 0xff, // mov rdi, -1
	0x31, 0xf6, //                         xor esi, esi
	0xba, 0x00, 0x00, 0x00, 0x40, //       mov edx, __WALL
	0x45, 0x31, 0xd2, //                   xor r10d, r10d
	0x0f, 0x05, //                         syscall
	0x48, 0x83, 0xf8, 0xf6, //             cmp rax, -ECHILD
	0x75, 0xe2, //                         jne reap
	0xb8, 0x80, 0x00, 0x00, 0x00, //       mov eax, SYS_rt_sigtimedwait (for a SIGCHLD)
	0x48, 0x89, 0xe7, //                   mov rdi, rsp
	0x31, 0xf6, //                         xor esi, esi
	0x31, 0xd2, //                         xor edx, edx
	0x41, 0xba, 0x08, 0x00, 0x00, 0x00, // mov r10d, 8
	0x0f, 0x05, //                         syscall
	0xeb, 0xcc, //                         jmp reap
	'/', 0, //                     slash:
	'p', 'r', 'o', 'c', 0, //      proc:
	'/', 'p', 'r', 'o', 'c', 0, // slashproc:
}

// initELF wraps initProgram in the smallest executable the kernel runs: an
// ELF header and one loadable segment (plus a non-executable stack).
func initELF() []byte {
	const base = 0x400000
	const headers = 64 + 2*56
	var b bytes.Buffer
	hdr := elf.Header64{
		Type: uint16(elf.ET_EXEC), Machine: uint16(elf.EM_X86_64), Version: uint32(elf.EV_CURRENT),
		Entry: base + headers, Phoff: 64, Ehsize: 64, Phentsize: 56, Phnum: 2,
	}
	copy(hdr.Ident[:], elf.ELFMAG)
	hdr.Ident[elf.EI_CLASS] = byte(elf.ELFCLASS64)
	hdr.Ident[elf.EI_DATA] = byte(elf.ELFDATA2LSB)
	hdr.Ident[elf.EI_VERSION] = byte(elf.EV_CURRENT)
	size := uint64(headers + len(initProgram))
	load := elf.Prog64{Type: uint32(elf.PT_LOAD), Flags: uint32(elf.PF_R | elf.PF_X), Vaddr: base, Paddr: base, Filesz: size, Memsz: size, Align: 0x1000}
	stack := elf.Prog64{Type: uint32(elf.PT_GNU_STACK), Flags: uint32(elf.PF_R | elf.PF_W), Align: 16}
	binary.Write(&b, binary.LittleEndian, hdr)
	binary.Write(&b, binary.LittleEndian, load)
	binary.Write(&b, binary.LittleEndian, stack)
	b.Write(initProgram)
	return b.Bytes()
}

// initName names the init's memory file; /proc/PID/exe of an init reads
// "/memfd:mosaic-init (deleted)".
const initName = "mosaic-init"

// IsInit says whether pid runs a namespace init of ours: an idle helper,
// not a program, which a count of the node's processes leaves out.
func IsInit(pid int) bool {
	exe, err := os.Readlink(fmt.Sprintf("/proc/%d/exe", pid))
	return err == nil && strings.HasPrefix(exe, "/memfd:"+initName+" ")
}

// loadInit puts the init in a sealed memory file, which the Spawner
// executes by its /proc path: no file on disk to go stale or be changed.
func loadInit() (*os.File, error) {
	fd, err := unix.MemfdCreate(initName, unix.MFD_CLOEXEC|unix.MFD_ALLOW_SEALING)
	if err != nil {
		return nil, fmt.Errorf("create the namespace init: %w", err)
	}
	f := os.NewFile(uintptr(fd), initName)
	if _, err := f.Write(initELF()); err != nil {
		f.Close()
		return nil, fmt.Errorf("write the namespace init: %w", err)
	}
	const seals = unix.F_SEAL_SEAL | unix.F_SEAL_SHRINK | unix.F_SEAL_GROW | unix.F_SEAL_WRITE
	if _, err := unix.FcntlInt(uintptr(fd), unix.F_ADD_SEALS, seals); err != nil {
		f.Close()
		return nil, fmt.Errorf("seal the namespace init: %w", err)
	}
	return f, nil
}

// nsSelf holds the Spawner thread's own namespaces, to go back to after
// starting a process in another.
type nsSelf struct {
	pid, mnt *os.File
}

// enterSelf prepares the Spawner's thread: it gets a file-system context
// of its own (a thread that shares it may not change mount namespace;
// the umask the Spawner sets is then its own too) and keeps its
// namespaces to come back to.
func enterSelf() (*nsSelf, error) {
	if err := unix.Unshare(unix.CLONE_FS); err != nil {
		return nil, fmt.Errorf("unshare the spawning thread's file-system context: %w", err)
	}
	pid, err := os.Open("/proc/thread-self/ns/pid")
	if err != nil {
		return nil, err
	}
	mnt, err := os.Open("/proc/thread-self/ns/mnt")
	if err != nil {
		pid.Close()
		return nil, err
	}
	return &nsSelf{pid: pid, mnt: mnt}, nil
}

// newNamespace starts an init in a new PID and mount namespace and waits
// until it has mounted its /proc. It runs on the Spawner's thread.
func newNamespace(init *os.File) (*Namespace, error) {
	r, w, err := os.Pipe()
	if err != nil {
		return nil, err
	}
	defer r.Close()
	path := fmt.Sprintf("/proc/self/fd/%d", init.Fd())
	p, err := os.StartProcess(path, []string{"mosaic-init"}, &os.ProcAttr{
		Dir:   "/",
		Files: []*os.File{nil, w},
		Sys: &syscall.SysProcAttr{
			Cloneflags: syscall.CLONE_NEWPID | syscall.CLONE_NEWNS,
			Pdeathsig:  syscall.SIGKILL,
			Setsid:     true,
		},
	})
	w.Close()
	if err != nil {
		return nil, fmt.Errorf("start a PID namespace: %w", err)
	}
	n := &Namespace{Init: p}
	fail := func(err error) (*Namespace, error) {
		p.Kill()
		p.Wait()
		return nil, err
	}
	var status [1]byte
	if k, _ := r.Read(status[:]); k != 1 {
		return fail(errors.New("the namespace init ended before it was ready"))
	} else if status[0] != 0 {
		return fail(fmt.Errorf("mount /proc in a new namespace: %w", syscall.Errno(status[0])))
	}
	if n.pid, err = os.Open(fmt.Sprintf("/proc/%d/ns/pid", p.Pid)); err != nil {
		return fail(err)
	}
	if n.mnt, err = os.Open(fmt.Sprintf("/proc/%d/ns/mnt", p.Pid)); err != nil {
		n.pid.Close()
		return fail(err)
	}
	return n, nil
}

// in runs fn with the calling thread's new processes going into the
// namespace n (PID and mounts), then takes the thread back to self.
func (s *nsSelf) in(n *Namespace, fn func() error) error {
	if err := unix.Setns(int(n.mnt.Fd()), unix.CLONE_NEWNS); err != nil {
		return fmt.Errorf("enter the process's mount namespace: %w", err)
	}
	defer s.back(unix.CLONE_NEWNS)
	if err := unix.Setns(int(n.pid.Fd()), unix.CLONE_NEWPID); err != nil {
		return fmt.Errorf("enter the process's PID namespace: %w", err)
	}
	defer s.back(unix.CLONE_NEWPID)
	return fn()
}

// back returns the thread to its own namespace of that kind. It cannot
// fail (a process may always go back to its own namespaces); if it did,
// the thread would start the next processes in the wrong place, so the
// daemon stops rather than go on.
func (s *nsSelf) back(kind int) {
	f := s.pid
	if kind == unix.CLONE_NEWNS {
		f = s.mnt
	}
	if err := unix.Setns(int(f.Fd()), kind); err != nil {
		panic(fmt.Sprintf("spawn: cannot return the spawning thread to its own namespace: %v", err))
	}
}
