/*
 * Unit tests of dotproxy's pure functions: wire parsing, truncation, error
 * answers, ID mapping and spec parsing. Plain C: includes the proxy itself
 * (without main), runs every check, prints "N passed, N failed" and exits
 * non-zero if any failed.
 */
#define DOTPROXY_NO_MAIN
/* The tests use a subset of the proxy; the rest is main()'s. */
#pragma GCC diagnostic ignored "-Wunused-function"
#include "../dotproxy.c"
#include "dnsmsg.h"

static int n_pass, n_fail;

#define CHECK(cond) do { \
		if (cond) { \
			n_pass++; \
		} else { \
			n_fail++; \
			fprintf(stderr, "%s:%d: FAILED: %s\n", __FILE__, \
			    __LINE__, #cond); \
		} \
	} while (0)

/* Turns a query into an answer with n A records (compressed owner names)
 * and, if opt, an OPT record last. Returns the length. */
static size_t
mkanswer(unsigned char *m, size_t qend, unsigned n, int opt)
{
	size_t off = qend;
	unsigned i;

	m[2] |= DNS_FLAG_QR;
	m[3] = DNS_FLAG_RA;
	put16(m + 6, (unsigned)n);
	put16(m + 8, 0);
	put16(m + 10, 0);
	for (i = 0; i < n; i++) {
		static const unsigned char rr[] = {
			0xC0, 0x0C, 0, 1, 0, 1, 0, 0, 0, 60, 0, 4,
		};

		memcpy(m + off, rr, sizeof rr);
		off += sizeof rr;
		m[off++] = 192;
		m[off++] = 0;
		m[off++] = 2;
		m[off++] = (unsigned char)i;
	}
	if (opt) {
		memset(m + off, 0, DNS_OPT_FIXED_BYTES);
		m[off + 2] = DNS_TYPE_OPT;
		put16(m + off + 3, 1232);
		m[off + 7] = 0x80;	/* DO bit */
		off += DNS_OPT_FIXED_BYTES;
		put16(m + 10, 1);
	}
	return off;
}

static void
test_names(void)
{
	unsigned char m[600];
	size_t len = mkquery(m, 1, "example.com", 1, 0, 0);

	CHECK(dns_check_name(m, len, 12) == 12 + 13);
	CHECK(dns_skip_name(m, len, 12) == 12 + 13);
	/* truncated name */
	CHECK(dns_check_name(m, 15, 12) == 0);
	CHECK(dns_skip_name(m, 15, 12) == 0);
	/* a pointer: skip accepts it, the question check refuses it */
	m[12] = 0xC0;
	m[13] = 12;
	CHECK(dns_skip_name(m, len, 12) == 14);
	CHECK(dns_check_name(m, len, 12) == 0);
	/* pointer cut short */
	CHECK(dns_skip_name(m, 13, 12) == 0);
	/* label of 64 bytes */
	memset(m, 0, sizeof m);
	m[12] = 64;
	CHECK(dns_check_name(m, sizeof m, 12) == 0);
	CHECK(dns_skip_name(m, sizeof m, 12) == 0);
	/* reserved label type 0x40 */
	m[12] = 0x41;
	CHECK(dns_skip_name(m, sizeof m, 12) == 0);
	/* 255 bytes on the wire is the limit (RFC 1035 3.1): three
	 * 63-byte labels, one of 61 and the root; 62 is one too many */
	{
		size_t off = 12;
		int i;

		for (i = 0; i < 3; i++) {
			m[off] = 63;
			memset(m + off + 1, 'a', 63);
			off += 64;
		}
		m[off] = 61;
		memset(m + off + 1, 'b', 62);
		m[off + 62] = 0;
		CHECK(dns_check_name(m, sizeof m, 12) == 12 + 255);
		CHECK(dns_skip_name(m, sizeof m, 12) == 12 + 255);
		m[off] = 62;
		m[off + 62] = 'b';
		m[off + 63] = 0;
		CHECK(dns_check_name(m, sizeof m, 12) == 0);
		CHECK(dns_skip_name(m, sizeof m, 12) == 0);
	}
}

static void
test_parse_query(void)
{
	unsigned char m[2048];
	struct dns_query_info qi;
	size_t len;

	len = mkquery(m, 0x1234, "Example.COM", 28, 0, 0);
	CHECK(dns_parse_query(m, len, &qi) == 0);
	CHECK(qi.id == 0x1234);
	CHECK(qi.qtype == 28);
	CHECK(qi.qend == len);
	CHECK(!qi.has_opt);
	CHECK(qi.udp_limit == 512);

	len = mkquery(m, 7, "example.com", 1, 1, 4096);
	CHECK(dns_parse_query(m, len, &qi) == 0);
	CHECK(qi.has_opt);
	CHECK(qi.udp_limit == 4096);
	CHECK(qi.qend == len - DNS_OPT_FIXED_BYTES);

	/* EDNS size below 512 counts as 512 (RFC 6891 6.2.5) */
	len = mkquery(m, 7, "example.com", 1, 1, 100);
	CHECK(dns_parse_query(m, len, &qi) == 0 && qi.udp_limit == 512);

	/* short packets are dropped */
	CHECK(dns_parse_query(m, 0, &qi) == DNS_DROP);
	CHECK(dns_parse_query(m, 11, &qi) == DNS_DROP);
	/* a response is never answered */
	len = mkquery(m, 7, "example.com", 1, 0, 0);
	m[2] |= DNS_FLAG_QR;
	CHECK(dns_parse_query(m, len, &qi) == DNS_DROP);
	/* opcode other than QUERY */
	len = mkquery(m, 7, "example.com", 1, 0, 0);
	m[2] |= 5 << 3;		/* UPDATE */
	CHECK(dns_parse_query(m, len, &qi) == DNS_RCODE_NOTIMP);
	/* QDCOUNT 0 and 2 */
	len = mkquery(m, 7, "example.com", 1, 0, 0);
	put16(m + 4, 0);
	CHECK(dns_parse_query(m, len, &qi) == DNS_RCODE_FORMERR);
	CHECK(qi.qend == 0);
	put16(m + 4, 2);
	CHECK(dns_parse_query(m, len, &qi) == DNS_RCODE_FORMERR);
	/* question cut short: FORMERR without a question to echo */
	len = mkquery(m, 7, "example.com", 1, 0, 0);
	CHECK(dns_parse_query(m, len - 2, &qi) == DNS_RCODE_FORMERR);
	CHECK(qi.qend == 0);
	/* compression loop in the question */
	len = mkquery(m, 7, "example.com", 1, 0, 0);
	m[12] = 0xC0;
	m[13] = 12;
	CHECK(dns_parse_query(m, len, &qi) == DNS_RCODE_FORMERR);
	/* ARCOUNT says 1 but nothing follows */
	len = mkquery(m, 7, "example.com", 1, 0, 0);
	put16(m + 10, 1);
	CHECK(dns_parse_query(m, len, &qi) == DNS_RCODE_FORMERR);
	CHECK(qi.qend == len);	/* the question is still echoed */
	/* two OPT records */
	len = mkquery(m, 7, "example.com", 1, 1, 1232);
	memcpy(m + len, m + len - DNS_OPT_FIXED_BYTES, DNS_OPT_FIXED_BYTES);
	len += DNS_OPT_FIXED_BYTES;
	put16(m + 10, 2);
	CHECK(dns_parse_query(m, len, &qi) == DNS_RCODE_FORMERR);
	/* OPT in the answer section */
	len = mkquery(m, 7, "example.com", 1, 1, 1232);
	put16(m + 10, 0);
	put16(m + 6, 1);
	CHECK(dns_parse_query(m, len, &qi) == DNS_RCODE_FORMERR);
	/* OPT with an RDLENGTH past the end */
	len = mkquery(m, 7, "example.com", 1, 1, 1232);
	put16(m + len - 2, 50);
	CHECK(dns_parse_query(m, len, &qi) == DNS_RCODE_FORMERR);
	/* a query longer than QUERY_MAX_BYTES: FORMERR, question echoed */
	len = mkquery(m, 7, "example.com", 1, 1, 1232);
	put16(m + len - 2, QUERY_MAX_BYTES);
	memset(m + len, 0, QUERY_MAX_BYTES);
	CHECK(dns_parse_query(m, len + QUERY_MAX_BYTES, &qi) ==
	    DNS_RCODE_FORMERR);
	CHECK(qi.qend != 0);
}

static void
test_answers(void)
{
	unsigned char q[512], a[2048];
	size_t qlen, alen, qend;

	qlen = mkquery(q, 0xBEEF, "ExAmPlE.test", 1, 0, 0);
	memcpy(a, q, qlen);
	put16(a, 0x0042);
	/* the upstream answers in lower case */
	memcpy(a + 12, "\7example\4test", 13);
	alen = mkanswer(a, qlen, 2, 0);
	qend = dns_parse_answer(a, alen);
	CHECK(qend == qlen);
	CHECK(dns_question_equal(a, qend, q, qlen));
	/* different type, different name */
	a[qend - 3] = 28;
	CHECK(!dns_question_equal(a, qend, q, qlen));
	a[qend - 3] = 1;
	a[13] = 'x';
	CHECK(!dns_question_equal(a, qend, q, qlen));
	a[13] = 'e';
	/* a query is not an answer */
	CHECK(dns_parse_answer(q, qlen) == 0);
	CHECK(dns_parse_answer(a, 11) == 0);

	/* the client's ID and spelling come back */
	alen = dns_answer_for_client(a, alen, q, qlen, 0xBEEF, 0, 512);
	CHECK(alen == qlen + 2 * 16);
	CHECK(get16(a) == 0xBEEF);
	CHECK(memcmp(a + 12, "\7ExAmPlE\4test", 13) == 0);
	CHECK(get16(a + 6) == 2);
	CHECK(!(a[2] & DNS_FLAG_TC));
}

static void
test_strip_and_truncate(void)
{
	unsigned char q[512], a[4096];
	size_t qlen, alen, len;

	/* OPT removed for a client that sent none */
	qlen = mkquery(q, 1, "example.test", 1, 0, 0);
	memcpy(a, q, qlen);
	alen = mkanswer(a, qlen, 3, 1);
	len = dns_answer_for_client(a, alen, q, qlen, 1, 0, 0);
	CHECK(len == alen - DNS_OPT_FIXED_BYTES);
	CHECK(get16(a + 10) == 0);
	CHECK(get16(a + 6) == 3);
	/* ... and kept for a client that sent one */
	qlen = mkquery(q, 1, "example.test", 1, 1, 1232);
	memcpy(a, q, qlen - DNS_OPT_FIXED_BYTES);
	alen = mkanswer(a, qlen - DNS_OPT_FIXED_BYTES, 3, 1);
	len = dns_answer_for_client(a, alen, q, qlen - DNS_OPT_FIXED_BYTES,
	    1, 1, 1232);
	CHECK(len == alen);
	CHECK(get16(a + 10) == 1);

	/* 40 records: 12 + 18 + 40 * 16 = 670 bytes > 512: TC, no records */
	qlen = mkquery(q, 9, "example.test", 1, 0, 0);
	memcpy(a, q, qlen);
	alen = mkanswer(a, qlen, 40, 0);
	CHECK(alen > 512);
	len = dns_answer_for_client(a, alen, q, qlen, 9, 0, 512);
	CHECK(len == qlen);
	CHECK(a[2] & DNS_FLAG_TC);
	CHECK(get16(a + 6) == 0 && get16(a + 8) == 0 && get16(a + 10) == 0);
	CHECK(get16(a + 4) == 1);
	/* the same answer fits a client with EDNS 1232: no TC */
	qlen = mkquery(q, 9, "example.test", 1, 1, 1232);
	memcpy(a, q, qlen - DNS_OPT_FIXED_BYTES);
	alen = mkanswer(a, qlen - DNS_OPT_FIXED_BYTES, 40, 1);
	len = dns_answer_for_client(a, alen, q, qlen - DNS_OPT_FIXED_BYTES,
	    9, 1, 1232);
	CHECK(len == alen && !(a[2] & DNS_FLAG_TC));
	/* 100 records > 1232: TC, question and an OPT with the DO bit */
	memcpy(a, q, qlen - DNS_OPT_FIXED_BYTES);
	alen = mkanswer(a, qlen - DNS_OPT_FIXED_BYTES, 100, 1);
	len = dns_answer_for_client(a, alen, q, qlen - DNS_OPT_FIXED_BYTES,
	    9, 1, 1232);
	CHECK(len == qlen);
	CHECK(a[2] & DNS_FLAG_TC);
	CHECK(get16(a + 10) == 1);
	CHECK(a[len - DNS_OPT_FIXED_BYTES + 2] == DNS_TYPE_OPT);
	CHECK(a[len - DNS_OPT_FIXED_BYTES + 7] == 0x80);
	/* TCP (limit 0) never truncates */
	memcpy(a, q, qlen - DNS_OPT_FIXED_BYTES);
	alen = mkanswer(a, qlen - DNS_OPT_FIXED_BYTES, 100, 1);
	len = dns_answer_for_client(a, alen, q, qlen - DNS_OPT_FIXED_BYTES,
	    9, 1, 0);
	CHECK(len == alen && !(a[2] & DNS_FLAG_TC));
	/* a malformed answer (record cut short) is refused */
	qlen = mkquery(q, 9, "example.test", 1, 0, 0);
	memcpy(a, q, qlen);
	alen = mkanswer(a, qlen, 2, 1);
	CHECK(dns_answer_for_client(a, alen - 5, q, qlen, 9, 0, 512) == 0);
}

static void
test_errors(void)
{
	unsigned char q[512], out[512];
	size_t qlen, len;

	qlen = mkquery(q, 0x0102, "example.test", 1, 1, 4096);
	q[3] = DNS_FLAG_CD;
	len = dns_make_error(out, q, qlen - DNS_OPT_FIXED_BYTES, 0x0A0B, 1,
	    DNS_RCODE_SERVFAIL);
	CHECK(len == qlen);
	CHECK(get16(out) == 0x0A0B);
	CHECK(out[2] == (DNS_FLAG_QR | DNS_FLAG_RD));
	CHECK(out[3] == (DNS_FLAG_RA | DNS_FLAG_CD | 2));
	CHECK(get16(out + 4) == 1 && get16(out + 10) == 1);
	CHECK(memcmp(out + 12, q + 12, qlen - 12 - 11) == 0);
	/* without a parsed question: header only */
	len = dns_make_error(out, q, 0, 5, 1, DNS_RCODE_FORMERR);
	CHECK(len == 12);
	CHECK(get16(out + 4) == 0 && get16(out + 10) == 0);
	CHECK((out[3] & 0x0F) == 1);
}

static void
test_pending_ids(void)
{
	static uint8_t seen[65536];
	int slots[MAX_PENDING], i, n = 0, ok = 1;
	uint16_t key = 0x5A5A;

	pending_init();
	g.now_ms = 1000;
	g.query_timeout_ms = 4000;
	for (i = 0; i < MAX_PENDING; i++) {
		int s = pending_alloc();

		if (s < 0)
			break;
		slots[n++] = s;
		g.pending[s].state = PENDING_SENT;
		g.pending[s].upstream = 0;
		g.pending[s].up_id = pending_make_id(s, key);
		if (seen[g.pending[s].up_id])
			ok = 0;
		seen[g.pending[s].up_id] = 1;
	}
	CHECK(n == MAX_PENDING);
	CHECK(ok);			/* IDs unique on a connection */
	CHECK(pending_alloc() == -1);	/* table full */
	/* every ID leads back to its slot, on its upstream only */
	ok = 1;
	for (i = 0; i < n; i++) {
		if (pending_find(0, key, g.pending[slots[i]].up_id) !=
		    slots[i])
			ok = 0;
		if (pending_find(1, key, g.pending[slots[i]].up_id) != -1)
			ok = 0;
	}
	CHECK(ok);
	/* the age list runs oldest first */
	CHECK(g.age_head == slots[0] && g.age_tail == slots[n - 1]);
	/* a freed and reused slot does not answer to its old ID */
	{
		int s = slots[5];
		uint16_t old = g.pending[s].up_id;

		pending_free(s);
		CHECK(pending_find(0, key, old) == -1);
		CHECK(pending_alloc() == s);
		g.pending[s].state = PENDING_SENT;
		g.pending[s].up_id = pending_make_id(s, key);
		CHECK(g.pending[s].up_id != old);
		CHECK(pending_find(0, key, old) == -1);
		CHECK(g.age_tail == s);
	}
	for (i = 0; i < n; i++)
		pending_free(slots[i]);
	CHECK(g.n_free == MAX_PENDING);
	CHECK(g.age_head == -1 && g.age_tail == -1);
}

static void
test_specs(void)
{
	union sockaddr_u a;
	socklen_t len;
	uint16_t port;
	struct upstream u;

	CHECK(config_parse_port("53", &port) == 0 && port == 53);
	CHECK(config_parse_port("65535", &port) == 0 && port == 65535);
	CHECK(config_parse_port("0", &port) < 0);
	CHECK(config_parse_port("65536", &port) < 0);
	CHECK(config_parse_port("70000", &port) < 0);
	CHECK(config_parse_port("", &port) < 0);
	CHECK(config_parse_port("5x", &port) < 0);
	CHECK(config_parse_port("-1", &port) < 0);

	CHECK(config_parse_addr("127.0.0.1", 53, &a, &len) == 0 &&
	    a.sa.sa_family == AF_INET && ntohs(a.sin.sin_port) == 53);
	CHECK(config_parse_addr("127.0.0.1@5353", 53, &a, &len) == 0 &&
	    ntohs(a.sin.sin_port) == 5353);
	CHECK(config_parse_addr("127.0.0.1:5354", 53, &a, &len) == 0 &&
	    ntohs(a.sin.sin_port) == 5354);
	CHECK(config_parse_addr("::1", 53, &a, &len) == 0 &&
	    a.sa.sa_family == AF_INET6 && ntohs(a.sin6.sin6_port) == 53);
	CHECK(config_parse_addr("::@5300", 53, &a, &len) == 0 &&
	    ntohs(a.sin6.sin6_port) == 5300);
	CHECK(config_parse_addr("[::1]:5301", 53, &a, &len) == 0 &&
	    ntohs(a.sin6.sin6_port) == 5301 && len == sizeof a.sin6);
	CHECK(config_parse_addr("[2001:db8::1]", 53, &a, &len) == 0);
	CHECK(config_parse_addr("1.2.3.4.5", 53, &a, &len) < 0);
	CHECK(config_parse_addr("127.0.0.1@70000", 53, &a, &len) < 0);
	CHECK(config_parse_addr("127.0.0.1@", 53, &a, &len) < 0);
	CHECK(config_parse_addr("[::1", 53, &a, &len) < 0);
	CHECK(config_parse_addr("[::1]x", 53, &a, &len) < 0);
	CHECK(config_parse_addr("localhost", 53, &a, &len) < 0);
	CHECK(config_parse_addr("", 53, &a, &len) < 0);

	CHECK(config_valid_hostname("dns.google"));
	CHECK(config_valid_hostname("one.one.one.one"));
	CHECK(!config_valid_hostname(""));
	CHECK(!config_valid_hostname("a..b"));
	CHECK(!config_valid_hostname(".a"));
	CHECK(!config_valid_hostname("a b"));
	CHECK(!config_valid_hostname("a.b."));

	memset(&u, 0, sizeof u);
	CHECK(config_parse_upstream("1.1.1.1", &u) == NULL);
	CHECK(strcmp(u.name, "cloudflare-dns.com") == 0);
	CHECK(ntohs(u.addr.sin.sin_port) == 853);
	CHECK(config_parse_upstream("8.8.4.4@853", &u) == NULL &&
	    strcmp(u.name, "dns.google") == 0);
	CHECK(config_parse_upstream("2620:fe::fe", &u) == NULL &&
	    strcmp(u.name, "dns.quad9.net") == 0);
	CHECK(config_parse_upstream("2606:4700:4700::1111@8853", &u) ==
	    NULL && ntohs(u.addr.sin6.sin6_port) == 8853 &&
	    strcmp(u.name, "cloudflare-dns.com") == 0);
	CHECK(config_parse_upstream("127.0.0.1@8853#dns.test", &u) == NULL);
	CHECK(strcmp(u.name, "dns.test") == 0);
	CHECK(ntohs(u.addr.sin.sin_port) == 8853);
	CHECK(strcmp(u.label, "127.0.0.1:8853 (dns.test)") == 0);
	CHECK(config_parse_upstream("1.1.1.1#one.one.one.one", &u) == NULL &&
	    strcmp(u.name, "one.one.one.one") == 0);
	/* an unknown resolver needs a name, and the message says how */
	CHECK(config_parse_upstream("192.0.2.1", &u) != NULL);
	CHECK(strstr(config_parse_upstream("192.0.2.1", &u), "#") != NULL);
	CHECK(config_parse_upstream("127.0.0.1@0#x", &u) != NULL);
	CHECK(config_parse_upstream("127.0.0.1:853#x", &u) != NULL);
	CHECK(config_parse_upstream("dns.google", &u) != NULL);
	CHECK(config_parse_upstream("1.1.1.1#", &u) != NULL);
	CHECK(config_parse_upstream("1.1.1.1#bad name", &u) != NULL);
}

static void
test_misc(void)
{
	unsigned char q[512];
	char buf[64], name[64];
	size_t len;

	CHECK(strcmp(util_br_error_name(BR_ERR_X509_NOT_TRUSTED, buf,
	    sizeof buf), "BR_ERR_X509_NOT_TRUSTED") == 0);
	CHECK(strcmp(util_br_error_name(BR_ERR_RECV_FATAL_ALERT + 40, buf,
	    sizeof buf), "BR_ERR_RECV_FATAL_ALERT (alert 40)") == 0);
	CHECK(strcmp(util_br_error_name(99, buf, sizeof buf),
	    "BearSSL error 99") == 0);
	/* the small formatter */
	CHECK(util_fmt(buf, sizeof buf, "%s:%u %d %03u %zu %lld %x %c%%",
	    "a", 53u, -7, 5u, (size_t)42, -1234567890123LL, 255u, 'z') == 35);
	CHECK(strcmp(buf, "a:53 -7 005 42 -1234567890123 ff z%") == 0);
	CHECK(util_fmt(buf, 6, "%s", "truncated") == 5 &&
	    strcmp(buf, "trunc") == 0);
	CHECK(util_fmt(buf, sizeof buf, "%lu|%5d|", 4294967296UL, 12) == 17 &&
	    strcmp(buf, "4294967296|   12|") == 0);
	len = mkquery(q, 1, "a.b.example", 1, 0, 0);
	query_name_text(q, len, name, sizeof name);
	CHECK(strcmp(name, "a.b.example.") == 0);
	len = mkquery(q, 1, "", 2, 0, 0);
	query_name_text(q, len, name, sizeof name);
	CHECK(strcmp(name, ".") == 0);
}

static void
test_padding(void)
{
	unsigned char q[PENDING_QUERY_BYTES], a[4096];
	size_t qlen, len, s, e, qend;

	/* no OPT: ours is added, length a multiple of 128, DO clear */
	qlen = mkquery(q, 1, "example.test", 1, 0, 0);
	qend = qlen;
	len = dns_pad_query(q, qlen, sizeof q, qend, 128);
	CHECK(len == 128);
	CHECK(get16(q + 10) == 1);
	CHECK(dns_find_opt(q, len, qend, &s, &e) == 1 && e == len);
	CHECK(get16(q + s + 3) == UDP_ADVERTISE_BYTES);
	CHECK(q[s + 7] == 0);
	CHECK(get16(q + s + 11) == EDNS_OPTION_PADDING);
	CHECK(get16(q + s + 13) == len - s - 15);
	/* the client's OPT keeps its size and DO bit; an old padding option
	 * and another option: the other stays, the padding is redone */
	qlen = mkquery(q, 1, "example.test", 1, 0, 0);
	qend = qlen;
	{
		static const unsigned char opt[] = {
			0, 0, 41, 0x10, 0x00, 0, 0, 0x80, 0,
			0, 14,				/* RDLEN */
			0, 10, 0, 2, 0xAB, 0xCD,	/* a cookie-ish option */
			0, 12, 0, 4, 0, 0, 0, 0,	/* old padding */
		};

		memcpy(q + qlen, opt, sizeof opt);
		qlen += sizeof opt;
		put16(q + 10, 1);
	}
	len = dns_pad_query(q, qlen, sizeof q, qend, 256);
	CHECK(len == 256);
	CHECK(dns_find_opt(q, len, qend, &s, &e) == 1);
	CHECK(get16(q + s + 3) == 4096 && q[s + 7] == 0x80);
	CHECK(get16(q + s + 11) == 10 && get16(q + s + 13) == 2);
	CHECK(q[s + 15] == 0xAB && q[s + 16] == 0xCD);
	CHECK(get16(q + s + 17) == EDNS_OPTION_PADDING);
	/* already a multiple: a zero-length padding option */
	qlen = mkquery(q, 1, "example.test", 1, 0, 0);
	len = dns_pad_query(q, qlen, sizeof q, qlen, 16);
	CHECK(len % 16 == 0);
	/* a query with another additional record (TSIG-like) is left alone */
	qlen = mkquery(q, 1, "example.test", 1, 1, 1232);
	put16(q + 10, 2);
	memcpy(q + qlen, "\0\0\1\0\1\0\0\0\0\0\0", 11);
	CHECK(dns_pad_query(q, qlen + 11, sizeof q, qlen -
	    DNS_OPT_BYTES, 128) == 0);
	/* no room: refused */
	qlen = mkquery(q, 1, "example.test", 1, 0, 0);
	CHECK(dns_pad_query(q, qlen, 100, qlen, 128) == 0);

	/* answers: padding stripped for a client with OPT, other options
	 * kept; the whole OPT stripped for a client without */
	qlen = mkquery(q, 1, "example.test", 1, 1, 1232);
	qend = qlen - DNS_OPT_BYTES;
	memcpy(a, q, qend);
	len = mkanswer(a, qend, 2, 1);
	{
		size_t o = len - DNS_OPT_BYTES;	/* the OPT mkanswer wrote */
		static const unsigned char opts[] = {
			0, 12, 0, 3, 0, 0, 0,	/* padding */
			0, 10, 0, 1, 0x77,	/* other */
		};

		put16(a + o + 9, sizeof opts);
		memcpy(a + len, opts, sizeof opts);
		len += sizeof opts;
	}
	s = dns_answer_for_client(a, len, q, qend, 1, 1, 0);
	CHECK(s == len - 7);
	CHECK(dns_find_opt(a, s, qend, &s, &e) == 1);
	CHECK(get16(a + s + 9) == 5 && get16(a + s + 11) == 10);
	CHECK(a[s + 15] == 0x77);
	memcpy(a, q, qend);
	len = mkanswer(a, qend, 2, 1);
	len = dns_answer_for_client(a, len, q, qend, 1, 0, 0);
	CHECK(len == qend + 2 * 16 && get16(a + 10) == 0);
}

/* Appends an SOA record (owner = question name via pointer) to the
 * authority section, with the given TTL and MINIMUM. */
static size_t
add_soa(unsigned char *m, size_t len, uint32_t ttl, uint32_t minimum)
{
	static const unsigned char rd[] = {
		2, 'n', 's', 0xC0, 0x0C,		/* MNAME ns.<q> */
		0xC0, 0x0C,				/* RNAME <q> */
		0, 0, 0, 1, 0, 0, 0, 2, 0, 0, 0, 3, 0, 0, 0, 4,
	};
	unsigned char *p = m + len;

	p[0] = 0xC0;
	p[1] = 0x0C;
	put16(p + 2, DNS_TYPE_SOA);
	put16(p + 4, 1);
	put16(p + 6, ttl >> 16);
	put16(p + 8, ttl & 0xFFFF);
	put16(p + 10, sizeof rd + 4);
	memcpy(p + 12, rd, sizeof rd);
	put16(p + 12 + sizeof rd, minimum >> 16);
	put16(p + 12 + sizeof rd + 2, minimum & 0xFFFF);
	put16(m + 8, get16(m + 8) + 1u);
	return len + 12 + sizeof rd + 4;
}

static uint32_t
ttl_at(const unsigned char *m, size_t rr_ttl_off)
{
	return (uint32_t)get16(m + rr_ttl_off) << 16 | get16(m + rr_ttl_off + 2);
}

static void
test_cache_ttl(void)
{
	unsigned char q[512], a[2048];
	size_t qlen, len;

	qlen = mkquery(q, 1, "example.test", 1, 0, 0);
	memcpy(a, q, qlen);
	len = mkanswer(a, qlen, 3, 1);		/* TTL 60 each, and an OPT */
	put16(a + qlen + 16 + 8, 30);		/* second record: TTL 30 */
	CHECK(dns_cache_ttl(a, len, qlen) == 30);
	/* TC, SERVFAIL, REFUSED: not cached */
	a[2] |= DNS_FLAG_TC;
	CHECK(dns_cache_ttl(a, len, qlen) == 0);
	a[2] &= (unsigned char)~DNS_FLAG_TC;
	a[3] = (a[3] & 0xF0) | 2;
	CHECK(dns_cache_ttl(a, len, qlen) == 0);
	a[3] = (a[3] & 0xF0) | 5;
	CHECK(dns_cache_ttl(a, len, qlen) == 0);
	/* NXDOMAIN: min(SOA TTL, MINIMUM); without SOA, not cached */
	memcpy(a, q, qlen);
	len = mkanswer(a, qlen, 0, 0);
	a[3] = (a[3] & 0xF0) | DNS_RCODE_NXDOMAIN;
	CHECK(dns_cache_ttl(a, len, qlen) == 0);
	len = add_soa(a, len, 900, 300);
	CHECK(dns_cache_ttl(a, len, qlen) == 300);
	memcpy(a, q, qlen);
	len = mkanswer(a, qlen, 0, 0);		/* NODATA */
	len = add_soa(a, len, 120, 3600);
	CHECK(dns_cache_ttl(a, len, qlen) == 120);
	/* a SOA cut short */
	CHECK(dns_cache_ttl(a, len - 1, qlen) == 0);

	/* TTL rewriting: count down, clamp, stale; OPT untouched */
	memcpy(a, q, qlen);
	len = mkanswer(a, qlen, 2, 1);
	CHECK(dns_rewrite_ttls(a, len, qlen, 25, 0, DNS_TTL_MAX) == 0);
	CHECK(ttl_at(a, qlen + 6) == 35 && ttl_at(a, qlen + 16 + 6) == 35);
	CHECK(a[len - DNS_OPT_BYTES + 7] == 0x80);	/* DO bit intact */
	CHECK(dns_rewrite_ttls(a, len, qlen, 100, 0, DNS_TTL_MAX) == 0);
	CHECK(ttl_at(a, qlen + 6) == 0);
	CHECK(dns_rewrite_ttls(a, len, qlen, 0, 30, 30) == 0);
	CHECK(ttl_at(a, qlen + 6) == 30);
	CHECK(dns_rewrite_ttls(a, len, qlen, 0, 100, 200) == 0);
	CHECK(ttl_at(a, qlen + 6) == 100);
	CHECK(dns_rewrite_ttls(a, len - 3, qlen, 0, 0, 10) < 0);
}

static void
test_zones(void)
{
	unsigned char w[3][DNS_NAME_MAX_BYTES], q[512];
	const unsigned char *names[3];
	size_t lens[3], len;

	CHECK(config_domain_to_wire("Cluster.Local", w[0]) == 15);
	CHECK(memcmp(w[0], "\7cluster\5local", 15) == 0);
	CHECK(config_domain_to_wire("local.", w[1]) == 7);
	CHECK(config_domain_to_wire(".", w[2]) == 1 && w[2][0] == 0);
	CHECK(config_domain_to_wire("", w[2]) == 0);
	CHECK(config_domain_to_wire("a..b", w[2]) == 0);
	CHECK(config_domain_to_wire(".a", w[2]) == 0);
	CHECK(config_domain_to_wire("a b", w[2]) == 0);
	lens[0] = config_domain_to_wire("cluster.local", w[0]);
	lens[1] = config_domain_to_wire("local", w[1]);
	lens[2] = config_domain_to_wire("svc.cluster.local", w[2]);
	names[0] = w[0];
	names[1] = w[1];
	names[2] = w[2];
	len = mkquery(q, 1, "Kube-DNS.kube-system.SVC.cluster.local", 1, 0, 0);
	CHECK(dns_match_zone(q, 12, names, lens, 3) == 2);	/* longest */
	len = mkquery(q, 1, "pod.cluster.local", 1, 0, 0);
	CHECK(dns_match_zone(q, 12, names, lens, 3) == 0);
	len = mkquery(q, 1, "cluster.local", 1, 0, 0);
	CHECK(dns_match_zone(q, 12, names, lens, 3) == 0);	/* at apex */
	len = mkquery(q, 1, "other.local", 1, 0, 0);
	CHECK(dns_match_zone(q, 12, names, lens, 3) == 1);
	len = mkquery(q, 1, "xcluster.local", 1, 0, 0);
	CHECK(dns_match_zone(q, 12, names, lens, 3) == 1);	/* labels */
	len = mkquery(q, 1, "example.com", 1, 0, 0);
	CHECK(dns_match_zone(q, 12, names, lens, 3) == -1);
	(void)len;
	{
		struct zone z;
		size_t sz;

		CHECK(config_parse_zone("lan=192.168.1.1", &z) == NULL &&
		    ntohs(z.addr.sin.sin_port) == 53 && z.name_len == 5);
		CHECK(config_parse_zone("cluster.local=10.96.0.10@5353",
		    &z) == NULL && ntohs(z.addr.sin.sin_port) == 5353);
		CHECK(config_parse_zone("home.arpa=[fd00::1]:53", &z) == NULL);
		CHECK(config_parse_zone("lan", &z) != NULL);
		CHECK(config_parse_zone("=1.2.3.4", &z) != NULL);
		CHECK(config_parse_zone("lan=router", &z) != NULL);
		CHECK(config_parse_size("0", &sz) == 0 && sz == 0);
		CHECK(config_parse_size("64k", &sz) == 0 && sz == 65536);
		CHECK(config_parse_size("2M", &sz) == 0 && sz == 2097152);
		CHECK(config_parse_size("100000", &sz) == 0 && sz == 100000);
		CHECK(config_parse_size("1025m", &sz) < 0);
		CHECK(config_parse_size("k", &sz) < 0);
		CHECK(config_parse_size("12x", &sz) < 0);
	}
}

/* Stores an answer for name with n records (TTL 60) under key 0. */
static void
cache_put(const char *name, unsigned n)
{
	unsigned char q[512], a[4096];
	size_t qlen = mkquery(q, 1, name, 1, 0, 0), len;

	memcpy(a, q, qlen);
	len = mkanswer(a, qlen, n, 0);
	cache_store(a, &len, qlen, 0);
}

static int
cache_lookup(const char *name, uint8_t key)
{
	unsigned char q[512];
	size_t qlen = mkquery(q, 1, name, 1, 0, 0);

	return cache_find(q, qlen, key, cache_hash(q, qlen, key));
}

static void
test_cache(void)
{
	static unsigned char out[CACHE_MAX_ANSWER_BYTES];
	size_t len, i;
	int e;

	g.now_ms = 1000000;
	cache_init(64 * 1024);
	CHECK(g.cache.n_blocks > 100);
	cache_put("a.example", 2);
	e = cache_lookup("A.EXAMPLE", 0);
	CHECK(e >= 0);				/* name without case */
	CHECK(cache_lookup("a.example", 1) < 0);	/* key: DO bit */
	CHECK(cache_lookup("a.example", cache_key(0, 0, 1)) < 0); /* zone */
	CHECK(cache_lookup("b.example", 0) < 0);
	/* the hit counts TTLs down */
	g.now_ms += 25 * 1000;
	len = cache_get(e, out, 0);
	CHECK(len == 12 + 15 + 2 * 16);
	CHECK(ttl_at(out, 12 + 15 + 6) == 35);
	/* expired: not fresh; kept for serve-stale, else gone */
	g.now_ms += 40 * 1000;
	CHECK(cache_get(e, out, 0) == 0);
	CHECK(cache_lookup("a.example", 0) < 0);	/* stale_s == 0 */
	cache_put("a.example", 2);
	g.cache.stale_s = 100;
	g.now_ms += 120 * 1000;
	e = cache_lookup("a.example", 0);
	CHECK(e >= 0);
	CHECK(cache_get(e, out, 0) == 0);
	len = cache_get(e, out, 1);
	CHECK(len != 0 && ttl_at(out, 12 + 15 + 6) == STALE_TTL_S);
	g.now_ms += 60 * 1000;				/* past the window */
	CHECK(cache_lookup("a.example", 0) < 0);
	g.cache.stale_s = 0;
	/* replacing an entry leaves one */
	cache_put("c.example", 1);
	cache_put("c.example", 3);
	e = cache_lookup("c.example", 0);
	CHECK(e >= 0 && g.cache.entries[e].len == 12 + 15 + 3 * 16);
	/* max TTL clamp */
	g.cache.max_ttl_s = 10;
	cache_put("d.example", 1);
	e = cache_lookup("d.example", 0);
	CHECK(e >= 0 && g.cache.entries[e].ttl_s == 10);
	g.cache.max_ttl_s = CACHE_MAX_TTL_S;
	/* multi-block answers come back whole */
	cache_put("big.example", 100);
	e = cache_lookup("big.example", 0);
	CHECK(e >= 0);
	len = cache_get(e, out, 0);
	CHECK(len == 12 + 17 + 100 * 16 && out[len - 1] == 99);
	/* LRU: fill the cache; the entry read last survives, the oldest
	 * untouched one goes */
	cache_put("keep.example", 1);
	cache_put("old.example", 1);
	for (i = 0; i < 2 * g.cache.n_blocks; i++) {
		char name[32];

		if (i % 50 == 0) {
			e = cache_lookup("keep.example", 0);
			if (e >= 0)
				cache_get(e, out, 0);
		}
		snprintf(name, sizeof name, "n%zu.example", i);
		cache_put(name, 1);
	}
	CHECK(cache_lookup("keep.example", 0) >= 0);
	CHECK(cache_lookup("old.example", 0) < 0);
	CHECK(g.cache.evictions > 0);
	CHECK(g.cache.n_free_blocks <= g.cache.n_blocks);
	/* no cache: nothing stored, nothing found */
	cache_init(0);
	cache_put("a.example", 1);
	CHECK(cache_lookup("a.example", 0) < 0);
}

/* A self-signed P-256 certificate (CN=unit.test, DER) and the pin of its
 * key, from: openssl x509 -pubkey | openssl pkey -pubin -outform der |
 * openssl dgst -sha256 -binary | base64 */
static const unsigned char unit_cert[] = {
  0x30, 0x82, 0x01, 0x7e, 0x30, 0x82, 0x01, 0x23, 0xa0, 0x03, 0x02, 0x01,
  0x02, 0x02, 0x14, 0x39, 0x91, 0x30, 0x1e, 0xee, 0x19, 0xd3, 0xd1, 0x86,
  0x62, 0x60, 0xbc, 0x2b, 0x17, 0xca, 0xaf, 0x47, 0xb2, 0x77, 0xde, 0x30,
  0x0a, 0x06, 0x08, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x04, 0x03, 0x02, 0x30,
  0x14, 0x31, 0x12, 0x30, 0x10, 0x06, 0x03, 0x55, 0x04, 0x03, 0x0c, 0x09,
  0x75, 0x6e, 0x69, 0x74, 0x2e, 0x74, 0x65, 0x73, 0x74, 0x30, 0x1e, 0x17,
  0x0d, 0x32, 0x36, 0x31, 0x31, 0x32, 0x36, 0x30, 0x33, 0x32, 0x32, 0x30,
  0x31, 0x5a, 0x17, 0x0d, 0x33, 0x36, 0x31, 0x31, 0x32, 0x33, 0x30, 0x33,
  0x32, 0x32, 0x30, 0x31, 0x5a, 0x30, 0x14, 0x31, 0x12, 0x30, 0x10, 0x06,
  0x03, 0x55, 0x04, 0x03, 0x0c, 0x09, 0x75, 0x6e, 0x69, 0x74, 0x2e, 0x74,
  0x65, 0x73, 0x74, 0x30, 0x59, 0x30, 0x13, 0x06, 0x07, 0x2a, 0x86, 0x48,
  0xce, 0x3d, 0x02, 0x01, 0x06, 0x08, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x03,
  0x01, 0x07, 0x03, 0x42, 0x00, 0x04, 0x11, 0xbb, 0x03, 0x0c, 0xad, 0x61,
  0x79, 0x4b, 0x23, 0x32, 0x44, 0x81, 0x5c, 0xdc, 0x75, 0x63, 0xfd, 0x48,
  0x96, 0xd3, 0xbb, 0x18, 0xe7, 0x1c, 0xf3, 0x11, 0x98, 0xbd, 0x0c, 0x14,
  0xdb, 0xa6, 0x95, 0xdb, 0xfc, 0x1d, 0x6e, 0x0c, 0x5e, 0xf2, 0xcb, 0xa8,
  0x9b, 0xb8, 0x3f, 0x84, 0x91, 0x2d, 0x9a, 0x21, 0x03, 0xa6, 0xb2, 0xe0,
  0x8e, 0xc2, 0x7a, 0x7f, 0x38, 0xc2, 0x5c, 0x6a, 0x06, 0x3f, 0xa3, 0x53,
  0x30, 0x51, 0x30, 0x1d, 0x06, 0x03, 0x55, 0x1d, 0x0e, 0x04, 0x16, 0x04,
  0x14, 0x9c, 0x06, 0xa9, 0xfc, 0x75, 0xfe, 0x99, 0x6e, 0x22, 0x0b, 0xc8,
  0x38, 0x13, 0xb7, 0xac, 0x31, 0xc7, 0xb3, 0xa7, 0x0f, 0x30, 0x1f, 0x06,
  0x03, 0x55, 0x1d, 0x23, 0x04, 0x18, 0x30, 0x16, 0x80, 0x14, 0x9c, 0x06,
  0xa9, 0xfc, 0x75, 0xfe, 0x99, 0x6e, 0x22, 0x0b, 0xc8, 0x38, 0x13, 0xb7,
  0xac, 0x31, 0xc7, 0xb3, 0xa7, 0x0f, 0x30, 0x0f, 0x06, 0x03, 0x55, 0x1d,
  0x13, 0x01, 0x01, 0xff, 0x04, 0x05, 0x30, 0x03, 0x01, 0x01, 0xff, 0x30,
  0x0a, 0x06, 0x08, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x04, 0x03, 0x02, 0x03,
  0x49, 0x00, 0x30, 0x46, 0x02, 0x21, 0x00, 0x95, 0x07, 0x64, 0x2a, 0xd7,
  0x86, 0xc2, 0x23, 0xb1, 0x76, 0xe6, 0xad, 0x0e, 0xf1, 0x68, 0xb9, 0x94,
  0x06, 0xe2, 0x52, 0x4a, 0x04, 0x69, 0xf0, 0xee, 0x52, 0x33, 0x72, 0x3b,
  0x68, 0x7c, 0x99, 0x02, 0x21, 0x00, 0xdc, 0xcd, 0xb7, 0xa2, 0x7c, 0x4d,
  0x26, 0xf8, 0x92, 0x2e, 0xd1, 0x54, 0x64, 0xc3, 0xc0, 0x34, 0xa5, 0xb8,
  0xef, 0xdb, 0x0a, 0x4b, 0x83, 0x62, 0xa2, 0x46, 0x8d, 0x41, 0x09, 0xd8,
  0xff, 0x51
};
static const char unit_pin[] =
    "sha256/UJFrnOrWBhO36YtZSgi5O5yEww+T1PKCS2dpogJFGvk=";

static void
test_trust(void)
{
	unsigned char pin[32], other[2][32], buf[64];
	struct acl_range r;
	size_t s, l;
	int behind;

	/* base64 and pins */
	CHECK(trust_base64("aGVsbG8=", buf, sizeof buf) == 5 &&
	    memcmp(buf, "hello", 5) == 0);
	CHECK(trust_base64("aGVsbG8", buf, sizeof buf) < 0);
	CHECK(trust_base64("aGVs*G8=", buf, sizeof buf) < 0);
	CHECK(trust_base64("aGVsbG8=", buf, 4) < 0);
	CHECK(trust_parse_pin(unit_pin, pin) == 0);
	CHECK(trust_parse_pin("sha1/UJFrnOrWBhO36YtZSgi5O5yEww+T1PKCS2dpogJFGvk=",
	    pin) < 0);
	CHECK(trust_parse_pin("sha256/aGVsbG8=", pin) < 0);	/* 5 bytes */
	CHECK(trust_parse_pin(unit_pin, pin) == 0);
	/* the SPKI is found, and its hash is the pin openssl computed */
	CHECK(trust_find_spki(unit_cert, sizeof unit_cert, &s, &l) == 0);
	CHECK(l == 91);		/* P-256 SubjectPublicKeyInfo */
	CHECK(trust_pin_matches(unit_cert, sizeof unit_cert,
	    (const unsigned char (*)[32])pin, 1));
	memset(other, 0x5A, sizeof other);
	CHECK(!trust_pin_matches(unit_cert, sizeof unit_cert,
	    (const unsigned char (*)[32])other, 2));
	memcpy(other[1], pin, 32);
	CHECK(trust_pin_matches(unit_cert, sizeof unit_cert,
	    (const unsigned char (*)[32])other, 2));	/* any one */
	CHECK(trust_find_spki(unit_cert, 100, &s, &l) < 0);	/* cut */
	CHECK(!trust_pin_matches(unit_cert, 200,
	    (const unsigned char (*)[32])pin, 1));

	/* the clock rule: never before the build time */
	CHECK(trust_validation_time(1000, 2000, &behind) == 2000 && behind);
	CHECK(trust_validation_time(3000, 2000, &behind) == 3000 && !behind);
	CHECK(trust_validation_time(2000, 2000, &behind) == 2000 && !behind);
	CHECK(trust_validation_time(0, 0, &behind) == 0 && !behind);

	/* --allow ranges */
	CHECK(trust_parse_range("192.168.0.0/16", &r) == 0 && r.prefix == 16);
	CHECK(trust_in_range(&r, AF_INET, (const unsigned char *)"\300\250\1\2"));
	CHECK(!trust_in_range(&r, AF_INET, (const unsigned char *)"\300\251\1\2"));
	CHECK(trust_parse_range("172.16.0.0/12", &r) == 0);
	CHECK(trust_in_range(&r, AF_INET, (const unsigned char *)"\254\37\1\1"));
	CHECK(!trust_in_range(&r, AF_INET, (const unsigned char *)"\254\40\1\1"));
	CHECK(trust_parse_range("10.1.2.3", &r) == 0 && r.prefix == 32);
	CHECK(trust_parse_range("::/0", &r) == 0 && r.prefix == 0);
	CHECK(trust_in_range(&r, AF_INET6, (const unsigned char *)
	    "\40\1\15\270\0\0\0\0\0\0\0\0\0\0\0\1"));
	CHECK(!trust_in_range(&r, AF_INET, (const unsigned char *)"\1\2\3\4"));
	CHECK(trust_parse_range("10.0.0.0/33", &r) < 0);
	CHECK(trust_parse_range("fe80::/129", &r) < 0);
	CHECK(trust_parse_range("10.0.0.0/", &r) < 0);
	CHECK(trust_parse_range("example/8", &r) < 0);
	{
		union sockaddr_u a;
		socklen_t len;
		size_t i;

		g.n_allow = 0;
		for (i = 0; i < sizeof trust_default_allow /
		    sizeof trust_default_allow[0]; i++)
			CHECK(trust_parse_range(trust_default_allow[i],
			    &g.allow[g.n_allow++]) == 0);
		CHECK(config_parse_addr("127.0.0.1", 53, &a, &len) == 0 &&
		    trust_allowed(&a));
		CHECK(config_parse_addr("192.168.1.7", 53, &a, &len) == 0 &&
		    trust_allowed(&a));
		CHECK(config_parse_addr("100.100.1.1", 53, &a, &len) == 0 &&
		    trust_allowed(&a));
		CHECK(config_parse_addr("8.8.8.8", 53, &a, &len) == 0 &&
		    !trust_allowed(&a));
		CHECK(config_parse_addr("::1", 53, &a, &len) == 0 &&
		    trust_allowed(&a));
		CHECK(config_parse_addr("fd12::5", 53, &a, &len) == 0 &&
		    trust_allowed(&a));
		CHECK(config_parse_addr("2001:db8::1", 53, &a, &len) == 0 &&
		    !trust_allowed(&a));
		CHECK(config_parse_addr("::ffff:10.1.1.1", 53, &a, &len) == 0 &&
		    trust_allowed(&a));
		CHECK(config_parse_addr("::ffff:1.1.1.1", 53, &a, &len) == 0 &&
		    !trust_allowed(&a));
		g.n_allow = 0;
	}
	{
		struct upstream u;
		long uid, gid;

		memset(&u, 0, sizeof u);
		CHECK(config_parse_upstream("127.0.0.1@853#dns.test^sha256/"
		    "UJFrnOrWBhO36YtZSgi5O5yEww+T1PKCS2dpogJFGvk=", &u) == NULL);
		CHECK(u.n_pins == 1 && !u.pin_only &&
		    memcmp(u.pins[0], pin, 32) == 0);
		CHECK(config_parse_upstream("192.0.2.9^sha256/UJFrnOrWBhO36YtZ"
		    "Sgi5O5yEww+T1PKCS2dpogJFGvk=^pin-only", &u) == NULL);
		CHECK(u.pin_only && u.name[0] == '\0');
		CHECK(config_parse_upstream("192.0.2.9^pin-only", &u) != NULL);
		CHECK(config_parse_upstream("192.0.2.9#x^sha256/zz", &u) != NULL);
		CHECK(config_parse_user("65534", &uid, &gid) == 0 &&
		    uid == 65534 && gid == 65534);
		CHECK(config_parse_user("100:200", &uid, &gid) == 0 &&
		    uid == 100 && gid == 200);
		CHECK(config_parse_user("nobody", &uid, &gid) < 0);
		CHECK(config_parse_user("1:", &uid, &gid) < 0);
		CHECK(config_parse_user("-1", &uid, &gid) < 0);
	}
}

int
main(void)
{
	test_names();
	test_parse_query();
	test_answers();
	test_strip_and_truncate();
	test_errors();
	test_pending_ids();
	test_specs();
	test_misc();
	test_padding();
	test_cache_ttl();
	test_zones();
	test_cache();
	test_trust();
	printf("%d passed, %d failed\n", n_pass, n_fail);
	return n_fail != 0;
}
