// huge: fills 9 MiB of anonymous memory (whole aligned 2 MiB blocks and
// pieces around them), says "ready", and, when its input ends, prints a
// checksum of all of it, how much of its memory is in huge pages, and how
// many whole blocks it filled.
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

int main(void) {
	size_t size = 9 << 20;
	unsigned char *m = mmap(NULL, size, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	if (m == MAP_FAILED) return 1;
	for (size_t i = 0; i < size; i++) m[i] = (unsigned char)(i * 13 + (i >> 12));
	setvbuf(stdout, NULL, _IOLBF, 0);
	printf("ready\n");
	char c;
	while (read(0, &c, 1) > 0) {}
	unsigned long sum = 0;
	for (size_t i = 0; i < size; i++) sum = sum * 31 + m[i];
	long huge = 0;
	FILE *f = fopen("/proc/self/smaps_rollup", "r");
	char line[256];
	while (f && fgets(line, sizeof line, f))
		if (!strncmp(line, "AnonHugePages:", 14)) huge = atol(line + 14);
	unsigned long lo = ((unsigned long)m + (2 << 20) - 1) & ~((2UL << 20) - 1);
	unsigned long hi = ((unsigned long)m + size) & ~((2UL << 20) - 1);
	printf("sum %lu\nhuge %ld kB of %lu blocks\n", sum, huge, (hi - lo) >> 21);
	return 0;
}
