// shmem: anonymous memory mapped MAP_SHARED (as a program does to share
// it with children it has not forked yet) must come back with its
// contents, and stay shared between the two places it is mapped.
#define _GNU_SOURCE
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/mman.h>
#include <time.h>

int main(int argc, char **argv) {
	int rounds = argc > 1 ? atoi(argv[1]) : 30;
	setvbuf(stdout, NULL, _IOLBF, 0);
	size_t n = 8 << 20;
	uint64_t *p = mmap(NULL, n, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0);
	if (p == MAP_FAILED) return 1;
	for (size_t i = 0; i < n / 8; i++) p[i] = i * 0x9e3779b97f4a7c15ull;
	for (int r = 0; r < rounds; r++) {
		uint64_t s = 0;
		for (size_t i = r; i < n / 8; i += 512) p[i] += r, s = s * 31 + p[i];
		printf("round %d sum %016llx\n", r, (unsigned long long)s);
		struct timespec ts = {0, 30 * 1000 * 1000};
		nanosleep(&ts, NULL);
	}
	return 0;
}
