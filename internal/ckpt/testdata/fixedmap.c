// fixedmap: memory at 1 GiB, the first place a restore looks for its
// trampoline (in the stub, before the image is known): the restore must
// move the trampoline out of the way and bring the memory back intact.
#define _GNU_SOURCE
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/mman.h>
#include <time.h>

int main(int argc, char **argv) {
	int rounds = argc > 1 ? atoi(argv[1]) : 30;
	setvbuf(stdout, NULL, _IOLBF, 0);
	size_t n = 1 << 20;
	uint64_t *p = mmap((void *)(1ul << 30), n, PROT_READ | PROT_WRITE,
	                   MAP_PRIVATE | MAP_ANONYMOUS | MAP_FIXED_NOREPLACE, -1, 0);
	if (p != (void *)(1ul << 30)) return 1;
	for (size_t i = 0; i < n / 8; i++) p[i] = i * 0x9e3779b97f4a7c15ull;
	for (int r = 0; r < rounds; r++) {
		uint64_t s = 0;
		for (size_t i = r; i < n / 8; i += 64) p[i] += r, s = s * 31 + p[i];
		printf("round %d sum %016llx\n", r, (unsigned long long)s);
		struct timespec ts = {0, 30 * 1000 * 1000};
		nanosleep(&ts, NULL);
	}
	return 0;
}
