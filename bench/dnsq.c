/* dnsq: the bench's small UDP DNS client for the two latency figures that dnsperf does not give.

   dnsq warm PORT PREFIX COUNT GAP_MS
       COUNT sequential A queries for PREFIX<i>.bench. to 127.0.0.1@PORT, one at a time, GAP_MS
       apart (distinct names: a cache cannot answer them). Prints
       "n=N lost=L median_ms=X p99_ms=Y" over the answered ones.
   dnsq cold PORT NAME -- COMMAND [ARG]...
       Starts COMMAND, and from the instant before fork() sends an A query for NAME to
       127.0.0.1@PORT every 1 ms (a new query each time, with a new ID: a listener that is not
       up yet drops or refuses it) until the first answer to any of them. Prints "first_answer_ms=X", then stops COMMAND
       (SIGTERM, then SIGKILL after 2 s) and waits for it. COMMAND also dies with dnsq
       (PR_SET_PDEATHSIG), so nothing outlives an interrupted bench.

   Only ever talks to 127.0.0.1. Exit status 0 on success, 1 on a timeout or an error. */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <poll.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

static double now_ms(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return ts.tv_sec * 1e3 + ts.tv_nsec / 1e6;
}

static int udp_to(int port)
{
	int s = socket(AF_INET, SOCK_DGRAM, 0);
	struct sockaddr_in a = { .sin_family = AF_INET, .sin_port = htons(port),
	                         .sin_addr.s_addr = htonl(INADDR_LOOPBACK) };
	if (s < 0 || connect(s, (struct sockaddr *)&a, sizeof a) < 0) {
		perror("dnsq: socket");
		exit(1);
	}
	return s;
}

/* Query for NAME (dotted, no trailing dot needed), type A, RD set. Returns its length. */
static size_t make_query(unsigned char *q, unsigned id, const char *name)
{
	size_t n = 12;
	memset(q, 0, 12);
	q[0] = id >> 8; q[1] = id; q[2] = 0x01; q[5] = 1;
	while (*name) {
		size_t l = strcspn(name, ".");
		if (l == 0 || l > 63 || n + l + 6 > 300) { fprintf(stderr, "dnsq: bad name\n"); exit(1); }
		q[n++] = l;
		memcpy(q + n, name, l);
		n += l;
		name += l;
		if (*name == '.') name++;
	}
	q[n++] = 0;
	q[n++] = 0; q[n++] = 1; q[n++] = 0; q[n++] = 1;
	return n;
}

/* Waits up to TIMEOUT_MS for a response (QR set) with an ID in [FIRST, ID]. 1: got it;
   0: timeout; -1: error (e.g. ECONNREFUSED while nothing listens yet). */
static int wait_answer(int s, unsigned first, unsigned id, double timeout_ms)
{
	double end = now_ms() + timeout_ms;
	unsigned char r[4096];
	for (;;) {
		double left = end - now_ms();
		if (left <= 0) return 0;
		struct pollfd p = { .fd = s, .events = POLLIN };
		int k = poll(&p, 1, left < 1 ? 1 : (int)left);
		if (k < 0 && errno == EINTR) continue;
		if (k <= 0) return k;
		ssize_t n = recv(s, r, sizeof r, 0);
		if (n < 0) return -1;
		unsigned got = (unsigned)r[0] << 8 | r[1];
		if (n >= 12 && (r[2] & 0x80) && got >= (first & 0xffff) && got <= (id & 0xffff)) return 1;
	}
}

static int cmp(const void *a, const void *b)
{
	double x = *(const double *)a, y = *(const double *)b;
	return (x > y) - (x < y);
}

static int warm(int port, const char *prefix, int count, int gap_ms)
{
	int s = udp_to(port), got = 0, lost = 0;
	double *lat = calloc(count > 0 ? count : 1, sizeof *lat);
	unsigned char q[512];
	char name[256];
	for (int i = 0; i < count; i++) {
		snprintf(name, sizeof name, "%s%d.bench", prefix, i);
		size_t n = make_query(q, i, name);
		double t0 = now_ms();
		if (send(s, q, n, 0) < 0 || wait_answer(s, i, i, 2000) != 1)
			lost++;
		else
			lat[got++] = now_ms() - t0;
		if (gap_ms > 0) usleep(gap_ms * 1000);
	}
	if (got == 0) { fprintf(stderr, "dnsq: no answers from port %d\n", port); return 1; }
	qsort(lat, got, sizeof *lat, cmp);
	int p99 = (int)(0.99 * got + 0.999999) - 1;     /* nearest rank */
	double med = got % 2 ? lat[got / 2] : (lat[got / 2 - 1] + lat[got / 2]) / 2;
	printf("n=%d lost=%d median_ms=%.3f p99_ms=%.3f\n", got, lost, med, lat[p99 < 0 ? 0 : p99]);
	return 0;
}

static int cold(int port, const char *name, char **cmd)
{
	int s = udp_to(port), rc = 1;
	unsigned char q[512];
	double t0 = now_ms();
	pid_t parent = getpid(), pid = fork();
	if (pid < 0) { perror("dnsq: fork"); return 1; }
	if (pid == 0) {
		prctl(PR_SET_PDEATHSIG, SIGKILL);
		if (getppid() != parent) _exit(127);
		close(s);
		dup2(2, 1);                    /* the server's chatter goes to dnsq's stderr */
		execvp(cmd[0], cmd);
		perror("dnsq: exec");
		_exit(127);
	}
	for (unsigned id = 1; id < 0xffff; id++) {
		if (now_ms() - t0 > 10000) { fprintf(stderr, "dnsq: no answer within 10 s\n"); break; }
		int st;
		if (waitpid(pid, &st, WNOHANG) == pid) { fprintf(stderr, "dnsq: %s exited early\n", cmd[0]); return 1; }
		size_t n = make_query(q, id, name);
		int k = send(s, q, n, 0) < 0 ? -1 : wait_answer(s, 1, id, 1);
		if (k == 1) {
			printf("first_answer_ms=%.3f\n", now_ms() - t0);
			rc = 0;
			break;
		}
		if (k < 0) usleep(1000);             /* refused: nothing listens yet */
	}
	kill(pid, SIGTERM);
	for (int i = 0; i < 200; i++) {
		if (waitpid(pid, NULL, WNOHANG) == pid) return rc;
		usleep(10000);
	}
	kill(pid, SIGKILL);
	waitpid(pid, NULL, 0);
	return rc;
}

int main(int argc, char **argv)
{
	if (argc == 6 && !strcmp(argv[1], "warm"))
		return warm(atoi(argv[2]), argv[3], atoi(argv[4]), atoi(argv[5]));
	if (argc >= 6 && !strcmp(argv[1], "cold") && !strcmp(argv[4], "--"))
		return cold(atoi(argv[2]), argv[3], argv + 5);
	fprintf(stderr, "usage: dnsq warm PORT PREFIX COUNT GAP_MS\n"
	                "       dnsq cold PORT NAME -- COMMAND [ARG]...\n");
	return 2;
}
