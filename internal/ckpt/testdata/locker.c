// locker: holds POSIX record locks on a file (a write lock on its first
// 100 bytes, a read lock from byte 200 to the end) while it counts, as a
// database does; a moved copy must hold them, and nobody else. With a
// third argument "all", also an exclusive flock on FILE.flock (held
// through a descriptor and a dup of it) and an open file description's
// write lock on bytes 120-129 of FILE.
#define _GNU_SOURCE
#include <fcntl.h>
#include <string.h>
#include <sys/file.h>
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
	int all = argc > 3 && strcmp(argv[3], "all") == 0, ffd = -1, ofd = -1;
	if (all) {
		char path[4096];
		snprintf(path, sizeof path, "%s.flock", argv[1]);
		ffd = open(path, O_RDWR | O_CREAT, 0644);
		ofd = open(argv[1], O_RDWR);
		struct flock fl = {.l_type = F_WRLCK, .l_whence = SEEK_SET, .l_start = 120, .l_len = 10};
		if (ffd < 0 || ofd < 0 || flock(ffd, LOCK_EX | LOCK_NB) != 0 || dup(ffd) < 0 || fcntl(ofd, F_OFD_SETLK, &fl) != 0) {
			perror("flock or OFD lock");
			return 1;
		}
	}
	for (int r = 0; r < rounds; r++) {
		struct timespec ts = {0, 30 * 1000 * 1000};
		nanosleep(&ts, NULL);
		printf("round %d\n", r);
	}
	// Unlocking what it holds works, as it would have.
	printf("unlock %d\n", lock(fd, F_UNLCK, 0, 0));
	if (all) {
		struct flock fl = {.l_type = F_UNLCK, .l_whence = SEEK_SET, .l_start = 120, .l_len = 10};
		printf("unlock flock %d, ofd %d\n", flock(ffd, LOCK_UN), fcntl(ofd, F_OFD_SETLK, &fl));
	}
	return 0;
}
