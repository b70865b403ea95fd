package main

import (
	"encoding/json"
	"fmt"
	"io"
	"strconv"
	"strings"
	"syscall"
	"text/tabwriter"
	"time"

	"github.com/spf13/cobra"
	"golang.org/x/sys/unix"

	"github.com/mosaic-cluster/mosaic/internal/api"
	"github.com/mosaic-cluster/mosaic/internal/bytesize"
)

func newPsCmd(g *globals) *cobra.Command {
	var asJSON bool
	cmd := &cobra.Command{
		Use:   "ps [ID] [--json]",
		Short: "List your mosaic processes on every node (root: everyone's)",
		Long: `List mosaic processes, cluster-wide: each with its ID (home node and a
number), its user, its home, the node where it runs now, its state, CPU use
(CPU time over elapsed time, as ps), resident memory, elapsed time and
command. With an ID, show that process in detail.`,
		Args: cobra.MaximumNArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			var a api.PsArgs
			if len(args) == 1 {
				a.ID = args[0]
			}
			var procs []api.ProcInfo
			if err := api.Call(cmd.Context(), g.sock(), api.OpPs, a, &procs); err != nil {
				return err
			}
			out := cmd.OutOrStdout()
			if asJSON {
				enc := json.NewEncoder(out)
				enc.SetIndent("", "  ")
				return enc.Encode(procs)
			}
			if a.ID != "" && len(procs) == 1 {
				printProc(out, procs[0])
				return nil
			}
			return printProcs(out, procs)
		},
	}
	cmd.Flags().BoolVar(&asJSON, "json", false, "print JSON, for scripts")
	return cmd
}

func printProcs(out io.Writer, procs []api.ProcInfo) error {
	w := tabwriter.NewWriter(out, 0, 4, 2, ' ', 0)
	fmt.Fprintln(w, "ID\tUSER\tHOME\tWHERE\tSTATE\tCPU%\tRSS\tELAPSED\tCOMMAND")
	for _, p := range procs {
		fmt.Fprintf(w, "%s\t%s\t%s\t%s\t%s\t%.0f\t%s\t%s\t%s\n", p.ID, p.User, p.Home, p.Node, p.State,
			p.CPUPercent, bytesize.Format(p.RSS), elapsed(time.Since(p.Started)), command(p.Argv, 60))
	}
	return w.Flush()
}

func printProc(out io.Writer, p api.ProcInfo) {
	fmt.Fprintf(out, "ID         %s\n", p.ID)
	fmt.Fprintf(out, "user       %s (uid %d)\n", p.User, p.UID)
	fmt.Fprintf(out, "home       %s\n", p.Home)
	fmt.Fprintf(out, "runs on    %s, pid %d there\n", p.Node, p.PID)
	state := p.State
	if p.ProcState != "" {
		state += " (" + p.ProcState + ")"
	}
	fmt.Fprintf(out, "state      %s\n", state)
	fmt.Fprintf(out, "started    %s (%s ago)\n", p.Started.Local().Format(time.DateTime), elapsed(time.Since(p.Started)))
	fmt.Fprintf(out, "cpu        %.2fs (%.0f%%)\n", p.CPUSeconds, p.CPUPercent)
	fmt.Fprintf(out, "rss        %s\n", bytesize.Format(p.RSS))
	if p.State == "running" || p.State == "stopped" {
		fmt.Fprintf(out, "nice       %d\n", p.Nice)
	}
	fmt.Fprintf(out, "cwd        %s\n", p.Cwd)
	fmt.Fprintf(out, "terminal   %v\n", p.Tty)
	switch p.Migrations {
	case 0:
		fmt.Fprintf(out, "moved      never\n")
	case 1:
		fmt.Fprintf(out, "moved      once\n")
	default:
		fmt.Fprintf(out, "moved      %d times\n", p.Migrations)
	}
	if p.Pinned != "" {
		fmt.Fprintf(out, "can move   no: %s\n", p.Pinned)
	} else if p.State == "running" || p.State == "stopped" {
		fmt.Fprintf(out, "can move   yes\n")
	}
	fmt.Fprintf(out, "command    %s\n", shellQuoted(p.Argv))
	if len(p.Children) > 0 {
		// They move with it (its PID namespace's).
		fmt.Fprintf(out, "children   %s\n", strings.Join(p.Children, ", "))
	}
}

func elapsed(d time.Duration) string {
	d = d.Round(time.Second)
	h, m, s := int(d.Hours()), int(d.Minutes())%60, int(d.Seconds())%60
	if h > 0 {
		return fmt.Sprintf("%d:%02d:%02d", h, m, s)
	}
	return fmt.Sprintf("%d:%02d", m, s)
}

// command is argv on one line of at most max characters (0: no limit),
// for the table: a script given with -c keeps its lines in one.
func command(argv []string, max int) string {
	s := strings.Join(strings.Fields(strings.Join(argv, " ")), " ")
	if r := []rune(s); max > 0 && len(r) > max {
		s = string(r[:max-3]) + "..."
	}
	return s
}

// shellQuoted is argv as a shell would take it back (bash's printf %q,
// with quotes): what `mosaic ps ID` shows, on one line, to copy.
func shellQuoted(argv []string) string {
	quoted := make([]string, len(argv))
	for i, a := range argv {
		quoted[i] = shellQuote(a)
		if i == 0 && quoted[0] == a && strings.Contains(a, "=") {
			quoted[0] = "'" + a + "'" // bare, a shell would take it for an assignment
		}
	}
	return strings.Join(quoted, " ")
}

func shellQuote(s string) string {
	if s != "" && strings.Trim(s, "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-_./=:,+@%") == "" {
		return s
	}
	if !strings.ContainsFunc(s, func(r rune) bool { return r < ' ' || r == 0x7f }) {
		return "'" + strings.ReplaceAll(s, "'", `'\''`) + "'"
	}
	// Control characters (a script's newlines): ANSI-C quoting, $'...'.
	var b strings.Builder
	b.WriteString("$'")
	for _, c := range []byte(s) {
		switch c {
		case '\n':
			b.WriteString(`\n`)
		case '\t':
			b.WriteString(`\t`)
		case '\\', '\'':
			b.WriteByte('\\')
			b.WriteByte(c)
		default:
			if c < ' ' || c == 0x7f {
				fmt.Fprintf(&b, `\x%02x`, c)
			} else {
				b.WriteByte(c)
			}
		}
	}
	b.WriteByte('\'')
	return b.String()
}

func newKillCmd(g *globals) *cobra.Command {
	cmd := &cobra.Command{
		Use:   "kill [-SIGNAL] ID...",
		Short: "Send a signal (default TERM) to mosaic processes, from any node",
		Long: `Send a signal to mosaic processes by ID, from any node: the request goes
to each process's home, which passes it on to wherever the process runs.
You may signal only your own processes (root: any). The signal is a name
(TERM, SIGKILL, int) or a number: mosaic kill -9 n1.4121.`,
		Args:               cobra.MinimumNArgs(1),
		DisableFlagParsing: true, // -9, -KILL are signals, not flags
		RunE: func(cmd *cobra.Command, args []string) error {
			if args[0] == "-h" || args[0] == "--help" {
				return cmd.Help()
			}
			sig := syscall.SIGTERM
			var socket string
			var ids []string
			for i := 0; i < len(args); i++ {
				a := args[i]
				switch {
				case a == "--socket" && i+1 < len(args):
					socket = args[i+1]
					i++
				case strings.HasPrefix(a, "--socket="):
					socket = strings.TrimPrefix(a, "--socket=")
				case a == "-s" && i+1 < len(args):
					s, err := parseSignal(args[i+1])
					if err != nil {
						return err
					}
					sig = s
					i++
				case strings.HasPrefix(a, "-") && len(ids) == 0:
					s, err := parseSignal(a[1:])
					if err != nil {
						return err
					}
					sig = s
				default:
					ids = append(ids, a)
				}
			}
			if socket != "" {
				g.socket = socket
			}
			if len(ids) == 0 {
				return fmt.Errorf("which process? mosaic kill [-SIGNAL] ID... (`mosaic ps` lists yours)")
			}
			var failed error
			for _, id := range ids {
				if err := api.Call(cmd.Context(), g.sock(), api.OpKill, api.KillArgs{ID: id, Signal: int(sig)}, nil); err != nil {
					fmt.Fprintf(cmd.ErrOrStderr(), "mosaic: %v\n", err)
					failed = exitError{1}
				}
			}
			return failed
		},
	}
	return cmd
}

// parseSignal reads a signal name (TERM, SIGTERM, term) or number.
func parseSignal(s string) (syscall.Signal, error) {
	if n, err := strconv.Atoi(s); err == nil {
		if n < 0 || n > 64 {
			return 0, fmt.Errorf("signal %d is out of range (0 to 64)", n)
		}
		return syscall.Signal(n), nil
	}
	name := strings.ToUpper(s)
	if !strings.HasPrefix(name, "SIG") {
		name = "SIG" + name
	}
	if sig := unix.SignalNum(name); sig != 0 {
		return sig, nil
	}
	return 0, fmt.Errorf("%q is not a signal: give a name such as TERM, KILL, INT, or a number", s)
}
