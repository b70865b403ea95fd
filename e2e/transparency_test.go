//go:build cluster

package e2e

import (
	"bufio"
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"io"
	"math/rand/v2"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"
)

// The transparency corpus: real, unmodified programs started with `mosaic
// run` and moved three times while they run, at random moments (also while
// they wait for input), must write exactly what the same run without moves
// writes, and exit as it does. Each logs its time with and without the
// moves ("corpus timing"), which docs/BENCHMARKS.md cites.
func TestTransparencyCorpus(t *testing.T) {
	c := startPublicCluster(t, 3)
	progs := cPrograms(t)
	dir := publicDir(t)
	seed := uint64(time.Now().UnixNano())
	if s := os.Getenv("MOSAIC_CORPUS_SEED"); s != "" {
		fmt.Sscan(s, &seed)
	}
	t.Logf("seed %d (MOSAIC_CORPUS_SEED=%d repeats these moments)", seed, seed)
	rng := rand.New(rand.NewPCG(seed, 0x6d6f73))

	input := filepath.Join(dir, "input.txt")
	writeCorpusInput(t, input, 1_500_000)
	sql := filepath.Join(dir, "load.sql")
	writeSQL(t, sql, 800)
	project := writeProject(t, dir)
	nodeScript := filepath.Join(dir, "fork.js")
	if err := os.WriteFile(nodeScript, []byte(nodeFork), 0o644); err != nil {
		t.Fatal(err)
	}
	python := "/usr/bin/python3"

	cases := []corpusCase{
		{name: "C: counter (a loop that sleeps)", argv: []string{progs["counter"], "150", "8000000"}},
		{name: "C: threads (barriers, TLS, a condition variable, a sleeper)", argv: []string{progs["threads"], "150"}},
		{name: "C: signals (handlers, an alternate stack, an interval timer)", argv: []string{progs["signals"], "200"}},
		{name: "C: pending signals and POSIX timers", argv: []string{progs["pending"], "150"}},
		{name: "C: AVX registers", argv: []string{progs["avx"], "150"}},
		{name: "C: files written at offsets and appended to", argv: []string{progs["files"], "200", "@log", "@data"}},
		{name: "C: temporary, deleted and memory files, dups", argv: []string{progs["ghosts"], "200", "@dir"}},
		{name: "C: eventfd, signalfd, timerfd and an epoll set", argv: []string{progs["events"], "200"}},
		{name: "C: inotify watches", argv: []string{progs["watcher"], "200", "@dir"}},
		{name: "C: memory locked and advised (mlock, madvise)", argv: []string{progs["advice"], "200"}},
		{name: "Go: goroutines, a ticker, the runtime's poller", argv: []string{progs["goprog"], "300"}},
		{name: "C: blocked in read, fed between moves", argv: []string{progs["reader"]}, feed: []string{"one\n", "two two\n", "three three three\n", "four\n"}},
		{name: "python3", argv: []string{python, "-c", pythonPrimes}},
		{name: "python3 with threads", argv: []string{python, "-c", pythonThreads}},
		{name: "python3 with a temporary file, a memory file and a copy of its output", argv: []string{python, "-c", pythonGhosts}},
		{name: "python3 multiprocessing pool (its workers, the pipes between them, their locks in shared memory)", argv: []string{python, "-c", pythonPool}},
		{name: "python3 asyncio (an epoll set, a socket pair it wakes itself with, a thread)", argv: []string{python, "-c", pythonAsyncio}},
		{name: "python3 blocked reading its input", argv: []string{python, "-u", "-c", "import sys\nfor l in sys.stdin:\n    print(l.strip().upper(), len(l))"},
			feed: []string{"alpha\n", "beta beta\n", "gamma\n", "delta delta delta\n"}},
		{name: "perl", argv: []string{"perl", "-e", perlLoop}},
		{name: "node (libuv: an epoll set, eventfds, pipes, worker threads)", argv: []string{"node", "-e", nodeTimers}},
		{name: "node with a child process (child_process.fork and its IPC socket pair)", argv: []string{"node", nodeScript}},
		// -n: no time stamp in the output (gzip takes it from its input
		// when that is a file, and the moved run reads a pipe). Three
		// copies of the input: one took 3 s, and a slow move or two
		// left the third move too late.
		{name: "gzip of a large input", argv: []string{"gzip", "-n", "-c", "-9"}, stdin: input + "3", hash: true},
		{name: "sort of a large input", argv: []string{"sort", "-S", "1G"}, stdin: input + "3", hash: true},
		{name: "sha256sum", argv: append([]string{"sha256sum"}, slices.Repeat([]string{input}, 24)...)},
		{name: "bc computing pi", argv: []string{"bc", "-l"}, stdin: "@scale=2500; 4*a(1)\n", hash: true},
		{name: "awk", argv: []string{"awk", "BEGIN{s=0; for(i=0;i<30000000;i++){s=(s*31+i)%1000003; if(i%1000000==0) print i, s}}"}},
		{name: "sqlite3 writing a database", argv: []string{"sqlite3", "@db"}, stdin: sql, sqlite: true},
		// make, the shells it starts for each rule, gcc and what gcc
		// runs (cc1, as), whichever are there at each move. (Not the
		// make of a `make test` around it, which would pass its flags.)
		{name: "make building a small C project", argv: []string{"/bin/sh", "-c", `cp "$0"/* "$1" && cd "$1" && MAKEFLAGS= MAKELEVEL= exec make --no-print-directory`, project, "@dir"}},
		// Moved with whichever pipeline it waits for at that moment.
		{name: "sh running a script (the pipelines it waits for, and the file they write to, move with it)", argv: []string{"/bin/sh", "-c",
			`cd "$1" && { for n in 1 2 3 4 5 6; do ` + progs["counter"] + " 15 2000000 | cat || exit 9; awk 'BEGIN{for(i=0;i<300000;i++)s+=i; print s}'; done; echo done; } >log && cat log", "sh", "@dir"}},
	}
	// sort and gzip read three copies of the input.
	catInto(t, input+"3", input, input, input)

	nodes := []string{"n3", "home", "n2", "n3"}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			ref := tc.run(t, dir, "ref", nil)
			steps := rng.IntN(len(nodes) - 2)
			moves := &corpusMoves{t: t, sock: c.Node("n1").Socket, to: nodes[steps : steps+3]}
			for range 3 {
				moves.delays = append(moves.delays, time.Duration(100+rng.IntN(300))*time.Millisecond)
			}
			got := tc.run(t, dir, "moved", moves)
			if got.code != ref.code || got.out != ref.out {
				t.Fatalf("after %d moves (%v, at %v): exit %d, want %d; output differs:\n got %s\nwant %s\nstderr %s",
					moves.done, moves.to, moves.delays, got.code, ref.code, clip(got.out), clip(ref.out), got.stderr)
			}
			if moves.done != 3 {
				t.Fatalf("moved %d times, want 3 (it ended too soon: make it longer)", moves.done)
			}
			if tc.sqlite {
				for _, db := range []string{got.db, ref.db} {
					out, err := exec.Command("sqlite3", db, "PRAGMA integrity_check").CombinedOutput()
					if err != nil || strings.TrimSpace(string(out)) != "ok" {
						t.Fatalf("integrity of %s: %v %s", db, err, out)
					}
				}
				a, _ := exec.Command("sqlite3", got.db, "SELECT count(*), sum(x), max(s) FROM t").Output()
				b, _ := exec.Command("sqlite3", ref.db, "SELECT count(*), sum(x), max(s) FROM t").Output()
				if len(a) == 0 || !bytes.Equal(a, b) {
					t.Fatalf("the databases differ: %q and %q", a, b)
				}
			}
			t.Logf("corpus timing: %s: plain %.2fs, moved 3 times %.2fs", tc.name, ref.took.Seconds(), got.took.Seconds())
		})
	}
}

// corpusCase is one program of the corpus. In argv and stdin, "@name" is a
// file of that name made for each run ("@dir": a directory); stdin "@text" (with a space or a
// newline) is that text; otherwise stdin is a file's path.
type corpusCase struct {
	name   string
	argv   []string
	stdin  string
	feed   []string // written to its input one at a time, a move between each
	hash   bool     // compare the output's SHA-256 (large outputs)
	sqlite bool     // argv names a database: check it afterwards
}

type corpusRun struct {
	out, stderr string
	code        int
	took        time.Duration
	db          string
}

// run runs the case directly (moves nil) or with `mosaic run`, moved.
func (tc corpusCase) run(t *testing.T, dir, which string, moves *corpusMoves) corpusRun {
	t.Helper()
	var res corpusRun
	base := filepath.Join(dir, strings.NewReplacer(" ", "_", ":", "", "(", "", ")", "", ",", "").Replace(tc.name)+"."+which)
	argv := make([]string, len(tc.argv))
	for i, a := range tc.argv {
		if name, ok := strings.CutPrefix(a, "@"); ok {
			a = base + "." + name
			os.RemoveAll(a)
			switch name {
			case "db":
				res.db = a
			case "dir": // a directory the program's user may write in
				if err := os.Mkdir(a, 0o777); err != nil {
					t.Fatal(err)
				}
				os.Chmod(a, 0o777)
			}
		}
		argv[i] = a
	}
	var cmd *exec.Cmd
	if moves == nil {
		cmd = exec.Command(argv[0], argv[1:]...)
	} else {
		cmd = exec.Command(bin, append([]string{"--socket", moves.sock, "run", "-v", "--on", "n2", "--"}, argv...)...)
	}
	cmd.Dir = dir
	var stdin io.WriteCloser
	switch {
	case tc.feed != nil:
		w, err := cmd.StdinPipe()
		if err != nil {
			t.Fatal(err)
		}
		stdin = w
	case strings.HasPrefix(tc.stdin, "@"):
		cmd.Stdin = strings.NewReader(tc.stdin[1:])
	case tc.stdin != "":
		f, err := os.Open(tc.stdin)
		if err != nil {
			t.Fatal(err)
		}
		defer f.Close()
		cmd.Stdin = f
	}
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	stderr := &syncBuffer{}
	cmd.Stderr = stderr
	began := time.Now()
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	defer cmd.Process.Kill()
	// Output: hashed or kept; the first byte of it says the program runs.
	h := sha256.New()
	var kept bytes.Buffer
	firstOut := make(chan struct{})
	lines := make(chan struct{}, 64)
	readDone := make(chan struct{})
	go func() {
		defer close(readDone)
		br := bufio.NewReader(stdout)
		once := sync.Once{}
		for {
			line, err := br.ReadBytes('\n')
			if len(line) > 0 {
				once.Do(func() { close(firstOut) })
				if tc.hash {
					h.Write(line)
				} else {
					kept.Write(line)
				}
				select {
				case lines <- struct{}{}:
				default:
				}
			}
			if err != nil {
				once.Do(func() { close(firstOut) })
				return
			}
		}
	}()
	if moves != nil {
		moves.run(stderr, firstOut, stdin, tc.feed, lines)
	} else if stdin != nil {
		for _, l := range tc.feed {
			io.WriteString(stdin, l)
			<-lines
		}
	}
	if stdin != nil {
		stdin.Close()
	}
	<-readDone
	err = cmd.Wait()
	res.took = time.Since(began)
	if ee, ok := err.(*exec.ExitError); ok {
		ws := ee.Sys().(syscall.WaitStatus)
		res.code = ws.ExitStatus()
		if ws.Signaled() {
			res.code = 128 + int(ws.Signal())
		}
	} else if err != nil {
		t.Fatal(err)
	}
	res.stderr = stderr.String()
	if tc.hash {
		res.out = hex.EncodeToString(h.Sum(nil))
	} else {
		res.out = kept.String()
	}
	return res
}

// corpusMoves moves a running program to each of to in turn, after each
// delay (a fed program: after each line it answered, too).
type corpusMoves struct {
	t      *testing.T
	sock   string
	to     []string
	delays []time.Duration
	done   int
}

func (m *corpusMoves) run(stderr *syncBuffer, started <-chan struct{}, stdin io.Writer, feed []string, lines <-chan struct{}) {
	t := m.t
	var id string
	eventually(t, 10*time.Second, "the run reports its ID", func() (bool, string) {
		for _, f := range strings.Fields(stderr.String()) {
			if strings.Count(f, ".") == 1 && strings.HasPrefix(f, "n") {
				id = f
				return true, ""
			}
		}
		return false, stderr.String()
	})
	if feed == nil {
		// Running: it wrote something, or it writes only at the end.
		select {
		case <-started:
		case <-time.After(300 * time.Millisecond):
		}
	}
	for i, to := range m.to {
		if i < len(feed) {
			io.WriteString(stdin, feed[i])
			<-lines
		}
		// Fed programs move while they wait for their next line.
		time.Sleep(m.delays[i])
		_, err := migrate(t, m.sock, nil, id, to)
		// A move refused for what the program holds for a moment (a
		// descriptor that cannot move, a child between its fork and its
		// exec, or just ended) is right to be refused, after the node's
		// own few tries; the next moment it is not held. (Every program
		// here can move: one refused five times over is a failure.)
		for try := 0; err != nil && strings.Contains(err.Error(), "cannot move:") && try < 5; try++ {
			t.Logf("move %d to %s refused (%v); again", i+1, to, err)
			time.Sleep(50 * time.Millisecond)
			_, err = migrate(t, m.sock, nil, id, to)
		}
		if err != nil {
			if strings.Contains(err.Error(), "exited") || strings.Contains(err.Error(), "no process") {
				return // ended first: the caller says so
			}
			t.Errorf("move %d to %s: %v", i+1, to, err)
			return
		}
		m.done++
	}
	for _, l := range feed[min(len(feed), len(m.to)):] {
		io.WriteString(stdin, l)
		<-lines
	}
}

func clip(s string) string {
	if len(s) > 600 {
		return s[:300] + " … " + s[len(s)-300:]
	}
	return s
}

// writeCorpusInput writes n lines of text: a number and words, as a log.
func writeCorpusInput(t *testing.T, path string, n int) {
	t.Helper()
	words := []string{"alpha", "beta", "gamma", "delta", "omega", "mosaic", "node", "home", "cluster", "page", "fault", "thread"}
	rng := rand.New(rand.NewPCG(7, 7))
	var b bytes.Buffer
	for range n {
		fmt.Fprintf(&b, "%08d %s %s %d\n", rng.IntN(100_000_000), words[rng.IntN(len(words))], words[rng.IntN(len(words))], rng.IntN(1000))
	}
	if err := os.WriteFile(path, b.Bytes(), 0o644); err != nil {
		t.Fatal(err)
	}
}

func catInto(t *testing.T, dst string, srcs ...string) {
	t.Helper()
	var all []byte
	for _, s := range srcs {
		b, err := os.ReadFile(s)
		if err != nil {
			t.Fatal(err)
		}
		all = append(all, b...)
	}
	if err := os.WriteFile(dst, all, 0o644); err != nil {
		t.Fatal(err)
	}
}

// writeSQL writes a script that fills a table in txns transactions, and
// reports as it goes.
func writeSQL(t *testing.T, path string, txns int) {
	t.Helper()
	var b strings.Builder
	b.WriteString("CREATE TABLE t(id INTEGER PRIMARY KEY, x INTEGER, s TEXT);\n")
	for i := 1; i <= txns; i++ {
		fmt.Fprintf(&b, "BEGIN; WITH RECURSIVE c(k) AS (SELECT 1 UNION ALL SELECT k+1 FROM c WHERE k<2000) "+
			"INSERT INTO t(x,s) SELECT (k*7919+%d)%%100003, printf('row-%%d-%%d', %d, k) FROM c; COMMIT;\n", i, i)
		if i%50 == 0 {
			fmt.Fprintf(&b, "SELECT 'after %d', count(*), sum(x) FROM t;\n", i)
		}
	}
	b.WriteString("SELECT count(*), sum(x), max(s) FROM t;\n")
	if err := os.WriteFile(path, []byte(b.String()), 0o644); err != nil {
		t.Fatal(err)
	}
}

const pythonPrimes = `
import sys
n, found, last = 2, 0, 0
while found < 80000:
    if all(n % p for p in range(2, int(n ** 0.5) + 1)):
        found += 1
        last = n
        if found % 5000 == 0:
            print(found, n, flush=True)
    n += 1
print("last", last)
`

// pythonGhosts writes, by turns, through a temporary file (O_TMPFILE: in
// no directory) and a dup of it (one offset between them), into a memory
// file, and prints through a dup of its output; at the end it reads both
// files back.
const pythonGhosts = `
import hashlib, os, tempfile, time
t = tempfile.TemporaryFile()
d = os.dup(t.fileno())
m = os.memfd_create("corpus")
out = os.dup(1)
for i in range(400):
    line = ("line %d %s\n" % (i, "x" * (i % 50))).encode()
    os.write(t.fileno() if i % 2 else d, line)
    os.write(m, line)
    if i % 20 == 0:
        os.write(out, b"%d\n" % i)
    time.sleep(0.01)
os.lseek(d, 0, os.SEEK_SET)
a = os.read(t.fileno(), 1 << 20)
os.lseek(m, 0, os.SEEK_SET)
b = os.read(m, 1 << 20)
print(len(a), hashlib.sha256(a).hexdigest(), a == b, os.lseek(t.fileno(), 0, os.SEEK_CUR))
`

// pythonAsyncio runs tasks on an event loop that a thread wakes through
// call_soon_threadsafe (a byte into the loop's socket pair). Which task
// takes an item depends on timing, so nothing printed depends on it.
const pythonAsyncio = `
import asyncio, hashlib, threading, time
async def worker(q, out):
    while True:
        i = await q.get()
        if i is None:
            return
        h = hashlib.sha256(str(i).encode())
        for _ in range(2000):
            h = hashlib.sha256(h.digest())
        out.append((i, h.hexdigest()[:12]))
        if i % 30 == 0:
            print("item", i, flush=True)
async def main():
    loop = asyncio.get_running_loop()
    q, out = asyncio.Queue(), []
    tasks = [asyncio.create_task(worker(q, out)) for k in range(3)]
    def feeder():
        for i in range(300):
            loop.call_soon_threadsafe(q.put_nowait, i)
            time.sleep(0.01)
        for _ in tasks:
            loop.call_soon_threadsafe(q.put_nowait, None)
    t = threading.Thread(target=feeder)
    t.start()
    while not all(task.done() for task in tasks):
        await asyncio.sleep(0.05)
    t.join()
    print(len(out), hashlib.sha256(repr(sorted(out)).encode()).hexdigest())
asyncio.run(main())
`

// pythonPool hands work to a pool of two worker processes, through
// pipes guarded by locks (POSIX semaphores) all three map.
const pythonPool = `
import hashlib, multiprocessing as mp
def work(i):
    h = hashlib.sha256()
    for k in range(2000000):
        h.update(b'%d' % (i * k))
    return i, h.hexdigest()[:16]
if __name__ == '__main__':
    with mp.Pool(2) as p:
        for i, d in p.imap(work, range(24)):
            print(i, d, flush=True)
`

const pythonThreads = `
import hashlib, threading
print("start", flush=True)
results = [None] * 4
def work(i):
    h = hashlib.sha256(str(i).encode()).digest()
    x = 0
    for k in range(1200000):
        h = hashlib.sha256(h).digest()
        x = (x * 31 + h[0]) % 1000003
    results[i] = (h.hex(), x)
ts = [threading.Thread(target=work, args=(i,)) for i in range(4)]
for t in ts: t.start()
for t in ts: t.join()
for i, r in enumerate(results): print(i, r[0], r[1])
`

// nodeTimers computes on a timer, one step after another, and hashes with
// crypto, whose work goes to libuv's thread pool.
// nodeFork hands numbers to a child node process over the IPC channel
// child_process.fork makes (a socket pair), one at a time. (A file: a
// forked child runs its parent's module.)
const nodeFork = `
const { fork } = require('child_process');
if (process.argv[2] === 'child') {
  process.on('message', (m) => {
    if (m === null) process.exit(0);
    let h = 0;
    for (let k = 0; k < 1e7; k++) h = (h * 31 + m + k) % 1000003;
    process.send([m, h]);
  });
} else {
  const c = fork(__filename, ['child']);
  let i = 0;
  c.on('message', ([m, h]) => {
    console.log(m, h);
    if (++i < 40) c.send(i); else c.send(null);
  });
  c.on('exit', (code) => console.log('exit', code));
  c.send(0);
}
`

const nodeTimers = `
const crypto = require("crypto");
let h = 0;
function step(i) {
  if (i == 70) return;
  for (let k = 0; k < 200000; k++) h = (h * 31 + k) % 1000003;
  crypto.pbkdf2("mosaic" + i, "salt", 2000, 16, "sha256", (err, key) => {
    if (err) throw err;
    console.log(i, h, key.toString("hex"));
    setTimeout(() => step(i + 1), 40);
  });
}
step(0);
`

const perlLoop = `
$| = 1; my $s = 0; my %h;
for my $i (0 .. 25_000_000) {
    $s = ($s * 31 + $i) % 1000003;
    $h{$s % 1000}++;
    print "$i $s\n" if $i % 2_000_000 == 0;
}
print join(",", map { $h{$_} } sort { $a <=> $b } keys %h), "\n";
`

// writeProject writes a small C project with a Makefile (eight files,
// each rule taking a few tenths of a second) into a directory of dir, and
// returns it.
func writeProject(t *testing.T, dir string) string {
	t.Helper()
	src := filepath.Join(dir, "project")
	if err := os.Mkdir(src, 0o755); err != nil {
		t.Fatal(err)
	}
	var objs []string
	for i := 1; i <= 8; i++ {
		c := fmt.Sprintf("int f%d(void) { volatile double s = 0; for (int i = 0; i < 1000; i++) s += i * %d; return (int)s; }\n", i, i)
		if err := os.WriteFile(filepath.Join(src, fmt.Sprintf("f%d.c", i)), []byte(c), 0o644); err != nil {
			t.Fatal(err)
		}
		objs = append(objs, fmt.Sprintf("f%d.o", i))
	}
	mk := "all: " + strings.Join(objs, " ") + "\n\t@ld -r -o all.o $^ && echo linked\n%.o: %.c\n\t@sleep 0.2; gcc -O2 -c $< -o $@ && echo built $@\n"
	if err := os.WriteFile(filepath.Join(src, "Makefile"), []byte(mk), 0o644); err != nil {
		t.Fatal(err)
	}
	return src
}
