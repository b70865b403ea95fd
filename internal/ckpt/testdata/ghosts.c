// ghosts: files no directory holds. Writes lines, by turns, through a
// deleted file's descriptor and a dup of it (one offset between them),
// into a memory file (memfd, sealed against shrinking) and at the end of a
// sparse O_TMPFILE file; prints through a dup of its standard output. At
// the end reads everything back, through another opening of the deleted
// file, and prints sizes, checksums, seals and modes.
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

static unsigned long sum(int fd) {
	struct stat st;
	fstat(fd, &st);
	char *buf = malloc(st.st_size + 1);
	ssize_t n = pread(fd, buf, st.st_size, 0);
	unsigned long s = 0;
	for (ssize_t i = 0; i < n; i++) s = s * 31 + (unsigned char)buf[i];
	free(buf);
	return s;
}

int main(int argc, char **argv) {
	if (argc < 3) return 2;
	int n = atoi(argv[1]);
	char path[4096];
	snprintf(path, sizeof path, "%s/scratch", argv[2]);
	int del = open(path, O_RDWR | O_CREAT | O_TRUNC | O_NOFOLLOW, 0640);
	if (del < 0 || unlink(path) < 0) return 1;
	fchmod(del, 0640);
	int dup1 = dup(del);
	char self[64];
	snprintf(self, sizeof self, "/proc/self/fd/%d", del);
	int again = open(self, O_RDONLY);
	int tmp = open(argv[2], O_TMPFILE | O_RDWR, 0600);
	int mem = memfd_create("mosaic-test", MFD_ALLOW_SEALING);
	int out = dup(1);
	if (dup1 < 0 || again < 0 || tmp < 0 || mem < 0 || out < 0) return 1;
	if (fcntl(mem, F_ADD_SEALS, F_SEAL_SHRINK) < 0) return 1;
	lseek(tmp, 1 << 20, SEEK_SET);
	for (int i = 0; i < n; i++) {
		char line[64];
		int len = snprintf(line, sizeof line, "line %d\n", i);
		write(i % 2 ? del : dup1, line, len);
		pwrite(mem, line, len, (off_t)i * 16);
		write(tmp, line, len);
		struct timespec ts = {0, 15 * 1000 * 1000};
		nanosleep(&ts, NULL);
		dprintf(out, "%d\n", i);
	}
	struct stat sd, st, sm;
	fstat(again, &sd);
	fstat(tmp, &st);
	fstat(mem, &sm);
	printf("deleted %ld bytes, sum %lu, mode %o, offsets %ld %ld\n", (long)sd.st_size, sum(again), sd.st_mode & 0777,
	       (long)lseek(del, 0, SEEK_CUR), (long)lseek(dup1, 0, SEEK_CUR));
	printf("tmpfile %ld bytes, %ld blocks under 1 MiB, sum %lu\n", (long)st.st_size, (long)(st.st_blocks < 2048), sum(tmp));
	int shrink = ftruncate(mem, 1) < 0 ? errno : 0;
	printf("memfd %ld bytes, sum %lu, seals %d, shrink refused %d\n", (long)sm.st_size, sum(mem), fcntl(mem, F_GET_SEALS),
	       shrink == EPERM);
	return 0;
}
