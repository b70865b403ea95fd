package bench

import (
	"bufio"
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	_ "embed"
	"errors"
	"fmt"
	"io"
	"math/big"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/mosaic-cluster/mosaic/internal/api"
	"github.com/mosaic-cluster/mosaic/internal/bufpool"
	"github.com/mosaic-cluster/mosaic/internal/procstream"
	"github.com/mosaic-cluster/mosaic/internal/up"
)

//go:embed workload/migrate.c
var migrateWorkload []byte

// MigrateConfig describes the migration benchmark.
type MigrateConfig struct {
	SizesMiB []int
	Runs     int
	// Lazy: post-copy moves (mosaic migrate --lazy); the table then also
	// gives the longest stall the process saw after it ran at the target.
	Lazy bool
	// Children: the workload first starts that many idle child
	// processes, which move with it (a process tree).
	Children int
}

// Migrate measures live migration between two nodes of a local cluster,
// for processes of each size of touched memory: the freeze time as the
// daemons count it (from the freeze at the source to the go at the
// target) and as the process saw it (the gap in its clock), and the total
// time of `mosaic migrate`; beside them, a raw TCP copy and a TLS copy of
// as many bytes between the two nodes' addresses: the transfer's limits.
// The workload is a C program (built with gcc) that touches its memory and
// then wakes every millisecond.
func Migrate(ctx context.Context, w io.Writer, cfg MigrateConfig) error {
	cli, err := cliBinary()
	if err != nil {
		return err
	}
	dir, err := os.MkdirTemp("", "mosaic-bench-migrate-")
	if err != nil {
		return err
	}
	defer os.RemoveAll(dir)
	os.Chmod(dir, 0o755)
	src, prog := filepath.Join(dir, "workload.c"), filepath.Join(dir, "workload")
	if err := os.WriteFile(src, migrateWorkload, 0o644); err != nil {
		return err
	}
	if out, err := exec.CommandContext(ctx, "gcc", "-O1", "-o", prog, src).CombinedOutput(); err != nil {
		return fmt.Errorf("build the workload (needs gcc): %v: %s", err, out)
	}
	c, stop, err := startCluster(ctx, up.Config{Nodes: 2, Out: w})
	if err != nil {
		return err
	}
	defer stop()
	sock := c.Nodes[0].Socket
	hosts := [2]string{}
	for i, n := range c.Nodes[:2] {
		h, _, err := net.SplitHostPort(n.Addr)
		if err != nil {
			return err
		}
		hosts[i] = h
	}

	fmt.Fprintf(w, "%d runs each; medians. frozen: from the freeze at the source to the go at the target, as the daemons count;\n", cfg.Runs)
	fmt.Fprintf(w, "gap: how long the process itself saw its clock jump; rate: bytes moved over the total time.\n")
	if cfg.Children > 0 {
		fmt.Fprintf(w, "The workload has %d idle child processes, which move with it.\n", cfg.Children)
	}
	if cfg.Lazy {
		fmt.Fprintf(w, "Post-copy (--lazy): image is what moved before the process ran, total lasts until the last page arrived,\n")
		fmt.Fprintf(w, "stall is the longest jump of the process's clock after it ran at the target (the worst, over the runs).\n")
	}
	fmt.Fprintln(w)
	fmt.Fprintf(w, "%8s %10s %10s %10s %10s %10s %10s %12s %12s %8s %8s\n", "touched", "image", "frozen", "gap", "stall", "total", "rate", "TCP copy", "TLS copy", "vs TCP", "vs TLS")
	cert, err := selfSigned()
	if err != nil {
		return err
	}
	tlsCfg := &tls.Config{Certificates: []tls.Certificate{cert}, InsecureSkipVerify: true}
	var cpuSize []string
	for _, size := range cfg.SizesMiB {
		// After each move, a TCP and a TLS copy of as many bytes: a change
		// in this shared machine's speed during the runs falls on all three
		// alike, and each column is a median of as many runs.
		var tcps, tlss, tcpCPU, tlsCPU []time.Duration
		copies := func(bytes int64) error {
			tcp, cpu, err := copyOnce(hosts, bytes, nil)
			if err != nil {
				return fmt.Errorf("TCP copy: %w", err)
			}
			tcps, tcpCPU = append(tcps, tcp), append(tcpCPU, cpu)
			tlsT, cpu, err := copyOnce(hosts, bytes, tlsCfg)
			if err != nil {
				return fmt.Errorf("TLS copy: %w", err)
			}
			tlss, tlsCPU = append(tlss, tlsT), append(tlsCPU, cpu)
			return nil
		}
		res, err := migrateSize(ctx, cli, sock, prog, size, cfg.Runs, cfg.Lazy, cfg.Children, copies)
		if err != nil {
			return fmt.Errorf("%d MiB: %w", size, err)
		}
		bytes := int64(res.image + res.lazy)
		tcp, tlsT := median(tcps), median(tlss)
		rate := float64(bytes) / res.total.Seconds() / 1e6
		tcpRate := float64(bytes) / tcp.Seconds() / 1e6
		tlsRate := float64(bytes) / tlsT.Seconds() / 1e6
		fmt.Fprintf(w, "%7dM %9.1fM %8.1fms %8.1fms %8.1fms %8.1fms %6.0fMB/s %7.0fMB/s %7.0fMB/s %7.0f%% %7.0f%%\n", size, float64(res.image)/(1<<20),
			ms(res.frozen), ms(res.gap), ms(res.stall), ms(res.total), rate, tcpRate, tlsRate, 100*rate/tcpRate, 100*rate/tlsRate)
		cpuSize = append(cpuSize, fmt.Sprintf("%dM TCP %.2f, TLS %.2f", size,
			median(tcpCPU).Seconds()*(1<<30)/float64(bytes), median(tlsCPU).Seconds()*(1<<30)/float64(bytes)))
	}
	fmt.Fprintf(w, "\nCPU of the copies, both ends, s per GiB: %s\n", strings.Join(cpuSize, "; "))
	return nil
}

// processCPU is the user and system time this process has used.
func processCPU() time.Duration {
	var ru syscall.Rusage
	syscall.Getrusage(syscall.RUSAGE_SELF, &ru)
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

func ms(d time.Duration) float64 { return float64(d.Microseconds()) / 1000 }

type migrateFigures struct {
	frozen, gap, stall, total time.Duration
	image, lazy               uint64
}

// migrateSize runs the workload with size MiB on n1 and moves it between
// n1 and n2 runs times, calling after with the bytes each move carried
// once it is over.
func migrateSize(ctx context.Context, cli, sock, prog string, size, runs int, lazy bool, children int, after func(bytes int64) error) (migrateFigures, error) {
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	cmd := exec.CommandContext(ctx, cli, "--socket", sock, "run", "-v", "--on", "n1", "--", prog, strconv.Itoa(size), strconv.Itoa(children))
	out, err := cmd.StdoutPipe()
	if err != nil {
		return migrateFigures{}, err
	}
	errPipe, err := cmd.StderrPipe()
	if err != nil {
		return migrateFigures{}, err
	}
	if err := cmd.Start(); err != nil {
		return migrateFigures{}, err
	}
	// -v's first line says the ID: "mosaic: n1.4 runs on n1 (...)".
	ids := make(chan string, 1)
	var stderr strings.Builder // read once the ID is known or lines end
	go func() {
		sc := bufio.NewScanner(errPipe)
		for sc.Scan() {
			if f := strings.Fields(strings.TrimPrefix(sc.Text(), "mosaic: ")); len(f) > 0 && len(ids) == 0 && stderr.Len() == 0 {
				ids <- f[0]
			}
			stderr.WriteString(sc.Text() + "\n")
		}
		close(ids)
	}()
	defer func() {
		cancel()
		cmd.Wait()
	}()
	lines := make(chan string, 16)
	go func() {
		sc := bufio.NewScanner(out)
		for sc.Scan() {
			lines <- sc.Text()
		}
		close(lines)
	}()
	next := func(prefix string) (string, error) {
		timeout := time.After(2 * time.Minute)
		for {
			select {
			case l, ok := <-lines:
				if !ok {
					return "", errors.New("the workload ended")
				}
				if strings.HasPrefix(l, prefix) {
					return strings.TrimPrefix(l, prefix), nil
				}
			case <-timeout:
				return "", fmt.Errorf("no %q from the workload", prefix)
			}
		}
	}
	if _, err := next("ready"); err != nil {
		return migrateFigures{}, err
	}
	id, ok := <-ids
	if !ok {
		return migrateFigures{}, errors.New("mosaic run -v did not say the process's ID")
	}
	var frozen, gaps, totals []time.Duration
	var fig migrateFigures
	for i := range runs {
		to := []string{"n2", "n1"}[i%2]
		// What it wrote before this move is no part of it.
		for drained := false; !drained; {
			select {
			case _, ok := <-lines:
				if !ok {
					return migrateFigures{}, errors.New("the workload ended")
				}
			default:
				drained = true
			}
		}
		var res api.MigrateResult
		if err := api.Call(ctx, sock, api.OpMigrate, api.MigrateArgs{ID: id, Node: to, Lazy: lazy}, &res); err != nil {
			return migrateFigures{}, err
		}
		froze := time.Duration(res.FrozenMs * float64(time.Millisecond))
		frozen = append(frozen, froze)
		totals = append(totals, time.Duration(res.TotalMs*float64(time.Millisecond)))
		fig.image, fig.lazy = res.ImageBytes, res.LazyBytes
		// The move's gap is the first at least half as long as the
		// daemons' freeze (they count a little more than the stop: the
		// checks before it); a shorter one before it is the machine's
		// noise, and those after it, until the move returned with all the
		// memory there, are stalls on missing pages.
		var gap time.Duration
		found := false
		giveUp := time.After(2 * time.Minute)
	gaps:
		for {
			var quiet <-chan time.Time // once the gap is found: the end, 20 ms without a line
			if found {
				quiet = time.After(20 * time.Millisecond)
			}
			select {
			case l, ok := <-lines:
				if !ok {
					return migrateFigures{}, errors.New("the workload ended")
				}
				s, ok := strings.CutPrefix(l, "gap ")
				if !ok {
					continue
				}
				us, _ := strconv.Atoi(s)
				d := time.Duration(us) * time.Microsecond
				switch {
				case !found && d >= froze/2:
					gap, found = d, true
				case found:
					fig.stall = max(fig.stall, d)
				}
			case <-quiet:
				break gaps
			case <-giveUp:
				return migrateFigures{}, fmt.Errorf("the workload reported no gap of %v or more after a move", froze/2)
			}
		}
		gaps = append(gaps, gap)
		if err := after(int64(res.ImageBytes + res.LazyBytes)); err != nil {
			return migrateFigures{}, err
		}
	}
	fig.frozen, fig.gap, fig.total = median(frozen), median(gaps), median(totals)
	return fig, nil
}

func median(ds []time.Duration) time.Duration {
	slices.Sort(ds)
	return ds[len(ds)/2]
}

// copyOnce copies n bytes from hosts[0] to hosts[1] over a fresh TCP
// connection, under TLS if tlsCfg is set (ECDSA P-256, AES-GCM, as the
// daemons negotiate), and returns how long until the receiver had them
// all and the CPU both its ends (this process) used meanwhile: one copy,
// as each move is one (the table compares the medians of as many of
// each, made in turn).
func copyOnce(hosts [2]string, n int64, tlsCfg *tls.Config) (wall, cpu time.Duration, err error) {
	l, err := net.Listen("tcp", net.JoinHostPort(hosts[1], "0"))
	if err != nil {
		return 0, 0, err
	}
	defer l.Close()
	// The receiver reads a megabyte at a time, as the daemons do (io.Discard
	// would read 8 KiB, a system call each, and slow the copy down), into
	// a buffer touched before the clock starts.
	rbuf := make([]byte, 1<<20)
	for i := range rbuf {
		rbuf[i] = 1
	}
	got := make(chan error, 1)
	go func() {
		c, err := l.Accept()
		if err != nil {
			got <- err
			return
		}
		defer c.Close()
		var r io.Reader = c
		if tlsCfg != nil {
			r = tls.Server(c, tlsCfg)
		}
		for left := n; left > 0 && err == nil; {
			var k int
			k, err = r.Read(rbuf[:min(int64(len(rbuf)), left)])
			left -= int64(k)
		}
		got <- err
	}()
	d := net.Dialer{LocalAddr: &net.TCPAddr{IP: net.ParseIP(hosts[0])}}
	c, err := d.Dial("tcp", l.Addr().String())
	if err != nil {
		return 0, 0, err
	}
	defer c.Close()
	var wr io.Writer = c
	// The TLS copy gathers its records into few system calls, as the
	// daemons' streams do (procstream.BatchConn): the best this TLS does.
	batch := func(fn func() error) error { return fn() }
	if tlsCfg != nil {
		warm := bufpool.New(procstream.BatchSize) // as a node's, warm
		warm.Warm(1, procstream.BatchSize)
		bc := procstream.NewBatchConn(c, warm)
		tc := tls.Client(bc, tlsCfg)
		if err := tc.Handshake(); err != nil {
			return 0, 0, err
		}
		wr, batch = tc, bc.Batch
	}
	buf := make([]byte, 1<<20)
	for i := range buf {
		buf[i] = byte(i)
	}
	start, cpu0 := time.Now(), processCPU()
	err = batch(func() error {
		for left := n; left > 0; {
			k, err := wr.Write(buf[:min(int64(len(buf)), left)])
			if err != nil {
				return err
			}
			left -= int64(k)
		}
		return nil
	})
	if err != nil {
		return 0, 0, err
	}
	if err := <-got; err != nil {
		return 0, 0, err
	}
	return time.Since(start), processCPU() - cpu0, nil
}

func selfSigned() (tls.Certificate, error) {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return tls.Certificate{}, err
	}
	tmpl := &x509.Certificate{SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "bench"},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour)}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		return tls.Certificate{}, err
	}
	return tls.Certificate{Certificate: [][]byte{der}, PrivateKey: key}, nil
}
