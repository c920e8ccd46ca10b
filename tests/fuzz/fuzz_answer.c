/*
 * libFuzzer harness: an upstream's decrypted answer stream, and what the
 * proxy does with the answers. One upstream (no socket: fd -1) is READY
 * with four SENT queries whose upstream IDs are 0, 1, 2 and 3 (ID key 0,
 * slots 0..3, generation 0), so the fuzzer can hit them. The input is
 * appended to u->rbuf in two parts and upstream_parse_stream() runs after
 * each, as upstream_pump() would: matching answers go through
 * query_deliver() -> cache_store() -> dns_answer_for_client() ->
 * query_send() -> the UDP batch, whose entries are checked (never a wrong
 * answer: the client's ID and question, within its UDP size) and then
 * dropped (udp_tx.n = 0; nothing is sent). The same queries are then
 * asked again, which answers them from the cache when the answer was
 * stored. Finally dns_cache_ttl, dns_rewrite_ttls, dns_strip_padding,
 * dns_strip_opt and dns_truncate run directly on the input.
 */
#define DOTPROXY_NO_MAIN
#include "../../dotproxy.c"
#include "fuzz_util.h"
#include "../dnsmsg.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);
int LLVMFuzzerInitialize(int *argc, char ***argv);

#define NQ 4

/* The queries the upstream was sent: name, type, OPT (UDP size, DO). */
static const struct {
	const char *name;
	uint16_t type;
	int opt;
	uint16_t udp_size;
	int do_bit;
} queries[NQ] = {
	{ "example.com", 1, 0, 0, 0 },
	{ "Example.COM", 28, 1, 1232, 1 },
	{ "q1.test", 1, 1, 4096, 0 },
	{ "big.example.test", 16, 1, 512, 0 },
};

static unsigned char qwire[NQ][64];
static size_t qlen[NQ], qend[NQ];
static struct cache cache0;

/* Query k as its client sent it (ID 0x1000 + k); qend[k] is set. */
static size_t
fuzz_query(unsigned char *m, int k)
{
	size_t len = mkquery(m, (uint16_t)(0x1000 + k), queries[k].name,
	    queries[k].type, queries[k].opt, queries[k].udp_size);

	qend[k] = len - (queries[k].opt ? DNS_OPT_FIXED_BYTES : 0);
	if (queries[k].do_bit)
		m[len - DNS_OPT_FIXED_BYTES + 7] = 0x80;
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
	g.now_ms = 1000000;
	pending_init();
	cache_init(64 * 1024);
	cache0 = g.cache;
	for (k = 0; k < NQ; k++)
		qlen[k] = fuzz_query(qwire[k], k);
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

/* The pending table as pending_init() leaves it, with generation 0
 * everywhere so that slot k's upstream ID is k. */
static void
pending_reset(void)
{
	int i;

	g.n_free = 0;
	for (i = MAX_PENDING - 1; i >= 0; i--) {
		g.pending[i].state = PENDING_FREE;
		g.pending[i].gen = 0;
		g.pending[i].query = g.query_bytes[i];
		g.free_stack[g.n_free++] = i;
	}
	g.age_head = g.age_tail = -1;
}

/* A query as query_receive() and upstream_inject() leave it: SENT on
 * upstream 0 with ID pending_make_id(slot, 0) == slot. */
static int
send_query(struct upstream *u, int k)
{
	int slot = pending_alloc();
	struct pending_query *p = &g.pending[slot];

	FUZZ_ASSERT(slot == k);
	memset(&p->from, 0, sizeof p->from);
	p->from.kind = ORIGIN_UDP;
	p->from.listener = 0;
	p->from.peer.sin.sin_family = AF_INET;
	p->from.peer.sin.sin_addr.s_addr = htonl(0x7F000001);
	p->from.peer.sin.sin_port = htons((uint16_t)(1000 + k));
	p->from.peerlen = sizeof p->from.peer.sin;
	p->client_id = get16(qwire[k]);
	p->has_opt = (uint8_t)queries[k].opt;
	p->cache_key = cache_key(queries[k].do_bit, 0, 0);
	p->udp_limit = queries[k].opt ? queries[k].udp_size : UDP_MIN_LIMIT;
	p->qend = (uint16_t)qend[k];
	p->qlen = (uint16_t)qlen[k];
	memcpy(p->query, qwire[k], qlen[k]);
	p->upstream = 0;
	p->up_id = pending_make_id(slot, u->id_key);
	put16(p->query, p->up_id);
	p->state = PENDING_SENT;
	p->attempts = 1;
	u->inflight++;
	return slot;
}

/* Every answer queued for a UDP client is for that client's question. */
static void
check_udp_batch(void)
{
	size_t i;

	for (i = 0; i < udp_tx.n; i++) {
		const unsigned char *m = udp_tx.buf[i];
		size_t len = udp_tx.iov[i].iov_len;
		int k = ntohs(udp_tx.peer[i].sin.sin_port) - 1000;
		size_t limit;

		FUZZ_ASSERT(k >= 0 && k < NQ);
		limit = queries[k].opt ? queries[k].udp_size : UDP_MIN_LIMIT;
		FUZZ_ASSERT(len >= qend[k] && len <= limit);
		FUZZ_ASSERT(get16(m) == get16(qwire[k]));
		FUZZ_ASSERT(m[2] & DNS_FLAG_QR);
		FUZZ_ASSERT(get16(m + 4) == 1);
		FUZZ_ASSERT(memcmp(m + DNS_HEADER_BYTES,
		    qwire[k] + DNS_HEADER_BYTES,
		    qend[k] - DNS_HEADER_BYTES) == 0);
	}
	udp_tx.n = 0;
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
}

static void
direct(const uint8_t *data, size_t size)
{
	unsigned char *m;
	size_t qe, n;

	qe = dns_parse_answer(data, size);
	if (qe == 0)
		return;
	m = fuzz_dup(data, size);
	(void)dns_cache_ttl(m, size, qe);
	(void)dns_rewrite_ttls(m, size, qe, 100, 0, 86400);
	free(m);
	m = fuzz_dup(data, size);
	n = dns_strip_padding(m, size, qe);
	FUZZ_ASSERT(n <= size);
	free(m);
	m = fuzz_dup(data, size);
	n = dns_strip_opt(m, size, qe);
	FUZZ_ASSERT(n <= size);
	free(m);
	if (size > qe + DNS_OPT_FIXED_BYTES) {	/* as for a UDP client */
		m = fuzz_dup(data, size);
		n = dns_truncate(m, size, qe, data[size - 1] & 1);
		FUZZ_ASSERT(n <= size && (m[2] & DNS_FLAG_TC));
		FUZZ_ASSERT(dns_parse_answer(m, n) == qe);
		free(m);
	}
}

int
LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	struct upstream *u = &g.upstreams[0];
	int k, slot;

	pending_reset();
	cache_reset();
	udp_tx.n = 0;
	g.n_upstreams = 1;
	g.none_usable = 0;
	memset(u, 0, offsetof(struct upstream, sc));
	u->fd = -1;
	u->state = UPSTREAM_READY;
	u->id_key = 0;
	u->queue_head = u->queue_tail = -1;
	u->backoff_ms = BACKOFF_MIN_MS;
	strcpy(u->label, "127.0.0.1:853 (fuzz)");
	for (k = 0; k < NQ; k++)
		send_query(u, k);
	feed(u, data, size / 2);
	feed(u, data + size / 2, size - size / 2);

	/* The rest get SERVFAIL (or a stale answer), as at a teardown after
	 * MAX_ATTEMPTS. */
	for (slot = 0; slot < NQ; slot++)
		g.pending[slot].attempts = MAX_ATTEMPTS;
	u->state = UPSTREAM_READY;
	upstream_teardown(u);
	while (u->queue_head >= 0) {	/* re-queued ones */
		slot = u->queue_head;
		upstream_detach(slot);
		query_fail(slot, DNS_RCODE_SERVFAIL);
	}
	check_udp_batch();
	FUZZ_ASSERT(g.n_free == MAX_PENDING);
	FUZZ_ASSERT(u->inflight == 0);

	/* The same questions again: from the cache if stored, else SERVFAIL
	 * (no upstream left). */
	g.n_upstreams = 0;
	for (k = 0; k < NQ; k++) {
		struct origin from = { 0 };

		from.kind = ORIGIN_UDP;
		from.peer.sin.sin_family = AF_INET;
		from.peer.sin.sin_addr.s_addr = htonl(0x7F000001);
		from.peer.sin.sin_port = htons((uint16_t)(1000 + k));
		from.peerlen = sizeof from.peer.sin;
		g.n_allow = 1;
		trust_parse_range("127.0.0.0/8", &g.allow[0]);
		query_receive(qwire[k], qlen[k], &from);
		check_udp_batch();
	}
	FUZZ_ASSERT(g.n_free == MAX_PENDING);
	direct(data, size);
	return 0;
}
