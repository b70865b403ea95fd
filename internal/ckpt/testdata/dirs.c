// dirs: holds a directory open, as sqlite3 does to fsync it and as
// programs that walk a tree or use the *at calls do. Each round it reads
// one entry through the open descriptor (so the directory's position
// must come back), opens a file relative to it and fsyncs it.
#define _GNU_SOURCE
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>

struct entry {
	unsigned long long ino;
	long long off;
	unsigned short reclen;
	unsigned char type;
	char name[];
};

int main(int argc, char **argv) {
	if (argc < 3) return 2;
	int rounds = atoi(argv[1]);
	setvbuf(stdout, NULL, _IOLBF, 0);
	int dir = open(argv[2], O_RDONLY | O_DIRECTORY | O_CLOEXEC);
	if (dir < 0) return 1;
	for (int i = 0; i < 20; i++) {
		char name[8];
		snprintf(name, sizeof name, "f%02d", i);
		int f = openat(dir, name, O_CREAT | O_WRONLY, 0600);
		if (f < 0) return 1;
		close(f);
	}
	for (int r = 0; r < rounds; r++) {
		// Room for one short entry only: one entry a round.
		char buf[32];
		long n = syscall(SYS_getdents64, dir, buf, sizeof buf);
		const char *name = n > 0 ? ((struct entry *)buf)->name : "(end)";
		char file[8];
		snprintf(file, sizeof file, "f%02d", r % 20);
		int f = openat(dir, file, O_RDONLY);
		int ok = f >= 0 && fsync(dir) == 0 && (fcntl(dir, F_GETFD) & FD_CLOEXEC);
		if (f >= 0) close(f);
		printf("round %d %s %s\n", r, name, ok ? "ok" : "BROKEN");
		struct timespec ts = {0, 30 * 1000 * 1000};
		nanosleep(&ts, NULL);
	}
	return 0;
}
