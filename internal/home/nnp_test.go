package home

import (
	"os"
	"os/exec"
	"strconv"
	"testing"
	"time"
)

// Whether a caller may gain privileges by exec is read from the kernel.
func TestNoNewPrivsFromTheKernel(t *testing.T) {
	if noNewPrivs(int32(os.Getpid())) {
		t.Skip("this test runs under no_new_privs itself")
	}
	if _, err := exec.LookPath("setpriv"); err != nil {
		t.Skip("no setpriv (util-linux) here")
	}
	cmd := exec.Command("setpriv", "--no-new-privs", "sleep", "10")
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	defer func() { cmd.Process.Kill(); cmd.Wait() }()
	for range 100 { // until setpriv has become sleep
		if b, _ := os.ReadFile("/proc/" + strconv.Itoa(cmd.Process.Pid) + "/comm"); string(b) == "sleep\n" {
			break
		}
		time.Sleep(10 * time.Millisecond)
	}
	if !noNewPrivs(int32(cmd.Process.Pid)) {
		t.Fatal("a process under setpriv --no-new-privs is not seen so")
	}
	if noNewPrivs(0) {
		t.Fatal("no process (pid 0) is seen under no_new_privs")
	}
}
