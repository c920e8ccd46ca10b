/* uprelay: the counting, delaying DNS-over-TLS front of the latency workloads' upstream
   (bench/latency.sh).

   A DoT server on 127.0.0.1@LPORT (TLS terminated with OpenSSL, certificate chain and key of
   bench/pki.sh) that passes every DNS message it gets to the plain-DNS upstream (unbound,
   bench/latency.sh) on 127.0.0.1@UPORT over TCP (one pipelined connection per client
   connection, opened again when the upstream closes it), and sends each answer back to the
   client on the same TLS connection after a delay chosen from the answer's question:

     -d ZONE=MS         every answer for a name under ZONE is held MS ms (e.g. herd.=80: an
                        upstream that needs MS ms to resolve these names); repeatable
     -r PCT,MIN,MAX,ZONE   answers for names under ZONE are held, with probability PCT %, a
                        time uniform in [MIN, MAX] ms ("2 % of answers slow", e.g.
                        -r 2,500,2000,tail.). Which names are slow is a hash of the lowercased
                        name and type with SEED (-s), not a coin tossed per answer: every
                        forwarder under test gets the same names slowed by the same amount,
                        and a retry of a slow name on the same upstream is slow again (a slow
                        authority), while another relay (another SEED) slows other names.

   Answers are written in the order their delays end, not in the order of the queries (RFC 7766
   allows it and every forwarder measured handles it), so a slow answer never holds up the
   others: unlike tests/chaos/relay.c, which passes TLS records through undecrypted and can only
   delay a whole connection.

   Counting: one line per DNS message received from a client, "Q MS CONN QTYPE QNAME" (MS: ms
   since the relay started, QNAME lowercased, with its final dot), and one per answer held back,
   "D MS CONN DELAY_MS QNAME": bench/latency.sh counts what reached the upstream from these.
   The log is flushed at least every 100 ms and on exit.

   usage: uprelay -l LPORT -u UPORT -c CHAIN.pem -k KEY.pem -o LOG [-s SEED] [-d ZONE=MS]...
                  [-r PCT,MIN,MAX,ZONE] [-x SECONDS]
     -x SECONDS  exit after this long whatever happens (a bound; default 3600)
   SIGTERM/SIGINT: flush the log, exit. Only ever binds and connects to 127.0.0.1. */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <ctype.h>
#include <errno.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <openssl/err.h>
#include <openssl/ssl.h>
#include <poll.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#define BUF 65600               /* one whole framed message and then some */
#define MAX_RULES 8

struct held { int64_t rel; size_t len; unsigned char *msg; };   /* a framed answer */

struct conn {
	int id, cfd, ufd;
	SSL *ssl;
	int hs_done, want_write, dead;
	unsigned char cin[BUF]; size_t cin_len;        /* decrypted bytes from the client */
	unsigned char *uout; size_t uout_len, uout_cap; /* bytes for the upstream */
	unsigned char uin[BUF]; size_t uin_len;        /* bytes from the upstream */
	struct held *h; size_t nh, hcap;               /* answers held back */
	unsigned char *sout; size_t sout_len, sout_cap; /* plaintext for SSL_write */
	int wretry;                                    /* length of an SSL_write to repeat */
	struct conn *next;
};

static struct { char zone[256]; size_t zl; long ms; } fixed[MAX_RULES];
static int nfixed;
static double r_pct;
static long r_min, r_max;
static char r_zone[256];
static size_t r_zl;
static uint64_t seed = 1;
static int uport;
static FILE *logf;
static int64_t t0;
static struct conn *conns;
static int next_id = 1;
static volatile sig_atomic_t stop;
static void on_term(int sig) { (void)sig; stop = 1; }

static int64_t now_ms(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

static uint64_t mix(uint64_t z)         /* splitmix64's finaliser */
{
	z += 0x9e3779b97f4a7c15ULL;
	z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ULL;
	z = (z ^ (z >> 27)) * 0x94d049bb133111ebULL;
	return z ^ (z >> 31);
}

/* The question of MSG (LEN bytes): lowercased dotted name with its final dot, type. 0 if none. */
static int question(const unsigned char *m, size_t len, char *name, size_t cap, unsigned *qtype)
{
	size_t p = 12, o = 0;
	if (len < 12 || (m[4] << 8 | m[5]) < 1) return 0;
	for (;;) {
		if (p >= len) return 0;
		unsigned l = m[p++];
		if (l == 0) break;
		if (l > 63 || p + l > len || o + l + 2 > cap) return 0;
		for (unsigned i = 0; i < l; i++) {
			unsigned char c = m[p + i];
			name[o++] = (c > ' ' && c < 127) ? (char)tolower(c) : '?';
		}
		name[o++] = '.';
		p += l;
	}
	if (o == 0) name[o++] = '.';
	name[o] = 0;
	if (p + 4 > len) return 0;
	*qtype = m[p] << 8 | m[p + 1];
	return 1;
}

static int under(const char *name, const char *zone, size_t zl)
{
	size_t n = strlen(name);
	return n >= zl && !strcmp(name + n - zl, zone) && (n == zl || name[n - zl - 1] == '.');
}

static long delay_for(const char *name, unsigned qtype)
{
	for (int i = 0; i < nfixed; i++)
		if (under(name, fixed[i].zone, fixed[i].zl)) return fixed[i].ms;
	if (r_pct > 0 && under(name, r_zone, r_zl)) {
		uint64_t h = 1469598103934665603ULL;            /* FNV-1a of name and type */
		for (const char *c = name; *c; c++) h = (h ^ (unsigned char)*c) * 1099511628211ULL;
		h = (h ^ qtype) * 1099511628211ULL;
		h = mix(h ^ mix(seed));
		if ((double)(h % 1000000) < r_pct * 10000) {
			uint64_t h2 = mix(h);
			return r_min + (long)(h2 % (uint64_t)(r_max - r_min + 1));
		}
	}
	return 0;
}

static void *grow(void *p, size_t *cap, size_t need, size_t elem)
{
	if (need <= *cap) return p;
	size_t c = *cap ? *cap : 64;
	while (c < need) c *= 2;
	p = realloc(p, c * elem);
	if (!p) { perror("uprelay: realloc"); exit(1); }
	*cap = c;
	return p;
}

static void append(unsigned char **buf, size_t *len, size_t *cap, const void *p, size_t n)
{
	*buf = grow(*buf, cap, *len + n, 1);
	memcpy(*buf + *len, p, n);
	*len += n;
}

static int up_connect(void)
{
	int one = 1, fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
	struct sockaddr_in a = { .sin_family = AF_INET, .sin_port = htons(uport),
	                         .sin_addr.s_addr = htonl(INADDR_LOOPBACK) };
	if (fd < 0) return -1;
	if (connect(fd, (struct sockaddr *)&a, sizeof a) < 0) { close(fd); return -1; }
	setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
	return fd;
}

static void conn_free(struct conn *c)
{
	struct conn **pp;
	fprintf(logf, "C %lld %d closed\n", (long long)(now_ms() - t0), c->id);
	if (c->ssl) SSL_free(c->ssl);
	close(c->cfd);
	if (c->ufd >= 0) close(c->ufd);
	for (size_t i = 0; i < c->nh; i++) free(c->h[i].msg);
	free(c->h);
	free(c->uout);
	free(c->sout);
	for (pp = &conns; *pp; pp = &(*pp)->next)
		if (*pp == c) { *pp = c->next; break; }
	free(c);
}

/* Whole queries from the client: logged, queued for the upstream. */
static void client_frames(struct conn *c, int64_t now)
{
	size_t off = 0;
	while (c->cin_len - off >= 2) {
		size_t n = (size_t)c->cin[off] << 8 | c->cin[off + 1];
		if (c->cin_len - off < 2 + n) break;
		char name[300];
		unsigned qt = 0;
		if (!question(c->cin + off + 2, n, name, sizeof name, &qt)) strcpy(name, "-");
		fprintf(logf, "Q %lld %d %u %s\n", (long long)(now - t0), c->id, qt, name);
		append(&c->uout, &c->uout_len, &c->uout_cap, c->cin + off, 2 + n);
		off += 2 + n;
	}
	memmove(c->cin, c->cin + off, c->cin_len - off);
	c->cin_len -= off;
}

/* Whole answers from the upstream: sent now, or held back. */
static void upstream_frames(struct conn *c, int64_t now)
{
	size_t off = 0;
	while (c->uin_len - off >= 2) {
		size_t n = (size_t)c->uin[off] << 8 | c->uin[off + 1];
		if (c->uin_len - off < 2 + n) break;
		char name[300];
		unsigned qt = 0;
		long d = question(c->uin + off + 2, n, name, sizeof name, &qt) ? delay_for(name, qt) : 0;
		if (d <= 0) {
			append(&c->sout, &c->sout_len, &c->sout_cap, c->uin + off, 2 + n);
		} else {
			fprintf(logf, "D %lld %d %ld %s\n", (long long)(now - t0), c->id, d, name);
			c->h = grow(c->h, &c->hcap, c->nh + 1, sizeof *c->h);
			struct held *h = &c->h[c->nh++];
			h->rel = now + d;
			h->len = 2 + n;
			h->msg = malloc(2 + n);
			if (!h->msg) { perror("uprelay: malloc"); exit(1); }
			memcpy(h->msg, c->uin + off, 2 + n);
		}
		off += 2 + n;
	}
	memmove(c->uin, c->uin + off, c->uin_len - off);
	c->uin_len -= off;
}

/* Held answers whose time has come go to the output; returns the next release (or LLONG_MAX). */
static int64_t release(struct conn *c, int64_t now)
{
	int64_t next = INT64_MAX;
	for (;;) {                      /* earliest first, so that ties keep their order */
		size_t best = c->nh;
		for (size_t i = 0; i < c->nh; i++)
			if (c->h[i].rel <= now && (best == c->nh || c->h[i].rel < c->h[best].rel)) best = i;
		if (best == c->nh) break;
		append(&c->sout, &c->sout_len, &c->sout_cap, c->h[best].msg, c->h[best].len);
		free(c->h[best].msg);
		memmove(c->h + best, c->h + best + 1, (c->nh - best - 1) * sizeof *c->h);
		c->nh--;
	}
	for (size_t i = 0; i < c->nh; i++) if (c->h[i].rel < next) next = c->h[i].rel;
	return next;
}

static void ssl_io(struct conn *c, int64_t now)
{
	if (!c->hs_done) {
		int r = SSL_accept(c->ssl);
		if (r == 1) c->hs_done = 1;
		else {
			int e = SSL_get_error(c->ssl, r);
			if (e != SSL_ERROR_WANT_READ && e != SSL_ERROR_WANT_WRITE) { c->dead = 1; return; }
			c->want_write = e == SSL_ERROR_WANT_WRITE;
			return;
		}
	}
	c->want_write = 0;
	for (;;) {                      /* read all that is there */
		if (c->cin_len == sizeof c->cin) break;
		int r = SSL_read(c->ssl, c->cin + c->cin_len, (int)(sizeof c->cin - c->cin_len));
		if (r > 0) { c->cin_len += (size_t)r; client_frames(c, now); continue; }
		int e = SSL_get_error(c->ssl, r);
		if (e == SSL_ERROR_WANT_READ) break;
		if (e == SSL_ERROR_WANT_WRITE) { c->want_write = 1; break; }
		c->dead = 1;            /* close_notify, EOF or an error */
		return;
	}
	while (c->sout_len > 0) {
		int n = c->wretry ? c->wretry : (int)(c->sout_len < 16384 ? c->sout_len : 16384);
		int r = SSL_write(c->ssl, c->sout, n);
		if (r > 0) {
			memmove(c->sout, c->sout + r, c->sout_len - (size_t)r);
			c->sout_len -= (size_t)r;
			c->wretry = 0;
			continue;
		}
		int e = SSL_get_error(c->ssl, r);
		if (e == SSL_ERROR_WANT_WRITE || e == SSL_ERROR_WANT_READ) {
			c->wretry = n;
			c->want_write = e == SSL_ERROR_WANT_WRITE;
			break;
		}
		c->dead = 1;
		return;
	}
}

static void up_io(struct conn *c, short rev, int64_t now)
{
	if (c->ufd < 0) return;
	if (rev & (POLLIN | POLLHUP | POLLERR)) {
		ssize_t r = recv(c->ufd, c->uin + c->uin_len, sizeof c->uin - c->uin_len, MSG_DONTWAIT);
		if (r > 0) { c->uin_len += (size_t)r; upstream_frames(c, now); }
		else if (r == 0 || (errno != EAGAIN && errno != EINTR)) {
			/* the upstream closed it (idle): a new one for the next query */
			close(c->ufd);
			c->ufd = -1;
			c->uin_len = 0;
			return;
		}
	}
}

static void up_flush(struct conn *c)
{
	if (c->uout_len == 0) return;
	if (c->ufd < 0 && (c->ufd = up_connect()) < 0) {
		fprintf(stderr, "uprelay: cannot connect to 127.0.0.1@%d\n", uport);
		c->dead = 1;
		return;
	}
	ssize_t w = send(c->ufd, c->uout, c->uout_len, MSG_DONTWAIT | MSG_NOSIGNAL);
	if (w > 0) {
		memmove(c->uout, c->uout + w, c->uout_len - (size_t)w);
		c->uout_len -= (size_t)w;
	} else if (w < 0 && errno != EAGAIN && errno != EINTR) {
		close(c->ufd);          /* try a new connection next round */
		c->ufd = -1;
	}
}

static void usage(void)
{
	fprintf(stderr, "usage: uprelay -l LPORT -u UPORT -c CHAIN.pem -k KEY.pem -o LOG [-s SEED] "
	        "[-d ZONE=MS]... [-r PCT,MIN,MAX,ZONE] [-x SECONDS]\n");
	exit(2);
}

static void zone_of(const char *arg, char *out, size_t *len)
{
	size_t n = strlen(arg);
	if (n == 0 || n > 250) usage();
	for (size_t i = 0; i < n; i++) out[i] = (char)tolower((unsigned char)arg[i]);
	if (out[n - 1] != '.') out[n++] = '.';
	out[n] = 0;
	*len = n;
}

int main(int argc, char **argv)
{
	int opt, lport = 0;
	long exit_s = 3600;
	const char *chain = NULL, *key = NULL, *logpath = NULL;
	while ((opt = getopt(argc, argv, "l:u:c:k:o:s:d:r:x:")) != -1) {
		switch (opt) {
		case 'l': lport = atoi(optarg); break;
		case 'u': uport = atoi(optarg); break;
		case 'c': chain = optarg; break;
		case 'k': key = optarg; break;
		case 'o': logpath = optarg; break;
		case 's': seed = strtoull(optarg, NULL, 10); break;
		case 'x': exit_s = atol(optarg); break;
		case 'd': {
			char *eq = strrchr(optarg, '=');
			if (!eq || nfixed == MAX_RULES) usage();
			*eq = 0;
			zone_of(optarg, fixed[nfixed].zone, &fixed[nfixed].zl);
			fixed[nfixed++].ms = atol(eq + 1);
			break;
		}
		case 'r': {
			char z[256];
			if (sscanf(optarg, "%lf,%ld,%ld,%255s", &r_pct, &r_min, &r_max, z) != 4 || r_max < r_min || r_min < 0)
				usage();
			zone_of(z, r_zone, &r_zl);
			break;
		}
		default: usage();
		}
	}
	if (!lport || !uport || !chain || !key || !logpath) usage();
	logf = fopen(logpath, "w");
	if (!logf) { perror(logpath); return 1; }
	signal(SIGPIPE, SIG_IGN);
	signal(SIGTERM, on_term);
	signal(SIGINT, on_term);

	SSL_CTX *ctx = SSL_CTX_new(TLS_server_method());
	if (!ctx || SSL_CTX_use_certificate_chain_file(ctx, chain) != 1 ||
	    SSL_CTX_use_PrivateKey_file(ctx, key, SSL_FILETYPE_PEM) != 1) {
		ERR_print_errors_fp(stderr);
		return 1;
	}
	SSL_CTX_set_mode(ctx, SSL_MODE_ACCEPT_MOVING_WRITE_BUFFER);

	int one = 1, lfd = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
	struct sockaddr_in a = { .sin_family = AF_INET, .sin_port = htons(lport),
	                         .sin_addr.s_addr = htonl(INADDR_LOOPBACK) };
	setsockopt(lfd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
	if (bind(lfd, (struct sockaddr *)&a, sizeof a) < 0 || listen(lfd, 128) < 0) {
		fprintf(stderr, "uprelay: cannot listen on 127.0.0.1@%d: %s\n", lport, strerror(errno));
		return 1;
	}
	t0 = now_ms();
	int64_t end = t0 + exit_s * 1000, last_flush = t0;
	fprintf(logf, "S 0 0 listen=%d upstream=%d seed=%llu\n", lport, uport, (unsigned long long)seed);
	fflush(logf);

	struct pollfd *pf = NULL;
	struct conn **pc = NULL;
	size_t pcap = 0;
	while (!stop) {
		int64_t now = now_ms(), next = now + 100;
		if (now >= end) break;
		size_t n = 0, nc = 0;
		for (struct conn *c = conns; c; c = c->next) nc++;
		if (1 + 2 * nc > pcap) {
			pcap = 2 * (1 + 2 * nc);
			pf = realloc(pf, pcap * sizeof *pf);
			pc = realloc(pc, pcap * sizeof *pc);
			if (!pf || !pc) { perror("uprelay: realloc"); return 1; }
		}
		pf[n].fd = lfd; pf[n].events = POLLIN; pc[n++] = NULL;
		for (struct conn *c = conns; c; c = c->next) {
			int64_t r = release(c, now);
			if (r < next) next = r;
			if (c->sout_len > 0 && c->hs_done) ssl_io(c, now);
			pf[n].fd = c->cfd;
			pf[n].events = POLLIN | (c->want_write || (c->sout_len > 0 && c->hs_done) ? POLLOUT : 0);
			pc[n++] = c;
			if (c->ufd >= 0) { pf[n].fd = c->ufd; pf[n].events = POLLIN | (c->uout_len ? POLLOUT : 0); pc[n++] = c; }
		}
		int wait = next > now ? (int)(next - now) : 0;
		if (poll(pf, n, wait) < 0 && errno != EINTR) { perror("uprelay: poll"); return 1; }
		now = now_ms();
		for (size_t i = 0; i < n; i++) {
			if (!pf[i].revents) continue;
			struct conn *c = pc[i];
			if (!c) {
				for (int k = 0; k < 16; k++) {
					int fd = accept4(lfd, NULL, NULL, SOCK_NONBLOCK | SOCK_CLOEXEC);
					if (fd < 0) break;
					setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
					c = calloc(1, sizeof *c);
					if (!c) { perror("uprelay: calloc"); return 1; }
					c->id = next_id++;
					c->cfd = fd;
					c->ufd = up_connect();
					c->ssl = SSL_new(ctx);
					if (c->ufd < 0 || !c->ssl) {
						fprintf(stderr, "uprelay: cannot connect to 127.0.0.1@%d\n", uport);
						if (c->ssl) SSL_free(c->ssl);
						if (c->ufd >= 0) close(c->ufd);
						close(fd);
						free(c);
						continue;
					}
					SSL_set_fd(c->ssl, fd);
					c->next = conns;
					conns = c;
					fprintf(logf, "C %lld %d open\n", (long long)(now - t0), c->id);
					ssl_io(c, now);
				}
				continue;
			}
			if (c->dead) continue;
			if (pf[i].fd == c->cfd) ssl_io(c, now);
			else up_io(c, pf[i].revents, now);
		}
		for (struct conn *c = conns, *cn; c; c = cn) {
			cn = c->next;
			if (!c->dead) up_flush(c);
			if (!c->dead && c->hs_done && c->sout_len > 0) ssl_io(c, now);
			if (c->dead) conn_free(c);
		}
		if (now - last_flush >= 100) { fflush(logf); last_flush = now; }
	}
	while (conns) conn_free(conns);
	fprintf(logf, "E %lld 0 %s\n", (long long)(now_ms() - t0), stop ? "signal" : "deadline");
	fclose(logf);
	return 0;
}
