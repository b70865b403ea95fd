// advice: memory it asked things of: one region locked (mlock), one locked
// as it is touched (mlock2 MLOCK_ONFAULT), one not copied to children
// (MADV_DONTFORK), one wiped in children (MADV_WIPEONFORK), one left out
// of core dumps (MADV_DONTDUMP). Counts while it waits, then prints the
// flags the kernel shows for each region (its own /proc/self/smaps).
#define _GNU_SOURCE
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <time.h>
#include <unistd.h>

#define N 5
static const char *names[N] = {"locked", "locked on fault", "dontfork", "wipeonfork", "dontdump"};
static const char *flags[N] = {" lo", " lf", " dc", " wf", " dd"};

int main(int argc, char **argv) {
	if (argc < 2) return 2;
	int n = atoi(argv[1]);
	setvbuf(stdout, NULL, _IOLBF, 0);
	char *r[N];
	for (int i = 0; i < N; i++) {
		// A gap page between regions, so that each stays a mapping of its own.
		r[i] = mmap(NULL, 3 * 4096, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
		if (r[i] == MAP_FAILED) return 1;
		munmap(r[i] + 2 * 4096, 4096);
		memset(r[i], 'a' + i, 2 * 4096);
	}
	if (mlock(r[0], 2 * 4096) || mlock2(r[1], 2 * 4096, MLOCK_ONFAULT) || madvise(r[2], 2 * 4096, MADV_DONTFORK) ||
	    madvise(r[3], 2 * 4096, MADV_WIPEONFORK) || madvise(r[4], 2 * 4096, MADV_DONTDUMP)) {
		perror("advice");
		return 1;
	}
	for (int i = 0; i < n; i++) {
		struct timespec ts = {0, 15 * 1000 * 1000};
		nanosleep(&ts, NULL);
		printf("%d\n", i);
	}
	FILE *f = fopen("/proc/self/smaps", "r");
	char line[512];
	int at = -1;
	while (fgets(line, sizeof line, f)) {
		unsigned long start, end;
		if (sscanf(line, "%lx-%lx ", &start, &end) == 2) {
			at = -1;
			for (int i = 0; i < N; i++)
				if (start == (unsigned long)r[i]) at = i;
		} else if (at >= 0 && strncmp(line, "VmFlags:", 8) == 0) {
			printf("%s: %s%s\n", names[at], strstr(line, flags[at]) ? "yes" : "no", r[at][4096] == 'a' + at ? ", intact" : "");
		}
	}
	return 0;
}
