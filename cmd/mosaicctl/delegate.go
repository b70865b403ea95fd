package main

import (
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"syscall"

	"github.com/spf13/cobra"
)

// The commands that start daemons or clusters (node, up, init, bench), and
// the simulator (sim, which links the gossip core and its protobufs), live
// in mosaicd, the binary that carries the daemon and its embedded store:
// keeping them out of this one keeps every other command free of the
// store's start-up cost (its packages take some 10 ms to initialize) and
// of gRPC's and protobuf's (while this was also `mosaic run`, the simulator
// in it had made every start 1.7x slower). light_test.go keeps it so. Here
// they are handed over as typed.

// delegate makes a command that runs `mosaicd NAME ARGS...`.
func delegate(g *globals, name, use, short, long string) *cobra.Command {
	return &cobra.Command{
		Use:                name + " " + use,
		Short:              short,
		Long:               long,
		DisableFlagParsing: true, // the flags are mosaicd's
		RunE: func(cmd *cobra.Command, args []string) error {
			path, err := daemonBinary()
			if err != nil {
				return err
			}
			if g.socket != "" && name == "node" && !slices.Contains(args, "--socket") {
				args = append(args, "--socket", g.socket)
			}
			return syscall.Exec(path, append([]string{"mosaicd", name}, args...), os.Environ())
		},
	}
}

// daemonBinary finds mosaicd: beside this binary, else on PATH.
func daemonBinary() (string, error) {
	if self, err := os.Executable(); err == nil {
		p := filepath.Join(filepath.Dir(self), "mosaicd")
		if _, err := os.Stat(p); err == nil {
			return p, nil
		}
	}
	p, err := exec.LookPath("mosaicd")
	if err != nil {
		return "", errors.New("cannot find mosaicd (the daemon) beside mosaicctl or on PATH: install mosaic, mosaicctl and mosaicd together (`make build` puts them in bin/)")
	}
	return p, nil
}
