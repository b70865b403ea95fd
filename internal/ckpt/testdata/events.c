// events: kernel event descriptors. An eventfd with a count, another as a
// semaphore, a signalfd for SIGUSR1 (blocked, one raised), a periodic
// timerfd, and an epoll set watching all four (one edge-triggered, data
// its own tag); counts while they wait, then reports what each holds.
#define _GNU_SOURCE
#include <errno.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/epoll.h>
#include <sys/eventfd.h>
#include <sys/signalfd.h>
#include <sys/timerfd.h>
#include <time.h>
#include <unistd.h>

int main(int argc, char **argv) {
	if (argc < 2) return 2;
	int n = atoi(argv[1]);
	setvbuf(stdout, NULL, _IOLBF, 0);
	int efd = eventfd(3, EFD_NONBLOCK);
	uint64_t more = 4;
	write(efd, &more, 8);
	int sem = eventfd(2, EFD_SEMAPHORE | EFD_NONBLOCK);
	sigset_t set;
	sigemptyset(&set);
	sigaddset(&set, SIGUSR1);
	sigprocmask(SIG_BLOCK, &set, NULL);
	int sfd = signalfd(-1, &set, SFD_NONBLOCK | SFD_CLOEXEC);
	int tfd = timerfd_create(CLOCK_MONOTONIC, TFD_NONBLOCK);
	struct itimerspec its = {{0, 40 * 1000 * 1000}, {0, 40 * 1000 * 1000}};
	int ep = epoll_create1(EPOLL_CLOEXEC);
	if (efd < 0 || sem < 0 || sfd < 0 || tfd < 0 || ep < 0 || timerfd_settime(tfd, 0, &its, NULL) < 0) return 1;
	int fds[] = {efd, sem, sfd, tfd};
	uint32_t events[] = {EPOLLIN | EPOLLET, EPOLLIN, EPOLLIN, EPOLLIN};
	for (int i = 0; i < 4; i++) {
		struct epoll_event ev = {.events = events[i], .data.u64 = 0x1000 + i};
		if (epoll_ctl(ep, EPOLL_CTL_ADD, fds[i], &ev) < 0) return 1;
	}
	raise(SIGUSR1);
	for (int i = 0; i < n; i++) {
		struct timespec ts = {0, 15 * 1000 * 1000};
		nanosleep(&ts, NULL);
		printf("%d\n", i);
	}
	struct epoll_event got[8];
	int ready = epoll_wait(ep, got, 8, 0);
	unsigned mask = 0;
	for (int i = 0; i < ready; i++) mask |= 1u << (got[i].data.u64 - 0x1000);
	printf("ready %d, mask %x\n", ready, mask);
	uint64_t v = 0;
	long r = read(efd, &v, 8);
	printf("eventfd %ld %lu\n", r, (unsigned long)v);
	for (int i = 0; i < 3; i++) {
		v = 0;
		long r = read(sem, &v, 8);
		printf("semaphore %ld %lu %d\n", r, (unsigned long)v, r < 0 ? errno == EAGAIN : 0);
	}
	struct signalfd_siginfo si = {0};
	r = read(sfd, &si, sizeof si);
	printf("signalfd %ld %u\n", r, si.ssi_signo);
	v = 0;
	printf("timerfd %d\n", read(tfd, &v, 8) == 8 && v > 0);
	struct itimerspec left;
	timerfd_gettime(tfd, &left);
	printf("timerfd period %ld ms, armed %d\n", left.it_interval.tv_nsec / 1000000, left.it_value.tv_nsec > 0 || left.it_value.tv_sec > 0);
	return 0;
}
