// Package runproto is the run operation of the local protocol (internal/api):
// the messages of `mosaic run` and the client's end of its connection.
//
// It is apart from internal/api so that the mosaic CLI can start a program
// without linking net, log/slog or the rest of what the daemon's side
// needs: every package a binary links is initialized at every start, and
// a `mosaic run` is started for every program a user runs elsewhere (on
// the 2-vCPU test machine, the CLI with cobra, pflag, net and the rest took
// 2.7 ms longer to start a remote program than one without them: about a
// seventh of the whole; docs/BENCHMARKS.md, "Start latency"). What the
// client sends and reads most is encoded by hand (codec.go), for the same
// reason. The frames are internal/api's: a 4-byte big-endian length, then
// JSON.
package runproto

// OpRun is the operation's name in a request.
const OpRun = "run"

// MaxFrame is the largest frame either end accepts.
const MaxFrame = 16 << 20

// RunArgs asks the daemon to run a program for the caller. The request
// carries the caller's stdin, stdout and stderr as descriptors.
type RunArgs struct {
	Argv    []string `json:"argv"`
	Env     []string `json:"env"`
	Cwd     string   `json:"cwd"`
	Umask   uint32   `json:"umask"`
	Rlimits []Rlimit `json:"rlimits,omitempty"`
	Nice    int      `json:"nice,omitempty"`   // the caller's nice value (-20 to 19)
	IOPrio  int      `json:"ioprio,omitempty"` // the caller's I/O priority (internal/ioprio; 0: none set)
	// SchedPolicy is the caller's scheduling policy when it is one of
	// the two any user may take, SCHED_BATCH or SCHED_IDLE (chrt -b, -i).
	SchedPolicy int `json:"sched_policy,omitempty"`
	// Ignored are the signals the caller was started with ignored (of
	// SIGHUP and SIGINT, the ones a Go client can tell).
	Ignored []int `json:"ignored,omitempty"`
	// NoNewPrivs: the caller may not gain privileges by exec (a sandbox):
	// nor may the program.
	NoNewPrivs bool   `json:"no_new_privs,omitempty"`
	On         string `json:"on,omitempty"`   // run on this node
	Here       bool   `json:"here,omitempty"` // run on the caller's node
	Pin        bool   `json:"pin,omitempty"`  // never moved by a policy (mosaic run --pin)
	// Tty is set when stdin and stdout are a terminal: the program then
	// runs on a pseudo-terminal with these modes and size.
	Tty *TtyModes `json:"tty,omitempty"`
	// Image: restore a process from the image that the request's fourth
	// descriptor reads (mosaic restore), rather than start Argv.
	Image bool `json:"image,omitempty"`
}

// Rlimit is one resource limit.
type Rlimit struct {
	Resource int    `json:"resource"`
	Cur      uint64 `json:"cur"`
	Max      uint64 `json:"max"`
}

// TtyModes are a terminal's size and settings (struct termios).
type TtyModes struct {
	Rows   uint16 `json:"rows"`
	Cols   uint16 `json:"cols"`
	Iflag  uint32 `json:"iflag,omitempty"`
	Oflag  uint32 `json:"oflag,omitempty"`
	Cflag  uint32 `json:"cflag,omitempty"`
	Lflag  uint32 `json:"lflag,omitempty"`
	Cc     []byte `json:"cc,omitempty"`
	Ispeed uint32 `json:"ispeed,omitempty"`
	Ospeed uint32 `json:"ospeed,omitempty"`
}

// RunEvent is what the daemon tells the client about its process; one
// field is set per frame.
type RunEvent struct {
	Started   *RunStarted `json:"started,omitempty"`
	Stopped   int         `json:"stopped,omitempty"` // stopped by this signal
	Continued bool        `json:"continued,omitempty"`
	Exit      *RunExit    `json:"exit,omitempty"`
	// Error ends the run without an exit of the program: it did not start,
	// or it was lost. Status is the exit status the client should use.
	Error  string `json:"error,omitempty"`
	Status int    `json:"status,omitempty"`
}

// RunStarted says where the process runs.
type RunStarted struct {
	ID   string `json:"id"`
	Node string `json:"node"`
	PID  int    `json:"pid"`
}

// RunExit is how the process ended.
type RunExit struct {
	Code   int  `json:"code"`
	Signal int  `json:"signal,omitempty"`
	Core   bool `json:"core,omitempty"`
}

// RunControl is what the client sends during a run; one field is set.
type RunControl struct {
	Signal int       `json:"signal,omitempty"` // deliver this signal
	Group  bool      `json:"group,omitempty"`  // to the process group (a terminal's signals)
	Resize *TtyModes `json:"resize,omitempty"` // the terminal's new size
	// Foreground says whether the client's job is in the foreground of its
	// terminal: only then does the daemon read the terminal for it.
	Foreground *bool `json:"foreground,omitempty"`
}

// Exit statuses of `mosaic run` that are not the program's own (as docker
// run's, plus ssh's 255).
const (
	StatusMosaicError   = 125 // mosaic could not run it: bad input, no daemon, no node
	StatusNotExecutable = 126 // the program or the working directory cannot be used
	StatusNotFound      = 127 // no such program
	StatusCheckpointed  = 254 // mosaic checkpoint --stop ended it: its image is what is left
	StatusLost          = 255 // the node running it, or the home node, was lost
)
