/* dnsq: the bench's small UDP DNS client: the latency figures that dnsperf does not give.

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
   dnsq herd PORT TAG CLIENTS BURSTS GAP_MS WAIT_MS SPREAD_MS
       The thundering herd (bench/latency.sh): CLIENTS UDP sockets (each its own source port: a
       client), BURSTS times: every socket asks "A b<i>-TAG.herd." (a name nobody has seen: a
       fresh one each burst), the CLIENTS queries spread over SPREAD_MS in groups, one every
       0.5 ms (a late group never makes the next follow sooner than 0.25 ms: at most twice the
       planned rate), or back to back (SPREAD_MS 0, as fast as send() goes), then dnsq waits for
       all the answers (at most WAIT_MS) and GAP_MS more. Prints one line per burst, "burst=I name=N sent= ok= servfail= other= lost=
       first_ms= p50_ms= p99_ms= max_ms=" (ms from each query's own send), then one line over
       every query of every burst: "all sent= ok= servfail= other= lost= p50_ms= p99_ms= p999_ms=
       max_ms= ans_p99_ms= ans_p999_ms=" (ans_: over the answered queries only).
   dnsq load PORT QPS SECONDS WAIT_MS FAST_MS NAMES
       An open-loop paced load (bench/latency.sh): QPS A queries per second (sent every
       millisecond, whatever the answers do) for SECONDS, over 16 UDP sockets, then at most
       WAIT_MS for the last answers. NAMES is
         seq:PREFIX:ZONE           PREFIX<i>.ZONE, i = 0, 1, ... (every name new)
         zipf:N:S:SEED:ZONE        z<r>.ZONE, r in 1..N drawn from a Zipf law of exponent S
                                   (P(r) proportional to 1/r^S), from SEED: the same
                                   sequence for every server
       Prints "sent= ok= servfail= other= lost= p50_ms= p99_ms= p999_ms= max_ms= fast=
       fast_half= ans_p99_ms= ans_p999_ms=" (ans_: over the answered queries only): ok is
       NOERROR with an answer for the question asked, fast the ok ones answered within FAST_MS
       (a cache hit when the upstream always takes at least that long), fast_half within
       FAST_MS / 2.

   Percentiles are nearest-rank over every query sent: a query not answered within WAIT_MS
   counts as the slowest (its latency is printed as -1 if a percentile falls on one). Latency
   is CLOCK_MONOTONIC from just before send() to just after recv() of the answer.
   Only ever talks to 127.0.0.1. Exit status 0 on success, 1 on a timeout or an error. */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <math.h>
#include <fcntl.h>
#include <stdint.h>
#include <sys/resource.h>
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

/* Whether the answer R (N bytes) is to the question of the query Q (QLEN bytes: header and
   question only), case aside. */
static int same_question(const unsigned char *r, ssize_t n, const unsigned char *q, size_t qlen)
{
	if (n < (ssize_t)qlen || r[4] != 0 || r[5] != 1) return 0;
	for (size_t i = 12; i < qlen; i++) {
		unsigned char a = r[i], b = q[i];
		if (a >= 'A' && a <= 'Z') a += 32;
		if (b >= 'A' && b <= 'Z') b += 32;
		if (a != b) return 0;
	}
	return 1;
}

/* An answer to the question of Q: 0 NOERROR with at least one answer record, 1 SERVFAIL,
   2 anything else. */
static int classify(const unsigned char *r, ssize_t n, const unsigned char *q, size_t qlen)
{
	if (!(r[2] & 0x80) || !same_question(r, n, q, qlen)) return 2;
	int rcode = r[3] & 0x0f;
	if (rcode == 2) return 1;
	return rcode == 0 && (r[6] | r[7]) ? 0 : 2;
}

/* Nearest-rank percentile P (0..1) of the N sorted values V (INFINITY: not answered). */
static double pct(const double *v, size_t n, double p)
{
	if (n == 0) return -1;
	size_t k = (size_t)ceil(p * (double)n - 1e-9);
	if (k < 1) k = 1;
	return isinf(v[k - 1]) ? -1 : v[k - 1];
}

static void raise_nofile(void)
{
	struct rlimit rl;
	if (getrlimit(RLIMIT_NOFILE, &rl) == 0 && rl.rlim_cur < rl.rlim_max) {
		rl.rlim_cur = rl.rlim_max;
		setrlimit(RLIMIT_NOFILE, &rl);
	}
}

static uint64_t rng_state;
static uint64_t rnd(void)       /* splitmix64 */
{
	uint64_t z = (rng_state += 0x9e3779b97f4a7c15ULL);
	z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ULL;
	z = (z ^ (z >> 27)) * 0x94d049bb133111ebULL;
	return z ^ (z >> 31);
}

/* One herd burst's answers that have come: each socket's first answer with its query's ID. */
static void herd_read(int clients, struct pollfd *pf, int timeout, const unsigned *ids, int *got,
                      const double *t, double *lat, long *cnt, int *left, const unsigned char *q, size_t qlen)
{
	unsigned char r[4096];
	int k = poll(pf, clients, timeout);
	if (k < 0 && errno != EINTR) { perror("dnsq: poll"); exit(1); }
	for (int i = 0; i < clients && k > 0; i++) {
		if (!pf[i].revents) continue;
		k--;
		ssize_t n;
		while ((n = recv(pf[i].fd, r, sizeof r, 0)) >= 0) {
			double now = now_ms();
			if (got[i] || n < 12 || ((unsigned)r[0] << 8 | r[1]) != ids[i]) continue;
			int c = classify(r, n, q, qlen);
			got[i] = 1;
			(*left)--;
			lat[i] = now - t[i];
			cnt[c]++;
		}
	}
}

static int herd(int port, const char *tag, int clients, int bursts, int gap_ms, int wait_ms, double spread_ms)
{
	raise_nofile();
	int *got = calloc(clients, sizeof *got);
	unsigned *ids = calloc(clients, sizeof *ids);
	double *t = calloc(clients, sizeof *t), *lat = calloc(clients, sizeof *lat);
	double *all = calloc((size_t)clients * bursts, sizeof *all);
	struct pollfd *pf = calloc(clients, sizeof *pf);
	long tot[4] = { 0 };            /* ok, servfail, other, lost */
	size_t nall = 0;
	if (!got || !ids || !t || !lat || !all || !pf) { perror("dnsq: calloc"); return 1; }
	rng_state = (uint64_t)getpid() << 20 ^ (uint64_t)now_ms();
	for (int i = 0; i < clients; i++) {
		pf[i].fd = udp_to(port);
		fcntl(pf[i].fd, F_SETFL, O_NONBLOCK);
		pf[i].events = POLLIN;
	}
	for (int b = 0; b < bursts; b++) {
		char name[256];
		unsigned char q[512];
		snprintf(name, sizeof name, "b%d-%s.herd", b, tag);
		size_t qlen = make_query(q, 0, name);
		long cnt[4] = { 0 };
		int left = clients;
		/* The queries go in groups of G, one group every 0.5 ms, so that the burst takes
		   SPREAD_MS; a group late (dnsq not scheduled in time) is followed by the next one
		   0.25 ms later at the earliest, so that catching up never sends more than twice
		   the planned rate. Answers that come meanwhile are read as they come. */
		int g = spread_ms > 0 ? (int)ceil(clients * 0.5 / spread_ms) : clients;
		double t0 = now_ms(), last = -1e9;
		if (g < 1) g = 1;
		for (int i = 0; i < clients; i++) {
			if (i % g == 0 && spread_ms > 0) {
				double due = t0 + (i / g) * 0.5;
				if (due < last + 0.25) due = last + 0.25;
				while (now_ms() < due) {
					double w = due - now_ms();
					herd_read(clients, pf, w < 1 ? 0 : (int)w, ids, got, t, lat, cnt, &left, q, qlen);
					if (due - now_ms() > 0) usleep((useconds_t)((due - now_ms()) * 1000));
				}
				last = now_ms();
			}
			ids[i] = (unsigned)rnd() & 0xffff;
			q[0] = ids[i] >> 8; q[1] = ids[i];
			got[i] = 0;
			t[i] = now_ms();
			if (send(pf[i].fd, q, qlen, 0) < 0) { perror("dnsq: send"); got[i] = 1; lat[i] = INFINITY; cnt[3]++; left--; }
		}
		double end = now_ms() + wait_ms;
		while (left > 0) {
			double rem = end - now_ms();
			if (rem <= 0) break;
			herd_read(clients, pf, rem < 1 ? 1 : (int)rem, ids, got, t, lat, cnt, &left, q, qlen);
		}
		for (int i = 0; i < clients; i++) if (!got[i]) { lat[i] = INFINITY; cnt[3]++; }
		for (int i = 0; i < clients; i++) all[nall++] = lat[i];
		for (int c = 0; c < 4; c++) tot[c] += cnt[c];
		qsort(lat, clients, sizeof *lat, cmp);
		printf("burst=%d name=%s. sent=%d ok=%ld servfail=%ld other=%ld lost=%ld first_ms=%.3f p50_ms=%.3f p99_ms=%.3f max_ms=%.3f\n",
		       b, name, clients, cnt[0], cnt[1], cnt[2], cnt[3], pct(lat, clients, 0), pct(lat, clients, 0.5),
		       pct(lat, clients, 0.99), pct(lat, clients, 1));
		fflush(stdout);
		if (gap_ms > 0) usleep(gap_ms * 1000);
	}
	qsort(all, nall, sizeof *all, cmp);
	size_t nans = nall - (size_t)tot[3];   /* the answered ones: sorted first */
	printf("all sent=%zu ok=%ld servfail=%ld other=%ld lost=%ld p50_ms=%.3f p99_ms=%.3f p999_ms=%.3f max_ms=%.3f"
	       " ans_p99_ms=%.3f ans_p999_ms=%.3f\n",
	       nall, tot[0], tot[1], tot[2], tot[3], pct(all, nall, 0.5), pct(all, nall, 0.99), pct(all, nall, 0.999),
	       pct(all, nall, 1), pct(all, nans, 0.99), pct(all, nans, 0.999));
	return 0;
}

#define LOAD_SOCKS 16

static int load(int port, double qps, int secs, int wait_ms, double fast_ms, const char *spec)
{
	char prefix[64] = "", zone[128];
	long zn = 0;
	double zs = 1;
	unsigned long long zseed = 1;
	double *cdf = NULL;
	if (sscanf(spec, "seq:%63[^:]:%127s", prefix, zone) == 2) {
		zn = 0;
	} else if (sscanf(spec, "zipf:%ld:%lf:%llu:%127s", &zn, &zs, &zseed, zone) == 4 && zn > 0) {
		cdf = malloc(zn * sizeof *cdf);
		if (!cdf) { perror("dnsq: malloc"); return 1; }
		double sum = 0;
		for (long r = 1; r <= zn; r++) { sum += 1 / pow((double)r, zs); cdf[r - 1] = sum; }
		for (long r = 0; r < zn; r++) cdf[r] /= sum;
		rng_state = zseed;
	} else {
		fprintf(stderr, "dnsq: bad NAMES %s\n", spec);
		return 2;
	}
	size_t total = (size_t)(qps * secs);
	double *t = calloc(total ? total : 1, sizeof *t), *lat = calloc(total ? total : 1, sizeof *lat);
	int *rank = zn ? calloc(total ? total : 1, sizeof *rank) : NULL;
	unsigned char *cls = calloc(total ? total : 1, 1);
	if (!t || !lat || !cls || (zn && !rank)) { perror("dnsq: calloc"); return 1; }
	for (size_t i = 0; i < total; i++) { lat[i] = INFINITY; cls[i] = 3; }
	if (zn)                         /* the whole sequence first: the same for every server */
		for (size_t i = 0; i < total; i++) {
			double u = (double)(rnd() >> 11) / 9007199254740992.0;
			long lo = 0, hi = zn - 1;
			while (lo < hi) { long m = (lo + hi) / 2; if (cdf[m] < u) lo = m + 1; else hi = m; }
			rank[i] = (int)lo + 1;
		}
	struct pollfd pf[LOAD_SOCKS];
	for (int k = 0; k < LOAD_SOCKS; k++) {
		pf[k].fd = udp_to(port);
		fcntl(pf[k].fd, F_SETFL, O_NONBLOCK);
		pf[k].events = POLLIN;
	}
	size_t sent = 0, answered = 0;
	double start = now_ms(), stop_send = start + secs * 1000.0;
	unsigned char q[512], r[4096];
	char name[300];
	for (;;) {
		double now = now_ms();
		size_t due = now >= stop_send ? total : (size_t)((now - start) * qps / 1000.0);
		if (due > total) due = total;
		while (sent < due) {
			size_t i = sent;
			if (zn) snprintf(name, sizeof name, "z%d.%s", rank[i], zone);
			else snprintf(name, sizeof name, "%s%zu.%s", prefix, i, zone);
			size_t n = make_query(q, (unsigned)(i / LOAD_SOCKS) & 0xffff, name);
			t[i] = now_ms();
			if (send(pf[i % LOAD_SOCKS].fd, q, n, 0) < 0 && errno != EAGAIN) { perror("dnsq: send"); return 1; }
			sent++;
		}
		if (sent == total && (answered == total || now > stop_send + wait_ms)) break;
		int k = poll(pf, LOAD_SOCKS, 1);
		if (k < 0 && errno != EINTR) { perror("dnsq: poll"); return 1; }
		for (int so = 0; so < LOAD_SOCKS && k > 0; so++) {
			if (!pf[so].revents) continue;
			ssize_t n;
			while ((n = recv(pf[so].fd, r, sizeof r, 0)) >= 0) {
				double at = now_ms();
				if (n < 12 || sent <= (size_t)so) continue;
				long kmax = (long)((sent - 1 - so) / LOAD_SOCKS), id = (long)r[0] << 8 | r[1];
				long kk = kmax - ((kmax - id) & 0xffff);
				if (kk < 0) continue;
				size_t i = (size_t)kk * LOAD_SOCKS + so;
				if (i >= sent || cls[i] != 3) continue;
				if (zn) snprintf(name, sizeof name, "z%d.%s", rank[i], zone);
				else snprintf(name, sizeof name, "%s%zu.%s", prefix, i, zone);
				size_t qlen = make_query(q, (unsigned)id, name);
				if (!same_question(r, n, q, qlen)) continue;   /* not this query's answer */
				cls[i] = (unsigned char)classify(r, n, q, qlen);
				lat[i] = at - t[i];
				answered++;
			}
		}
	}
	long cnt[4] = { 0 }, fast = 0, fast_half = 0;
	for (size_t i = 0; i < total; i++) {
		cnt[cls[i]]++;
		if (cls[i] == 0 && lat[i] < fast_ms) fast++;
		if (cls[i] == 0 && lat[i] < fast_ms / 2) fast_half++;
	}
	qsort(lat, total, sizeof *lat, cmp);
	size_t nans = total - (size_t)cnt[3];  /* the answered ones: sorted first */
	printf("sent=%zu ok=%ld servfail=%ld other=%ld lost=%ld p50_ms=%.3f p99_ms=%.3f p999_ms=%.3f max_ms=%.3f fast=%ld"
	       " fast_half=%ld ans_p99_ms=%.3f ans_p999_ms=%.3f\n",
	       total, cnt[0], cnt[1], cnt[2], cnt[3], pct(lat, total, 0.5), pct(lat, total, 0.99),
	       pct(lat, total, 0.999), pct(lat, total, 1), fast, fast_half, pct(lat, nans, 0.99), pct(lat, nans, 0.999));
	return 0;
}

int main(int argc, char **argv)
{
	if (argc == 6 && !strcmp(argv[1], "warm"))
		return warm(atoi(argv[2]), argv[3], atoi(argv[4]), atoi(argv[5]));
	if (argc >= 6 && !strcmp(argv[1], "cold") && !strcmp(argv[4], "--"))
		return cold(atoi(argv[2]), argv[3], argv + 5);
	if (argc == 9 && !strcmp(argv[1], "herd"))
		return herd(atoi(argv[2]), argv[3], atoi(argv[4]), atoi(argv[5]), atoi(argv[6]), atoi(argv[7]), atof(argv[8]));
	if (argc == 8 && !strcmp(argv[1], "load"))
		return load(atoi(argv[2]), atof(argv[3]), atoi(argv[4]), atoi(argv[5]), atof(argv[6]), argv[7]);
	fprintf(stderr, "usage: dnsq warm PORT PREFIX COUNT GAP_MS\n"
	                "       dnsq cold PORT NAME -- COMMAND [ARG]...\n"
	                "       dnsq herd PORT TAG CLIENTS BURSTS GAP_MS WAIT_MS SPREAD_MS\n"
	                "       dnsq load PORT QPS SECONDS WAIT_MS FAST_MS seq:PREFIX:ZONE|zipf:N:S:SEED:ZONE\n");
	return 2;
}
