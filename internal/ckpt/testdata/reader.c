// reader: reads lines from stdin, blocking in read() between them, and
// prints each with a running count and length sum.
#include <stdio.h>
#include <string.h>
#include <unistd.h>

int main(void) {
	char buf[4096];
	long lines = 0, bytes = 0;
	setvbuf(stdout, NULL, _IOLBF, 0);
	ssize_t n;
	while ((n = read(0, buf, sizeof buf)) > 0) {
		for (ssize_t i = 0; i < n; i++) {
			bytes++;
			if (buf[i] == '\n') {
				lines++;
				printf("%ld %ld\n", lines, bytes);
			}
		}
	}
	printf("eof %ld %ld\n", lines, bytes);
	return 0;
}
