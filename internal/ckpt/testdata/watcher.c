// watcher: an inotify descriptor watching a directory for new files and a
// file for changes, under watch numbers with a gap (one was removed).
// Each round it makes a file in the directory and writes to the watched
// file, and prints the events it reads back.
#define _GNU_SOURCE
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/inotify.h>
#include <time.h>
#include <unistd.h>

int main(int argc, char **argv) {
	if (argc < 3) return 2;
	int n = atoi(argv[1]);
	setvbuf(stdout, NULL, _IOLBF, 0);
	char path[4096], watched[4096];
	snprintf(watched, sizeof watched, "%s/watched", argv[2]);
	int wf = open(watched, O_WRONLY | O_CREAT | O_TRUNC, 0644);
	int in = inotify_init1(IN_NONBLOCK | IN_CLOEXEC);
	if (wf < 0 || in < 0) return 1;
	int gone = inotify_add_watch(in, argv[2], IN_DELETE);
	int dir = inotify_add_watch(in, argv[2], IN_CREATE | IN_MASK_ADD);
	int file = inotify_add_watch(in, watched, IN_MODIFY);
	inotify_rm_watch(in, dir);
	dir = inotify_add_watch(in, argv[2], IN_CREATE);
	char ev[4096];
	while (read(in, ev, sizeof ev) > 0) {
	}
	printf("watches %d %d %d\n", gone, dir, file);
	for (int i = 0; i < n; i++) {
		snprintf(path, sizeof path, "%s/f%d", argv[2], i);
		close(open(path, O_WRONLY | O_CREAT, 0644));
		write(wf, "x", 1);
		long len = read(in, ev, sizeof ev);
		for (char *p = ev; len > 0 && p < ev + len;) {
			struct inotify_event *e = (struct inotify_event *)p;
			printf("%d: wd %d mask %x %s\n", i, e->wd, e->mask, e->len ? e->name : "-");
			p += sizeof *e + e->len;
		}
		struct timespec ts = {0, 15 * 1000 * 1000};
		nanosleep(&ts, NULL);
	}
	return 0;
}
