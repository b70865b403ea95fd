// chans: pipes and socket pairs of its own. A self-pipe with a byte in
// it (non-blocking, 128 KiB), a pipe whose writer wrote and closed, a
// stream socket pair with bytes in it and one direction shut down, a
// packet pair with two messages queued, an empty datagram pair, a stream
// socket whose peer wrote and closed, a datagram socket never connected; counts
// while they wait, then reads what each holds and uses them once more.
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

static void show(const char *what, int fd) {
	char buf[64] = {0};
	long n = read(fd, buf, sizeof buf - 1);
	printf("%s: %ld %s\n", what, n, n > 0 ? buf : "");
}

int main(int argc, char **argv) {
	if (argc < 2) return 2;
	int n = atoi(argv[1]);
	setvbuf(stdout, NULL, _IOLBF, 0);
	int self[2], last[2], st[2], pk[2], dg[2], gone[2];
	if (pipe2(self, O_NONBLOCK) || pipe(last) || socketpair(AF_UNIX, SOCK_STREAM, 0, st) ||
	    socketpair(AF_UNIX, SOCK_SEQPACKET, 0, pk) || socketpair(AF_UNIX, SOCK_DGRAM, 0, dg) ||
	    socketpair(AF_UNIX, SOCK_STREAM, 0, gone))
		return 1;
	int lone = socket(AF_UNIX, SOCK_DGRAM, 0);
	write(gone[1], "bye", 3);
	close(gone[1]);
	fcntl(self[1], F_SETPIPE_SZ, 128 << 10);
	write(self[1], "w", 1);
	write(last[1], "last words", 10);
	close(last[1]);
	write(st[0], "hello stream", 12);
	shutdown(st[0], SHUT_WR);
	send(pk[1], "one", 3, 0);
	send(pk[1], "two2", 4, 0);
	for (int i = 0; i < n; i++) {
		struct timespec ts = {0, 15 * 1000 * 1000};
		nanosleep(&ts, NULL);
		printf("%d\n", i);
	}
	printf("self-pipe size %d, non-blocking %d\n", fcntl(self[0], F_GETPIPE_SZ), !!(fcntl(self[0], F_GETFL) & O_NONBLOCK));
	show("self-pipe", self[0]);
	show("self-pipe again", self[0]);
	show("closed pipe", last[0]);
	show("closed pipe, at its end", last[0]);
	show("stream", st[1]);
	show("stream, shut", st[1]);
	write(st[1], "back", 4);
	show("stream, the other way", st[0]);
	show("packet 1", pk[0]);
	show("packet 2", pk[0]);
	send(dg[0], "datagram", 8, 0);
	show("datagram", dg[1]);
	show("peer gone", gone[0]);
	show("peer gone, at its end", gone[0]);
	int r = send(gone[0], "x", 1, MSG_NOSIGNAL);
	printf("peer gone, send %d %d\n", r, r < 0 && errno == EPIPE);
	r = send(lone, "x", 1, 0);
	printf("never connected, send %d %d\n", r, r < 0 && errno == ENOTCONN);
	return 0;
}
