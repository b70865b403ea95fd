// devices: holds /dev/null, /dev/zero and /dev/urandom open (as many
// programs do) and uses them every round; they are the same on any node.
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

int main(int argc, char **argv) {
	int rounds = argc > 1 ? atoi(argv[1]) : 30;
	setvbuf(stdout, NULL, _IOLBF, 0);
	int null = open("/dev/null", O_WRONLY), zero = open("/dev/zero", O_RDONLY), urnd = open("/dev/urandom", O_RDONLY | O_CLOEXEC);
	if (null < 0 || zero < 0 || urnd < 0) return 1;
	for (int r = 0; r < rounds; r++) {
		char z[64], u[64], want[64] = {0};
		memset(z, 1, sizeof z);
		int ok = write(null, "x", 1) == 1 && read(zero, z, sizeof z) == sizeof z && memcmp(z, want, sizeof z) == 0 &&
		         read(urnd, u, sizeof u) == sizeof u && (fcntl(urnd, F_GETFD) & FD_CLOEXEC);
		printf("round %d %s\n", r, ok ? "ok" : "BROKEN");
		struct timespec ts = {0, 30 * 1000 * 1000};
		nanosleep(&ts, NULL);
	}
	return 0;
}
