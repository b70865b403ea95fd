// Command mosaic is what users type. It runs programs on the cluster
// itself (`mosaic run`: internal/runclient) and hands every other command
// line, as typed, to mosaicctl, installed beside it, which has the rest
// (ps, kill, migrate, nodes, up, ... and run's --help).
//
// Why apart from mosaicctl: every package a Go binary links is initialized
// at each start, and `mosaic run` starts for every program a user runs
// elsewhere. Without cobra, pflag, net, text/template and the rest,
// starting a remote /bin/true took 15.4-16.1 ms instead of 17.0-17.4 ms on
// the 2-vCPU test machine (docs/BENCHMARKS.md, "Start latency");
// light_test.go keeps it so. The other commands pay one more exec (about
// 6 ms), where nobody waits on it.
//
// It chooses its GOMAXPROCS itself (one P, see main), so the runtime need
// not take a default from the cgroup nor watch it after (Go 1.26 still
// reads the cgroup files once at start, only to count whether the setting
// changed anything).
//
//go:debug containermaxprocs=0
//go:debug updatemaxprocs=0
package main

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"runtime"
	"strings"
	"syscall"

	"golang.org/x/sys/unix"

	"github.com/mosaic-cluster/mosaic/internal/runclient"
)

func main() {
	if o, prog, ok := runclient.Parse(os.Args[1:]); ok {
		// One P: the client mostly waits, and a second one only has idle
		// threads spin and wake on the CPUs the daemons and the program
		// need (0.5-1 ms less CPU per run on two cores).
		runtime.GOMAXPROCS(1)
		os.Exit(runclient.Run(context.Background(), o, prog))
	}
	path, err := ctlBinary()
	if err == nil {
		err = syscall.Exec(path, append([]string{"mosaic"}, os.Args[1:]...), os.Environ())
		err = errors.New("run " + path + ": " + err.Error())
	}
	os.Stderr.WriteString("mosaic: " + err.Error() + "\n")
	os.Exit(1)
}

// ctlBinary finds mosaicctl: beside this binary, else on PATH.
func ctlBinary() (string, error) {
	const name = "mosaicctl"
	if self, err := os.Executable(); err == nil {
		if p := filepath.Join(filepath.Dir(self), name); unix.Access(p, unix.X_OK) == nil {
			return p, nil
		}
	}
	// os/exec's LookPath would link os/exec into every start.
	for _, dir := range strings.Split(os.Getenv("PATH"), ":") {
		if dir == "" {
			dir = "."
		}
		if p := filepath.Join(dir, name); unix.Access(p, unix.X_OK) == nil {
			return p, nil
		}
	}
	return "", errors.New("cannot find " + name + " (mosaic's commands other than run) beside mosaic or on PATH: " +
		"install mosaic, mosaicctl and mosaicd together (`make build` puts them in bin/)")
}
