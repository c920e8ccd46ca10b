/*
 * libFuzzer harness: an upstream's decrypted answer stream, and what the
 * proxy does with the answers. One upstream (no socket: fd -1) is READY
 * with SENT queries: slots 0..3 with upstream IDs 0, 1, 2 and 3 (the IDs
 * are fed to util_rand16), so the fuzzer can hit them; query 4 was sent
 * with ID 4 and timed out, and query 5 took its slot and got ID 5 (4 is
 * never given twice on a connection), so an answer with ID 4 must reach
 * nobody. Query 2 came over TCP (a socketpair: its answers are read back
 * and checked), the others over UDP. The input is appended to u->rbuf in
 * two parts and upstream_parse_stream() runs after each, as
 * upstream_pump() would: matching answers go through query_deliver() ->
 * dns_prepare_answer() -> cache_store() -> dns_answer_for_client() ->
 * query_send(). Every answer a client gets is checked
 * (fuzz_check_client_answer: its ID, RD and question, a well-formed
 * response, the OPT iff it sent one, within its UDP size unless the
 * minimal TC answer). Then a teardown, the same questions again (cache
 * hits), and direct(): dns_prepare_answer, dns_answer_for_client,
 * dns_rewrite_ttls and dns_truncate on the input as one message, for a
 * client whose flags come from the input's ID bytes.
 */
#define DOTPROXY_NO_MAIN
#include "../../dotproxy.c"
#include "fuzz_util.h"
#include "../dnsmsg.h"

#include <sys/socket.h>

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);
int LLVMFuzzerInitialize(int *argc, char ***argv);

#define NQ 6
#define TCP_Q 2		/* the query that came over TCP */
#define LATE_Q 4	/* timed out before the answers came */

/* The queries the clients sent: name, type, OPT (UDP size, DO), AD, RD. */
static const struct {
	const char *name;
	uint16_t type;
	int opt;
	uint16_t udp_size;
	int do_bit, ad, rd;
} queries[NQ] = {
	{ "example.com", 1, 0, 0, 0, 0, 1 },
	{ "Example.COM", 28, 1, 1232, 1, 0, 1 },
	{ "q1.test", 1, 1, 4096, 0, 1, 1 },
	{ "big.example.test", 16, 1, 512, 0, 0, 0 },
	{ "late.example", 1, 1, 1232, 0, 0, 1 },
	{ "new.example", 1, 0, 0, 0, 1, 1 },
};

static unsigned char qwire[NQ][64];
static size_t qlen[NQ];
static struct dns_query_info qinfo[NQ];
static struct cache cache0;
static int tcp_peer = -1;
static unsigned char back[4 * (2 + MSG_MAX_BYTES)];	/* TCP read back */
static size_t back_len;

/* Query k as its client sent it (ID 0x1000 + k). */
static size_t
fuzz_query(unsigned char *m, int k)
{
	size_t len = mkquery(m, (uint16_t)(0x1000 + k), queries[k].name,
	    queries[k].type, 0, 0);

	m[2] = queries[k].rd ? DNS_FLAG_RD : 0;
	m[3] = queries[k].ad ? DNS_FLAG_AD : 0;
	if (queries[k].opt)
		len = add_opt(m, len, queries[k].udp_size, 0, 0,
		    queries[k].do_bit ? 0x8000 : 0, NULL, 0);
	return len;
}

int
LLVMFuzzerInitialize(int *argc, char ***argv)
{
	int k;

	(void)argc;
	(void)argv;
	g.log_level = LOG_ERROR;
	g.query_timeout_ms = QUERY_TIMEOUT_MS;
	g.max_backoff_ms = BACKOFF_MAX_MS;
	g.pad_block = PAD_BLOCK_BYTES;
	g.now_ms = 1000000;
	pending_init();
	cache_init(64 * 1024);
	cache0 = g.cache;
	client_init();
	for (k = 0; k < NQ; k++) {
		qlen[k] = fuzz_query(qwire[k], k);
		if (dns_parse_query(qwire[k], qlen[k], &qinfo[k]) != 0)
			abort();
	}
	g.n_listeners = 1;
	g.listeners[0].udp_fd = -1;	/* a flush sends nothing */
	g.listeners[0].tcp_fd = -1;
	return 0;
}

/* An empty cache again, in the memory cache_init() took once. */
static void
cache_reset(void)
{
	struct cache *c = &g.cache;
	size_t i;

	*c = cache0;
	for (i = 0; i < c->n_blocks; i++)
		c->block_next[i] = i + 1 < c->n_blocks ? (int32_t)i + 1 : -1;
	for (i = 0; i < c->n_entries; i++) {
		c->entries[i].first = -1;
		c->entries[i].hnext = i + 1 < c->n_entries ? (int32_t)i + 1 :
		    -1;
	}
	for (i = 0; i < c->n_buckets; i++)
		c->buckets[i] = -1;
	c->stale_s = 60;	/* a SERVFAIL may be served stale */
}

/* The pending table as pending_init() leaves it (the random generator
 * keeps its key: a getrandom per input is not needed). */
static void
pending_reset(void)
{
	int i;

	g.n_free = 0;
	for (i = MAX_PENDING - 1; i >= 0; i--) {
		g.pending[i].state = PENDING_FREE;
		g.pending[i].query = g.query_bytes[i];
		g.free_stack[g.n_free++] = i;
	}
	g.age_head = g.age_tail = -1;
}

/* The next draws of util_rand16 are ids[0..n) (n <= 32). */
static void
rng_feed(const uint16_t *ids, size_t n)
{
	size_t i;

	for (i = 0; i < n; i++)
		put16(util_rng.buf + 2 * (n - 1 - i), ids[i]);
	util_rng.left = 2 * n;
}

static void
origin_of(struct origin *from, int k)
{
	memset(from, 0, sizeof *from);
	if (k == TCP_Q) {
		from->kind = ORIGIN_TCP;
		from->slot = 0;
		from->gen = g.clients[0].gen;
		return;
	}
	from->kind = ORIGIN_UDP;
	from->listener = 0;
	from->peer.sin.sin_family = AF_INET;
	from->peer.sin.sin_addr.s_addr = htonl(0x7F000001);
	from->peer.sin.sin_port = htons((uint16_t)(1000 + k));
	from->peerlen = sizeof from->peer.sin;
}

/* Query k as query_receive() and upstream_inject() leave it: SENT on
 * upstream 0 with the first free one of the IDs given. */
static int
send_query(struct upstream *u, int k, const uint16_t *ids, size_t n)
{
	int slot = pending_alloc();
	struct pending_query *p = &g.pending[slot];

	origin_of(&p->from, k);
	if (k == TCP_Q)
		g.clients[0].inflight++;
	p->qi = qinfo[k];
	p->cache_key = cache_key(&p->qi, 0);
	p->qlen = (uint16_t)dns_build_query(p->query, qwire[k], &p->qi,
	    g.pad_block);
	p->route = ROUTE_UPSTREAM;
	p->route_idx = 0;
	rng_feed(ids, n);
	put16(p->query, idmap_take(&u->ids, slot));
	p->state = PENDING_SENT;
	p->attempts = 1;
	u->inflight++;
	return slot;
}

/* Every answer queued for a UDP client is a right answer for it. */
static void
check_udp_batch(void)
{
	size_t i;

	for (i = 0; i < udp_tx.n; i++) {
		int k = ntohs(udp_tx.peer[i].sin.sin_port) - 1000;

		FUZZ_ASSERT(k >= 0 && k < NQ && k != TCP_Q);
		fuzz_check_client_answer(udp_tx.buf[i], udp_tx.iov[i].iov_len,
		    qwire[k], &qinfo[k], qinfo[k].udp_limit, 1, 1);
	}
	udp_tx.n = 0;
}

/* Reads the TCP client's frames back and checks each. */
static void
check_tcp(void)
{
	struct client_conn *c = &g.clients[0];
	size_t off = 0;

	for (;;) {
		ssize_t n;

		if (c->state != CLIENT_FREE && c->out_len > c->out_off)
			client_on_writable(c);
		n = recv(tcp_peer, back + back_len, sizeof back - back_len,
		    MSG_DONTWAIT);
		if (n <= 0)
			break;
		back_len += (size_t)n;
	}
	while (back_len - off >= 2 &&
	    back_len - off >= 2u + get16(back + off)) {
		fuzz_check_client_answer(back + off + 2, get16(back + off),
		    qwire[TCP_Q], &qinfo[TCP_Q], 0, 1, 1);
		off += 2u + get16(back + off);
	}
	memmove(back, back + off, back_len - off);
	back_len -= off;
}

static void
feed(struct upstream *u, const uint8_t *d, size_t n)
{
	if (n > sizeof u->rbuf - u->rlen)
		n = sizeof u->rbuf - u->rlen;
	memcpy(u->rbuf + u->rlen, d, n);
	u->rlen += n;
	if (u->fd == -1 && u->state == UPSTREAM_READY)
		(void)upstream_parse_stream(u);
	check_udp_batch();
	check_tcp();
}

/* The answer path's functions on the input as one upstream message, for
 * a client whose flags, EDNS and spelling come from the input's ID. */
static void
direct(const uint8_t *data, size_t size)
{
	static const uint16_t sizes[8] = { 0, 512, 1232, 1400, 1536, 4096,
		65535, 100 };
	static const uint32_t mins[2] = { 0, 60 };
	static const uint32_t maxs[4] = { 86400, 60, DNS_TTL_MAX, 3600 };
	struct dns_query_info qi;
	struct dns_summary s, s2, ps, ps2;
	unsigned char *m, *m2, *q;
	size_t qe, len, len2, n, i, limit, qlen_c;
	uint32_t ttl, ttl2, min, max;
	unsigned ctl;
	int had_opt;

	qe = dns_parse_answer(data, size);
	if (qe == 0)
		return;
	ctl = get16(data);
	min = mins[ctl >> 8 & 1];	/* min <= max, as config_ checks */
	max = maxs[ctl >> 9 & 3];

	/* the client: the input's question, maybe in another case */
	q = fuzz_alloc(qe + DNS_OPT_BYTES);
	memcpy(q, data, qe);
	put16(q, 0xABCD);
	q[2] = ctl & 1 ? DNS_FLAG_RD : 0;
	q[3] = (unsigned char)((ctl & 2 ? DNS_FLAG_AD : 0) |
	    (ctl & 4 ? DNS_FLAG_CD : 0));
	memset(q + 6, 0, 6);
	if (ctl & 8)
		for (i = DNS_HEADER_BYTES; i < qe - 4; i++)
			if (q[i] >= 'a' && q[i] <= 'z')
				q[i] = (unsigned char)(q[i] - 'a' + 'A');
	qlen_c = qe;
	if (ctl & 16)
		qlen_c = add_opt(q, qe, sizes[ctl >> 5 & 7], 0, 0,
		    ctl & 0x400 ? 0x8000 : 0, NULL, 0);
	FUZZ_ASSERT(dns_parse_query(q, qlen_c, &qi) == 0);
	FUZZ_ASSERT(dns_question_equal(q, qi.qend, data, qe));

	/* dns_prepare_answer with room for an OPT (as query_deliver) */
	m = fuzz_alloc(size + DNS_OPT_BYTES);
	memcpy(m, data, size);
	had_opt = dns_summarize(data, size, qe, &s) == 0 && s.opt_end != 0;
	len = dns_prepare_answer(m, size, size + DNS_OPT_BYTES, qe, min, max,
	    &ttl, &ps);
	if (len == 0) {
		FUZZ_ASSERT(ttl == 0);
		goto no_room;
	}
	/* it never grows the message, but for the OPT it adds; bytes after
	 * the last record go (regress/fuzz_answer-opt-after-trailing-bytes:
	 * our OPT went after them) */
	FUZZ_ASSERT(len <= size + (had_opt ? 0 : DNS_OPT_BYTES));
	FUZZ_ASSERT(m[2] == (data[2] & ~DNS_FLAG_AA) && m[3] == data[3]);
	FUZZ_ASSERT(memcmp(m + 4, data + 4, 6) == 0);
	FUZZ_ASSERT(memcmp(m + 12, data + 12, qe - 12) == 0);
	FUZZ_ASSERT(dns_summarize(m, len, qe, &s) == 0);
	FUZZ_ASSERT(s.opt_end != 0 && s.opt_end == s.end);
	FUZZ_ASSERT(s.end == len);
	{
		size_t o = s.opt_start + DNS_OPT_BYTES;

		FUZZ_ASSERT(get16(m + s.opt_start + 3) == UDP_ADVERTISE_BYTES);
		FUZZ_ASSERT(m[s.opt_start + 6] == 0);
		FUZZ_ASSERT((m[s.opt_start + 7] & 0x7F) == 0);
		FUZZ_ASSERT(m[s.opt_start + 8] == 0);
		/* of the options, only Extended DNS Errors */
		while (o < s.opt_end) {
			FUZZ_ASSERT(o + 4 <= s.opt_end);
			FUZZ_ASSERT(get16(m + o) == EDNS_OPTION_EDE);
			o += 4u + get16(m + o + 2);
		}
		FUZZ_ASSERT(o == s.opt_end);
	}
	/* TTLs clamped; the cache TTL only for what may be cached */
	if (min <= max) {
		struct dns_iter it;
		struct dns_rr rr;
		uint32_t least = DNS_TTL_MAX;

		dns_iter_init(&it, m, len, qe);
		while (dns_iter_next(&it, &rr) > 0) {
			uint32_t t = dns_rr_ttl(m, &rr);

			if (rr.type == DNS_TYPE_OPT)
				continue;
			FUZZ_ASSERT(t >= min && t <= max);
			if (s.has_soa && rr.section == DNS_SEC_NS)
				FUZZ_ASSERT(t <= (s.neg_ttl > min ?
				    s.neg_ttl : min));
			least = t < least ? t : least;
		}
		FUZZ_ASSERT(ttl == 0 || ttl == least);
	}
	if (ttl != 0) {
		FUZZ_ASSERT(!(m[2] & DNS_FLAG_TC));
		FUZZ_ASSERT((m[3] & 0x0F) == 0 ||
		    (m[3] & 0x0F) == DNS_RCODE_NXDOMAIN);
		FUZZ_ASSERT(s.opt_end == 0 || m[s.opt_start + 5] == 0);
		FUZZ_ASSERT(!s.negative || s.has_soa);
		FUZZ_ASSERT(!s.has_soa || ttl <= CACHE_NEG_MAX_TTL_S ||
		    ttl <= min);
	}
	/* prepared twice is prepared once: a cache hit is the first
	 * client's answer */
	m2 = fuzz_alloc(len + DNS_OPT_BYTES);
	memcpy(m2, m, len);
	len2 = dns_prepare_answer(m2, len, len + DNS_OPT_BYTES, qe, min, max,
	    &ttl2, &ps2);
	FUZZ_ASSERT(len2 == len && ttl2 == ttl);
	/* the summary it gives is the message's, as dns_summarize finds */
	FUZZ_ASSERT(dns_summarize(m2, len2, qe, &s) == 0);
	FUZZ_ASSERT(s.opt_start == ps.opt_start && s.opt_end == ps.opt_end &&
	    s.ns_end == ps.ns_end && s.end == len);
	FUZZ_ASSERT(memcmp(m2, m, len) == 0);
	free(m2);
	/* to the client: over TCP, and over UDP at its limit */
	for (i = 0; i < 2; i++) {
		limit = i == 0 ? 0 : qi.udp_limit;
		m2 = fuzz_dup(m, len);
		n = dns_answer_for_client(m2, len, q, &qi, limit, &ps);
		FUZZ_ASSERT(n != 0);
		FUZZ_ASSERT(n <= len);
		fuzz_check_client_answer(m2, n, q, &qi, limit, 1, 1);
		free(m2);
	}

no_room:
	/* dns_prepare_answer without room for an OPT: never longer */
	m2 = fuzz_dup(data, size);
	len2 = dns_prepare_answer(m2, size, size, qe, min, max, &ttl2, &ps2);
	FUZZ_ASSERT(len2 <= size);
	FUZZ_ASSERT(len2 == 0 || len != 0);
	if (len2 != 0) {
		n = dns_answer_for_client(m2, len2, q, &qi, qi.udp_limit,
		    &ps2);
		FUZZ_ASSERT(n != 0 && n <= len2);
		fuzz_check_client_answer(m2, n, q, &qi, qi.udp_limit, 0, 1);
	}
	free(m2);
	/* dns_rewrite_ttls on the raw message */
	m2 = fuzz_dup(data, size);
	(void)dns_rewrite_ttls(m2, size, qe, 100, 0, 86400);
	free(m2);
	/* dns_truncate on the raw message (when its OPT is last, as the
	 * function requires), at 512 and at the client's limit: within it;
	 * the OPT kept, its EDE options dropped only if the answer and
	 * authority sections would not fit with them; TC=1 with header,
	 * question and OPT only if they do not fit without; else TC as it
	 * was, the answer and authority sections whole and a prefix of the
	 * additional records in whole RRsets (RFC 2181 9) */
	if (dns_summarize(data, size, qe, &s) == 0 &&
	    (s.opt_end == 0 || s.opt_end == s.end)) {
		for (i = 0; i < 2; i++) {
			size_t optlen = s.opt_end ? s.opt_end - s.opt_start : 0;
			size_t optlen2;

			limit = i == 0 ? 512 : qi.udp_limit;
			if (size <= limit)
				continue;
			m2 = fuzz_dup(data, size);
			n = dns_truncate(m2, size, qe, &s, limit);
			FUZZ_ASSERT(n <= size && n <= limit);
			FUZZ_ASSERT(dns_parse_answer(m2, n) == qe);
			FUZZ_ASSERT(dns_summarize(m2, n, qe, &s2) == 0);
			FUZZ_ASSERT(s2.end == n);
			FUZZ_ASSERT((s2.opt_end != 0) == (s.opt_end != 0));
			FUZZ_ASSERT(s2.opt_end == 0 || s2.opt_end == n);
			optlen2 = s2.opt_end ? s2.opt_end - s2.opt_start : 0;
			if (optlen2 != optlen) {
				FUZZ_ASSERT(optlen2 == DNS_OPT_BYTES);
				FUZZ_ASSERT(s.ns_end + optlen > limit);
			}
			FUZZ_ASSERT(memcmp(m2 + s2.opt_start,
			    data + s.opt_start, optlen2 == optlen ? optlen :
			    DNS_OPT_BYTES - 2) == 0);
			if (s.ns_end + optlen2 > limit) {
				FUZZ_ASSERT(m2[2] & DNS_FLAG_TC);
				FUZZ_ASSERT(n == qe + optlen2);
				FUZZ_ASSERT(get16(m2 + 6) == 0 &&
				    get16(m2 + 8) == 0);
			} else {
				struct dns_iter it;
				struct dns_rr rr, prev;
				size_t kept_end = n - optlen2;
				int have_prev = 0;

				FUZZ_ASSERT(m2[2] == data[2]);
				FUZZ_ASSERT(memcmp(m2 + 4, data + 4, 6) == 0);
				FUZZ_ASSERT(memcmp(m2 + qe, data + qe,
				    kept_end - qe) == 0);
				FUZZ_ASSERT(kept_end >= s.ns_end);
				FUZZ_ASSERT(get16(m2 + 10) <= get16(data + 10));
				/* the first record left out is not of the
				 * last kept one's RRset */
				dns_iter_init(&it, data, size, qe);
				while (dns_iter_next(&it, &rr) > 0) {
					if (rr.section != DNS_SEC_AR ||
					    rr.type == DNS_TYPE_OPT)
						continue;
					if (rr.start == kept_end) {
						FUZZ_ASSERT(!have_prev ||
						    !dns_same_rrset(data, size,
						    &prev, &rr));
						break;
					}
					if (rr.end <= kept_end) {
						prev = rr;
						have_prev = 1;
					}
				}
			}
			free(m2);
		}
	}
	free(m);
	free(q);
}

int
LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	static const uint16_t late_ids[2] = { LATE_Q, NQ - 1 };
	struct upstream *u = &g.upstreams[0];
	struct client_conn *c = &g.clients[0];
	int k, slot, sv[2];

	pending_reset();
	cache_reset();
	udp_tx.n = 0;
	g.n_upstreams = 1;
	g.none_usable = 0;
	memset(u, 0, offsetof(struct upstream, sc));
	u->fd = -1;
	u->state = UPSTREAM_READY;
	u->queue_head = u->queue_tail = -1;
	u->backoff_ms = BACKOFF_MIN_MS;
	idmap_reset(&u->ids);
	strcpy(u->label, "127.0.0.1:853 (fuzz)");
	/* the TCP client of query 2 */
	if (socketpair(AF_UNIX, SOCK_STREAM | SOCK_NONBLOCK, 0, sv) < 0)
		abort();
	memset(&c->peer, 0, sizeof c->peer);
	c->peer.sin.sin_family = AF_INET;
	c->peer.sin.sin_addr.s_addr = htonl(0x7F000001);
	c->fd = sv[0];
	c->state = CLIENT_OPEN;
	c->inflight = 0;
	c->in_len = 0;
	c->out_off = c->out_len = 0;
	c->last_active_ms = g.now_ms;
	tcp_peer = sv[1];
	back_len = 0;

	for (k = 0; k <= LATE_Q; k++) {
		uint16_t id = (uint16_t)k;

		slot = send_query(u, k, &id, 1);
		FUZZ_ASSERT(slot == k && g.pending[slot].up_id == k);
	}
	/* query 4 times out; query 5 takes its slot, never its ID */
	query_fail(LATE_Q, DNS_RCODE_SERVFAIL);
	check_udp_batch();
	FUZZ_ASSERT(u->inflight == LATE_Q);
	slot = send_query(u, NQ - 1, late_ids, 2);
	FUZZ_ASSERT(slot == LATE_Q && g.pending[slot].up_id == NQ - 1);

	feed(u, data, size / 2);
	feed(u, data + size / 2, size - size / 2);

	/* The rest get SERVFAIL (or a stale answer), as at a teardown after
	 * MAX_ATTEMPTS. */
	for (slot = 0; slot < MAX_PENDING; slot++)
		if (g.pending[slot].state != PENDING_FREE)
			g.pending[slot].attempts = MAX_ATTEMPTS;
	u->state = UPSTREAM_READY;
	upstream_teardown(u);
	while (u->queue_head >= 0)	/* re-queued ones */
		query_fail(u->queue_head, DNS_RCODE_SERVFAIL);
	check_udp_batch();
	check_tcp();
	FUZZ_ASSERT(g.n_free == MAX_PENDING);
	FUZZ_ASSERT(u->inflight == 0);
	FUZZ_ASSERT(c->state == CLIENT_FREE || c->inflight == 0);

	/* The same questions again: from the cache if stored, else SERVFAIL
	 * (no upstream left). */
	g.n_upstreams = 0;
	g.n_allow = 1;
	acl_parse_range("127.0.0.0/8", &g.allow[0]);
	for (k = 0; k < NQ; k++) {
		struct origin from;

		origin_of(&from, k);
		if (k == TCP_Q) {
			if (c->state == CLIENT_FREE)
				continue;
			from.peer = c->peer;
			c->inflight++;
		}
		query_receive(qwire[k], qlen[k], &from);
		check_udp_batch();
		check_tcp();
	}
	FUZZ_ASSERT(g.n_free == MAX_PENDING);
	if (c->state != CLIENT_FREE)
		client_close(c);
	close(sv[1]);
	tcp_peer = -1;
	direct(data, size);
	return 0;
}
