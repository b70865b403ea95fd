// Package ckpt checkpoints a live process into an image and restores it in
// a fresh process, on this node or another: the engine under migration.
//
// It works from outside the process, with ptrace: the dumper freezes the
// process's threads, reads what /proc and ptrace tell, and runs a few
// system calls inside the process (remote.go) for what only the process
// itself can read; the restorer starts a stub process stopped at its
// first instruction, replaces its address space and state with the
// image's, again by system calls run inside it, and lets it go. One file
// per kind of state: memory (memory.go), descriptors (files.go), signals
// and timers (signals.go), registers and threads (dump.go, restore.go).
package ckpt

import "fmt"

// ImageVersion is the version of the image format this mosaic writes for
// a single process (treeVersion for one with children). 3
// added descriptors of new kinds (deleted and memory files, dups, event
// descriptors, inotify, pipes and socket pairs of its own) and flock and
// OFD locks, which a reader of version 2 would refuse or, for a lock,
// take wrongly (as a POSIX lock): it refuses version 3 whole.
const ImageVersion = 3

// treeVersion is the version of an image of a process with children (see
// Image.Children): it adds a record that says whose the memory after it
// is, which an older reader would take for damage.
const treeVersion = 4

// minImageVersion is the oldest version this mosaic reads: a version 2
// image holds nothing that version 3 reads differently.
const minImageVersion = 2

// checkVersion says whether this mosaic reads images of version v.
func checkVersion(v uint32) error {
	if v < minImageVersion || v > treeVersion {
		return fmt.Errorf("image format version %d; this mosaic reads versions %d to %d", v, minImageVersion, treeVersion)
	}
	return nil
}

// Image is everything needed to recreate a process.
type Image struct {
	Version int
	Pid     int      // the process id when it was dumped (as the process sees it)
	Exe     string   // the executable, for the stub and /proc/PID/exe
	Argv    []string // as it was started, for listings
	Comm    string
	UID     uint32
	GID     uint32
	Groups  []uint32
	Cwd     string
	Umask   uint32
	Rlimits []Rlimit
	// NoNewPrivs: the process may not gain privileges by exec
	// (PR_SET_NO_NEW_PRIVS), which it keeps wherever it goes.
	NoNewPrivs bool
	// NotDumpable: the process made itself not dumpable (PR_SET_DUMPABLE
	// 0: no core dump, and its user may not trace it or read its memory),
	// as programs holding secrets do; it stays so.
	NotDumpable bool
	// Personality is its execution domain and flags (personality(2),
	// e.g. ADDR_NO_RANDOMIZE from `setarch -R`), which shape its later
	// mappings and what it executes.
	Personality uint32
	// CPUFeatures are the instruction-set extensions the process may use
	// (internal/cpufeat: those of every node it ran on), set by the node
	// that saves it; a node whose CPU lacks one does not restore it.
	CPUFeatures []string
	MM          MM
	VMAs        []VMA
	Pages       []PageRun // memory contents, in address order
	Threads     []Thread  // the main thread first
	Actions     []Sigaction
	Files       []File
	Timers      [3]ITimer // ITIMER_REAL, _VIRTUAL, _PROF
	// Lazy are the pages of Lazy mappings the process has, which come
	// after the image (see lazy.go).
	Lazy []LazyRun
	// Locks are the POSIX record locks it held (see locks.go).
	Locks []Lock
	// Channels are the pipes and socket pairs all ends of which the
	// process holds.
	Channels []Channel
	// PosixTimers are the timer_create timers.
	PosixTimers []PosixTimer
	// SharedPending are the signals queued for the process as a whole,
	// as raw siginfo (128 bytes each), oldest first.
	SharedPending [][]byte
	// Children are the process's descendants, which move with it (its
	// PID namespace keeps them its own): each a whole image, parents
	// before their children, its memory after the process's in the
	// stream (PageRun.Proc).
	Children []*Image
	// Parent is, for one of Children, its parent's id as the processes
	// see it.
	Parent int
	// Shared are the pipes and socket pairs between the processes of a
	// tree (a shell's pipeline, a child's output its parent reads, a
	// duplex multiprocessing.Pipe), each end of which one or more of
	// them hold (File.Shared): made once, before the children, which
	// inherit them.
	Shared []Channel
	// SharedFiles are the regular files and directories open in two or
	// more of a tree's processes as one open file (one offset, one set
	// of flags: a shell's redirection its programs inherit), each as
	// its first holder's descriptor says (File.SharedFile): opened once,
	// before the children, which inherit it.
	SharedFiles []File
	// SharedMem are the sizes of the shared memory objects two or more of
	// a tree's processes map (MAP_SHARED|MAP_ANONYMOUS inherited by fork,
	// a POSIX semaphore or shm_open'd file since unlinked: what
	// multiprocessing locks live in), each made once, before the
	// children, which inherit it (VMA.SharedMem).
	SharedMem []uint64
	// Group is, for one of Children, the process group it is in (its
	// leader's id, as the processes see it), where that is not the
	// process's own group; 0 where it is. A shell with job control runs
	// each job in a group of its own.
	Group int
	// Session is, for one of Children, whether it leads a session of its
	// own (setsid): made so before its children are.
	Session bool
	// Foreground is, for a process on a terminal, the process group
	// (one of its descendants', as in Group) its terminal lets read and
	// signals with Ctrl-C: the job a shell runs in the foreground. 0 is
	// the process's own group.
	Foreground int
}

// PosixTimer is a timer made by timer_create, as /proc/PID/timers and
// timer_gettime tell.
type PosixTimer struct {
	ID      int32
	Clock   int32
	Notify  int32  // SIGEV_SIGNAL, SIGEV_NONE, with SIGEV_THREAD_ID or not
	Signo   int32  // the signal it sends
	Value   uint64 // sigev_value
	Tid     int32  // the thread it signals (SIGEV_THREAD_ID), as the process sees it
	Running bool
	// IntervalNs and ValueNs: the period, and the time left to its next
	// expiry.
	IntervalNs, ValueNs int64
}

// Rlimit is one resource limit.
type Rlimit struct {
	Resource int
	Cur, Max uint64
}

// MM is the address-space layout the kernel keeps (prctl PR_SET_MM_MAP).
type MM struct {
	StartCode, EndCode, StartData, EndData uint64
	StartBrk, Brk, StartStack              uint64
	ArgStart, ArgEnd, EnvStart, EnvEnd     uint64
	Auxv                                   []uint64
}

// VMA kinds.
const (
	VMAAnon     = "anon"
	VMAFile     = "file"
	VMAVDSO     = "vdso" // [vdso], [vvar], [vvar_vclock]: moved, not copied
	VMAVsyscall = "vsyscall"
)

// VMA is one mapping of the address space.
type VMA struct {
	Start, End uint64
	Prot       int // PROT_* bits
	Shared     bool
	Kind       string
	Name       string // [heap], [stack], [vdso]..., or the file's path
	Offset     uint64 // in the file
	GrowsDown  bool
	// The file's size and modification time (ns) when dumped: a restore
	// refuses to map a file that is not the same.
	FileSize  int64
	FileMtime int64
	// Lazy: its pages are not in the image but come after it (post-copy).
	Lazy bool
	// Advice is what the process asked of this memory (Advice* bits:
	// mlock, madvise), from its VmFlags.
	Advice uint32
	// SharedMem, if not 0, is 1 + the index in the tree's SharedMem (the
	// first image's) of the shared memory this mapping is of, at Offset.
	SharedMem int
}

// VMA.Advice bits.
const (
	AdviceLocked      = 1 << iota // mlock: "lo"
	AdviceLockOnFault             // mlock2 MLOCK_ONFAULT: "lf"
	AdviceDontFork                // MADV_DONTFORK: "dc"
	AdviceWipeOnFork              // MADV_WIPEONFORK: "wf"
	AdviceDontDump                // MADV_DONTDUMP: "dd"
	AdviceHugePage                // MADV_HUGEPAGE: "hg"
	AdviceNoHugePage              // MADV_NOHUGEPAGE: "nh"
)

// PageRun is the contents of consecutive pages.
type PageRun struct {
	Addr uint64
	Data []byte
	// Proc is whose memory it is: 0 the process's, i its Children[i-1]'s.
	Proc int
	// sum is the checksum of its page record, when summed is set (by
	// ReadMemory, which sums a run while it is in its cache).
	sum    uint32
	summed bool
}

// Thread is one thread's state.
type Thread struct {
	Tid        int // as the process sees it (in its PID namespace)
	Regs       Regs
	XState     []byte // XSAVE area (PTRACE_GETREGSET NT_X86_XSTATE)
	Sigmask    uint64
	RseqAddr   uint64
	RseqLen    uint32
	RseqSig    uint32
	TidAddress uint64 // set_tid_address
	RobustList uint64
	RobustLen  uint64
	Nice       int // the thread's nice value (-20 to 19); an image without it has 0
	IOPrio     int // its I/O priority (internal/ioprio; 0: none set)
	// SchedPolicy and SchedPriority: its scheduling policy (0:
	// SCHED_OTHER) and realtime priority; SCHED_DEADLINE is not carried.
	SchedPolicy, SchedPriority int
	// Comm is its name (prctl PR_SET_NAME, /proc/TID/comm); "" in images
	// of before, which kept the main thread's in Image.Comm only.
	Comm string
	// TimerSlackNs is its timer slack (prctl PR_SET_TIMERSLACK; 0: not
	// known, as in images of before).
	TimerSlackNs uint64
	AltStack     [3]uint64 // ss_sp, ss_flags, ss_size
	// Pending are the signals queued for this thread alone, the one being
	// delivered when it stopped first; raw siginfo, 128 bytes each.
	Pending [][]byte
}

// Regs are the general-purpose registers (user_regs_struct of x86-64).
type Regs struct {
	R15, R14, R13, R12, Rbp, Rbx, R11, R10, R9, R8 uint64
	Rax, Rcx, Rdx, Rsi, Rdi, OrigRax, Rip          uint64
	Cs, Eflags, Rsp, Ss, FsBase, GsBase            uint64
	Ds, Es, Fs, Gs                                 uint64
}

// Sigaction is a signal's disposition (struct kernel_sigaction).
type Sigaction struct {
	Signal   int
	Handler  uint64
	Flags    uint64
	Restorer uint64
	Mask     uint64
}

// File kinds.
const (
	FileRegular   = "regular"
	FileDirectory = "directory"
	FileDevice    = "device" // one of statelessDevices, opened again by path
	FileStdio     = "stdio"  // connected to the home (pipes or terminal)
	// FileDeleted is a regular file in no directory any more (unlinked
	// while open, or made with O_TMPFILE), FileMemfd a memory file
	// (memfd_create): nobody else can open either, so their content
	// travels in the image (as CRIU's "ghost files").
	FileDeleted = "deleted"
	FileMemfd   = "memfd"
	FileDup     = "dup" // the open file of a lower descriptor (Dup)
	// Kernel event descriptors, made again from their state.
	FileEventfd  = "eventfd"
	FileSignalfd = "signalfd"
	FileTimerfd  = "timerfd"
	FileEpoll    = "epoll"
	FileInotify  = "inotify"
	// An end of a pipe or a local socket pair of the process's own
	// (Channel).
	FilePipe   = "pipe"
	FileSocket = "socketpair"
)

// File is an open descriptor.
type File struct {
	Fd    int
	Kind  string
	Path  string // for a deleted file, the name it had; for a memory file, its name
	Flags int
	Pos   int64
	// Dup, if not 0, is 1 + the lower descriptor whose open file this one
	// is (dup, dup2, F_DUPFD): one offset, one set of status flags. The
	// rest of this File then says nothing more.
	Dup int
	// Stream, if not 0, is 1 + which of its home's streams (0, 1, 2) a
	// FileStdio descriptor is; 0 in images from before it was kept (and
	// on a terminal): the one of its own number.
	Stream int
	// Shared, if not 0, is 1 + the index in the tree's Shared (the first
	// image's) of the pipe or socket pair this descriptor is end End of.
	Shared int
	// SharedFile, if not 0, is 1 + the index in the tree's SharedFiles
	// (the first image's) of the open file this descriptor is.
	SharedFile int
	// Channel, if not 0, is 1 + the index in the image's Channels of the
	// pipe or socket pair this descriptor is end End of.
	Channel, End int
	// Same, if not 0, is 1 + the lower descriptor holding the same
	// deleted or memory file, opened again: the content is there.
	Same int
	// A deleted or memory file's content, with its first descriptor:
	// permission bits, size, the parts that hold data (the holes stay
	// holes), and a memory file's seals (F_GET_SEALS).
	Mode    uint32
	Size    int64
	Extents []Extent
	Seals   int
	// Event descriptors: an eventfd's count (and whether it is a
	// semaphore), or a timerfd's expirations not yet read; a signalfd's
	// signals (bit n-1 for signal n); a timerfd's clock and time left
	// and period; an epoll set's watches.
	Count               uint64
	Semaphore           bool
	SigMask             uint64
	Clock               int
	ValueNs, IntervalNs int64
	Watches             []Watch
}

// Watch is a descriptor an epoll set watches, with its events and data;
// or a file an inotify descriptor watches (Wd, Path), with its mask.
type Watch struct {
	Fd     int
	Events uint32
	Data   uint64
	Wd     int
	Path   string
}

// Extent is data in a file, at its offset.
type Extent struct {
	Off  int64
	Data []byte
}

// ITimer is an interval timer (struct itimerval, in microseconds).
type ITimer struct {
	IntervalUs, ValueUs int64
}

func regsFrom(r *regs) Regs {
	return Regs{r.R15, r.R14, r.R13, r.R12, r.Rbp, r.Rbx, r.R11, r.R10, r.R9, r.R8,
		r.Rax, r.Rcx, r.Rdx, r.Rsi, r.Rdi, r.Orig_rax, r.Rip,
		r.Cs, r.Eflags, r.Rsp, r.Ss, r.Fs_base, r.Gs_base, r.Ds, r.Es, r.Fs, r.Gs}
}

func (g Regs) raw() regs {
	return regs{R15: g.R15, R14: g.R14, R13: g.R13, R12: g.R12, Rbp: g.Rbp, Rbx: g.Rbx, R11: g.R11, R10: g.R10,
		R9: g.R9, R8: g.R8, Rax: g.Rax, Rcx: g.Rcx, Rdx: g.Rdx, Rsi: g.Rsi, Rdi: g.Rdi, Orig_rax: g.OrigRax,
		Rip: g.Rip, Cs: g.Cs, Eflags: g.Eflags, Rsp: g.Rsp, Ss: g.Ss, Fs_base: g.FsBase, Gs_base: g.GsBase,
		Ds: g.Ds, Es: g.Es, Fs: g.Fs, Gs: g.Gs}
}

// MemoryBytes is the size of the memory contents in the image.
func (img *Image) MemoryBytes() int64 {
	var n int64
	for _, p := range img.Pages {
		n += int64(len(p.Data))
	}
	for _, c := range img.Children {
		n += c.MemoryBytes()
	}
	return n
}
