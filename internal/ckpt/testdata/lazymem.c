// lazymem: memory that arrives after the process (post-copy) must be the
// memory it had, also where the process changes its address space while
// pages are still missing: it sums 48 MiB every round, discards part of
// another mapping (which must then read as zeros), moves the first with
// mremap, and forks a child that sums what it inherited.
#define _GNU_SOURCE
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/wait.h>
#include <unistd.h>

static uint64_t sum(const uint64_t *p, size_t bytes) {
	uint64_t s = 0;
	for (size_t i = 0; i < bytes / 8; i += 64) s = s * 31 + p[i];
	return s;
}

int main(int argc, char **argv) {
	int rounds = argc > 1 ? atoi(argv[1]) : 8;
	setvbuf(stdout, NULL, _IOLBF, 0);
	size_t na = 48 << 20, nb = 16 << 20;
	uint64_t *a = mmap(NULL, na, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	uint64_t *b = mmap(NULL, nb, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	if (a == MAP_FAILED || b == MAP_FAILED) return 1;
	for (size_t i = 0; i < na / 8; i++) a[i] = i * 2654435761u;
	// b: every other MiB touched; the rest never is at the source.
	for (size_t i = 0; i < nb / 8; i++)
		if ((i * 8 >> 20) % 2 == 0) b[i] = i ^ 0x5bd1e995;
	for (int r = 0; r < rounds; r++) {
		if (r == 3) madvise(b, 4 << 20, MADV_DONTNEED);
		if (r == 4) {
			a = mremap(a, na, na + (4 << 20), MREMAP_MAYMOVE);
			if (a == MAP_FAILED) return 2;
			na += 4 << 20;
		}
		if (r == 5) {
			pid_t c = fork();
			if (c == 0) {
				printf("child sums %016llx %016llx\n", (unsigned long long)sum(a, na), (unsigned long long)sum(b, nb));
				_exit(0);
			}
			waitpid(c, NULL, 0);
		}
		for (size_t i = r; i < na / 8; i += 4096) a[i]++;
		printf("round %d sums %016llx %016llx\n", r, (unsigned long long)sum(a, na), (unsigned long long)sum(b, nb));
		usleep(20000);
	}
	return 0;
}
