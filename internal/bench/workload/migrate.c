// The migration benchmark's workload: it touches N MiB of memory (every
// page), says "ready", then wakes every millisecond, writes to the next 16
// pages of its memory (a sweep at 64 MB/s, so that after a post-copy move
// it needs pages that are not there yet), and reports on stdout every gap
// in its clock longer than 3 ms: the time it stood still, as the process
// itself saw it. A second argument K starts K idle child processes first
// (they move with it).
#include <stdio.h>
#include <stdlib.h>
#include <sys/mman.h>
#include <time.h>
#include <unistd.h>

int main(int argc, char **argv) {
	size_t n = (size_t)atol(argc > 1 ? argv[1] : "1") << 20;
	for (int k = argc > 2 ? atoi(argv[2]) : 0; k > 0; k--)
		if (fork() == 0)
			for (;;) pause();
	char *p = mmap(NULL, n, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	if (p == MAP_FAILED) return 1;
	for (size_t i = 0; i < n; i += 4096) p[i] = (char)(i >> 12) | 1;
	setvbuf(stdout, NULL, _IOLBF, 0);
	printf("ready\n");
	struct timespec last, now, ms = {0, 1000000};
	size_t at = 0;
	clock_gettime(CLOCK_MONOTONIC, &last);
	for (;;) {
		nanosleep(&ms, NULL);
		for (int k = 0; k < 16; k++, at = (at + 4096) % n) p[at]++;
		clock_gettime(CLOCK_MONOTONIC, &now);
		long us = (now.tv_sec - last.tv_sec) * 1000000 + (now.tv_nsec - last.tv_nsec) / 1000;
		if (us > 3000) printf("gap %ld\n", us);
		last = now;
	}
}
