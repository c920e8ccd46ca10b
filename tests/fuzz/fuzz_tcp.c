/*
 * libFuzzer harness: a client's TCP byte stream through the real framing
 * code. The input goes, in chunks of fuzzer-chosen sizes, into one end of
 * a socketpair whose other end is a struct client_conn slot, and
 * client_on_readable() reads it as the loop would (only while the slot
 * would be in the read set). There are no upstreams, so every query that
 * parses gets SERVFAIL from query_receive() (upstream_none_usable) and
 * nothing touches the network. Checks that the answers that come back
 * are those of the client's queries, in order (ID, RD, question, the
 * OPT iff the query had one, with its DO bit; the RCODE: REFUSED for a
 * client outside --allow, else the query's error, a local answer or
 * SERVFAIL), each a well-formed
 * message, and that no pending slot leaks.
 *
 * Input: byte 0 picks the client's address (bit 0: allowed or not, so
 * both the REFUSED and SERVFAIL paths run) and seeds the chunk sizes; the
 * rest is the stream.
 */
#define DOTPROXY_NO_MAIN
#include "../../dotproxy.c"
#include "fuzz_util.h"

#include <sys/socket.h>

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);
int LLVMFuzzerInitialize(int *argc, char ***argv);

int
LLVMFuzzerInitialize(int *argc, char ***argv)
{
	(void)argc;
	(void)argv;
	g.log_level = LOG_ERROR;
	g.query_timeout_ms = QUERY_TIMEOUT_MS;
	g.pad_block = PAD_BLOCK_BYTES;
	g.now_ms = 1000000;
	pending_init();
	cache_init(64 * 1024);
	client_init();
	acl_add_defaults();
	g.n_upstreams = 0;	/* every query: SERVFAIL, no network */
	return 0;
}

/* What the client's frames should get back, in order (every query is
 * answered at once: there is no upstream). */
#define MAX_EXPECT 4096
static struct expect {
	const unsigned char *query;	/* the frame's body, in the input */
	struct dns_query_info qi;
	unsigned rcode;		/* 16: BADVERS; 256: a local answer */
} expect[MAX_EXPECT];
static size_t n_expect, n_back;
static int allowed;

/* The frames of the input, as client_take_frames() cuts them: a frame
 * shorter than a header ends the connection; a response gets nothing. */
static void
expect_frames(const uint8_t *d, size_t n)
{
	size_t off = 0;

	n_expect = n_back = 0;
	while (n - off >= 2 && n_expect < MAX_EXPECT) {
		size_t mlen = get16(d + off);
		struct expect *e = &expect[n_expect];
		int rc;

		if (mlen < DNS_HEADER_BYTES || n - off < 2 + mlen)
			break;
		rc = dns_parse_query(d + off + 2, mlen, &e->qi);
		e->query = d + off + 2;
		off += 2 + mlen;
		if (rc == DNS_DROP)
			continue;
		if (!allowed)		/* whatever else it is */
			e->rcode = DNS_RCODE_REFUSED;
		else if (rc != 0)
			e->rcode = (unsigned)rc;
		else if (dns_match_zone(e->query, DNS_HEADER_BYTES,
		    dns_local_zones, dns_local_lens, 4) >= 0)
			e->rcode = 256;
		else
			e->rcode = DNS_RCODE_SERVFAIL;
		n_expect++;
	}
}

/* One answer that came back: the next one expected, for its query. */
static void
check_answer(const unsigned char *m, size_t len)
{
	const struct expect *e;
	struct dns_summary s;
	size_t qe;
	unsigned rcode;

	FUZZ_ASSERT(len >= DNS_HEADER_BYTES);
	FUZZ_ASSERT(m[2] & DNS_FLAG_QR);
	FUZZ_ASSERT(n_back < n_expect || n_expect == MAX_EXPECT);
	if (n_back >= n_expect) {
		n_back++;
		return;
	}
	e = &expect[n_back++];
	qe = e->qi.qend ? e->qi.qend : DNS_HEADER_BYTES;
	FUZZ_ASSERT(get16(m) == e->qi.id);
	FUZZ_ASSERT((m[2] & DNS_FLAG_RD) == e->qi.rd);
	FUZZ_ASSERT(get16(m + 4) == (e->qi.qend != 0));
	FUZZ_ASSERT(len >= qe);
	FUZZ_ASSERT(memcmp(m + DNS_HEADER_BYTES, e->query + DNS_HEADER_BYTES,
	    qe - DNS_HEADER_BYTES) == 0);
	FUZZ_ASSERT(dns_summarize(m, len, qe, &s) == 0);
	FUZZ_ASSERT(s.end == len);
	FUZZ_ASSERT(fuzz_count_opt(m, len, qe, NULL) == (s.opt_end != 0));
	/* the OPT iff the query had a well-formed one, with its DO bit */
	FUZZ_ASSERT((s.opt_end != 0) == e->qi.has_opt);
	if (s.opt_end != 0) {
		FUZZ_ASSERT(s.opt_end == len);
		FUZZ_ASSERT(get16(m + s.opt_start + 3) == UDP_ADVERTISE_BYTES);
		FUZZ_ASSERT(m[s.opt_start + 7] == (e->qi.do_bit ? 0x80 : 0));
	}
	rcode = (m[3] & 0x0Fu) |
	    (s.opt_end ? (unsigned)m[s.opt_start + 5] << 4 : 0);
	if (e->rcode == 256)
		FUZZ_ASSERT(rcode == 0 || rcode == DNS_RCODE_NXDOMAIN ||
		    rcode == DNS_RCODE_REFUSED);
	else if (e->rcode == DNS_RCODE_BADVERS && !e->qi.has_opt)
		FUZZ_ASSERT(0);		/* BADVERS needs an OPT */
	else
		FUZZ_ASSERT(rcode == e->rcode);
	/* never an answer record but for a local name */
	if (e->rcode != 256)
		FUZZ_ASSERT(get16(m + 6) == 0 && get16(m + 8) == 0);
}

/* Reads what the proxy sent back and checks each frame. */
static void
drain(int fd, unsigned char *buf, size_t *len, size_t cap)
{
	for (;;) {
		ssize_t n;
		size_t off = 0;

		if (*len == cap)
			*len = 0;	/* cannot happen: frames < cap */
		n = recv(fd, buf + *len, cap - *len, MSG_DONTWAIT);
		if (n <= 0)
			return;
		*len += (size_t)n;
		while (*len - off >= 2) {
			size_t mlen = get16(buf + off);

			if (*len - off < 2 + mlen)
				break;
			check_answer(buf + off + 2, mlen);
			off += 2 + mlen;
		}
		memmove(buf, buf + off, *len - off);
		*len -= off;
	}
}

int
LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	static unsigned char back[2 * (2 + MSG_MAX_BYTES)];
	struct client_conn *c = &g.clients[0];
	size_t off = 1, back_len = 0;
	unsigned seed;
	int sv[2];

	if (size < 1)
		return 0;
	seed = data[0];
	allowed = !(seed & 1);
	expect_frames(data + 1, size - 1);
	if (socketpair(AF_UNIX, SOCK_STREAM | SOCK_NONBLOCK, 0, sv) < 0)
		abort();
	/* What client_accept() does, with an address of our choice. */
	memset(&c->peer, 0, sizeof c->peer);
	c->peer.sin.sin_family = AF_INET;
	c->peer.sin.sin_addr.s_addr = htonl(seed & 1 ? 0x08080808 :
	    0x7F000001);
	c->fd = sv[0];
	c->state = CLIENT_OPEN;
	c->inflight = 0;
	c->in_len = 0;
	c->out_off = c->out_len = 0;
	c->last_active_ms = g.now_ms;
	while (c->state != CLIENT_FREE) {
		size_t chunk = 1 + (seed = seed * 1103515245u + 12345u) %
		    1500u;

		if (off < size) {
			if (chunk > size - off)
				chunk = size - off;
			if (send(sv[1], data + off, chunk, MSG_DONTWAIT) > 0)
				off += chunk;	/* short sends: see below */
		} else if (off == size) {
			shutdown(sv[1], SHUT_WR);	/* client is done */
			off++;
		}
		/* One loop pass: what client_want() would select. */
		if (c->state != CLIENT_EOF &&
		    c->inflight < MAX_INFLIGHT_PER_CLIENT &&
		    c->out_len - c->out_off < CLIENT_OUT_BYTES / 2)
			client_on_readable(c);
		else if (off > size && c->out_len == c->out_off &&
		    c->state != CLIENT_EOF)
			break;		/* nothing left that it would do */
		if (c->state != CLIENT_FREE && c->out_len > c->out_off)
			client_on_writable(c);
		drain(sv[1], back, &back_len, sizeof back);
		g.now_ms += seed % 64;
		if (c->state != CLIENT_FREE)
			client_timers(c);
		if (off > size && c->state == CLIENT_EOF &&
		    c->out_len == c->out_off && c->inflight == 0)
			break;
	}
	drain(sv[1], back, &back_len, sizeof back);
	if (c->state != CLIENT_FREE)
		client_close(c);
	close(sv[1]);
	/* No upstream: every query was answered at once, none is pending;
	 * the answers that came are those of the first queries, in order
	 * (all of them unless the connection was closed: a timer) */
	FUZZ_ASSERT(g.n_free == MAX_PENDING);
	FUZZ_ASSERT(n_back <= n_expect || n_expect == MAX_EXPECT);
	FUZZ_ASSERT(c->fd == -1);
	return 0;
}
