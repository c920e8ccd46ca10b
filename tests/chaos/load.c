/* load: the chaos run's client (make chaos, tests/chaos/run.sh). A bounded load of mixed UDP
   and TCP queries at a fixed rate, every query's outcome and latency written down.

   usage: load -p PORT -r QPS -d SECONDS -o OUT [-w WAIT_MS] [-U UDP_PERCENT] [-t TCP_CONNS]
               [-u UDP_SOCKETS] [-x PREFIX] [-P PID -S SAMPLES]

   Sends QPS queries per second (paced every millisecond) to 127.0.0.1@PORT for SECONDS, then
   waits WAIT_MS (default 12000) for the last answers and exits: it stops by itself. UDP_PERCENT
   (default 50) of the queries go over UDP (UDP_SOCKETS connected sockets, default 4, round
   robin), the others over TCP_CONNS (default 4) TCP connections, pipelined (each query is sent
   as soon as it is due, whatever is still in flight). A TCP connection the server closes is
   opened again at once for the next query due on it; the queries it had in flight (or queued
   for a connection that could not be made) are never answered.

   Every name is new (PREFIX<seq>.bench., default prefix "q"), so no cache can answer and each
   query goes upstream. Types: 70 % A, 20 % AAAA, 10 % TXT. The right answers are the
   upstream's local data (tests/chaos/run.sh): A 192.0.2.1, AAAA 2001:db8::1, TXT
   "dotproxy chaos ok". An answer is "ok" only if its ID, question (name, type, class) and
   flags match, its RCODE is NOERROR and its answer section holds that record for that name.

   OUT gets one line per query, in sending order:
     SEQ PROTO TYPE T_SEND_MS OUTCOME LATENCY_MS RCODE DETAIL
   PROTO u|t; T_SEND_MS wall clock (epoch ms, 3 decimals); OUTCOME ok|servfail|wrong|none;
   LATENCY_MS from send to the answer (monotonic clock; -1 for none); DETAIL why wrong or none.
   Then "# " summary lines: sent, duplicates, strays (answers to no query of ours), late
   answers (after WAIT_MS), TCP reconnects.
   With -P PID -S SAMPLES: every second, one line "T_MS CPU_NS CPU_TICKS RSS_KB HWM_KB SENT DONE"
   about process PID (CPU_NS: sum of /proc/PID/task/<tid>/schedstat; ticks: utime+stime of
   /proc/PID/stat; RSS/HWM: VmRSS/VmHWM of /proc/PID/status).

   Only ever talks to 127.0.0.1. Exit status 0 when it ran to the end. */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

enum { T_A = 1, T_AAAA = 28, T_TXT = 16 };
enum { O_PENDING, O_OK, O_SERVFAIL, O_WRONG, O_NONE };
static const char *oname[] = { "pending", "ok", "servfail", "wrong", "none" };
static const char TXT_OK[] = "dotproxy chaos ok";

struct q {
	double t_mono, t_wall, lat;
	unsigned char proto, out, rcode;
	unsigned short type, id;
	short conn;                    /* UDP socket or TCP connection index */
	unsigned gen;                  /* TCP connection generation */
	const char *detail;
};

struct tconn {
	int fd, connecting;
	unsigned gen;
	unsigned char *wbuf;
	size_t wlen, wcap;
	unsigned char rbuf[70000];
	size_t rlen;
};

static struct q *qs;
static long nq, sent, done, oldest, dups, strays, late, reconnects, send_err;
static const char *prefix = "q";
static double wait_ms = 12000;
static int port;

static double mono(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return ts.tv_sec * 1e3 + ts.tv_nsec / 1e6;
}
static double wall(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_REALTIME, &ts);
	return ts.tv_sec * 1e3 + ts.tv_nsec / 1e6;
}

static struct sockaddr_in target(void)
{
	struct sockaddr_in a = { .sin_family = AF_INET, .sin_port = htons(port),
	                         .sin_addr.s_addr = htonl(INADDR_LOOPBACK) };
	return a;
}

static size_t make_query(unsigned char *q, long seq)
{
	char label[64];
	int l = snprintf(label, sizeof label, "%s%ld", prefix, seq);
	size_t n = 12;
	memset(q, 0, 12);
	q[0] = qs[seq].id >> 8; q[1] = qs[seq].id; q[2] = 0x01; q[5] = 1;
	q[n++] = l; memcpy(q + n, label, l); n += l;
	q[n++] = 5; memcpy(q + n, "bench", 5); n += 5;
	q[n++] = 0;
	q[n++] = qs[seq].type >> 8; q[n++] = qs[seq].type; q[n++] = 0; q[n++] = 1;
	return n;
}

/* Reads a (possibly compressed) name at *off into out (lower case, dotted, no final dot).
   Returns 0 on success. */
static int read_name(const unsigned char *m, size_t len, size_t *off, char *out, size_t cap)
{
	size_t p = *off, o = 0;
	int jumped = 0, hops = 0;
	for (;;) {
		if (p >= len) return -1;
		unsigned l = m[p];
		if ((l & 0xc0) == 0xc0) {
			if (p + 1 >= len || ++hops > 32) return -1;
			if (!jumped) *off = p + 2;
			jumped = 1;
			p = (l & 0x3f) << 8 | m[p + 1];
			continue;
		}
		if (l & 0xc0) return -1;
		p++;
		if (l == 0) break;
		if (p + l > len || o + l + 2 > cap) return -1;
		if (o) out[o++] = '.';
		for (unsigned i = 0; i < l; i++) {
			unsigned char ch = m[p + i];
			out[o++] = (ch >= 'A' && ch <= 'Z') ? ch + 32 : ch;
		}
		p += l;
	}
	out[o] = 0;
	if (!jumped) *off = p;
	return 0;
}

static void finish(long seq, int out, int rcode, const char *detail, double t)
{
	struct q *x = &qs[seq];
	x->out = out;
	x->rcode = rcode;
	x->lat = t - x->t_mono;
	x->detail = detail;
	done++;
}

/* One message from the server, over UDP socket / TCP connection CONN (proto 'u'/'t'). */
static void handle_answer(const unsigned char *m, size_t len, char proto, int conn, unsigned gen)
{
	double t = mono();
	char qn[300], want[80];
	size_t off = 12;
	if (len < 12 || !(m[2] & 0x80)) { strays++; return; }
	unsigned id = m[0] << 8 | m[1];
	unsigned qd = m[4] << 8 | m[5], an = m[6] << 8 | m[7];
	if (qd != 1 || read_name(m, len, &off, qn, sizeof qn) || off + 4 > len) { strays++; return; }
	/* Which query: the sequence number is in the name. */
	size_t pl = strlen(prefix);
	char *end;
	if (strncasecmp(qn, prefix, pl) != 0) { strays++; return; }
	long seq = strtol(qn + pl, &end, 10);
	if (end == qn + pl || strcmp(end, ".bench") != 0 || seq < 0 || seq >= sent) { strays++; return; }
	struct q *x = &qs[seq];
	if (x->out != O_PENDING) {
		if (x->out == O_NONE) late++; else dups++;
		return;
	}
	unsigned qtype = m[off] << 8 | m[off + 1], qclass = m[off + 2] << 8 | m[off + 3];
	off += 4;
	int rcode = m[3] & 15;
	if (id != x->id) { finish(seq, O_WRONG, rcode, "id-mismatch", t); return; }
	if (proto != x->proto || conn != x->conn || (proto == 't' && gen != x->gen)) {
		finish(seq, O_WRONG, rcode, "other-socket", t); return;
	}
	if (qtype != x->type || qclass != 1) { finish(seq, O_WRONG, rcode, "question-mismatch", t); return; }
	if (!(m[2] & 0x01)) { finish(seq, O_WRONG, rcode, "rd-cleared", t); return; }
	if (m[2] & 0x02) { finish(seq, O_WRONG, rcode, "tc", t); return; }
	if (rcode == 2) { finish(seq, O_SERVFAIL, rcode, "-", t); return; }
	if (rcode != 0) { finish(seq, O_WRONG, rcode, "rcode", t); return; }
	snprintf(want, sizeof want, "%s%ld.bench", prefix, seq);
	if (strcmp(qn, want) != 0) { finish(seq, O_WRONG, rcode, "qname", t); return; }
	int found = 0;
	for (unsigned i = 0; i < an; i++) {
		char owner[300];
		if (read_name(m, len, &off, owner, sizeof owner) || off + 10 > len) { finish(seq, O_WRONG, rcode, "malformed", t); return; }
		unsigned type = m[off] << 8 | m[off + 1], cls = m[off + 2] << 8 | m[off + 3];
		unsigned rdl = m[off + 8] << 8 | m[off + 9];
		off += 10;
		if (off + rdl > len) { finish(seq, O_WRONG, rcode, "malformed", t); return; }
		const unsigned char *rd = m + off;
		off += rdl;
		if (strcmp(owner, want) != 0 || cls != 1 || type != qtype) { finish(seq, O_WRONG, rcode, "extra-record", t); return; }
		int good = 0;
		if (type == T_A) good = rdl == 4 && rd[0] == 192 && rd[1] == 0 && rd[2] == 2 && rd[3] == 1;
		else if (type == T_AAAA) {
			static const unsigned char v6[16] = { 0x20, 0x01, 0x0d, 0xb8, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1 };
			good = rdl == 16 && memcmp(rd, v6, 16) == 0;
		} else if (type == T_TXT)
			good = rdl == 1 + sizeof TXT_OK - 1 && rd[0] == sizeof TXT_OK - 1 && memcmp(rd + 1, TXT_OK, sizeof TXT_OK - 1) == 0;
		if (!good) { finish(seq, O_WRONG, rcode, "rdata", t); return; }
		found = 1;
	}
	if (!found) { finish(seq, O_WRONG, rcode, "no-answer-record", t); return; }
	finish(seq, O_OK, rcode, "-", t);
}

static int tcp_open(struct tconn *c)
{
	struct sockaddr_in a = target();
	int one = 1;
	c->fd = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
	if (c->fd < 0) return -1;
	setsockopt(c->fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
	c->gen++;
	c->rlen = c->wlen = 0;
	if (connect(c->fd, (struct sockaddr *)&a, sizeof a) < 0) {
		if (errno != EINPROGRESS) { close(c->fd); c->fd = -1; return -1; }
		c->connecting = 1;
	} else c->connecting = 0;
	return 0;
}

/* The server closed a TCP connection: the queries still in flight on it get no answer. */
static void tcp_lost(struct tconn *c, int idx, const char *why, long upto)
{
	close(c->fd);
	c->fd = -1;
	for (long s = oldest; s < upto; s++) {
		struct q *x = &qs[s];
		if (x->out == O_PENDING && x->proto == 't' && x->conn == idx && x->gen == c->gen) {
			x->out = O_NONE;
			x->lat = -1;
			x->detail = why;
			done++;
		}
	}
}

static void sample(FILE *f, int pid)
{
	char path[128], line[256];
	unsigned long long ns = 0, ticks = 0;
	long rss = -1, hwm = -1;
	snprintf(path, sizeof path, "/proc/%d/task", pid);
	DIR *d = opendir(path);
	if (!d) return;
	struct dirent *e;
	while ((e = readdir(d))) {
		if (e->d_name[0] == '.') continue;
		char p2[300];
		snprintf(p2, sizeof p2, "/proc/%d/task/%s/schedstat", pid, e->d_name);
		FILE *s = fopen(p2, "r");
		unsigned long long v;
		if (s) { if (fscanf(s, "%llu", &v) == 1) ns += v; fclose(s); }
	}
	closedir(d);
	snprintf(path, sizeof path, "/proc/%d/stat", pid);
	FILE *s = fopen(path, "r");
	if (s) {
		char buf[1024];
		size_t n = fread(buf, 1, sizeof buf - 1, s);
		buf[n] = 0;
		fclose(s);
		char *p = strrchr(buf, ')');
		unsigned long ut = 0, st = 0;
		if (p && sscanf(p + 2, "%*c %*d %*d %*d %*d %*d %*u %*u %*u %*u %*u %lu %lu", &ut, &st) == 2) ticks = ut + st;
	}
	snprintf(path, sizeof path, "/proc/%d/status", pid);
	s = fopen(path, "r");
	if (s) {
		while (fgets(line, sizeof line, s)) {
			if (!strncmp(line, "VmRSS:", 6)) rss = atol(line + 6);
			if (!strncmp(line, "VmHWM:", 6)) hwm = atol(line + 6);
		}
		fclose(s);
	}
	fprintf(f, "%.0f %llu %llu %ld %ld %ld %ld\n", wall(), ns, ticks, rss, hwm, sent, done);
	fflush(f);
}

static void usage(void)
{
	fprintf(stderr, "usage: load -p PORT -r QPS -d SECONDS -o OUT [-w WAIT_MS] [-U UDP_PERCENT] [-t TCP_CONNS] [-u UDP_SOCKETS] [-x PREFIX] [-P PID -S SAMPLES]\n");
	exit(2);
}

int main(int argc, char **argv)
{
	int opt, qps = 2000, secs = 60, udp_pct = 50, ntcp = 4, nudp = 4, pid = 0;
	const char *outp = NULL, *samplep = NULL;
	while ((opt = getopt(argc, argv, "p:r:d:o:w:U:t:u:x:P:S:")) != -1) {
		switch (opt) {
		case 'p': port = atoi(optarg); break;
		case 'r': qps = atoi(optarg); break;
		case 'd': secs = atoi(optarg); break;
		case 'o': outp = optarg; break;
		case 'w': wait_ms = atof(optarg); break;
		case 'U': udp_pct = atoi(optarg); break;
		case 't': ntcp = atoi(optarg); break;
		case 'u': nudp = atoi(optarg); break;
		case 'x': prefix = optarg; break;
		case 'P': pid = atoi(optarg); break;
		case 'S': samplep = optarg; break;
		default: usage();
		}
	}
	if (!port || !outp || qps <= 0 || secs <= 0 || nudp < 1 || ntcp < 0 || (ntcp == 0 && udp_pct < 100)) usage();
	nq = (long)qps * secs;
	qs = calloc(nq, sizeof *qs);
	FILE *out = fopen(outp, "w"), *sf = samplep ? fopen(samplep, "w") : NULL;
	if (!qs || !out || (samplep && !sf)) { perror("load"); return 1; }

	int *ufd = calloc(nudp, sizeof *ufd);
	for (int i = 0; i < nudp; i++) {
		struct sockaddr_in a = target();
		int bufsz = 1 << 20;
		ufd[i] = socket(AF_INET, SOCK_DGRAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
		setsockopt(ufd[i], SOL_SOCKET, SO_RCVBUF, &bufsz, sizeof bufsz);
		if (ufd[i] < 0 || connect(ufd[i], (struct sockaddr *)&a, sizeof a) < 0) { perror("load: udp"); return 1; }
	}
	struct tconn *tc = calloc(ntcp ? ntcp : 1, sizeof *tc);
	for (int i = 0; i < ntcp; i++) { tc[i].fd = -1; tcp_open(&tc[i]); }

	/* Query types and transports from a fixed-seed generator: the same sequence each run. */
	uint64_t r = 0x2545F4914F6CDD1DULL;
	double t0 = mono(), w0 = wall(), next_sample = t0;
	double end_send = t0 + secs * 1000.0, end_all = end_send + wait_ms;
	int urr = 0, trr = 0;
	struct pollfd *pf = calloc(nudp + ntcp, sizeof *pf);
	unsigned char buf[70000];
	for (;;) {
		double t = mono();
		if (sf && t >= next_sample) { sample(sf, pid); next_sample += 1000; }
		/* Due queries. */
		long due = t >= end_send ? nq : (long)((t - t0) * qps / 1000.0);
		if (due > nq) due = nq;
		while (sent < due) {
			long s = sent;
			struct q *x = &qs[s];
			r ^= r << 13; r ^= r >> 7; r ^= r << 17;
			unsigned k = r % 100;
			x->type = k < 70 ? T_A : k < 90 ? T_AAAA : T_TXT;
			x->id = (unsigned short)(r >> 32);
			x->proto = (int)((r >> 16) % 100) < udp_pct ? 'u' : 't';
			x->t_mono = mono();
			x->t_wall = w0 + (x->t_mono - t0);
			sent++;
			unsigned char m[300];
			size_t n = make_query(m, s);
			if (x->proto == 'u') {
				x->conn = urr;
				urr = (urr + 1) % nudp;
				if (send(ufd[x->conn], m, n, 0) < 0) {
					/* e.g. ECONNREFUSED left by an ICMP error: the query is not sent. */
					x->out = O_NONE; x->lat = -1; x->detail = "udp-send-error"; done++; send_err++;
				}
			} else {
				int i = trr;
				trr = (trr + 1) % ntcp;
				struct tconn *c = &tc[i];
				if (c->fd < 0) { reconnects++; tcp_open(c); }
				x->conn = i;
				x->gen = c->gen;
				if (c->fd < 0) { x->out = O_NONE; x->lat = -1; x->detail = "tcp-connect-failed"; done++; continue; }
				if (c->wlen + n + 2 > c->wcap) {
					c->wcap = (c->wlen + n + 2) * 2;
					c->wbuf = realloc(c->wbuf, c->wcap);
				}
				c->wbuf[c->wlen] = n >> 8; c->wbuf[c->wlen + 1] = n;
				memcpy(c->wbuf + c->wlen + 2, m, n);
				c->wlen += n + 2;
			}
		}
		/* Flush TCP writes at once (pipelining: no waiting for earlier answers). */
		for (int i = 0; i < ntcp; i++) {
			struct tconn *c = &tc[i];
			if (c->fd < 0 || c->connecting || c->wlen == 0) continue;
			ssize_t w = send(c->fd, c->wbuf, c->wlen, MSG_NOSIGNAL);
			if (w > 0) { memmove(c->wbuf, c->wbuf + w, c->wlen - w); c->wlen -= w; }
			else if (w < 0 && errno != EAGAIN && errno != EINTR) tcp_lost(c, i, "tcp-reset", sent);
		}
		/* Expired queries. */
		while (oldest < sent && (qs[oldest].out != O_PENDING || t - qs[oldest].t_mono > wait_ms)) {
			struct q *x = &qs[oldest];
			if (x->out == O_PENDING) { x->out = O_NONE; x->lat = -1; x->detail = "timeout"; done++; }
			oldest++;
		}
		if (sent == nq && (done >= nq || t >= end_all)) break;

		int n = 0;
		for (int i = 0; i < nudp; i++) { pf[n].fd = ufd[i]; pf[n].events = POLLIN; n++; }
		for (int i = 0; i < ntcp; i++) {
			pf[n].fd = tc[i].fd;
			pf[n].events = tc[i].fd < 0 ? 0 : POLLIN | (tc[i].connecting || tc[i].wlen ? POLLOUT : 0);
			n++;
		}
		if (poll(pf, n, 1) < 0 && errno != EINTR) { perror("load: poll"); return 1; }
		for (int i = 0; i < nudp; i++) {
			if (!pf[i].revents) continue;
			for (int k = 0; k < 256; k++) {
				ssize_t l = recv(ufd[i], buf, sizeof buf, 0);
				if (l < 0) break;
				handle_answer(buf, l, 'u', i, 0);
			}
		}
		for (int i = 0; i < ntcp; i++) {
			struct pollfd *p = &pf[nudp + i];
			struct tconn *c = &tc[i];
			if (!p->revents || c->fd < 0) continue;
			if (c->connecting) {
				int err = 0;
				socklen_t el = sizeof err;
				getsockopt(c->fd, SOL_SOCKET, SO_ERROR, &err, &el);
				if (err) { tcp_lost(c, i, "tcp-connect-failed", sent); continue; }
				if (p->revents & POLLOUT) c->connecting = 0;
			}
			if (p->revents & (POLLIN | POLLHUP | POLLERR)) {
				ssize_t l = recv(c->fd, c->rbuf + c->rlen, sizeof c->rbuf - c->rlen, 0);
				if (l == 0) { tcp_lost(c, i, "tcp-closed-by-server", sent); continue; }
				if (l < 0) {
					if (errno != EAGAIN && errno != EINTR) tcp_lost(c, i, "tcp-reset", sent);
					continue;
				}
				c->rlen += l;
				size_t off = 0;
				while (c->rlen - off >= 2) {
					size_t ml = c->rbuf[off] << 8 | c->rbuf[off + 1];
					if (c->rlen - off < 2 + ml) break;
					handle_answer(c->rbuf + off + 2, ml, 't', i, c->gen);
					off += 2 + ml;
				}
				memmove(c->rbuf, c->rbuf + off, c->rlen - off);
				c->rlen -= off;
			}
		}
	}
	if (sf) sample(sf, pid);
	for (long s = 0; s < nq; s++) {
		struct q *x = &qs[s];
		if (x->out == O_PENDING) { x->out = O_NONE; x->lat = -1; x->detail = "timeout"; }
		fprintf(out, "%ld %c %s %.3f %s %.3f %d %s\n", s, x->proto,
		        x->type == T_A ? "A" : x->type == T_AAAA ? "AAAA" : "TXT", x->t_wall, oname[x->out],
		        x->out == O_NONE ? -1.0 : x->lat, x->out == O_NONE ? -1 : x->rcode, x->detail ? x->detail : "-");
	}
	fprintf(out, "# sent=%ld duplicates=%ld strays=%ld late_after_wait=%ld tcp_reconnects=%ld udp_send_errors=%ld\n",
	        sent, dups, strays, late, reconnects, send_err);
	fclose(out);
	return 0;
}
