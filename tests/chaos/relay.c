/* relay: the chaos run's fault-injecting TLS relay (make chaos, tests/chaos/run.sh).

   A TCP relay from 127.0.0.1@LPORT to 127.0.0.1@UPORT that does NOT terminate TLS: bytes from
   the client go to the upstream unchanged; bytes from the upstream are cut into TLS records
   (5-byte header: type, version, length) and passed on record by record, which is what lets it
   delay answers, close after N answers or cut a record in half. Every connection, and every
   fault it injects, is logged with a wall-clock timestamp (one line each, key=value), so that
   the report can tell the periods where the upstream was really unreachable from the healthy
   ones.

   usage: relay -n NAME -l LPORT -u UPORT -o LOG [-s SEED (-a START_MS -b END_MS | -f FILE)
                -g GAP_MS [-k KINDS]] [-x EXIT_MS]
     -n NAME      label in the log (e.g. dotproxy-1.A)
     -s SEED      seed of the fault schedule: relays with the same seed, START, END, GAP and
                  KINDS inject the same faults at the same instants (the side-by-side runs)
     -a START_MS  first fault no earlier than this (epoch ms); -b END_MS: every fault over by
                  then; -g GAP_MS: mean quiet time between two faults (0 or absent: no faults,
                  a plain relay that only logs connections)
     -k KINDS     comma list from reset,cut,close_after,stall,delay,refuse,down (default all)
     -x EXIT_MS   exit at this epoch ms whatever happens (a bound on the run's length)
     -f FILE      START_MS END_MS EXIT_MS are read from FILE, once it exists (the driver writes
                  it when every server is ready); until then the relay only relays

   Faults (each starts at a random instant; the quiet gap after the previous one is uniform in
   [GAP/2, 3*GAP/2]; the kinds come in rounds, each kind once per round in a random order, so
   that a short run still sees every kind):
     reset        every open connection is reset (RST both ways, SO_LINGER 0)
     cut          the next answer record of every open connection is cut in half: the first
                  half is forwarded, then the connection is closed (FIN to the client)
     close_after  for 3-8 s, every connection is closed (FIN) after N more answer records,
                  N in 50..500 (a resolver that closes after N queries)
     stall        for 1-4 s nothing is forwarded either way and no connection is accepted
                  (connections stay open; the kernel queues)
     delay        for 3-6 s, every answer record is held back D ms, D in 1000..3000
     refuse       for 1-5 s new connections are refused (the listening socket is closed: RST
                  to a SYN); open connections keep working
     down         the upstream "stopped" for 1-5 s: every open connection is reset and new
                  ones are refused
   Connection close reasons in the log: forwarder-closed / forwarder-reset (the DNS forwarder
   under test closed or reset it), upstream-closed / upstream-reset, the fault's name, or
   relay-exit (still open when the relay stopped). SIGTERM: logs the open connections, exits.
   Only ever binds and connects to 127.0.0.1. */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <signal.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

enum kind { K_RESET, K_CUT, K_CLOSE_AFTER, K_STALL, K_DELAY, K_REFUSE, K_DOWN, K_N };
static const char *kind_name[K_N] = { "reset", "cut", "close_after", "stall", "delay", "refuse", "down" };

struct event { int64_t at, dur; enum kind k; long param; };

#define C2S_CAP 65536
#define IN_CAP (65536 + 5)

struct rec { size_t end; int64_t rel; };

struct conn {
	int id, cfd, sfd, connecting;
	unsigned char c2s[C2S_CAP];
	size_t c2s_len;
	unsigned char in[IN_CAP];
	size_t in_len;
	unsigned char *out;               /* parsed records for the client: out[out_off..out_len) */
	size_t out_off, out_len, out_cap;
	struct rec *recs;                 /* record ends in out, with their release times */
	size_t rec_head, nrec, rec_cap;
	int64_t last_rel;
	long apprecs, limit;              /* application-data records forwarded; close after limit */
	int cut_pending;
	int s_done;                       /* server side gone (EOF or closed by a fault) */
	int c_eof;                        /* client sent FIN */
	int shut_client;                  /* we sent FIN to the client */
	int64_t close_deadline;
	const char *why;
	unsigned long long b_c2s, b_s2c;
	struct conn *next;
};

static const char *name = "relay";
static FILE *logf;
static int lport, uport, lfd = -1;
static struct conn *conns;
static int next_id = 1;
static volatile sig_atomic_t stop;
static void on_term(int sig) { (void)sig; stop = 1; }
static int64_t stall_until, delay_until, limit_until, refuse_until;
static long delay_ms, limit_n;
static const char *refuse_kind = "refuse";

static int64_t now_ms(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_REALTIME, &ts);
	return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

static void logx(const char *fmt, ...)
{
	struct timespec ts;
	va_list ap;
	clock_gettime(CLOCK_REALTIME, &ts);
	fprintf(logf, "%lld.%03ld %s ", (long long)ts.tv_sec, ts.tv_nsec / 1000000, name);
	va_start(ap, fmt);
	vfprintf(logf, fmt, ap);
	va_end(ap);
	fputc('\n', logf);
	fflush(logf);
}

static uint64_t rng;
static uint64_t rnd(void)       /* splitmix64 */
{
	uint64_t z = (rng += 0x9e3779b97f4a7c15ULL);
	z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ULL;
	z = (z ^ (z >> 27)) * 0x94d049bb133111ebULL;
	return z ^ (z >> 31);
}
static long uni(long lo, long hi) { return lo + (long)(rnd() % (uint64_t)(hi - lo + 1)); }

static int open_listener(void)
{
	int one = 1, fd = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
	struct sockaddr_in a = { .sin_family = AF_INET, .sin_port = htons(lport),
	                         .sin_addr.s_addr = htonl(INADDR_LOOPBACK) };
	if (fd < 0) return -1;
	setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
	if (bind(fd, (struct sockaddr *)&a, sizeof a) < 0 || listen(fd, 512) < 0) {
		close(fd);
		return -1;
	}
	return fd;
}

static void hard_close(int fd)
{
	struct linger l = { 1, 0 };
	if (fd < 0) return;
	setsockopt(fd, SOL_SOCKET, SO_LINGER, &l, sizeof l);
	close(fd);
}

static void conn_free(struct conn *c, const char *why, int rst)
{
	struct conn **pp;
	logx("conn=%d close why=%s c2s=%llu s2c=%llu answers=%ld", c->id, c->why ? c->why : why,
	     c->b_c2s, c->b_s2c, c->apprecs);
	if (rst) { hard_close(c->cfd); hard_close(c->sfd); }
	else { if (c->cfd >= 0) close(c->cfd); if (c->sfd >= 0) close(c->sfd); }
	for (pp = &conns; *pp; pp = &(*pp)->next)
		if (*pp == c) { *pp = c->next; break; }
	free(c->out);
	free(c->recs);
	free(c);
}

/* The upstream side is finished (its EOF, or a fault closed it): flush what is queued for the
   client, then FIN it. */
static void server_gone(struct conn *c, const char *why)
{
	if (c->sfd >= 0) { close(c->sfd); c->sfd = -1; }
	c->s_done = 1;
	c->c2s_len = 0;
	if (!c->why) c->why = c->c_eof ? "forwarder-closed" : why;
}

static void out_append(struct conn *c, const unsigned char *p, size_t n, int64_t now)
{
	if (c->out_off > 0 && c->out_off == c->out_len) {
		c->out_off = c->out_len = 0;
		c->rec_head = c->nrec = 0;
	}
	if (c->out_len + n > c->out_cap) {
		if (c->out_off > 0) {          /* compact */
			memmove(c->out, c->out + c->out_off, c->out_len - c->out_off);
			for (size_t i = c->rec_head; i < c->nrec; i++) c->recs[i].end -= c->out_off;
			c->out_len -= c->out_off;
			c->out_off = 0;
		}
		if (c->out_len + n > c->out_cap) {
			c->out_cap = (c->out_len + n) * 2;
			c->out = realloc(c->out, c->out_cap);
			if (!c->out) { perror("relay: realloc"); exit(1); }
		}
	}
	if (c->rec_head > 0 && c->rec_head == c->nrec) c->rec_head = c->nrec = 0;
	if (c->nrec == c->rec_cap) {
		if (c->rec_head > 0) {
			memmove(c->recs, c->recs + c->rec_head, (c->nrec - c->rec_head) * sizeof *c->recs);
			c->nrec -= c->rec_head;
			c->rec_head = 0;
		}
		if (c->nrec == c->rec_cap) {
			c->rec_cap = c->rec_cap ? c->rec_cap * 2 : 64;
			c->recs = realloc(c->recs, c->rec_cap * sizeof *c->recs);
			if (!c->recs) { perror("relay: realloc"); exit(1); }
		}
	}
	memcpy(c->out + c->out_len, p, n);
	c->out_len += n;
	int64_t rel = now + (now < delay_until ? delay_ms : 0);
	if (rel < c->last_rel) rel = c->last_rel;
	c->last_rel = rel;
	c->recs[c->nrec].end = c->out_len;
	c->recs[c->nrec].rel = rel;
	c->nrec++;
}

/* End (exclusive) of the bytes that may be written now; sets *next to the next release. */
static size_t out_ready(struct conn *c, int64_t now, int64_t *next)
{
	size_t end = c->out_off;
	for (size_t i = c->rec_head; i < c->nrec; i++) {
		if (c->recs[i].rel > now) { if (*next > c->recs[i].rel) *next = c->recs[i].rel; break; }
		end = c->recs[i].end;
	}
	return end;
}

/* Records from the upstream: forward whole records (or half of one for a cut). */
static void parse_records(struct conn *c, int64_t now)
{
	size_t off = 0;
	while (c->in_len - off >= 5 && !c->s_done) {
		const unsigned char *r = c->in + off;
		size_t len = (size_t)r[3] << 8 | r[4];
		if (len > IN_CAP - 5) {           /* not TLS: pass it on as it is */
			out_append(c, r, c->in_len - off, now);
			off = c->in_len;
			break;
		}
		if (c->in_len - off < 5 + len) break;
		if (r[0] == 23 && c->cut_pending) {
			out_append(c, r, 5 + len / 2, now);
			logx("conn=%d cut record_len=%zu sent=%zu", c->id, len, 5 + len / 2);
			c->why = "cut";
			server_gone(c, "cut");
			off = c->in_len;
			break;
		}
		out_append(c, r, 5 + len, now);
		off += 5 + len;
		if (r[0] == 23) {
			c->apprecs++;
			if (c->limit > 0 && c->apprecs >= c->limit) {
				logx("conn=%d close_after answers=%ld", c->id, c->apprecs);
				c->why = "close_after";
				server_gone(c, "close_after");
				off = c->in_len;
				break;
			}
		}
	}
	memmove(c->in, c->in + off, c->in_len - off);
	c->in_len -= off;
}

static void accept_one(int64_t now)
{
	struct sockaddr_in a;
	socklen_t al = sizeof a;
	int fd = accept4(lfd, (struct sockaddr *)&a, &al, SOCK_NONBLOCK | SOCK_CLOEXEC);
	if (fd < 0) return;
	struct conn *c = calloc(1, sizeof *c);
	if (!c) { perror("relay: calloc"); exit(1); }
	c->id = next_id++;
	c->cfd = fd;
	c->limit = now < limit_until ? limit_n : -1;
	int one = 1;
	setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
	c->sfd = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
	struct sockaddr_in u = { .sin_family = AF_INET, .sin_port = htons(uport),
	                         .sin_addr.s_addr = htonl(INADDR_LOOPBACK) };
	setsockopt(c->sfd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
	c->next = conns;
	conns = c;
	logx("conn=%d open peer=%d", c->id, ntohs(a.sin_port));
	if (connect(c->sfd, (struct sockaddr *)&u, sizeof u) < 0) {
		if (errno == EINPROGRESS) c->connecting = 1;
		else { c->why = "upstream-connect-failed"; conn_free(c, "", 1); }
	}
}

static int n_conns(void) { int n = 0; for (struct conn *c = conns; c; c = c->next) n++; return n; }

static void reset_all(void)
{
	while (conns) { conns->why = conns->why ? conns->why : "fault-reset"; conn_free(conns, "", 1); }
}

static void start_event(const struct event *e, int64_t now)
{
	struct conn *c;
	switch (e->k) {
	case K_RESET:
		logx("fault=reset conns=%d", n_conns());
		reset_all();
		break;
	case K_CUT:
		logx("fault=cut conns=%d", n_conns());
		for (c = conns; c; c = c->next) c->cut_pending = 1;
		break;
	case K_CLOSE_AFTER:
		limit_n = e->param;
		limit_until = now + e->dur;
		logx("fault=close_after phase=start dur_ms=%lld n=%ld conns=%d", (long long)e->dur, limit_n, n_conns());
		for (c = conns; c; c = c->next) c->limit = c->apprecs + limit_n;
		break;
	case K_STALL:
		stall_until = now + e->dur;
		logx("fault=stall phase=start dur_ms=%lld conns=%d", (long long)e->dur, n_conns());
		break;
	case K_DELAY:
		delay_ms = e->param;
		delay_until = now + e->dur;
		logx("fault=delay phase=start dur_ms=%lld delay_ms=%ld conns=%d", (long long)e->dur, delay_ms, n_conns());
		break;
	case K_REFUSE:
	case K_DOWN:
		refuse_until = now + e->dur;
		refuse_kind = kind_name[e->k];
		logx("fault=%s phase=start dur_ms=%lld conns=%d", kind_name[e->k], (long long)e->dur, n_conns());
		if (lfd >= 0) { close(lfd); lfd = -1; }
		if (e->k == K_DOWN) reset_all();
		break;
	default:
		break;
	}
}

static struct event *ev;
static size_t nev;
static int kinds[K_N], nk;

/* The whole schedule, drawn up front from the seed: the same for every relay that gets the same
   arguments, whatever traffic each one sees. */
static void make_schedule(long long seed, long long start, long long end, long long gap)
{
	int bag[K_N], bag_n = 0;
	rng = (uint64_t)seed;
	nev = 0;
	if (gap > 0 && nk > 0 && end > start) {
		int64_t t = start + uni(gap / 2, gap * 3 / 2);
		for (;;) {
			if (bag_n == 0) {           /* a new round: every kind once, in random order */
				for (int i = 0; i < nk; i++) bag[i] = kinds[i];
				for (int i = nk - 1; i > 0; i--) { int j = (int)(rnd() % (uint64_t)(i + 1)), x = bag[i]; bag[i] = bag[j]; bag[j] = x; }
				bag_n = nk;
			}
			struct event e = { .at = t, .k = bag[--bag_n] };
			switch (e.k) {
			case K_CLOSE_AFTER: e.dur = uni(3000, 8000); e.param = uni(50, 500); break;
			case K_STALL: e.dur = uni(1000, 4000); break;
			case K_DELAY: e.dur = uni(3000, 6000); e.param = uni(1000, 3000); break;
			case K_REFUSE: case K_DOWN: e.dur = uni(1000, 5000); break;
			default: e.dur = 0;
			}
			if (e.at + e.dur > end) break;
			ev = realloc(ev, (nev + 1) * sizeof *ev);
			ev[nev++] = e;
			t = e.at + e.dur + uni(gap / 2, gap * 3 / 2);
		}
	}
	logx("schedule faults=%zu seed=%lld gap_ms=%lld start=%lld end=%lld", nev, seed, gap, start, end);
}

static void usage(void)
{
	fprintf(stderr, "usage: relay -n NAME -l LPORT -u UPORT -o LOG [-s SEED (-a START_MS -b END_MS | -f FILE) -g GAP_MS [-k KINDS]] [-x EXIT_MS]\n");
	exit(2);
}

int main(int argc, char **argv)
{
	int opt;
	const char *logpath = NULL, *kindlist = NULL, *startfile = NULL;
	long long seed = 1, start = 0, end = 0, gap = 0, exit_at = 0;
	while ((opt = getopt(argc, argv, "n:l:u:o:s:a:b:g:k:x:f:")) != -1) {
		switch (opt) {
		case 'n': name = optarg; break;
		case 'l': lport = atoi(optarg); break;
		case 'u': uport = atoi(optarg); break;
		case 'o': logpath = optarg; break;
		case 's': seed = atoll(optarg); break;
		case 'a': start = atoll(optarg); break;
		case 'b': end = atoll(optarg); break;
		case 'g': gap = atoll(optarg); break;
		case 'k': kindlist = optarg; break;
		case 'x': exit_at = atoll(optarg); break;
		case 'f': startfile = optarg; break;
		default: usage();
		}
	}
	if (!lport || !uport || !logpath) usage();
	logf = fopen(logpath, "a");
	if (!logf) { perror(logpath); return 1; }
	signal(SIGPIPE, SIG_IGN);
	signal(SIGTERM, on_term);
	signal(SIGINT, on_term);
	for (int k = 0; k < K_N; k++) {
		if (!kindlist) { kinds[nk++] = k; continue; }
		const char *p = strstr(kindlist, kind_name[k]);
		size_t l = strlen(kind_name[k]);
		if (p && (p == kindlist || p[-1] == ',') && (p[l] == 0 || p[l] == ',')) kinds[nk++] = k;
	}

	lfd = open_listener();
	if (lfd < 0) { fprintf(stderr, "relay %s: cannot listen on 127.0.0.1@%d: %s\n", name, lport, strerror(errno)); return 1; }
	logx("relay start listen=%d upstream=%d", lport, uport);
	if (!startfile) make_schedule(seed, start, end, gap);

	size_t evi = 0;
	int stalled_logged = 1, delay_logged = 1, limit_logged = 1;
	struct pollfd *pf = NULL;
	struct conn **pc = NULL;
	size_t pf_cap = 0;
	for (;;) {
		int64_t now = now_ms();
		if (startfile) {
			FILE *sf = fopen(startfile, "r");
			if (sf) {
				if (fscanf(sf, "%lld %lld %lld", &start, &end, &exit_at) == 3) {
					make_schedule(seed, start, end, gap);
					startfile = NULL;
				}
				fclose(sf);
			}
		}
		if (stop || (exit_at && now >= exit_at)) {
			while (conns) { conns->why = "relay-exit"; conn_free(conns, "", 0); }
			logx("relay exit (%s)", stop ? "signal" : "deadline");
			return 0;
		}
		while (evi < nev && ev[evi].at <= now) {
			start_event(&ev[evi], now);
			if (ev[evi].k == K_STALL) stalled_logged = 0;
			if (ev[evi].k == K_DELAY) delay_logged = 0;
			if (ev[evi].k == K_CLOSE_AFTER) limit_logged = 0;
			evi++;
		}
		int stalled = now < stall_until;
		if (!stalled && !stalled_logged) { logx("fault=stall phase=end"); stalled_logged = 1; }
		if (now >= delay_until && !delay_logged) { logx("fault=delay phase=end"); delay_logged = 1; }
		if (now >= limit_until && !limit_logged) {
			logx("fault=close_after phase=end");
			limit_logged = 1;
			for (struct conn *c = conns; c; c = c->next) c->limit = -1;
		}
		if (lfd < 0 && now >= refuse_until) {
			lfd = open_listener();
			if (lfd >= 0) logx("fault=%s phase=end", refuse_kind);
		}

		int64_t next = now + 50;
		if (evi < nev && ev[evi].at < next) next = ev[evi].at;
		if (stalled && stall_until < next) next = stall_until;
		if (now < delay_until && delay_until < next) next = delay_until;
		if (now < limit_until && limit_until < next) next = limit_until;

		size_t n = 0, want = 1 + 2 * (size_t)n_conns();
		if (want > pf_cap) {
			pf_cap = want * 2;
			pf = realloc(pf, pf_cap * sizeof *pf);
			pc = realloc(pc, pf_cap * sizeof *pc);
		}
		if (lfd >= 0 && !stalled) { pf[n].fd = lfd; pf[n].events = POLLIN; pc[n++] = NULL; }
		for (struct conn *c = conns, *cn; c; c = cn) {
			cn = c->next;
			if (c->close_deadline && now >= c->close_deadline) { conn_free(c, "fin-timeout", 0); continue; }
			if (c->s_done && c->out_off == c->out_len && !c->shut_client) {
				shutdown(c->cfd, SHUT_WR);
				c->shut_client = 1;
				c->close_deadline = now + 3000;
				if (c->c_eof) { conn_free(c, "upstream-closed", 0); continue; }
			}
			if (c->close_deadline && c->close_deadline < next) next = c->close_deadline;
			if (stalled) continue;
			short ce = 0, se = 0;
			if (!c->c_eof && (c->s_done || (!c->connecting && c->c2s_len < C2S_CAP))) ce |= POLLIN;
			if (out_ready(c, now, &next) > c->out_off) ce |= POLLOUT;
			if (c->sfd >= 0) {
				if (c->connecting || c->c2s_len > 0) se |= POLLOUT;
				if (!c->connecting && c->in_len < IN_CAP) se |= POLLIN;
			}
			pf[n].fd = c->cfd; pf[n].events = ce; pc[n++] = c;
			if (c->sfd >= 0) { pf[n].fd = c->sfd; pf[n].events = se; pc[n++] = c; }
		}
		int wait = (int)(next - now);
		if (wait < 0) wait = 0;
		if (poll(pf, n, wait) < 0 && errno != EINTR) { perror("relay: poll"); return 1; }
		now = now_ms();

		/* Handle events; a connection freed on one fd is skipped on its other fd. */
		for (size_t i = 0; i < n; i++) {
			if (!pf[i].revents) continue;
			struct conn *c = pc[i];
			if (!c) { for (int k = 0; k < 64 && lfd >= 0; k++) accept_one(now); continue; }
			int alive = 0;
			for (struct conn *x = conns; x; x = x->next) if (x == c) { alive = 1; break; }
			if (!alive) continue;
			if (pf[i].fd == c->cfd) {
				if (pf[i].revents & (POLLIN | POLLHUP | POLLERR)) {
					unsigned char junk[4096];
					unsigned char *dst = c->s_done ? junk : c->c2s + c->c2s_len;
					size_t room = c->s_done ? sizeof junk : C2S_CAP - c->c2s_len;
					ssize_t r = room ? recv(c->cfd, dst, room, 0) : 0;
					if (r > 0) {
						if (!c->s_done) { c->c2s_len += r; c->b_c2s += r; }
					} else if (r == 0) {
						c->c_eof = 1;
						if (c->s_done) { conn_free(c, "forwarder-closed", 0); continue; }
						if (c->c2s_len == 0 && c->sfd >= 0 && !c->connecting) shutdown(c->sfd, SHUT_WR);
					} else if (errno != EAGAIN && errno != EINTR) {
						c->why = c->why ? c->why : "forwarder-reset";
						conn_free(c, "", 1);
						continue;
					}
				}
				if (pf[i].revents & POLLOUT) {
					int64_t dummy = INT64_MAX;
					size_t end = out_ready(c, now, &dummy);
					ssize_t w = end > c->out_off ? send(c->cfd, c->out + c->out_off, end - c->out_off, MSG_NOSIGNAL) : 0;
					if (w > 0) { c->out_off += w; c->b_s2c += w; }
					else if (w < 0 && errno != EAGAIN && errno != EINTR) {
						c->why = c->why ? c->why : "forwarder-reset";
						conn_free(c, "", 1);
						continue;
					}
					while (c->rec_head < c->nrec && c->recs[c->rec_head].end <= c->out_off) c->rec_head++;
				}
			} else if (pf[i].fd == c->sfd) {
				if (c->connecting && (pf[i].revents & (POLLOUT | POLLERR | POLLHUP))) {
					int err = 0;
					socklen_t el = sizeof err;
					getsockopt(c->sfd, SOL_SOCKET, SO_ERROR, &err, &el);
					if (err) { c->why = "upstream-connect-failed"; conn_free(c, "", 1); continue; }
					c->connecting = 0;
				}
				if ((pf[i].revents & POLLOUT) && c->c2s_len > 0) {
					ssize_t w = send(c->sfd, c->c2s, c->c2s_len, MSG_NOSIGNAL);
					if (w > 0) {
						memmove(c->c2s, c->c2s + w, c->c2s_len - w);
						c->c2s_len -= w;
						if (c->c2s_len == 0 && c->c_eof) shutdown(c->sfd, SHUT_WR);
					} else if (w < 0 && errno != EAGAIN && errno != EINTR) {
						c->why = c->why ? c->why : "upstream-reset";
						conn_free(c, "", 1);
						continue;
					}
				}
				if (pf[i].revents & (POLLIN | POLLHUP | POLLERR)) {
					ssize_t r = recv(c->sfd, c->in + c->in_len, IN_CAP - c->in_len, 0);
					if (r > 0) {
						c->in_len += r;
						parse_records(c, now);
					} else if (r == 0) {
						if (c->in_len) out_append(c, c->in, c->in_len, now);
						c->in_len = 0;
						server_gone(c, "upstream-closed");
					} else if (errno != EAGAIN && errno != EINTR) {
						c->why = c->why ? c->why : "upstream-reset";
						conn_free(c, "", 1);
						continue;
					}
				}
			}
		}
	}
}
