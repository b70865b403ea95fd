// locker: holds POSIX record locks on a file (a write lock on its first
// 100 bytes, a read lock from byte 200 to the end) while it counts, as a
// database does; a moved copy must hold them, and nobody else.
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <time.h>
#include <unistd.h>

static int lock(int fd, short type, off_t start, off_t len) {
	struct flock fl = {.l_type = type, .l_whence = SEEK_SET, .l_start = start, .l_len = len};
	return fcntl(fd, F_SETLK, &fl);
}

int main(int argc, char **argv) {
	if (argc < 3) return 2;
	int rounds = atoi(argv[2]);
	setvbuf(stdout, NULL, _IOLBF, 0);
	int fd = open(argv[1], O_RDWR | O_CREAT, 0644);
	if (fd < 0 || lock(fd, F_WRLCK, 0, 100) != 0 || lock(fd, F_RDLCK, 200, 0) != 0) {
		perror("lock");
		return 1;
	}
	for (int r = 0; r < rounds; r++) {
		struct timespec ts = {0, 30 * 1000 * 1000};
		nanosleep(&ts, NULL);
		printf("round %d\n", r);
	}
	// Unlocking what it holds works, as it would have.
	printf("unlock %d\n", lock(fd, F_UNLCK, 0, 0));
	return 0;
}
