// files: appends lines to a log (O_APPEND) and overwrites records in a data
// file at its own offsets, across many writes; at the end prints both
// files' sizes and a checksum of their contents.
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

int main(int argc, char **argv) {
	if (argc < 4) return 2;
	int n = atoi(argv[1]);
	int logfd = open(argv[2], O_WRONLY | O_CREAT | O_TRUNC | O_APPEND, 0644);
	int datafd = open(argv[3], O_RDWR | O_CREAT | O_TRUNC, 0644);
	if (logfd < 0 || datafd < 0) return 1;
	setvbuf(stdout, NULL, _IOLBF, 0);
	for (int i = 0; i < n; i++) {
		char line[64];
		int len = snprintf(line, sizeof line, "line %d\n", i);
		write(logfd, line, len);
		// A record every 16 bytes, written at the file's current offset,
		// which goes back every 4 records.
		if (i % 4 == 0 && i > 0) lseek(datafd, -32, SEEK_CUR);
		char rec[16];
		snprintf(rec, sizeof rec, "%015d", i);
		write(datafd, rec, 16);
		struct timespec ts = {0, 15 * 1000 * 1000};
		nanosleep(&ts, NULL);
		printf("%d\n", i);
	}
	unsigned long sum = 0;
	for (int f = 0; f < 2; f++) {
		int fd = f == 0 ? logfd : datafd;
		off_t size = lseek(fd, 0, SEEK_END);
		char *buf = malloc(size);
		pread(fd, buf, size, 0);
		for (off_t i = 0; i < size; i++) sum = sum * 31 + (unsigned char)buf[i];
		printf("size %ld\n", (long)size);
	}
	printf("sum %lu\n", sum);
	return 0;
}
