// counter: prints a line every 20 ms with a running checksum of heap and
// stack data, so that a restored copy that lost or garbled memory prints
// the wrong numbers. Exits after N lines.
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

int main(int argc, char **argv) {
	int n = argc > 1 ? atoi(argv[1]) : 100;
	size_t size = argc > 2 ? (size_t)atol(argv[2]) : (1 << 20);
	unsigned char *heap = malloc(size);
	for (size_t i = 0; i < size; i++) heap[i] = (unsigned char)(i * 7 + 3);
	unsigned long sum = 0;
	char stackbuf[4096];
	memset(stackbuf, 5, sizeof stackbuf);
	setvbuf(stdout, NULL, _IOLBF, 0);
	for (int i = 0; i < n; i++) {
		for (size_t j = i % 4096; j < size; j += 4096) {
			heap[j] += 1;
			sum += heap[j];
		}
		stackbuf[i % sizeof stackbuf] += 1;
		sum += stackbuf[i % sizeof stackbuf];
		struct timespec ts = {0, 20 * 1000 * 1000};
		nanosleep(&ts, NULL);
		printf("%d %lu\n", i, sum);
	}
	return 0;
}
