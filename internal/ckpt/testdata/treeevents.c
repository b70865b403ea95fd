// treeevents: a parent and its child share a timerfd and a signalfd made
// before the fork. The child waits for the timer (which only it reads)
// and at each tick queues a real-time signal to its parent, which takes
// it from the signalfd (which only it reads): both descriptors must come
// back as one open file each, the timer still running.
#define _GNU_SOURCE
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/signalfd.h>
#include <sys/timerfd.h>
#include <sys/wait.h>
#include <unistd.h>

int main(int argc, char **argv) {
	int n = argc > 1 ? atoi(argv[1]) : 30;
	setvbuf(stdout, NULL, _IOLBF, 0);
	sigset_t set;
	sigemptyset(&set);
	sigaddset(&set, SIGRTMIN);
	sigprocmask(SIG_BLOCK, &set, NULL);
	int sfd = signalfd(-1, &set, 0);
	int tfd = timerfd_create(CLOCK_MONOTONIC, 0);
	struct itimerspec its = {{0, 30 * 1000 * 1000}, {0, 30 * 1000 * 1000}};
	if (sfd < 0 || tfd < 0 || timerfd_settime(tfd, 0, &its, NULL) != 0) return 1;
	pid_t pid = fork();
	if (pid < 0) return 1;
	if (pid == 0) {
		for (int i = 0; i < n; i++) {
			uint64_t expired;
			if (read(tfd, &expired, sizeof expired) != sizeof expired || expired == 0) return 2;
			printf("child tick %d\n", i);
			if (sigqueue(getppid(), SIGRTMIN, (union sigval){.sival_int = i}) != 0) return 3;
		}
		return 0;
	}
	for (int i = 0; i < n; i++) {
		struct signalfd_siginfo si;
		if (read(sfd, &si, sizeof si) != sizeof si) return 4;
		printf("parent got %d: %s\n", si.ssi_int, si.ssi_int == i ? "ok" : "WRONG");
	}
	int st;
	waitpid(pid, &st, 0);
	printf("parent: child exited %d\n", WIFEXITED(st) ? WEXITSTATUS(st) : -1);
	return 0;
}
