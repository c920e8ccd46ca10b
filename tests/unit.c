/*
 * Unit tests of dotproxy's pure functions: wire parsing, the record
 * iterator and summary, truncation, error and local answers, the query
 * sent upstream, answer preparation, the ID maps, the cache and spec
 * parsing. Plain C: includes the proxy itself (without main), runs every
 * check, prints "N passed, N failed" and exits non-zero if any failed.
 * The contract they hold the code to is the trust issue's (#9): what goes
 * upstream, what a client gets back, the cache key, the IDs.
 */
#define DOTPROXY_NO_MAIN
/* The tests use a subset of the proxy; the rest is main()'s. */
#pragma GCC diagnostic ignored "-Wunused-function"
#include "../dotproxy.c"
#include "dnsmsg.h"

#include <limits.h>

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

/* A failure says what was expected and what came back. */
#define CHECK_EQ(got, want) do { \
		long long got_ = (long long)(got), want_ = (long long)(want); \
		if (got_ == want_) { \
			n_pass++; \
		} else { \
			n_fail++; \
			fprintf(stderr, "%s:%d: FAILED: %s == %s: got %lld, " \
			    "expected %lld\n", __FILE__, __LINE__, #got, \
			    #want, got_, want_); \
		} \
	} while (0)

static void
hexdump(const char *what, const unsigned char *p, size_t n)
{
	size_t i;

	fprintf(stderr, "  %s:", what);
	for (i = 0; i < n; i++)
		fprintf(stderr, "%s%02x", i % 16 ? " " : "\n    ", p[i]);
	fprintf(stderr, "\n");
}

#define CHECK_MEM(got, want, n) do { \
		if (memcmp((got), (want), (n)) == 0) { \
			n_pass++; \
		} else { \
			n_fail++; \
			fprintf(stderr, "%s:%d: FAILED: %s equals %s (%zu " \
			    "bytes)\n", __FILE__, __LINE__, #got, #want, \
			    (size_t)(n)); \
			hexdump("got", (got), (n)); \
			hexdump("expected", (want), (n)); \
		} \
	} while (0)

/* The one place that knows dns_prepare_answer's argument list. */
static size_t
prepare(unsigned char *m, size_t len, size_t cap, size_t qend, uint32_t min,
    uint32_t max, uint32_t *ttl)
{
	struct dns_summary s;

	return dns_prepare_answer(m, len, cap, qend, min, max, ttl, &s);
}

/* dns_answer_for_client with the summary it is given in the proxy (made
 * here by dns_summarize; 0 for a malformed message). */
static size_t
afc(unsigned char *m, size_t len, const unsigned char *q,
    const struct dns_query_info *qi, size_t limit)
{
	struct dns_summary s;

	if (dns_summarize(m, len, qi->qend, &s) < 0)
		return 0;
	return dns_answer_for_client(m, len, q, qi, limit, &s);
}

/* cache_store and cache_get with the summary the proxy passes along. */
static void
cstore(const unsigned char *m, size_t len, size_t qend, uint8_t key,
    uint32_t ttl)
{
	struct dns_summary s;

	if (dns_summarize(m, len, qend, &s) == 0)
		cache_store(m, len, qend, key, ttl, &s);
}

static size_t
cget(int e, unsigned char *out, int stale)
{
	struct dns_summary s;

	return cache_get(e, out, stale, &s);
}

/* dns_parse_query, for a query the test knows to be good. */
static struct dns_query_info
qinfo(const unsigned char *m, size_t len)
{
	struct dns_query_info qi;
	int rc = dns_parse_query(m, len, &qi);

	if (rc != 0) {
		fprintf(stderr, "test bug: a test query did not parse (%d)\n",
		    rc);
		exit(2);
	}
	return qi;
}

/* A client's query with the flags and EDNS of the test's choice: RD, AD,
 * CD; an OPT (opt) with udp_size and the DO bit. Returns the length. */
static size_t
mkclient(unsigned char *m, uint16_t id, const char *name, uint16_t type,
    int rd, int ad, int cd, int opt, uint16_t udp_size, int do_bit)
{
	size_t len = mkquery(m, id, name, type, 0, 0);

	m[2] = rd ? DNS_FLAG_RD : 0;
	m[3] = (unsigned char)((ad ? DNS_FLAG_AD : 0) | (cd ? DNS_FLAG_CD : 0));
	if (opt)
		len = add_opt(m, len, udp_size, 0, 0, do_bit ? 0x8000 : 0,
		    NULL, 0);
	return len;
}

/* Turns a query into an answer with n A records (compressed owner names,
 * TTL 60) and, if opt, an OPT record last (UDP size 1232, DO bit set).
 * Returns the length. */
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
		memset(m + off, 0, DNS_OPT_BYTES);
		m[off + 2] = DNS_TYPE_OPT;
		put16(m + off + 3, 1232);
		m[off + 7] = 0x80;	/* DO bit */
		off += DNS_OPT_BYTES;
		put16(m + 10, 1);
	}
	return off;
}

static const unsigned char ptr_q[2] = { 0xC0, 0x0C };	/* the question */
static const unsigned char root_name[1] = { 0 };

/* An A record's RDATA: 192.0.2.n. */
static const unsigned char *
a_rdata(unsigned n)
{
	static unsigned char rd[4] = { 192, 0, 2, 0 };

	rd[3] = (unsigned char)n;
	return rd;
}

/* The owner of glue record i: "nsNN" under the question's name. */
static const unsigned char *
glue_owner(unsigned i)
{
	static unsigned char o[7] = { 4, 'n', 's', 0, 0, 0xC0, 0x0C };

	o[3] = (unsigned char)('0' + i / 10 % 10);
	o[4] = (unsigned char)('0' + i % 10);
	return o;
}

/* Appends a SOA record (owner = question name via pointer) to the
 * authority section, with the given TTL and MINIMUM. */
static size_t
add_soa(unsigned char *m, size_t len, uint32_t ttl, uint32_t minimum)
{
	unsigned char rd[64];
	static const unsigned char names[] = {
		2, 'n', 's', 0xC0, 0x0C,		/* MNAME ns.<q> */
		0xC0, 0x0C,				/* RNAME <q> */
	};

	memcpy(rd, names, sizeof names);
	put32(rd + sizeof names, 1);			/* serial */
	put32(rd + sizeof names + 4, 2);		/* refresh */
	put32(rd + sizeof names + 8, 3);		/* retry */
	put32(rd + sizeof names + 12, 4);		/* expire */
	put32(rd + sizeof names + 16, minimum);
	return add_rr(m, len, DNS_SEC_NS, ptr_q, 2, DNS_TYPE_SOA, 1, ttl, rd,
	    sizeof names + 20);
}

static uint32_t
ttl_at(const unsigned char *m, size_t rr_ttl_off)
{
	return (uint32_t)get16(m + rr_ttl_off) << 16 | get16(m + rr_ttl_off + 2);
}

/* The TTL of the record that starts at off (owner: a 2-byte pointer). */
static uint32_t
ttl_of_ptr_rr(const unsigned char *m, size_t off)
{
	return ttl_at(m, off + 6);
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
	static unsigned char m[4096];
	struct dns_query_info qi;
	size_t len, qend;

	len = mkquery(m, 0x1234, "Example.COM", 28, 0, 0);
	CHECK_EQ(dns_parse_query(m, len, &qi), 0);
	CHECK_EQ(qi.id, 0x1234);
	CHECK_EQ(qi.qtype, 28);
	CHECK_EQ(qi.qclass, 1);
	CHECK_EQ(qi.qend, len);
	CHECK(!qi.has_opt);
	CHECK_EQ(qi.udp_limit, 512);
	CHECK_EQ(qi.rd, DNS_FLAG_RD);
	CHECK(!qi.ad && !qi.cd && !qi.do_bit);

	/* the flags as asked */
	len = mkclient(m, 9, "example.com", 1, 0, 1, 1, 1, 1232, 1);
	CHECK_EQ(dns_parse_query(m, len, &qi), 0);
	CHECK(qi.rd == 0 && qi.ad == 1 && qi.cd == 1 && qi.do_bit == 1);
	CHECK(qi.has_opt && qi.edns_version == 0);

	len = mkquery(m, 7, "example.com", 1, 1, 1000);
	CHECK_EQ(dns_parse_query(m, len, &qi), 0);
	CHECK(qi.has_opt);
	CHECK_EQ(qi.udp_limit, 1000);
	CHECK_EQ(qi.qend, len - DNS_OPT_BYTES);
	/* Changed: a larger EDNS size is taken as 1232 (larger UDP answers
	 * would go as IP fragments, lost or spoofed: DNS flag day 2020);
	 * the old test expected 4096. */
	len = mkquery(m, 7, "example.com", 1, 1, 4096);
	CHECK_EQ(dns_parse_query(m, len, &qi), 0);
	CHECK_EQ(qi.udp_limit, UDP_ADVERTISE_BYTES);
	len = mkquery(m, 7, "example.com", 1, 1, 1233);
	CHECK(dns_parse_query(m, len, &qi) == 0 && qi.udp_limit == 1232);
	/* a query with TC=1 was cut on the way: FORMERR (as unbound) */
	len = mkquery(m, 7, "example.com", 1, 1, 1232);
	m[2] |= DNS_FLAG_TC;
	CHECK_EQ(dns_parse_query(m, len, &qi), DNS_RCODE_FORMERR);
	CHECK(qi.qend == len - DNS_OPT_BYTES && qi.has_opt);

	/* EDNS size below 512 counts as 512 (RFC 6891 6.2.5) */
	len = mkquery(m, 7, "example.com", 1, 1, 100);
	CHECK(dns_parse_query(m, len, &qi) == 0 && qi.udp_limit == 512);

	/* short packets are dropped */
	CHECK_EQ(dns_parse_query(m, 0, &qi), DNS_DROP);
	CHECK_EQ(dns_parse_query(m, 11, &qi), DNS_DROP);
	/* a response is never answered */
	len = mkquery(m, 7, "example.com", 1, 0, 0);
	m[2] |= DNS_FLAG_QR;
	CHECK_EQ(dns_parse_query(m, len, &qi), DNS_DROP);
	/* opcode other than QUERY */
	len = mkquery(m, 7, "example.com", 1, 0, 0);
	m[2] |= 5 << 3;		/* UPDATE */
	CHECK_EQ(dns_parse_query(m, len, &qi), DNS_RCODE_NOTIMP);
	/* ... and its OPT is found for the NOTIMP answer (RFC 6891 6.1.1) */
	len = mkclient(m, 7, "example.com", 1, 1, 0, 0, 1, 1232, 1);
	m[2] |= 5 << 3;
	CHECK_EQ(dns_parse_query(m, len, &qi), DNS_RCODE_NOTIMP);
	CHECK(qi.has_opt && qi.do_bit && qi.qend == len - DNS_OPT_BYTES);
	/* QDCOUNT 0 and 2 */
	len = mkquery(m, 7, "example.com", 1, 0, 0);
	put16(m + 4, 0);
	CHECK_EQ(dns_parse_query(m, len, &qi), DNS_RCODE_FORMERR);
	CHECK_EQ(qi.qend, 0);
	put16(m + 4, 2);
	CHECK_EQ(dns_parse_query(m, len, &qi), DNS_RCODE_FORMERR);
	/* QDCOUNT 0 with an OPT: FORMERR, and the OPT is echoed */
	memset(m, 0, DNS_HEADER_BYTES);
	put16(m, 7);
	len = add_opt(m, DNS_HEADER_BYTES, 1232, 0, 0, 0x8000, NULL, 0);
	CHECK_EQ(dns_parse_query(m, len, &qi), DNS_RCODE_FORMERR);
	CHECK(qi.qend == 0 && qi.has_opt && qi.do_bit);
	/* QDCOUNT 2 (two questions there) with an OPT: the same */
	len = mkquery(m, 7, "example.com", 1, 0, 0);
	memcpy(m + len, m + 12, len - 12);
	len += len - 12;
	put16(m + 4, 2);
	len = add_opt(m, len, 1232, 0, 0, 0, NULL, 0);
	CHECK_EQ(dns_parse_query(m, len, &qi), DNS_RCODE_FORMERR);
	CHECK(qi.qend == 0 && qi.has_opt && !qi.do_bit);
	/* question cut short: FORMERR without a question to echo */
	len = mkquery(m, 7, "example.com", 1, 0, 0);
	CHECK_EQ(dns_parse_query(m, len - 2, &qi), DNS_RCODE_FORMERR);
	CHECK_EQ(qi.qend, 0);
	/* compression loop in the question */
	len = mkquery(m, 7, "example.com", 1, 0, 0);
	m[12] = 0xC0;
	m[13] = 12;
	CHECK_EQ(dns_parse_query(m, len, &qi), DNS_RCODE_FORMERR);
	/* ARCOUNT says 1 but nothing follows */
	len = mkquery(m, 7, "example.com", 1, 0, 0);
	put16(m + 10, 1);
	CHECK_EQ(dns_parse_query(m, len, &qi), DNS_RCODE_FORMERR);
	CHECK_EQ(qi.qend, len);	/* the question is still echoed */
	/* A malformed OPT is FORMERR, and not echoed (has_opt 0): */
	/* two OPT records */
	len = mkquery(m, 7, "example.com", 1, 1, 1232);
	memcpy(m + len, m + len - DNS_OPT_BYTES, DNS_OPT_BYTES);
	len += DNS_OPT_BYTES;
	put16(m + 10, 2);
	CHECK_EQ(dns_parse_query(m, len, &qi), DNS_RCODE_FORMERR);
	CHECK(!qi.has_opt && qi.qend != 0);
	/* OPT in the answer section */
	len = mkquery(m, 7, "example.com", 1, 1, 1232);
	put16(m + 10, 0);
	put16(m + 6, 1);
	CHECK_EQ(dns_parse_query(m, len, &qi), DNS_RCODE_FORMERR);
	CHECK(!qi.has_opt);
	/* OPT in the authority section */
	put16(m + 6, 0);
	put16(m + 8, 1);
	CHECK_EQ(dns_parse_query(m, len, &qi), DNS_RCODE_FORMERR);
	CHECK(!qi.has_opt);
	/* OPT with an RDLENGTH past the end */
	len = mkquery(m, 7, "example.com", 1, 1, 1232);
	put16(m + len - 2, 50);
	CHECK_EQ(dns_parse_query(m, len, &qi), DNS_RCODE_FORMERR);
	CHECK(!qi.has_opt);
	/* OPT owned by a name other than the root (RFC 6891 6.1.2) */
	len = mkquery(m, 7, "example.com", 1, 0, 0);
	len = add_rr(m, len, DNS_SEC_AR, ptr_q, 2, DNS_TYPE_OPT, 1232, 0,
	    NULL, 0);
	CHECK_EQ(dns_parse_query(m, len, &qi), DNS_RCODE_FORMERR);
	CHECK(!qi.has_opt);
	/* EDNS version 1: BADVERS (RFC 6891 6.1.3), question and OPT kept
	 * for the answer */
	len = mkquery(m, 7, "example.com", 1, 0, 0);
	qend = len;
	len = add_opt(m, len, 1232, 0, 1, 0x8000, NULL, 0);
	CHECK_EQ(dns_parse_query(m, len, &qi), DNS_RCODE_BADVERS);
	CHECK(qi.has_opt && qi.edns_version == 1 && qi.do_bit);
	CHECK_EQ(qi.qend, qend);
	/* ... and opcode != 0 comes first: NOTIMP */
	m[2] |= 2 << 3;
	CHECK_EQ(dns_parse_query(m, len, &qi), DNS_RCODE_NOTIMP);
	/* The 1,024-byte query limit is gone (issue #9: queries up to
	 * 65,535 bytes over TCP): a 2,000-byte query (an OPT with a long
	 * option) is a query like any other. The old test expected FORMERR
	 * here. */
	len = mkquery(m, 7, "example.com", 1, 0, 0);
	qend = len;
	{
		static unsigned char opts[2000];
		size_t n = 2000 - len - DNS_OPT_BYTES;

		put16(opts, 65001);		/* an unknown option */
		put16(opts + 2, (unsigned)(n - 4));
		len = add_opt(m, len, 4096, 0, 0, 0, opts, n);
	}
	CHECK_EQ(len, 2000);
	CHECK_EQ(dns_parse_query(m, len, &qi), 0);
	CHECK(qi.qend == qend && qi.has_opt && qi.udp_limit == 1232);
	/* records of any kind before the OPT do not stop a query */
	len = mkquery(m, 7, "example.com", 1, 0, 0);
	len = add_rr(m, len, DNS_SEC_AN, ptr_q, 2, 1, 1, 60, a_rdata(1), 4);
	len = add_opt(m, len, 1200, 0, 0, 0, NULL, 0);
	CHECK_EQ(dns_parse_query(m, len, &qi), 0);
	CHECK(qi.has_opt && qi.udp_limit == 1200);
	/* more than a TCP frame holds: dropped */
	CHECK_EQ(dns_parse_query(m, MSG_MAX_BYTES + 1, &qi), DNS_DROP);
}

/* The record iterator over all three sections, and its errors. */
static void
test_iter(void)
{
	static const unsigned char glue[] = "\2ns\7example\4test";
	unsigned char m[512];
	struct dns_iter it;
	struct dns_rr rr;
	size_t qend, len, starts[6];
	int r, i;

	qend = mkquery(m, 1, "example.test", 1, 0, 0);
	m[2] |= DNS_FLAG_QR;
	starts[0] = qend;
	len = add_rr(m, qend, DNS_SEC_AN, ptr_q, 2, 1, 1, 60, a_rdata(1), 4);
	starts[1] = len;
	len = add_rr(m, len, DNS_SEC_AN, ptr_q, 2, 1, 1, 60, a_rdata(2), 4);
	starts[2] = len;
	len = add_soa(m, len, 300, 60);
	starts[3] = len;
	len = add_rr(m, len, DNS_SEC_AR, glue, sizeof glue, 1, 1, 60,
	    a_rdata(3), 4);
	starts[4] = len;
	len = add_opt(m, len, 1232, 0, 0, 0, NULL, 0);
	starts[5] = len;
	{
		static const unsigned sec[5] = { DNS_SEC_AN, DNS_SEC_AN,
			DNS_SEC_NS, DNS_SEC_AR, DNS_SEC_AR };
		static const uint16_t type[5] = { 1, 1, 6, 1, 41 };
		static const size_t owner[5] = { 2, 2, 2, sizeof glue, 1 };

		dns_iter_init(&it, m, len, qend);
		for (i = 0; i < 5; i++) {
			CHECK_EQ(dns_iter_next(&it, &rr), 1);
			CHECK_EQ(rr.section, sec[i]);
			CHECK_EQ(rr.type, type[i]);
			CHECK_EQ(rr.start, starts[i]);
			CHECK_EQ(rr.hdr, starts[i] + owner[i]);
			CHECK_EQ(rr.rdata, rr.hdr + 10);
			CHECK_EQ(rr.end, starts[i + 1]);
		}
		CHECK_EQ(dns_iter_next(&it, &rr), 0);
		CHECK_EQ(it.off, len);
		CHECK_EQ(dns_iter_next(&it, &rr), 0);	/* stays done */
	}
	/* empty sections are skipped: only an additional record */
	put16(m + 6, 0);
	put16(m + 8, 0);
	put16(m + 10, 1);
	dns_iter_init(&it, m, len, starts[3]);
	CHECK(dns_iter_next(&it, &rr) == 1 && rr.section == DNS_SEC_AR &&
	    rr.start == starts[3]);
	CHECK_EQ(dns_iter_next(&it, &rr), 0);
	/* no records: done at once, at qend */
	put16(m + 10, 0);
	dns_iter_init(&it, m, len, qend);
	CHECK_EQ(dns_iter_next(&it, &rr), 0);
	CHECK_EQ(it.off, qend);
	/* trailing bytes after the last record are not the iterator's
	 * business: it ends where the counted records end */
	put16(m + 6, 2);
	dns_iter_init(&it, m, len, qend);
	while ((r = dns_iter_next(&it, &rr)) > 0)
		;
	CHECK(r == 0 && it.off == starts[2]);

	/* malformed: more records counted than there are */
	put16(m + 6, 2);
	put16(m + 8, 1);
	put16(m + 10, 3);
	dns_iter_init(&it, m, len, qend);
	for (i = 0; i < 5; i++)
		CHECK_EQ(dns_iter_next(&it, &rr), 1);
	CHECK_EQ(dns_iter_next(&it, &rr), -1);
	/* RDLENGTH past the end */
	put16(m + 10, 2);
	dns_iter_init(&it, m, len - 1, qend);
	for (i = 0; i < 4; i++)
		CHECK_EQ(dns_iter_next(&it, &rr), 1);
	CHECK_EQ(dns_iter_next(&it, &rr), -1);
	/* a record header cut short (owner complete, 9 of 10 bytes) */
	dns_iter_init(&it, m, starts[4] + 1 + 9, qend);
	for (i = 0; i < 4; i++)
		CHECK_EQ(dns_iter_next(&it, &rr), 1);
	CHECK_EQ(dns_iter_next(&it, &rr), -1);
	/* a bad owner name (label type 0x40) */
	m[starts[1]] = 0x41;
	dns_iter_init(&it, m, len, qend);
	CHECK_EQ(dns_iter_next(&it, &rr), 1);
	CHECK_EQ(dns_iter_next(&it, &rr), -1);
	m[starts[1]] = 0xC0;
	/* a pointer cut short at the very end */
	dns_iter_init(&it, m, starts[1] + 1, qend);
	CHECK_EQ(dns_iter_next(&it, &rr), 1);
	CHECK_EQ(dns_iter_next(&it, &rr), -1);
	/* a 65,535-record count on a short message fails, never loops */
	put16(m + 6, 65535);
	dns_iter_init(&it, m, len, qend);
	for (i = 0; (r = dns_iter_next(&it, &rr)) > 0 && i < 100; i++)
		;
	CHECK_EQ(r, -1);
}

/* dns_summarize: section ends, the OPT, the smallest TTL, the negative
 * TTL (RFC 2308 5), and what makes a message malformed. */
static void
test_summarize(void)
{
	unsigned char q[512], m[1024];
	struct dns_summary s;
	size_t qend, len, an_end, ns_end;

	qend = mkquery(q, 1, "example.test", 1, 0, 0);
	/* a positive answer: 2 A (TTL 60, 30), glue (TTL 45), OPT */
	memcpy(m, q, qend);
	len = mkanswer(m, qend, 0, 0);
	len = add_rr(m, len, DNS_SEC_AN, ptr_q, 2, 1, 1, 60, a_rdata(1), 4);
	len = add_rr(m, len, DNS_SEC_AN, ptr_q, 2, 1, 1, 30, a_rdata(2), 4);
	an_end = len;
	len = add_rr(m, len, DNS_SEC_AR, ptr_q, 2, 1, 1, 45, a_rdata(3), 4);
	len = add_opt(m, len, 1232, 0, 0, 0, NULL, 0);
	CHECK_EQ(dns_summarize(m, len, qend, &s), 0);
	CHECK_EQ(s.an_end, an_end);
	CHECK_EQ(s.ns_end, an_end);	/* no authority: ends with answer */
	CHECK_EQ(s.end, len);
	CHECK_EQ(s.opt_start, len - DNS_OPT_BYTES);
	CHECK_EQ(s.opt_end, len);
	CHECK_EQ(s.min_ttl, 30);
	CHECK(!s.negative && !s.has_soa);
	/* an OPT TTL field (ext RCODE, version, DO) is not a TTL */
	memset(m + len - DNS_OPT_BYTES + 5, 0, 4);	/* OPT "TTL" 0 */
	CHECK(dns_summarize(m, len, qend, &s) == 0 && s.min_ttl == 30);
	/* a TTL with the top bit set counts as 0 (RFC 2181 8) */
	m[an_end + 6] = 0x80;
	CHECK(dns_summarize(m, len, qend, &s) == 0 && s.min_ttl == 0);
	m[an_end + 6] = 0;
	/* cut short: malformed */
	CHECK_EQ(dns_summarize(m, len - 1, qend, &s), -1);

	/* the OPT in the answer or authority section: malformed */
	memcpy(m, q, qend);
	len = mkanswer(m, qend, 0, 0);
	len = add_rr(m, len, DNS_SEC_AN, root_name, 1, DNS_TYPE_OPT, 1232, 0,
	    NULL, 0);
	CHECK_EQ(dns_summarize(m, len, qend, &s), -1);
	put16(m + 6, 0);
	put16(m + 8, 1);
	CHECK_EQ(dns_summarize(m, len, qend, &s), -1);
	put16(m + 8, 0);
	put16(m + 10, 1);
	CHECK_EQ(dns_summarize(m, len, qend, &s), 0);	/* its place */
	/* twice */
	len = add_opt(m, len, 1232, 0, 0, 0, NULL, 0);
	CHECK_EQ(dns_summarize(m, len, qend, &s), -1);
	/* owned by a name other than the root */
	memcpy(m, q, qend);
	len = mkanswer(m, qend, 1, 0);
	len = add_rr(m, len, DNS_SEC_AR, ptr_q, 2, DNS_TYPE_OPT, 1232, 0,
	    NULL, 0);
	CHECK_EQ(dns_summarize(m, len, qend, &s), -1);
	memcpy(m, q, qend);
	len = mkanswer(m, qend, 1, 0);
	len = add_rr(m, len, DNS_SEC_AR, (const unsigned char *)"\1a", 3,
	    DNS_TYPE_OPT, 1232, 0, NULL, 0);
	CHECK_EQ(dns_summarize(m, len, qend, &s), -1);

	/* no records at all: negative (no answer), no TTL to go by */
	memcpy(m, q, qend);
	len = mkanswer(m, qend, 0, 0);
	CHECK_EQ(dns_summarize(m, len, qend, &s), 0);
	CHECK(s.negative && !s.has_soa && s.min_ttl == DNS_TTL_MAX);
	CHECK(s.an_end == qend && s.ns_end == qend && s.end == qend);
	/* NXDOMAIN: neg TTL = min(SOA TTL, MINIMUM) */
	m[3] = (m[3] & 0xF0) | DNS_RCODE_NXDOMAIN;
	len = add_soa(m, len, 900, 300);
	CHECK_EQ(dns_summarize(m, len, qend, &s), 0);
	CHECK(s.negative && s.has_soa);
	CHECK_EQ(s.neg_ttl, 300);
	CHECK_EQ(s.min_ttl, 900);
	CHECK_EQ(s.ns_end, len);
	memcpy(m, q, qend);
	len = mkanswer(m, qend, 0, 0);
	m[3] = (m[3] & 0xF0) | DNS_RCODE_NXDOMAIN;
	len = add_soa(m, len, 120, 3600);
	CHECK(dns_summarize(m, len, qend, &s) == 0 && s.neg_ttl == 120);
	/* NODATA (NOERROR, no answer record) the same */
	memcpy(m, q, qend);
	len = mkanswer(m, qend, 0, 0);
	len = add_soa(m, len, 300, 2);
	CHECK(dns_summarize(m, len, qend, &s) == 0 && s.negative &&
	    s.has_soa && s.neg_ttl == 2);
	/* a SOA whose RDATA is one byte longer than its fields: not used */
	put16(m + len - (2 + 10 + 7 + 20) + 10, 7 + 20 + 1);
	m[len] = 0;
	CHECK(dns_summarize(m, len + 1, qend, &s) == 0 && s.negative &&
	    !s.has_soa);
	/* a positive answer with a SOA in the authority: not negative */
	memcpy(m, q, qend);
	len = mkanswer(m, qend, 1, 0);
	len = add_soa(m, len, 300, 2);
	CHECK(dns_summarize(m, len, qend, &s) == 0 && !s.negative &&
	    !s.has_soa);
	/* NXDOMAIN with the SOA in the answer section: not the negative
	 * answer's SOA (RFC 2308 3: authority section) */
	memcpy(m, q, qend);
	len = mkanswer(m, qend, 0, 0);
	m[3] = (m[3] & 0xF0) | DNS_RCODE_NXDOMAIN;
	len = add_soa(m, len, 300, 2);
	put16(m + 6, 1);
	put16(m + 8, 0);
	CHECK(dns_summarize(m, len, qend, &s) == 0 && s.negative &&
	    !s.has_soa);
	/* the first SOA of the authority counts */
	memcpy(m, q, qend);
	len = mkanswer(m, qend, 0, 0);
	len = add_soa(m, len, 50, 40);
	len = add_soa(m, len, 10, 10);
	CHECK(dns_summarize(m, len, qend, &s) == 0 && s.neg_ttl == 40 &&
	    s.min_ttl == 10);
	ns_end = len;
	len = add_rr(m, len, DNS_SEC_AR, ptr_q, 2, 1, 1, 5, a_rdata(1), 4);
	CHECK(dns_summarize(m, len, qend, &s) == 0 && s.ns_end == ns_end &&
	    s.an_end == qend && s.min_ttl == 5);
}

/* Questions: the name's letters without case, the rest exactly. */
static void
test_question_equal(void)
{
	unsigned char q[512], a[2048], b[512];
	struct dns_query_info qi;
	size_t qlen, alen, qend, blen;

	qlen = mkquery(q, 0xBEEF, "ExAmPlE.test", 1, 0, 0);
	memcpy(a, q, qlen);
	put16(a, 0x0042);
	/* the upstream answers in lower case */
	memcpy(a + 12, "\7example\4test", 13);
	alen = mkanswer(a, qlen, 2, 0);
	qend = dns_parse_answer(a, alen);
	CHECK_EQ(qend, qlen);
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
	/* an answer needs exactly one question, without pointers */
	put16(a + 4, 2);
	CHECK(dns_parse_answer(a, alen) == 0);
	put16(a + 4, 1);
	a[12] = 0xC0;
	CHECK(dns_parse_answer(a, alen) == 0);
	a[12] = 7;

	/* the client's ID and spelling come back */
	qi = qinfo(q, qlen);
	alen = afc(a, alen, q, &qi, 512);
	CHECK_EQ(alen, qlen + 2 * 16);
	CHECK_EQ(get16(a), 0xBEEF);
	CHECK(memcmp(a + 12, "\7ExAmPlE\4test", 13) == 0);
	CHECK_EQ(get16(a + 6), 2);
	CHECK(!(a[2] & DNS_FLAG_TC));

	/* Type 65 (HTTPS) and type 97 are 'A' and 'a' in ASCII: a question
	 * folded whole would take one for the other. Compared exactly. */
	qlen = mkquery(q, 1, "example.test", 65, 0, 0);
	blen = mkquery(b, 1, "example.test", 97, 0, 0);
	CHECK(dns_question_equal(q, qlen, q, qlen));
	CHECK(!dns_question_equal(q, qlen, b, blen));
	CHECK(!dns_question_equal(b, blen, q, qlen));
	put16(q + qlen - 4, 0x4101);	/* the high byte too */
	put16(b + blen - 4, 0x6101);
	CHECK(!dns_question_equal(q, qlen, b, blen));
	/* class bytes: 0x41 vs 0x61, IN vs CH */
	qlen = mkquery(q, 1, "example.test", 1, 0, 0);
	blen = mkquery(b, 1, "example.test", 1, 0, 0);
	put16(q + qlen - 2, 0x41);
	put16(b + blen - 2, 0x61);
	CHECK(!dns_question_equal(q, qlen, b, blen));
	put16(q + qlen - 2, 0x4101);
	put16(b + blen - 2, 0x6101);
	CHECK(!dns_question_equal(q, qlen, b, blen));
	put16(q + qlen - 2, 1);
	put16(b + blen - 2, 3);
	CHECK(!dns_question_equal(q, qlen, b, blen));
	/* the name: ASCII letters only (RFC 4343): '@'/'`' and '['/'{'
	 * differ by the same bit as 'A'/'a', and are different */
	qlen = mkquery(q, 1, "A-Z.@[", 1, 0, 0);
	blen = mkquery(b, 1, "a-z.@[", 1, 0, 0);
	CHECK(dns_question_equal(q, qlen, b, blen));
	blen = mkquery(b, 1, "a-z.`[", 1, 0, 0);
	CHECK(!dns_question_equal(q, qlen, b, blen));
	blen = mkquery(b, 1, "a-z.@{", 1, 0, 0);
	CHECK(!dns_question_equal(q, qlen, b, blen));
	/* a different length never matches */
	qlen = mkquery(q, 1, "example.test", 1, 0, 0);
	blen = mkquery(b, 1, "example.tes", 1, 0, 0);
	CHECK(!dns_question_equal(q, qlen, b, blen));
}

/* The cache key and hash: what makes two questions one entry. */
static void
test_cache_key(void)
{
	unsigned char q[512], b[512];
	struct dns_query_info qi, x;
	size_t qlen, blen;
	unsigned d, c, r, src;
	static uint8_t seen[256];
	int distinct = 1;

	qlen = mkquery(q, 1, "Example.TEST", 65, 0, 0);
	blen = mkquery(b, 1, "example.test", 65, 0, 0);
	/* the name without case */
	CHECK_EQ(cache_hash(q, qlen, 4), cache_hash(b, blen, 4));
	/* type 65 vs 97, exactly */
	put16(b + blen - 4, 97);
	CHECK(cache_hash(q, qlen, 4) != cache_hash(b, blen, 4));
	put16(b + blen - 4, 65);
	/* class bytes 0x41 vs 0x61 */
	put16(q + qlen - 2, 0x41);
	put16(b + blen - 2, 0x61);
	CHECK(cache_hash(q, qlen, 4) != cache_hash(b, blen, 4));
	put16(b + blen - 2, 0x41);
	CHECK_EQ(cache_hash(q, qlen, 4), cache_hash(b, blen, 4));
	/* the key is hashed */
	CHECK(cache_hash(q, qlen, 4) != cache_hash(q, qlen, 0));

	/* the key: DO, CD, RD and the source; not AD */
	qlen = mkclient(q, 1, "example.test", 1, 1, 0, 0, 1, 1232, 0);
	qi = qinfo(q, qlen);
	x = qi;
	x.rd = 0;
	CHECK(cache_key(&x, 0) != cache_key(&qi, 0));
	x = qi;
	x.do_bit = 1;
	CHECK(cache_key(&x, 0) != cache_key(&qi, 0));
	x = qi;
	x.cd = 1;
	CHECK(cache_key(&x, 0) != cache_key(&qi, 0));
	x = qi;
	x.ad = 1;
	CHECK_EQ(cache_key(&x, 0), cache_key(&qi, 0));
	CHECK(cache_key(&qi, 1) != cache_key(&qi, 0));
	CHECK(cache_key(&qi, 2) != cache_key(&qi, 1));
	/* from real queries: RD=0 and RD=1 differ */
	blen = mkclient(b, 1, "example.test", 1, 0, 0, 0, 1, 1232, 0);
	x = qinfo(b, blen);
	CHECK(cache_key(&x, 0) != cache_key(&qi, 0));
	/* every combination of DO, CD, RD and source (DoT, each zone) is a
	 * key of its own */
	for (src = 0; src <= MAX_ZONES; src++)
		for (d = 0; d < 2; d++)
			for (c = 0; c < 2; c++)
				for (r = 0; r < 2; r++) {
					uint8_t k;

					x = qi;
					x.do_bit = (uint8_t)d;
					x.cd = (uint8_t)c;
					x.rd = r ? DNS_FLAG_RD : 0;
					k = cache_key(&x, src);
					if (seen[k])
						distinct = 0;
					seen[k] = 1;
				}
	CHECK(distinct);
}

/* dns_answer_for_client: ID, RD, AD, question, OPT, truncation. */
static void
test_answer_for_client(void)
{
	static unsigned char q[512], a[8192], orig[8192];
	static const unsigned char ns_rdata[] = { 2, 'n', 's', 0xC0, 0x0C };
	struct dns_query_info qi;
	struct dns_summary s;
	size_t qlen, qend, alen, len;
	unsigned i, ad, dob;

	/* OPT removed for a client that sent none */
	qlen = mkquery(q, 1, "example.test", 1, 0, 0);
	qi = qinfo(q, qlen);
	memcpy(a, q, qlen);
	alen = mkanswer(a, qlen, 3, 1);
	len = afc(a, alen, q, &qi, 0);
	CHECK_EQ(len, alen - DNS_OPT_BYTES);
	CHECK_EQ(get16(a + 10), 0);
	CHECK_EQ(get16(a + 6), 3);
	/* ... and kept for a client that sent one */
	qlen = mkquery(q, 1, "example.test", 1, 1, 1232);
	qend = qlen - DNS_OPT_BYTES;
	qi = qinfo(q, qlen);
	memcpy(a, q, qend);
	alen = mkanswer(a, qend, 3, 1);
	len = afc(a, alen, q, &qi, 1232);
	CHECK_EQ(len, alen);
	CHECK_EQ(get16(a + 10), 1);
	/* with the client's DO bit (RFC 3225 3), not the upstream's: the
	 * upstream said DO=1, this client did not ask */
	CHECK_EQ(a[len - DNS_OPT_BYTES + 7] & 0x80, 0);
	q[qlen - 4] = 0x80;
	qi = qinfo(q, qlen);
	memcpy(a, q, qend);
	alen = mkanswer(a, qend, 3, 1);
	a[alen - 4] = 0;
	len = afc(a, alen, q, &qi, 1232);
	CHECK_EQ(a[len - DNS_OPT_BYTES + 7] & 0x80, 0x80);

	/* 40 records: 12 + 18 + 40 * 16 = 670 bytes > 512: TC, no records */
	qlen = mkquery(q, 9, "example.test", 1, 0, 0);
	qi = qinfo(q, qlen);
	memcpy(a, q, qlen);
	alen = mkanswer(a, qlen, 40, 0);
	CHECK(alen > 512);
	len = afc(a, alen, q, &qi, 512);
	CHECK_EQ(len, qlen);
	CHECK(a[2] & DNS_FLAG_TC);
	CHECK(get16(a + 6) == 0 && get16(a + 8) == 0 && get16(a + 10) == 0);
	CHECK_EQ(get16(a + 4), 1);
	/* the same answer fits a client with EDNS 1232: no TC */
	qlen = mkquery(q, 9, "example.test", 1, 1, 1232);
	qend = qlen - DNS_OPT_BYTES;
	qi = qinfo(q, qlen);
	memcpy(a, q, qend);
	alen = mkanswer(a, qend, 40, 1);
	len = afc(a, alen, q, &qi, 1232);
	CHECK(len == alen && !(a[2] & DNS_FLAG_TC));
	/* 100 records > 1232: TC, question and an OPT. The old test wanted
	 * the upstream's DO bit in it; issue #9 wants the client's (0). */
	memcpy(a, q, qend);
	alen = mkanswer(a, qend, 100, 1);
	len = afc(a, alen, q, &qi, 1232);
	CHECK_EQ(len, qlen);
	CHECK(a[2] & DNS_FLAG_TC);
	CHECK_EQ(get16(a + 10), 1);
	CHECK_EQ(a[len - DNS_OPT_BYTES + 2], DNS_TYPE_OPT);
	CHECK_EQ(a[len - DNS_OPT_BYTES + 7], 0);
	/* TCP (limit 0) never truncates */
	memcpy(a, q, qend);
	alen = mkanswer(a, qend, 100, 1);
	len = afc(a, alen, q, &qi, 0);
	CHECK(len == alen && !(a[2] & DNS_FLAG_TC));
	/* a malformed answer (record cut short) is refused */
	qlen = mkquery(q, 9, "example.test", 1, 0, 0);
	qi = qinfo(q, qlen);
	memcpy(a, q, qlen);
	alen = mkanswer(a, qlen, 2, 1);
	CHECK_EQ(afc(a, alen - 5, q, &qi, 512), 0);

	/* The answer section fits, 40 glue records (40 RRsets: ns0 A,
	 * ns1 A, ...) do not: TC=0, the answer whole, as many additional
	 * RRsets as fit, in order (62 + 21 * 21 = 503 <= 512). */
	memcpy(a, q, qlen);
	alen = mkanswer(a, qlen, 2, 0);
	for (i = 0; i < 40; i++)
		alen = add_rr(a, alen, DNS_SEC_AR, glue_owner(i), 7, 1, 1, 60,
		    a_rdata(100 + i), 4);
	memcpy(orig, a, alen);
	len = afc(a, alen, q, &qi, 512);
	CHECK_EQ(len, qlen + 2 * 16 + 21 * 21);
	CHECK(!(a[2] & DNS_FLAG_TC));
	CHECK(get16(a + 6) == 2 && get16(a + 8) == 0);
	CHECK_EQ(get16(a + 10), 21);
	CHECK_MEM(a + qlen, orig + qlen, 2 * 16 + 21 * 21);
	CHECK(dns_summarize(a, len, qlen, &s) == 0 && s.end == len);
	/* A partial RRset would be cached as if whole (RFC 2181 9): when
	 * the 21st glue name has two addresses and only one fits, neither
	 * goes. */
	memcpy(a, q, qlen);
	alen = mkanswer(a, qlen, 2, 0);
	for (i = 0; i < 20; i++)
		alen = add_rr(a, alen, DNS_SEC_AR, glue_owner(i), 7, 1, 1, 60,
		    a_rdata(100 + i), 4);
	alen = add_rr(a, alen, DNS_SEC_AR, glue_owner(20), 7, 1, 1, 60,
	    a_rdata(1), 4);
	alen = add_rr(a, alen, DNS_SEC_AR, glue_owner(20), 7, 1, 1, 60,
	    a_rdata(2), 4);
	len = afc(a, alen, q, &qi, 512);
	CHECK_EQ(len, qlen + 2 * 16 + 20 * 21);
	CHECK_EQ(get16(a + 10), 20);
	CHECK(!(a[2] & DNS_FLAG_TC));
	/* ... the same name in another case, with a pointer, is the same
	 * RRset */
	memcpy(a, q, qlen);
	alen = mkanswer(a, qlen, 2, 0);
	for (i = 0; i < 20; i++)
		alen = add_rr(a, alen, DNS_SEC_AR, glue_owner(i), 7, 1, 1, 60,
		    a_rdata(100 + i), 4);
	{
		size_t first = alen;
		unsigned char ptr[2];

		alen = add_rr(a, alen, DNS_SEC_AR, glue_owner(20), 7, 1, 1,
		    60, a_rdata(1), 4);
		a[first + 1] = 'N';			/* "Ns20" */
		put16(ptr, 0xC000 | (unsigned)first);
		alen = add_rr(a, alen, DNS_SEC_AR, ptr, 2, 1, 1, 60,
		    a_rdata(2), 4);
	}
	len = afc(a, alen, q, &qi, 512);
	CHECK_EQ(get16(a + 10), 20);
	/* ... but another type at that name is another RRset */
	memcpy(a, q, qlen);
	alen = mkanswer(a, qlen, 2, 0);
	for (i = 0; i < 20; i++)
		alen = add_rr(a, alen, DNS_SEC_AR, glue_owner(i), 7, 1, 1, 60,
		    a_rdata(100 + i), 4);
	alen = add_rr(a, alen, DNS_SEC_AR, glue_owner(20), 7, 1, 1, 60,
	    a_rdata(1), 4);
	alen = add_rr(a, alen, DNS_SEC_AR, glue_owner(20), 7, 28, 1, 60,
	    orig, 16);
	len = afc(a, alen, q, &qi, 512);
	CHECK_EQ(len, qlen + 2 * 16 + 21 * 21);
	CHECK_EQ(get16(a + 10), 21);
	/* the same for an EDNS client at 512: 20 fit with the OPT, which
	 * stays last, with the client's DO */
	qlen = mkclient(q, 9, "example.test", 1, 1, 0, 0, 1, 512, 1);
	qend = qlen - DNS_OPT_BYTES;
	qi = qinfo(q, qlen);
	memcpy(a, q, qend);
	alen = mkanswer(a, qend, 2, 0);
	for (i = 0; i < 40; i++)
		alen = add_rr(a, alen, DNS_SEC_AR, glue_owner(i), 7, 1, 1, 60,
		    a_rdata(100 + i), 4);
	alen = add_opt(a, alen, 1232, 0, 0, 0, NULL, 0);
	memcpy(orig, a, alen);
	len = afc(a, alen, q, &qi, 512);
	CHECK_EQ(len, qend + 2 * 16 + 20 * 21 + DNS_OPT_BYTES);
	CHECK(!(a[2] & DNS_FLAG_TC));
	CHECK_EQ(get16(a + 10), 21);
	CHECK_MEM(a + qend, orig + qend, 2 * 16 + 20 * 21);
	CHECK(dns_summarize(a, len, qend, &s) == 0 && s.opt_end == len &&
	    s.end == len);
	CHECK_EQ(a[len - 4], 0x80);
	/* the authority section does not fit: TC=1, header, question and
	 * OPT only */
	memcpy(a, q, qend);
	alen = mkanswer(a, qend, 2, 0);
	for (i = 0; i < 40; i++)
		alen = add_rr(a, alen, DNS_SEC_NS, ptr_q, 2, 2, 1, 60,
		    ns_rdata, sizeof ns_rdata);
	alen = add_opt(a, alen, 1232, 0, 0, 0, NULL, 0);
	CHECK(alen > 512);
	len = afc(a, alen, q, &qi, 512);
	CHECK_EQ(len, qlen);
	CHECK(a[2] & DNS_FLAG_TC);
	CHECK(get16(a + 6) == 0 && get16(a + 8) == 0 && get16(a + 10) == 1);
	CHECK_EQ(a[len - 4], 0x80);
	/* EDE options that would cost the answer section: dropped (the
	 * OPT stays, without options), the answer whole, TC=0 */
	{
		static unsigned char ede[4 + 500];

		put16(ede, EDNS_OPTION_EDE);
		put16(ede + 2, 496);
		put16(ede + 4, 18);
		memset(ede + 6, 'x', 494);
		memcpy(a, q, qend);
		alen = mkanswer(a, qend, 2, 0);
		alen = add_opt(a, alen, 1232, 0, 0, 0, ede, sizeof ede);
		len = afc(a, alen, q, &qi, 512);
		CHECK_EQ(len, qend + 2 * 16 + DNS_OPT_BYTES);
		CHECK(!(a[2] & DNS_FLAG_TC) && get16(a + 6) == 2);
		CHECK_EQ(get16(a + 10), 1);
		CHECK_EQ(get16(a + len - 2), 0);
		CHECK_EQ(a[len - 4], 0x80);
		/* ... and when nothing but the question fits, the TC
		 * answer has the OPT without them: within 512 bytes */
		memcpy(a, q, qend);
		alen = mkanswer(a, qend, 2, 0);
		for (i = 0; i < 40; i++)
			alen = add_rr(a, alen, DNS_SEC_NS, ptr_q, 2, 2, 1, 60,
			    ns_rdata, sizeof ns_rdata);
		alen = add_opt(a, alen, 1232, 0, 0, 0, ede, sizeof ede);
		len = afc(a, alen, q, &qi, 512);
		CHECK_EQ(len, qlen);
		CHECK(a[2] & DNS_FLAG_TC);
		CHECK(get16(a + 10) == 1 && get16(a + len - 2) == 0);
		/* a small EDE that fits with the answer stays */
		put16(ede + 2, 96);
		memcpy(a, q, qend);
		alen = mkanswer(a, qend, 2, 0);
		for (i = 0; i < 30; i++)
			alen = add_rr(a, alen, DNS_SEC_AR, glue_owner(i), 7, 1,
			    1, 60, a_rdata(i), 4);
		alen = add_opt(a, alen, 1232, 0, 0, 0, ede, 100);
		len = afc(a, alen, q, &qi, 512);
		CHECK(len <= 512 && !(a[2] & DNS_FLAG_TC));
		CHECK(get16(a + 6) == 2 && get16(a + len - 100 - 2) == 100);
		CHECK_MEM(a + len - 100, ede, 100);
	}
	/* an answer that fits is not touched by truncation */
	memcpy(a, q, qend);
	alen = mkanswer(a, qend, 2, 0);
	alen = add_rr(a, alen, DNS_SEC_AR, ptr_q, 2, 1, 1, 60, a_rdata(1), 4);
	alen = add_opt(a, alen, 1232, 0, 0, 0x8000, NULL, 0);
	memcpy(orig, a, alen);
	len = afc(a, alen, q, &qi, 512);
	CHECK_EQ(len, alen);
	CHECK_MEM(a + 4, orig + 4, alen - 4);

	/* AD (RFC 6840 5.7): the upstream's AD reaches only a client that
	 * asked with AD=1 or DO=1 */
	for (ad = 0; ad < 2; ad++)
		for (dob = 0; dob < 2; dob++) {
			qlen = mkclient(q, 5, "example.test", 1, 1, (int)ad, 0,
			    1, 1232, (int)dob);
			qend = qlen - DNS_OPT_BYTES;
			qi = qinfo(q, qlen);
			memcpy(a, q, qend);
			alen = mkanswer(a, qend, 1, 1);
			a[3] |= DNS_FLAG_AD;
			len = afc(a, alen, q, &qi, 0);
			CHECK_EQ(!!(a[3] & DNS_FLAG_AD), ad || dob);
			/* never set when the upstream did not */
			memcpy(a, q, qend);
			alen = mkanswer(a, qend, 1, 1);
			len = afc(a, alen, q, &qi, 0);
			CHECK_EQ(a[3] & DNS_FLAG_AD, 0);
		}
	/* RD: the client's; CD: as the upstream answered */
	qlen = mkclient(q, 5, "example.test", 1, 0, 0, 1, 0, 0, 0);
	qi = qinfo(q, qlen);
	memcpy(a, q, qlen);
	alen = mkanswer(a, qlen, 1, 0);
	a[2] |= DNS_FLAG_RD;
	a[3] |= DNS_FLAG_CD;
	len = afc(a, alen, q, &qi, 0);
	CHECK_EQ(a[2] & DNS_FLAG_RD, 0);
	CHECK_EQ(a[3] & DNS_FLAG_CD, DNS_FLAG_CD);
	qlen = mkclient(q, 5, "example.test", 1, 1, 0, 0, 0, 0, 0);
	qi = qinfo(q, qlen);
	memcpy(a, q, qlen);
	alen = mkanswer(a, qlen, 1, 0);
	a[2] &= (unsigned char)~DNS_FLAG_RD;
	len = afc(a, alen, q, &qi, 0);
	CHECK_EQ(a[2] & DNS_FLAG_RD, DNS_FLAG_RD);
	(void)len;
}

/* The whole way of an upstream answer to a client: dns_prepare_answer
 * (as query_deliver does it, with room for an OPT), then
 * dns_answer_for_client. */
static void
test_answer_path(void)
{
	static unsigned char q[512], a[4096];
	static const unsigned char opts[] = {
		0, 3, 0, 4, 'n', 's', '0', '1',		/* NSID */
		0, 15, 0, 3, 0, 18, 'x',		/* EDE 18 "x" */
		0, 10, 0, 8, 1, 2, 3, 4, 5, 6, 7, 8,	/* COOKIE */
		0, 12, 0, 3, 0, 0, 0,			/* Padding */
	};
	struct dns_query_info qi;
	struct dns_summary s;
	size_t qlen, qend, alen, len;
	uint32_t ttl;
	int opt, dob;

	for (opt = 0; opt < 2; opt++)
		for (dob = 0; dob < 1 + opt; dob++) {
			/* an upstream answer with options of every kind */
			qlen = mkclient(q, 0x2222, "Example.Test", 1, 1, 0, 0,
			    opt, 4096, dob);
			qend = qlen - (opt ? DNS_OPT_BYTES : 0);
			qi = qinfo(q, qlen);
			memcpy(a, q, qend);
			memcpy(a + 12, "\7example\4test", 13);
			put16(a, 0x9999);
			alen = mkanswer(a, qend, 1, 0);
			alen = add_opt(a, alen, 4096, 0, 0, 0x8000, opts,
			    sizeof opts);
			len = prepare(a, alen, sizeof a, qend, 0, 86400, &ttl);
			CHECK(len != 0);
			len = afc(a, len, q, &qi, 512);
			CHECK(dns_summarize(a, len, qend, &s) == 0);
			CHECK_MEM(a + 12, q + 12, qend - 12);
			CHECK_EQ(get16(a), 0x2222);
			/* the OPT if and only if the client sent one */
			CHECK_EQ(s.opt_end != 0, opt);
			if (!opt) {
				CHECK_EQ(len, qend + 16);
				continue;
			}
			CHECK_EQ(s.opt_end, len);
			CHECK_EQ(get16(a + s.opt_start + 3),
			    UDP_ADVERTISE_BYTES);
			CHECK_EQ(a[s.opt_start + 5], 0);	/* ext RCODE */
			CHECK_EQ(a[s.opt_start + 6], 0);	/* version */
			CHECK_EQ(a[s.opt_start + 7], dob ? 0x80 : 0);
			CHECK_EQ(a[s.opt_start + 8], 0);
			/* of the options, only the EDE */
			CHECK_EQ(get16(a + s.opt_start + 9), 7);
			CHECK_MEM(a + s.opt_start + 11, opts + 8, 7);
		}
	/* an upstream answer without an OPT: a client with one still
	 * gets one (issue #9: the OPT iff the client had one) */
	qlen = mkclient(q, 0x3333, "example.test", 1, 1, 0, 0, 1, 1232, 1);
	qend = qlen - DNS_OPT_BYTES;
	qi = qinfo(q, qlen);
	memcpy(a, q, qend);
	alen = mkanswer(a, qend, 1, 0);
	len = prepare(a, alen, sizeof a, qend, 0, 86400, &ttl);
	len = afc(a, len, q, &qi, 512);
	CHECK(dns_summarize(a, len, qend, &s) == 0 && s.opt_end == len &&
	    s.opt_end != 0);
	CHECK_EQ(get16(a + 10), 1);
	CHECK_EQ(a[len - 4], 0x80);
	CHECK_EQ(get16(a + len - 8), UDP_ADVERTISE_BYTES);
}

/* Answers dotproxy makes itself: errors, BADVERS, TC. */
static void
test_errors(void)
{
	unsigned char q[512], out[DNS_ERROR_MAX_BYTES];
	struct dns_query_info qi;
	const unsigned char *o;
	size_t qlen, len;

	/* The old API took the ID and the OPT flag apart; they now come
	 * from the parsed query. */
	qlen = mkquery(q, 0x0A0B, "example.test", 1, 1, 4096);
	q[3] = DNS_FLAG_CD;
	qi = qinfo(q, qlen);
	len = dns_make_error(out, q, &qi, DNS_RCODE_SERVFAIL, -1, NULL);
	CHECK_EQ(len, qlen);
	CHECK_EQ(get16(out), 0x0A0B);
	CHECK_EQ(out[2], DNS_FLAG_QR | DNS_FLAG_RD);
	CHECK_EQ(out[3], DNS_FLAG_RA | DNS_FLAG_CD | 2);
	CHECK(get16(out + 4) == 1 && get16(out + 10) == 1);
	CHECK(get16(out + 6) == 0 && get16(out + 8) == 0);
	CHECK_MEM(out + 12, q + 12, qlen - 12 - DNS_OPT_BYTES);
	/* our OPT: size 1232 (not the client's 4096), version 0, no DO */
	o = out + len - DNS_OPT_BYTES;
	CHECK(o[0] == 0 && get16(o + 1) == DNS_TYPE_OPT);
	CHECK_EQ(get16(o + 3), UDP_ADVERTISE_BYTES);
	CHECK(o[5] == 0 && o[6] == 0 && o[7] == 0 && o[8] == 0);
	CHECK_EQ(get16(o + 9), 0);
	/* without a parsed question or OPT: header only */
	qi.qend = 0;
	qi.has_opt = 0;
	len = dns_make_error(out, q, &qi, DNS_RCODE_FORMERR, -1, NULL);
	CHECK_EQ(len, 12);
	CHECK(get16(out + 4) == 0 && get16(out + 10) == 0);
	CHECK_EQ(out[3] & 0x0F, 1);
	/* no question (QDCOUNT 0) but a good OPT: header and OPT */
	memset(q, 0, 12);
	put16(q, 5);
	qlen = add_opt(q, 12, 1232, 0, 0, 0x8000, NULL, 0);
	CHECK_EQ(dns_parse_query(q, qlen, &qi), DNS_RCODE_FORMERR);
	len = dns_make_error(out, q, &qi, DNS_RCODE_FORMERR, -1, NULL);
	CHECK_EQ(len, 12 + DNS_OPT_BYTES);
	CHECK(get16(out + 4) == 0 && get16(out + 10) == 1);
	CHECK(out[3] == (DNS_FLAG_RA | 1) && out[len - 4] == 0x80);
	/* the client's OPT and DO bit echoed (RFC 6891 6.1.1, RFC 3225 3);
	 * its AD and Z bits are not */
	qlen = mkclient(q, 0x7777, "example.test", 1, 1, 1, 0, 1, 1232, 1);
	q[3] |= 0x40;
	qi = qinfo(q, qlen);
	len = dns_make_error(out, q, &qi, DNS_RCODE_REFUSED, -1, NULL);
	CHECK_EQ(len, qlen);
	CHECK_EQ(out[3], DNS_FLAG_RA | 5);
	CHECK_EQ(out[len - 4], 0x80);
	CHECK(get16(out + 10) == 1 && out[len - DNS_OPT_BYTES + 5] == 0);
	/* BADVERS: extended RCODE 16 = header RCODE 0 + OPT byte 1, our
	 * version 0, the question and DO echoed */
	qlen = mkquery(q, 3, "example.test", 1, 0, 0);
	qlen = add_opt(q, qlen, 1232, 0, 1, 0x8000, NULL, 0);
	CHECK_EQ(dns_parse_query(q, qlen, &qi), DNS_RCODE_BADVERS);
	len = dns_make_error(out, q, &qi, DNS_RCODE_BADVERS, -1, NULL);
	CHECK_EQ(len, qlen);
	CHECK_EQ(out[3] & 0x0F, 0);
	o = out + len - DNS_OPT_BYTES;
	CHECK_EQ(o[5], 1);
	CHECK_EQ(o[6], 0);
	CHECK_EQ(o[7], 0x80);
	CHECK_EQ(get16(out + 4), 1);
	CHECK_MEM(out + 12, q + 12, qlen - 12 - DNS_OPT_BYTES);
	/* TC (an oversized UDP query): NOERROR, TC=1, question and OPT */
	qlen = mkquery(q, 4, "example.test", 1, 1, 1232);
	qi = qinfo(q, qlen);
	len = dns_make_error(out, q, &qi, DNS_REPLY_TC, -1, NULL);
	CHECK_EQ(len, qlen);
	CHECK_EQ(out[2], DNS_FLAG_QR | DNS_FLAG_TC | DNS_FLAG_RD);
	CHECK_EQ(out[3] & 0x0F, 0);
	CHECK(get16(out + 4) == 1 && get16(out + 6) == 0 &&
	    get16(out + 10) == 1);
	CHECK_EQ(out[len - DNS_OPT_BYTES + 5], 0);
	/* NOTIMP keeps the opcode, and the OPT */
	qlen = mkclient(q, 8, "example.test", 1, 1, 0, 0, 1, 1232, 1);
	q[2] |= 5 << 3;
	CHECK_EQ(dns_parse_query(q, qlen, &qi), DNS_RCODE_NOTIMP);
	len = dns_make_error(out, q, &qi, DNS_RCODE_NOTIMP, -1, NULL);
	CHECK_EQ(out[2], DNS_FLAG_QR | 5 << 3 | DNS_FLAG_RD);
	CHECK_EQ(out[3] & 0x0F, 4);
	CHECK(len == qlen && out[len - 4] == 0x80);
}

/* The query sent upstream is rebuilt (issue #9). */
static void
test_build_query(void)
{
	static const unsigned char plain[] = {
		0, 0, DNS_FLAG_RD, DNS_FLAG_AD, 0, 1, 0, 0, 0, 0, 0, 1,
		7, 'E', 'x', 'a', 'm', 'p', 'l', 'e', 4, 't', 'e', 's', 't', 0,
		0, 1, 0, 1,
		0, 0, 41, 0x04, 0xD0, 0, 0, 0, 0, 0, 0,
	};
	static const unsigned char opts[] = {
		0, 10, 0, 8, 1, 2, 3, 4, 5, 6, 7, 8,	/* COOKIE */
		0, 8, 0, 7, 0, 1, 24, 0, 192, 0, 2,	/* Client Subnet */
		0, 3, 0, 0,				/* NSID */
		0, 11, 0, 0,				/* keepalive */
		0, 12, 0, 5, 0, 0, 0, 0, 0,		/* Padding */
		0xFD, 0xE9, 0, 3, 'a', 'b', 'c',	/* 65001 */
	};
	static const unsigned char key_name[] = "\3key";
	static const size_t blocks[] = { 16, 128, 468, PAD_BLOCK_MAX_BYTES };
	static unsigned char q[2048], out[PENDING_QUERY_BYTES + 16],
	    want[PENDING_QUERY_BYTES];
	struct dns_query_info qi, bi;
	size_t qlen, len, i, l;
	int ok;

	qlen = mkquery(q, 0x1234, "Example.test", 1, 0, 0);
	qi = qinfo(q, qlen);
	/* no padding (plain DNS to a forward zone): exactly our OPT */
	len = dns_build_query(out, q, &qi, 0);
	CHECK_EQ(len, sizeof plain);
	CHECK_MEM(out, plain, sizeof plain);
	/* padded to 128 (RFC 8467 4.1): one Padding option of zeros */
	memset(want, 0, sizeof want);
	memcpy(want, plain, sizeof plain);
	put16(want + sizeof plain - 2, 4 + 83);
	put16(want + sizeof plain, EDNS_OPTION_PADDING);
	put16(want + sizeof plain + 2, 83);
	memset(out, 0xEE, sizeof out);
	len = dns_build_query(out, q, &qi, 128);
	CHECK_EQ(len, 128);
	CHECK_MEM(out, want, 128);
	/* the client's DO and CD (and RD=0) go on; AD is 1 all the same */
	qlen = mkclient(q, 0x4321, "Example.test", 1, 0, 0, 1, 1, 512, 1);
	qi = qinfo(q, qlen);
	len = dns_build_query(out, q, &qi, 0);
	memcpy(want, plain, sizeof plain);
	want[2] = 0;
	want[3] = DNS_FLAG_AD | DNS_FLAG_CD;
	want[sizeof plain - 4] = 0x80;
	CHECK_EQ(len, sizeof plain);
	CHECK_MEM(out, want, sizeof plain);

	/* Nothing else the client sent goes on: header bits other than RD
	 * and CD, records in every section, its OPT's size, flags and
	 * options (COOKIE, ECS, NSID, keepalive, Padding, unknown), a
	 * TSIG. */
	qlen = mkquery(q, 0xFFFF, "Example.test", 1, 0, 0);
	q[2] |= DNS_FLAG_AA;
	q[3] = 0x40 | DNS_FLAG_AD | 0x05;
	qlen = add_rr(q, qlen, DNS_SEC_AN, ptr_q, 2, 1, 1, 60, a_rdata(1), 4);
	qlen = add_rr(q, qlen, DNS_SEC_NS, ptr_q, 2, 2, 1, 60,
	    "\2ns\xC0\x0C", 5);
	qlen = add_opt(q, qlen, 4096, 0, 0, 0xFFFF, opts, sizeof opts);
	qlen = add_rr(q, qlen, DNS_SEC_AR, key_name, sizeof key_name, 250,
	    255, 0, "\0\0\0\0\0\0\0\0\0\0", 10);
	CHECK_EQ(dns_parse_query(q, qlen, &qi), 0);
	len = dns_build_query(out, q, &qi, 0);
	memcpy(want, plain, sizeof plain);
	want[sizeof plain - 4] = 0x80;		/* its DO bit only */
	CHECK_EQ(len, sizeof plain);
	CHECK_MEM(out, want, sizeof plain);
	len = dns_build_query(out, q, &qi, 128);
	memset(want, 0, sizeof want);
	memcpy(want, plain, sizeof plain);
	want[sizeof plain - 4] = 0x80;
	put16(want + sizeof plain - 2, 4 + 83);
	put16(want + sizeof plain, EDNS_OPTION_PADDING);
	put16(want + sizeof plain + 2, 83);
	CHECK_EQ(len, 128);
	CHECK_MEM(out, want, 128);

	/* already a multiple of the block: a Padding option of length 0
	 * ("aaaaaaaaaa.test": 12 + 17 + 4 + 11 + 4 = 48) */
	qlen = mkquery(q, 1, "aaaaaaaaaa.test", 1, 0, 0);
	qi = qinfo(q, qlen);
	len = dns_build_query(out, q, &qi, 16);
	CHECK_EQ(len, 48);
	CHECK(get16(out + qlen + 9) == 4 && get16(out + qlen + 11) ==
	    EDNS_OPTION_PADDING && get16(out + qlen + 13) == 0);
	/* every name length and block: a multiple of the block, a query
	 * with the same question and exactly one OPT */
	ok = 1;
	for (l = 1; l <= 63; l++) {
		char name[80];

		memset(name, 'a', l);
		strcpy(name + l, ".test");
		qlen = mkclient(q, 1, name, 28, 1, 0, 0, 1, 1232, l & 1);
		qi = qinfo(q, qlen);
		for (i = 0; i < sizeof blocks / sizeof blocks[0]; i++) {
			len = dns_build_query(out, q, &qi, blocks[i]);
			if (len % blocks[i] != 0 || len > PENDING_QUERY_BYTES ||
			    dns_parse_query(out, len, &bi) != 0 ||
			    !bi.has_opt || bi.qend != qi.qend ||
			    bi.do_bit != qi.do_bit || get16(out + 10) != 1 ||
			    get16(out + 6) != 0 || get16(out + 8) != 0 ||
			    memcmp(out + 12, q + 12, qi.qend - 12) != 0)
				ok = 0;
		}
	}
	CHECK(ok);
	/* the longest question and the largest block fit the slot buffer */
	{
		size_t off = 12;

		qlen = mkquery(q, 1, "", 1, 0, 0);
		for (i = 0; i < 3; i++) {
			q[off] = 63;
			memset(q + off + 1, 'a', 63);
			off += 64;
		}
		q[off] = 61;
		memset(q + off + 1, 'b', 61);
		q[off + 62] = 0;
		put16(q + off + 63, 1);
		put16(q + off + 65, 1);
		qlen = off + 67;
		CHECK_EQ(qlen, 12 + 255 + 4);
		qi = qinfo(q, qlen);
		len = dns_build_query(out, q, &qi, PAD_BLOCK_MAX_BYTES);
		CHECK_EQ(len, PAD_BLOCK_MAX_BYTES);
		CHECK(len <= PENDING_QUERY_BYTES);
		CHECK_EQ(dns_parse_query(out, len, &bi), 0);
	}
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


/* An answer to q (qlen bytes, no OPT) in a: n A records, TTL 60. */
static size_t
answer_to(unsigned char *a, const unsigned char *q, size_t qlen, unsigned n)
{
	memcpy(a, q, qlen);
	return mkanswer(a, qlen, n, 0);
}

/* dns_prepare_answer: options, AA, TTLs, the cache TTL. Replaces the old
 * dns_cache_ttl, dns_strip_padding and dns_strip_opt tests. */
static void
test_prepare_answer(void)
{
	static const unsigned char nsec[] = { 0xC0, 0x0C, 0, 6, 0x40, 0, 0,
		0, 3 };
	static const unsigned char opts[] = {
		0, 3, 0, 4, 'n', 's', '0', '1',		/* NSID */
		0, 15, 0, 5, 0, 18, 'a', 'b', 'c',	/* EDE 18 "abc" */
		0, 10, 0, 16, 1, 2, 3, 4, 5, 6, 7, 8,	/* COOKIE */
		9, 10, 11, 12, 13, 14, 15, 16,
		0, 11, 0, 2, 0, 100,			/* keepalive */
		0, 12, 0, 7, 0, 0, 0, 0, 0, 0, 0,	/* Padding */
		0, 8, 0, 7, 0, 1, 24, 0, 192, 0, 2,	/* Client Subnet */
		0, 15, 0, 2, 0, 22,			/* EDE 22 */
		0xFD, 0xE9, 0, 1, 'z',			/* 65001 */
	};
	static const unsigned char edes[] = {
		0, 15, 0, 5, 0, 18, 'a', 'b', 'c',
		0, 15, 0, 2, 0, 22,
	};
	static unsigned char q[512], a[4096], b[4096];
	struct dns_summary s;
	size_t qlen, len, n, o, soa, nsec_at;
	uint32_t ttl;

	qlen = mkquery(q, 1, "example.test", 1, 0, 0);
	/* the cache TTL is the smallest TTL */
	len = answer_to(a, q, qlen, 3);
	len = add_opt(a, len, 1232, 0, 0, 0x8000, NULL, 0);
	put16(a + qlen + 16 + 8, 30);		/* second record: TTL 30 */
	CHECK_EQ(prepare(a, len, sizeof a, qlen, 0, DNS_TTL_MAX, &ttl), len);
	CHECK_EQ(ttl, 30);
	CHECK(ttl_of_ptr_rr(a, qlen) == 60 &&
	    ttl_of_ptr_rr(a, qlen + 16) == 30);
	/* TC, SERVFAIL, REFUSED: not cached (the answer still goes on) */
	len = answer_to(a, q, qlen, 3);
	a[2] |= DNS_FLAG_TC;
	CHECK(prepare(a, len, sizeof a, qlen, 0, DNS_TTL_MAX, &ttl) != 0);
	CHECK_EQ(ttl, 0);
	len = answer_to(a, q, qlen, 3);
	a[3] = (a[3] & 0xF0) | 2;
	CHECK(prepare(a, len, sizeof a, qlen, 0, DNS_TTL_MAX, &ttl) != 0);
	CHECK_EQ(ttl, 0);
	len = answer_to(a, q, qlen, 3);
	a[3] = (a[3] & 0xF0) | 5;
	CHECK(prepare(a, len, sizeof a, qlen, 0, DNS_TTL_MAX, &ttl) != 0);
	CHECK_EQ(ttl, 0);
	/* an extended RCODE (BADVERS from the upstream): not cached */
	len = answer_to(a, q, qlen, 3);
	len = add_opt(a, len, 1232, 1, 0, 0, NULL, 0);
	CHECK(prepare(a, len, sizeof a, qlen, 0, DNS_TTL_MAX, &ttl) != 0);
	CHECK_EQ(ttl, 0);
	/* NXDOMAIN: min(SOA TTL, MINIMUM); without SOA, not cached */
	len = answer_to(a, q, qlen, 0);
	a[3] = (a[3] & 0xF0) | DNS_RCODE_NXDOMAIN;
	CHECK(prepare(a, len, sizeof a, qlen, 0, DNS_TTL_MAX, &ttl) != 0);
	CHECK_EQ(ttl, 0);
	len = answer_to(a, q, qlen, 0);
	a[3] = (a[3] & 0xF0) | DNS_RCODE_NXDOMAIN;
	soa = len;
	len = add_soa(a, len, 900, 300);
	CHECK(prepare(a, len, sizeof a, qlen, 0, DNS_TTL_MAX, &ttl) != 0);
	CHECK_EQ(ttl, 300);
	CHECK_EQ(ttl_of_ptr_rr(a, soa), 300);
	len = answer_to(a, q, qlen, 0);			/* NODATA */
	len = add_soa(a, len, 120, 3600);
	CHECK(prepare(a, len, sizeof a, qlen, 0, DNS_TTL_MAX, &ttl) != 0);
	CHECK_EQ(ttl, 120);
	/* NODATA without SOA: not cached */
	len = answer_to(a, q, qlen, 0);
	CHECK(prepare(a, len, sizeof a, qlen, 0, DNS_TTL_MAX, &ttl) != 0);
	CHECK_EQ(ttl, 0);
	/* a SOA cut short: malformed */
	len = answer_to(a, q, qlen, 0);
	len = add_soa(a, len, 120, 3600);
	CHECK_EQ(prepare(a, len - 1, sizeof a, qlen, 0, DNS_TTL_MAX, &ttl), 0);
	CHECK_EQ(ttl, 0);
	/* Issue #9: SOA TTL 300, MINIMUM 2: every authority record of the
	 * negative answer (the SOA, an NSEC) gets the negative TTL 2, so
	 * clients see what dotproxy caches, and the cache TTL is 2. */
	len = answer_to(a, q, qlen, 0);
	a[3] = (a[3] & 0xF0) | DNS_RCODE_NXDOMAIN;
	soa = len;
	len = add_soa(a, len, 300, 2);
	nsec_at = len;
	len = add_rr(a, len, DNS_SEC_NS, ptr_q, 2, 47, 1, 3600, nsec + 2,
	    sizeof nsec - 2);
	len = add_opt(a, len, 1232, 0, 0, 0x8000, NULL, 0);
	CHECK_EQ(prepare(a, len, sizeof a, qlen, 0, 86400, &ttl), len);
	CHECK_EQ(ttl, 2);
	CHECK_EQ(ttl_of_ptr_rr(a, soa), 2);
	CHECK_EQ(ttl_of_ptr_rr(a, nsec_at), 2);
	/* NODATA the same */
	len = answer_to(a, q, qlen, 0);
	soa = len;
	len = add_soa(a, len, 300, 2);
	CHECK(prepare(a, len, sizeof a, qlen, 0, 86400, &ttl) != 0);
	CHECK(ttl == 2 && ttl_of_ptr_rr(a, soa) == 2);
	/* capped at 3600 s (RFC 2308 5) */
	len = answer_to(a, q, qlen, 0);
	a[3] = (a[3] & 0xF0) | DNS_RCODE_NXDOMAIN;
	soa = len;
	len = add_soa(a, len, 86400, 86400);
	CHECK(prepare(a, len, sizeof a, qlen, 0, 86400, &ttl) != 0);
	CHECK_EQ(ttl, CACHE_NEG_MAX_TTL_S);
	CHECK_EQ(ttl_of_ptr_rr(a, soa), CACHE_NEG_MAX_TTL_S);
	/* ... and the clamps apply after: --cache-min-ttl 60 */
	len = answer_to(a, q, qlen, 0);
	soa = len;
	len = add_soa(a, len, 300, 2);
	CHECK(prepare(a, len, sizeof a, qlen, 60, 86400, &ttl) != 0);
	CHECK(ttl == 60 && ttl_of_ptr_rr(a, soa) == 60);
	/* a positive answer's authority keeps its TTLs */
	len = answer_to(a, q, qlen, 1);
	soa = len;
	len = add_soa(a, len, 300, 2);
	CHECK(prepare(a, len, sizeof a, qlen, 0, 86400, &ttl) != 0);
	CHECK(ttl == 60 && ttl_of_ptr_rr(a, soa) == 300);
	/* clamps: TTLs 30, 500 and one with the top bit set (0), between
	 * min 60 and max 100 */
	len = answer_to(a, q, qlen, 3);
	put16(a + qlen + 8, 30);
	put16(a + qlen + 16 + 8, 500);
	a[qlen + 32 + 6] = 0x80;
	CHECK(prepare(a, len, sizeof a, qlen, 60, 100, &ttl) != 0);
	CHECK_EQ(ttl_of_ptr_rr(a, qlen), 60);
	CHECK_EQ(ttl_of_ptr_rr(a, qlen + 16), 100);
	CHECK_EQ(ttl_of_ptr_rr(a, qlen + 32), 60);
	CHECK_EQ(ttl, 60);

	/* Options: of NSID, EDE, COOKIE, keepalive, Padding, ECS, EDE and
	 * an unknown one, only the two EDEs stay, in order; the OPT gets
	 * our size, version 0 and no flag but DO; AA is cleared. (The old
	 * tests kept every option but Padding.) */
	len = answer_to(a, q, qlen, 2);
	a[2] |= DNS_FLAG_AA;
	o = len;
	len = add_opt(a, len, 4096, 0, 0, 0x8000 | 0x1234, opts, sizeof opts);
	n = prepare(a, len, sizeof a, qlen, 0, 86400, &ttl);
	CHECK_EQ(n, o + DNS_OPT_BYTES + sizeof edes);
	CHECK_EQ(a[2] & DNS_FLAG_AA, 0);
	CHECK_EQ(get16(a + 10), 1);
	CHECK_EQ(get16(a + o + 3), UDP_ADVERTISE_BYTES);
	CHECK(a[o + 5] == 0 && a[o + 6] == 0 && a[o + 7] == 0x80 &&
	    a[o + 8] == 0);
	CHECK_EQ(get16(a + o + 9), sizeof edes);
	CHECK_MEM(a + o + DNS_OPT_BYTES, edes, sizeof edes);
	CHECK_EQ(ttl, 60);
	/* no EDE: an OPT without options */
	len = answer_to(a, q, qlen, 2);
	o = len;
	len = add_opt(a, len, 4096, 0, 0, 0, opts, 8);	/* NSID only */
	CHECK_EQ(prepare(a, len, sizeof a, qlen, 0, 86400, &ttl),
	    o + DNS_OPT_BYTES);
	CHECK_EQ(get16(a + o + 9), 0);
	/* an option that overruns the OPT, or bytes left over: malformed */
	len = answer_to(a, q, qlen, 1);
	len = add_opt(a, len, 1232, 0, 0, 0, "\0\3\0\12ab", 6);
	CHECK_EQ(prepare(a, len, sizeof a, qlen, 0, 86400, &ttl), 0);
	len = answer_to(a, q, qlen, 1);
	len = add_opt(a, len, 1232, 0, 0, 0, "\0\17\0\0\0\3", 6);
	CHECK_EQ(prepare(a, len, sizeof a, qlen, 0, 86400, &ttl), 0);
	/* an OPT that is not the last record: malformed (moving what
	 * follows it could break compression pointers into it) */
	len = answer_to(a, q, qlen, 1);
	len = add_opt(a, len, 1232, 0, 0, 0, NULL, 0);
	len = add_rr(a, len, DNS_SEC_AR, ptr_q, 2, 1, 1, 60, a_rdata(1), 4);
	CHECK_EQ(prepare(a, len, sizeof a, qlen, 0, 86400, &ttl), 0);
	/* no OPT: one of ours is added when there is room, so that every
	 * client that sent one gets one; none when there is no room */
	len = answer_to(a, q, qlen, 1);
	n = prepare(a, len, sizeof a, qlen, 0, 86400, &ttl);
	CHECK_EQ(n, len + DNS_OPT_BYTES);
	CHECK(dns_summarize(a, n, qlen, &s) == 0 && s.opt_start == len &&
	    s.opt_end == n);
	CHECK_EQ(get16(a + len + 3), UDP_ADVERTISE_BYTES);
	CHECK_EQ(a[len + 7], 0);
	CHECK_EQ(ttl, 60);
	len = answer_to(a, q, qlen, 1);
	CHECK_EQ(prepare(a, len, len, qlen, 0, 86400, &ttl), len);
	CHECK_EQ(get16(a + 10), 0);
	/* bytes after the last record, no OPT: the OPT added must still be
	 * a record of the message (it goes where the records end: it went
	 * after the 3 bytes, garbled, and a client that sent an OPT got a
	 * record of type 0 instead) */
	len = answer_to(a, q, qlen, 1);
	memset(a + len, 0, 3);
	n = prepare(a, len + 3, sizeof a, qlen, 0, 86400, &ttl);
	CHECK(n != 0 && dns_summarize(a, n, qlen, &s) == 0);
	CHECK(s.opt_end != 0 && get16(a + s.opt_start + 1) == DNS_TYPE_OPT);
	CHECK(n == len + DNS_OPT_BYTES && s.end == n);
	/* ... and after an OPT that is last, they go too */
	len = answer_to(a, q, qlen, 1);
	len = add_opt(a, len, 1232, 0, 0, 0, NULL, 0);
	memset(a + len, 0xAA, 3);
	CHECK_EQ(prepare(a, len + 3, sizeof a, qlen, 0, 86400, &ttl), len);
	/* an answer without TTLs (no record but OPT): not cached */
	len = answer_to(a, q, qlen, 0);
	a[3] = (a[3] & 0xF0) | DNS_RCODE_NXDOMAIN;
	CHECK(prepare(a, len, sizeof a, qlen, 0, 86400, &ttl) != 0 &&
	    ttl == 0);
	/* prepared twice gives the same bytes (a cache hit's answer is
	 * the first client's) */
	len = answer_to(a, q, qlen, 2);
	a[3] = (a[3] & 0xF0) | DNS_RCODE_NXDOMAIN;
	len = add_soa(a, len, 300, 2);
	len = add_opt(a, len, 4096, 0, 0, 0x8000, opts, sizeof opts);
	n = prepare(a, len, sizeof a, qlen, 0, 86400, &ttl);
	memcpy(b, a, n);
	CHECK_EQ(prepare(b, n, sizeof b, qlen, 0, 86400, &ttl), n);
	CHECK_MEM(b, a, n);

	/* TTL rewriting (cache hits): count down, clamp, stale; OPT
	 * untouched */
	len = answer_to(a, q, qlen, 2);
	len = add_opt(a, len, 1232, 0, 0, 0x8000, NULL, 0);
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

/* The SOA dotproxy puts in its special-use answers: "localhost.
 * nobody.invalid. 1 3600 1200 604800 10800". */
static const unsigned char local_soa_rdata[] = {
	9, 'l', 'o', 'c', 'a', 'l', 'h', 'o', 's', 't', 0,
	6, 'n', 'o', 'b', 'o', 'd', 'y', 7, 'i', 'n', 'v', 'a', 'l', 'i', 'd',
	0,
	0, 0, 0, 1, 0, 0, 0x0E, 0x10, 0, 0, 0x04, 0xB0, 0, 0x09, 0x3A, 0x80,
	0, 0, 0x2A, 0x30,
};

/* Checks a local answer's SOA at off: owner a pointer to apex, TTL 10800,
 * the exact RDATA. */
static int
local_soa_at(const unsigned char *m, size_t len, size_t off, size_t apex)
{
	return off + 12 + sizeof local_soa_rdata <= len &&
	    get16(m + off) == (0xC000 | apex) && get16(m + off + 2) == 6 &&
	    get16(m + off + 4) == 1 && ttl_at(m, off + 6) == 10800 &&
	    get16(m + off + 10) == sizeof local_soa_rdata &&
	    memcmp(m + off + 12, local_soa_rdata, sizeof local_soa_rdata) == 0;
}

/* Special-use names answered by dotproxy itself. */
/* The Extended DNS Error of a local answer (RFC 8914 4.1: Other). */
static const char local_ede_text[] =
    "special-use name, answered locally (RFC 6761)";
#define LOCAL_EDE_BYTES	(4 + 2 + sizeof local_ede_text - 1)

static void
test_local_answer(void)
{
	static const unsigned char localhost_a[] = {
		0x12, 0x34, 0x85, 0x80, 0, 1, 0, 1, 0, 0, 0, 0,
		9, 'l', 'o', 'c', 'a', 'l', 'h', 'o', 's', 't', 0, 0, 1, 0, 1,
		0xC0, 0x0C, 0, 1, 0, 1, 0, 0, 0x2A, 0x30, 0, 4, 127, 0, 0, 1,
	};
	static const unsigned char aaaa_rr[] = {
		0xC0, 0x0C, 0, 28, 0, 1, 0, 0, 0x2A, 0x30, 0, 16,
		0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1,
	};
	static const char *const not_local[] = {
		"example.com", "localhost.example", "xlocalhost", "local",
		"arpa", "onion.example", "myresolver.arpa", "resolver.arpa.x",
		"invalidx", "",
	};
	unsigned char q[512], out[DNS_LOCAL_MAX_BYTES];
	struct dns_query_info qi;
	struct dns_summary s;
	size_t qlen, len, i;

	/* localhost A: exactly this */
	qlen = mkquery(q, 0x1234, "localhost", 1, 0, 0);
	qi = qinfo(q, qlen);
	len = dns_local_answer(out, q, &qi);
	CHECK_EQ(len, sizeof localhost_a);
	CHECK_MEM(out, localhost_a, sizeof localhost_a);
	/* AAAA: ::1 */
	qlen = mkquery(q, 0x1234, "localhost", 28, 0, 0);
	qi = qinfo(q, qlen);
	len = dns_local_answer(out, q, &qi);
	CHECK_EQ(len, qlen + sizeof aaaa_rr);
	CHECK_MEM(out + qlen, aaaa_rr, sizeof aaaa_rr);
	CHECK(get16(out + 6) == 1 && get16(out + 8) == 0 && out[2] == 0x85);
	/* names below localhost, in any case, RD as asked */
	qlen = mkclient(q, 7, "A.b.LocalHost", 1, 0, 0, 0, 0, 0, 0);
	qi = qinfo(q, qlen);
	len = dns_local_answer(out, q, &qi);
	CHECK_EQ(len, qlen + 16);
	CHECK_EQ(out[2], DNS_FLAG_QR | DNS_FLAG_AA);
	CHECK_MEM(out + 12, q + 12, qlen - 12);
	CHECK_MEM(out + qlen, localhost_a + 27, 16);
	/* another type: NODATA with the SOA in the authority section */
	qlen = mkquery(q, 2, "localhost", 15, 0, 0);
	qi = qinfo(q, qlen);
	len = dns_local_answer(out, q, &qi);
	CHECK_EQ(len, qlen + 12 + sizeof local_soa_rdata);
	CHECK_EQ(out[3], DNS_FLAG_RA);
	CHECK(out[2] & DNS_FLAG_AA);
	CHECK(get16(out + 6) == 0 && get16(out + 8) == 1 &&
	    get16(out + 10) == 0);
	CHECK(local_soa_at(out, len, qlen, 12));
	/* ... below localhost: the SOA's owner is localhost. */
	qlen = mkquery(q, 2, "foo.localhost", 16, 0, 0);
	qi = qinfo(q, qlen);
	len = dns_local_answer(out, q, &qi);
	CHECK(len == qlen + 59 && get16(out + 8) == 1 &&
	    local_soa_at(out, len, qlen, 16));
	/* SOA at the apex: the answer (the SOA itself) */
	qlen = mkquery(q, 2, "localhost", 6, 0, 0);
	qi = qinfo(q, qlen);
	len = dns_local_answer(out, q, &qi);
	CHECK(len == qlen + 59 && get16(out + 6) == 1 &&
	    get16(out + 8) == 0 && local_soa_at(out, len, qlen, 12));
	/* ANY: like any other type but A and AAAA, NODATA */
	qlen = mkquery(q, 2, "localhost", 255, 0, 0);
	qi = qinfo(q, qlen);
	len = dns_local_answer(out, q, &qi);
	CHECK(len == qlen + 59 && get16(out + 6) == 0 &&
	    get16(out + 8) == 1 && local_soa_at(out, len, qlen, 12));
	/* invalid. and onion.: NXDOMAIN, the zone's SOA */
	qlen = mkquery(q, 3, "invalid", 1, 0, 0);
	qi = qinfo(q, qlen);
	len = dns_local_answer(out, q, &qi);
	CHECK_EQ(len, qlen + 59);
	CHECK_EQ(out[3] & 0x0F, DNS_RCODE_NXDOMAIN);
	CHECK(out[2] & DNS_FLAG_AA);
	CHECK(get16(out + 6) == 0 && get16(out + 8) == 1);
	CHECK(local_soa_at(out, len, qlen, 12));
	qlen = mkquery(q, 3, "Some.Name.INVALID", 6, 0, 0);
	qi = qinfo(q, qlen);
	len = dns_local_answer(out, q, &qi);
	CHECK(len == qlen + 59 && (out[3] & 0x0F) == DNS_RCODE_NXDOMAIN &&
	    get16(out + 6) == 0 && local_soa_at(out, len, qlen, 12 + 10));
	qlen = mkquery(q, 3, "a.b.onion", 28, 0, 0);
	qi = qinfo(q, qlen);
	len = dns_local_answer(out, q, &qi);
	CHECK(len == qlen + 59 && (out[3] & 0x0F) == DNS_RCODE_NXDOMAIN &&
	    local_soa_at(out, len, qlen, 16));
	qlen = mkquery(q, 3, "onion", 6, 0, 0);
	qi = qinfo(q, qlen);
	len = dns_local_answer(out, q, &qi);
	CHECK(len == qlen + 59 && (out[3] & 0x0F) == DNS_RCODE_NXDOMAIN &&
	    get16(out + 6) == 0 && get16(out + 8) == 1);
	/* resolver.arpa. (RFC 9462 6.1): NODATA, even for SVCB */
	qlen = mkquery(q, 4, "resolver.arpa", 1, 0, 0);
	qi = qinfo(q, qlen);
	len = dns_local_answer(out, q, &qi);
	CHECK(len == qlen + 59 && (out[3] & 0x0F) == 0 &&
	    get16(out + 6) == 0 && get16(out + 8) == 1 &&
	    local_soa_at(out, len, qlen, 12));
	qlen = mkquery(q, 4, "_dns.resolver.arpa", 64, 0, 0);
	qi = qinfo(q, qlen);
	len = dns_local_answer(out, q, &qi);
	CHECK(len == qlen + 59 && (out[3] & 0x0F) == 0 &&
	    get16(out + 6) == 0 && local_soa_at(out, len, qlen, 17));
	/* another class (CH): REFUSED, nothing but the question */
	qlen = mkquery(q, 5, "localhost", 1, 0, 0);
	put16(q + qlen - 2, 3);
	qi = qinfo(q, qlen);
	len = dns_local_answer(out, q, &qi);
	CHECK_EQ(len, qlen);
	CHECK_EQ(out[3] & 0x0F, DNS_RCODE_REFUSED);
	CHECK(get16(out + 6) == 0 && get16(out + 8) == 0);
	qlen = mkquery(q, 5, "x.onion", 1, 0, 0);
	put16(q + qlen - 2, 3);
	qi = qinfo(q, qlen);
	len = dns_local_answer(out, q, &qi);
	CHECK(len == qlen && (out[3] & 0x0F) == DNS_RCODE_REFUSED);
	/* other names are not dotproxy's */
	for (i = 0; i < sizeof not_local / sizeof not_local[0]; i++) {
		qlen = mkquery(q, 6, not_local[i], 1, 0, 0);
		qi = qinfo(q, qlen);
		CHECK_EQ(dns_local_answer(out, q, &qi), 0);
	}
	/* with the client's OPT (DO=1): our OPT, last, counted once, with
	 * an Extended DNS Error saying why (RFC 8914: 0, Other) */
	qlen = mkclient(q, 9, "localhost", 1, 1, 0, 0, 1, 4096, 1);
	qi = qinfo(q, qlen);
	len = dns_local_answer(out, q, &qi);
	CHECK_EQ(len, qlen + 16 + LOCAL_EDE_BYTES);
	CHECK_EQ(get16(out + 10), 1);
	CHECK(dns_summarize(out, len, qi.qend, &s) == 0 && s.opt_end == len &&
	    s.end == len);
	CHECK_EQ(out[s.opt_start + 7], 0x80);
	CHECK_EQ(get16(out + s.opt_start + 9), LOCAL_EDE_BYTES);
	CHECK_EQ(get16(out + s.opt_start + 11), EDNS_OPTION_EDE);
	CHECK_EQ(get16(out + s.opt_start + 13), LOCAL_EDE_BYTES - 4);
	CHECK_EQ(get16(out + s.opt_start + 15), EDE_OTHER);
	CHECK_MEM(out + s.opt_start + 17, (const unsigned char *)local_ede_text,
	    sizeof local_ede_text - 1);
	CHECK_EQ(dns_parse_answer(out, len), qi.qend);
	qlen = mkclient(q, 9, "x.invalid", 6, 1, 0, 0, 1, 1232, 0);
	qi = qinfo(q, qlen);
	len = dns_local_answer(out, q, &qi);
	CHECK(len == (size_t)qi.qend + 59 + DNS_OPT_BYTES + LOCAL_EDE_BYTES &&
	    get16(out + 10) == 1);
	CHECK(dns_summarize(out, len, qi.qend, &s) == 0 && s.opt_end == len);
	/* another class with the client's OPT: REFUSED, EDE 21 (Not
	 * Supported) */
	qlen = mkclient(q, 10, "localhost", 1, 1, 0, 0, 1, 1232, 0);
	put16(q + 12 + 11 + 2, 3);		/* QCLASS: CH */
	qi = qinfo(q, qlen);
	CHECK_EQ(qi.qclass, 3);
	len = dns_local_answer(out, q, &qi);
	CHECK_EQ(out[3] & 0x0F, DNS_RCODE_REFUSED);
	CHECK(dns_summarize(out, len, qi.qend, &s) == 0 && s.opt_end == len);
	CHECK_EQ(get16(out + s.opt_start + 11), EDNS_OPTION_EDE);
	CHECK_EQ(get16(out + s.opt_start + 15), EDE_NOT_SUPPORTED);
	/* the longest name, NODATA, OPT: within DNS_LOCAL_MAX_BYTES */
	{
		size_t off = 12;

		mkquery(q, 1, "", 1, 0, 0);
		for (i = 0; i < 3; i++) {
			q[off] = 63;
			memset(q + off + 1, 'a', 63);
			off += 64;
		}
		q[off] = 51;
		memset(q + off + 1, 'b', 51);
		memcpy(q + off + 52, "\11localhost", 11);
		off += 63;
		CHECK_EQ(off, 12 + 255);
		put16(q + off, 15);
		put16(q + off + 2, 1);
		qlen = add_opt(q, off + 4, 1232, 0, 0, 0x8000, NULL, 0);
		qi = qinfo(q, qlen);
		len = dns_local_answer(out, q, &qi);
		CHECK(len == (size_t)qi.qend + 59 + DNS_OPT_BYTES +
		    LOCAL_EDE_BYTES && len <= DNS_LOCAL_MAX_BYTES);
	}
}

/* The next draws of util_rand16 are ids[0], ids[1], ... (n <= 32). */
static void
rng_feed(const uint16_t *ids, size_t n)
{
	size_t i;

	for (i = 0; i < n; i++)
		put16(util_rng.buf + 2 * (n - 1 - i), ids[i]);
	util_rng.left = 2 * n;
}

/* idmap_take with the ID the test chooses (if it is free). */
static uint16_t
take_id(struct id_map *m, int slot, uint16_t id)
{
	rng_feed(&id, 1);
	return idmap_take(m, slot);
}

/* Every entry of the map is a live slot found by its ID, reachable from
 * its home without crossing an empty place, and the map has n. */
static int
idmap_consistent(const struct id_map *m, size_t n)
{
	size_t h, count = 0;

	for (h = 0; h < ID_MAP_SLOTS; h++) {
		int s = m->slot[h];
		size_t k;

		if (s < 0)
			continue;
		count++;
		if (idmap_find(m, g.pending[s].up_id) != s)
			return 0;
		for (k = idmap_home(g.pending[s].up_id); k != h;
		    k = (k + 1) & (ID_MAP_SLOTS - 1))
			if (m->slot[k] < 0)
				return 0;
	}
	return count == n;
}

static struct id_map map_a, map_b;

/* The per-connection ID maps (issue #9: random IDs, never reused on a
 * connection). Replaces the old generation/XOR ID tests. */
static void
test_idmap(void)
{
	static uint8_t seen[65536];
	int slots[MAX_PENDING], i, n = 0, ok = 1, dup = 0, lost = 0;
	uint16_t ids[32];
	size_t k;

	pending_init();
	g.now_ms = 1000;
	g.query_timeout_ms = 4000;
	idmap_reset(&map_a);
	idmap_reset(&map_b);
	for (i = 0; i < MAX_PENDING; i++) {
		int s = pending_alloc();
		uint16_t id;

		if (s < 0)
			break;
		slots[n++] = s;
		g.pending[s].state = PENDING_SENT;
		id = idmap_take(&map_a, s);
		if (g.pending[s].up_id != id)
			ok = 0;
		if (seen[id])
			dup = 1;
		seen[id] = 1;
	}
	CHECK_EQ(n, MAX_PENDING);
	CHECK(ok);			/* the slot learns its ID */
	CHECK(!dup);			/* IDs unique on a connection */
	CHECK_EQ(map_a.n_used, MAX_PENDING);
	CHECK_EQ(pending_alloc(), -1);	/* table full */
	/* every ID leads back to its slot, on its connection only */
	ok = 1;
	for (i = 0; i < n; i++) {
		if (idmap_find(&map_a, g.pending[slots[i]].up_id) != slots[i])
			ok = 0;
		if (idmap_find(&map_b, g.pending[slots[i]].up_id) != -1)
			ok = 0;
	}
	CHECK(ok);
	CHECK(idmap_consistent(&map_a, MAX_PENDING));
	/* the age list runs oldest first */
	CHECK(g.age_head == slots[0] && g.age_tail == slots[n - 1]);
	/* Answered or timed out, and asked again: never an ID that was
	 * used on the connection, until ID_MAX_USED are used. */
	while (map_a.n_used + MAX_PENDING <= ID_MAX_USED) {
		for (i = 0; i < n; i += 1 + (i & 1)) {
			uint16_t old = g.pending[slots[i]].up_id, id;

			idmap_drop(&map_a, old);
			if (idmap_find(&map_a, old) != -1)
				lost = 1;
			id = idmap_take(&map_a, slots[i]);
			if (seen[id])
				dup = 1;
			seen[id] = 1;
			if (idmap_find(&map_a, id) != slots[i])
				lost = 1;
		}
		if (lost || dup || !idmap_consistent(&map_a, MAX_PENDING))
			break;	/* a broken map could fill up and hang */
	}
	CHECK(!dup);
	CHECK(!lost);
	CHECK(idmap_consistent(&map_a, MAX_PENDING));
	/* a used ID drawn again is skipped: the next draw is taken */
	{
		uint16_t old = g.pending[slots[3]].up_id, fresh = 0;

		while (seen[fresh])
			fresh++;
		idmap_drop(&map_a, old);
		ids[0] = old;
		ids[1] = fresh;
		rng_feed(ids, 2);
		CHECK_EQ(idmap_take(&map_a, slots[3]), fresh);
		CHECK_EQ(idmap_find(&map_a, old), -1);
		CHECK_EQ(idmap_find(&map_a, fresh), slots[3]);
	}
	/* a freed slot is taken again, last on the age list */
	pending_free(slots[5]);
	CHECK_EQ(pending_alloc(), slots[5]);
	CHECK_EQ(g.age_tail, slots[5]);
	/* a new connection: nothing used, nothing in flight */
	idmap_reset(&map_a);
	CHECK_EQ(map_a.n_used, 0);
	ok = 1;
	for (i = 0; i < n; i++)
		if (idmap_find(&map_a, g.pending[slots[i]].up_id) != -1)
			ok = 0;
	CHECK(ok);
	CHECK_EQ(take_id(&map_a, slots[0], 0x1234), 0x1234);
	CHECK_EQ(map_a.n_used, 1);
	for (i = 0; i < n; i++)
		pending_free(slots[i]);
	CHECK_EQ(g.n_free, MAX_PENDING);
	CHECK(g.age_head == -1 && g.age_tail == -1);

	/* Collisions: 32 IDs with the same home place, then two with the
	 * next one, found wherever probing put them. */
	idmap_reset(&map_a);
	for (k = 0; k < 32; k++)
		ids[k] = (uint16_t)(5 + ID_MAP_SLOTS * k);
	rng_feed(ids, 32);
	for (k = 0; k < 32; k++)
		CHECK_EQ(idmap_take(&map_a, (int)k), ids[k]);
	CHECK_EQ(take_id(&map_a, 32, 6), 6);
	CHECK_EQ(take_id(&map_a, 33, 6 + ID_MAP_SLOTS), 6 + ID_MAP_SLOTS);
	ok = 1;
	for (k = 0; k < 32; k++)
		if (map_a.slot[5 + k] != (int)k)
			ok = 0;
	CHECK(ok);
	CHECK(map_a.slot[37] == 32 && map_a.slot[38] == 33);
	for (k = 0; k < 32; k++)
		CHECK_EQ(idmap_find(&map_a, ids[k]), (int)k);
	CHECK_EQ(idmap_find(&map_a, 6), 32);
	CHECK_EQ(idmap_find(&map_a, 6 + ID_MAP_SLOTS), 33);
	/* absent, its home inside the run: probing ends at the hole */
	CHECK_EQ(idmap_find(&map_a, 6 + 2 * ID_MAP_SLOTS), -1);
	CHECK_EQ(idmap_find(&map_a, 7), -1);
	CHECK(idmap_consistent(&map_a, 34));
	/* drop the head of the run: everything after it moves back */
	idmap_drop(&map_a, ids[0]);
	CHECK_EQ(idmap_find(&map_a, ids[0]), -1);
	CHECK(idmap_consistent(&map_a, 33));
	CHECK(map_a.slot[5] == 1 && map_a.slot[36] == 32 &&
	    map_a.slot[37] == 33 && map_a.slot[38] == -1);
	/* one in the middle, then the last of the home-5 run */
	idmap_drop(&map_a, ids[10]);
	CHECK(idmap_consistent(&map_a, 32));
	CHECK_EQ(idmap_find(&map_a, ids[10]), -1);
	idmap_drop(&map_a, ids[31]);
	CHECK(idmap_consistent(&map_a, 31));
	/* a home-6 entry dropped: the other one of its home stays found */
	idmap_drop(&map_a, 6);
	CHECK(idmap_consistent(&map_a, 30));
	CHECK_EQ(idmap_find(&map_a, 6 + ID_MAP_SLOTS), 33);
	/* dropping an ID not in flight changes nothing */
	idmap_drop(&map_a, 6);
	idmap_drop(&map_a, 999);
	CHECK(idmap_consistent(&map_a, 30));
	/* dropped IDs stay used */
	CHECK_EQ(map_a.n_used, 34);
	ids[0] = 6;
	ids[1] = 5;
	ids[2] = 4242;
	rng_feed(ids, 3);
	CHECK_EQ(idmap_take(&map_a, 40), 4242);

	/* A run that wraps round the end of the map, with entries whose
	 * homes are at its start. */
	idmap_reset(&map_a);
	for (k = 0; k < 4; k++)
		CHECK_EQ(take_id(&map_a, (int)k, (uint16_t)(ID_MAP_SLOTS - 2 +
		    ID_MAP_SLOTS * k)), ID_MAP_SLOTS - 2 + ID_MAP_SLOTS * k);
	CHECK_EQ(take_id(&map_a, 4, 5 * ID_MAP_SLOTS), 5 * ID_MAP_SLOTS);
	CHECK_EQ(take_id(&map_a, 5, 5 * ID_MAP_SLOTS + 1),
	    5 * ID_MAP_SLOTS + 1);
	CHECK(map_a.slot[ID_MAP_SLOTS - 2] == 0 &&
	    map_a.slot[ID_MAP_SLOTS - 1] == 1 && map_a.slot[0] == 2 &&
	    map_a.slot[1] == 3 && map_a.slot[2] == 4 && map_a.slot[3] == 5);
	CHECK(idmap_consistent(&map_a, 6));
	idmap_drop(&map_a, ID_MAP_SLOTS - 2);
	CHECK(idmap_consistent(&map_a, 5));
	CHECK(map_a.slot[ID_MAP_SLOTS - 2] == 1 &&
	    map_a.slot[ID_MAP_SLOTS - 1] == 2 && map_a.slot[0] == 3 &&
	    map_a.slot[1] == 4 && map_a.slot[2] == 5 && map_a.slot[3] == -1);
	idmap_drop(&map_a, (uint16_t)(ID_MAP_SLOTS - 2 + 2 * ID_MAP_SLOTS));
	CHECK(idmap_consistent(&map_a, 4));
	CHECK_EQ(idmap_find(&map_a, 5 * ID_MAP_SLOTS + 1), 5);
	CHECK_EQ(idmap_find(&map_a, 5 * ID_MAP_SLOTS), 4);

	/* Random takes and drops against a model: every ID in flight found,
	 * none other. */
	{
		static uint16_t live_id[MAX_PENDING];
		static uint8_t live[MAX_PENDING];
		unsigned x = 12345, step;
		size_t nlive = 0;

		idmap_reset(&map_a);
		memset(live, 0, sizeof live);
		ok = 1;
		for (step = 0; step < 40000 && ok; step++) {
			int s;

			x = x * 1103515245u + 12345u;
			s = (int)((x >> 8) % 600);
			if (!live[s]) {
				if (map_a.n_used >= ID_MAX_USED) {
					idmap_reset(&map_a);
					memset(live, 0, sizeof live);
					nlive = 0;
				}
				live_id[s] = idmap_take(&map_a, s);
				live[s] = 1;
				nlive++;
				if (idmap_find(&map_a, live_id[s]) != s)
					ok = 0;
			} else {
				idmap_drop(&map_a, live_id[s]);
				live[s] = 0;
				nlive--;
				if (idmap_find(&map_a, live_id[s]) != -1)
					ok = 0;
			}
			if (step % 31 == 0 && !idmap_consistent(&map_a, nlive))
				ok = 0;
		}
		CHECK(ok);
		CHECK(idmap_consistent(&map_a, nlive));
	}
}

/* util_parse_uint at the edges, on this target's unsigned long. */
static void
test_numbers(void)
{
	char buf[64];
	unsigned long v = 7;
	long uid, gid;
	size_t sz, i;
	static uint8_t seen[65536];
	uint16_t first[32];
	int distinct = 0, same;

	CHECK(util_parse_uint("0", 0, 5, &v) == 0 && v == 0);
	CHECK(util_parse_uint("5", 0, 5, &v) == 0 && v == 5);
	CHECK(util_parse_uint("6", 0, 5, &v) < 0);
	/* a digit larger than max: max - d would wrap */
	CHECK(util_parse_uint("7", 0, 5, &v) < 0);
	CHECK(util_parse_uint("9", 0, 0, &v) < 0);
	CHECK(util_parse_uint("10", 0, 9, &v) < 0);
	CHECK(util_parse_uint("0", 1, 5, &v) < 0);
	CHECK(util_parse_uint("007", 0, 7, &v) == 0 && v == 7);
	v = 99;
	CHECK(util_parse_uint("", 0, 5, &v) < 0 && v == 99);
	CHECK(util_parse_uint("-1", 0, 5, &v) < 0);
	CHECK(util_parse_uint("+1", 0, 5, &v) < 0);
	CHECK(util_parse_uint(" 1", 0, 5, &v) < 0);
	CHECK(util_parse_uint("1 ", 0, 5, &v) < 0);
	CHECK(util_parse_uint("1x", 0, 5, &v) < 0);
	/* 32 bits */
	CHECK(util_parse_uint("4294967295", 0, 4294967295UL, &v) == 0 &&
	    v == 4294967295UL);
	CHECK(util_parse_uint("4294967296", 0, 4294967295UL, &v) < 0);
	CHECK(util_parse_uint("4294967297", 0, 4294967295UL, &v) < 0);
	CHECK(util_parse_uint("42949672950", 0, 4294967295UL, &v) < 0);
	/* the largest unsigned long, exactly, and one more */
	snprintf(buf, sizeof buf, "%lu", ULONG_MAX);
	CHECK(util_parse_uint(buf, 0, ULONG_MAX, &v) == 0 && v == ULONG_MAX);
	for (i = strlen(buf); i-- > 0; ) {	/* + 1, in decimal */
		if (buf[i] != '9') {
			buf[i]++;
			break;
		}
		buf[i] = '0';
	}
	CHECK(util_parse_uint(buf, 0, ULONG_MAX, &v) < 0);
	CHECK(util_parse_uint("18446744073709551616", 0, ULONG_MAX, &v) < 0);
	CHECK(util_parse_uint("18446744073709551617", 0, ULONG_MAX, &v) < 0);
	CHECK(util_parse_uint("99999999999999999999999", 0, ULONG_MAX,
	    &v) < 0);
	/* max - d wraps at the top too: 10 * (max / 10) + 9 > max when
	 * max ends in a smaller digit */
	snprintf(buf, sizeof buf, "%lu", ULONG_MAX / 10 * 10 + 4);
	CHECK(util_parse_uint(buf, 0, ULONG_MAX / 10 * 10 + 4, &v) == 0);
	snprintf(buf, sizeof buf, "%lu9", ULONG_MAX / 10);
	CHECK(util_parse_uint(buf, 0, ULONG_MAX / 10 * 10 + 4, &v) < 0);
	snprintf(buf, sizeof buf, "%lu5", ULONG_MAX / 10);
	CHECK(util_parse_uint(buf, 0, ULONG_MAX / 10 * 10 + 4, &v) < 0);
	/* the options built on it (issue #9: never uid 0 from 2^32) */
	CHECK(config_parse_user("4294967296", &uid, &gid) < 0);
	CHECK(config_parse_user("18446744073709551616", &uid, &gid) < 0);
	CHECK(config_parse_user("2147483648", &uid, &gid) < 0);
	CHECK(config_parse_user("2147483647", &uid, &gid) == 0 &&
	    uid == 2147483647L);
	CHECK(config_parse_user("1:4294967296", &uid, &gid) < 0);
	CHECK(config_parse_size("4294967296k", &sz) < 0);
	CHECK(config_parse_size("18446744073709551617", &sz) < 0);
	CHECK(config_parse_size("1048576k", &sz) == 0 &&
	    sz == 1024UL * 1024 * 1024);
	CHECK(config_parse_size("1048577k", &sz) < 0);
	CHECK(config_parse_port("4294967349", &(uint16_t){ 0 }) < 0);

	/* util_rand16: not constant, 1,000 draws give > 900 values (a
	 * random 16-bit source gives about 992) */
	util_rand_init();
	for (i = 0; i < 1000; i++) {
		uint16_t r = util_rand16();

		if (!seen[r])
			distinct++;
		seen[r] = 1;
		if (i < 32)
			first[i] = r;
	}
	CHECK(distinct > 900);
	same = 1;
	for (i = 1; i < 32; i++)
		if (first[i] != first[0])
			same = 0;
	CHECK(!same);
	/* another key, another stream */
	util_rand_init();
	same = 0;
	for (i = 0; i < 32; i++)
		if (util_rand16() == first[i])
			same++;
	CHECK(same < 8);
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
		CHECK(config_parse_zone("home.arpa=[fd00::1]:53", &z) == NULL &&
		    !z.tcp_only);
		CHECK(config_parse_zone("cluster.local=10.96.0.10,tcp", &z) ==
		    NULL && z.tcp_only && ntohs(z.addr.sin.sin_port) == 53);
		CHECK(config_parse_zone("c.l=[fd00::1]:5353,tcp", &z) == NULL &&
		    z.tcp_only && ntohs(z.addr.sin6.sin6_port) == 5353);
		CHECK(config_parse_zone("lan=192.168.1.1", &z) == NULL &&
		    !z.tcp_only);		/* a reused struct forgets it */
		CHECK(config_parse_zone("lan=1.2.3.4,udp", &z) != NULL);
		CHECK(config_parse_zone("lan=1.2.3.4,tcp,tcp", &z) != NULL);
		CHECK(config_parse_zone("lan=1.2.3.4,", &z) != NULL);
		CHECK(config_parse_zone("lan=,tcp", &z) != NULL);
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


/* Cache keys of the tests: a plain query (RD=1, no OPT) from DoT, and
 * the same with DO, with RD=0, and from forward zone 0. */
static uint8_t key0, key_do, key_nord, key_zone;

static void
cache_keys_init(void)
{
	unsigned char q[512];
	struct dns_query_info qi;

	qi = qinfo(q, mkquery(q, 1, "a.example", 1, 0, 0));
	key0 = cache_key(&qi, 0);
	key_zone = cache_key(&qi, 1);
	qi = qinfo(q, mkclient(q, 1, "a.example", 1, 1, 0, 0, 1, 1232, 1));
	key_do = cache_key(&qi, 0);
	qi = qinfo(q, mkclient(q, 1, "a.example", 1, 0, 0, 0, 0, 0, 0));
	key_nord = cache_key(&qi, 0);
}

/* Stores an answer for name/type with n records (TTL 60) and an OPT
 * under key, prepared as query_deliver does it (the cache's clamps). */
static void
cache_put_type(const char *name, uint16_t type, unsigned n, uint8_t key)
{
	static unsigned char q[512], a[8192];
	size_t qlen = mkquery(q, 1, name, type, 0, 0), len;
	uint32_t ttl;

	memcpy(a, q, qlen);
	len = mkanswer(a, qlen, n, 1);
	len = prepare(a, len, sizeof a, qlen, g.cache.min_ttl_s,
	    g.cache.max_ttl_s, &ttl);
	cstore(a, len, qlen, key, ttl);
}

static void
cache_put(const char *name, unsigned n)
{
	cache_put_type(name, 1, n, key0);
}

static int
cache_lookup_type(const char *name, uint16_t type, uint8_t key)
{
	unsigned char q[512];
	size_t qlen = mkquery(q, 1, name, type, 0, 0);

	return cache_find(q, qlen, key, cache_hash(q, qlen, key));
}

static int
cache_lookup(const char *name, uint8_t key)
{
	return cache_lookup_type(name, 1, key);
}

static void
test_cache(void)
{
	static unsigned char out[CACHE_MAX_ANSWER_BYTES], q[512], a[1024];
	struct dns_query_info qi;
	size_t len, i, qlen;
	uint32_t ttl;
	int e;

	cache_keys_init();
	g.now_ms = 1000000;
	cache_init(64 * 1024);
	CHECK(g.cache.n_blocks > 100);
	cache_put("a.example", 2);
	e = cache_lookup("A.EXAMPLE", key0);
	CHECK(e >= 0);				/* name without case */
	CHECK(cache_lookup("a.example", key_do) < 0);	/* key: DO bit */
	CHECK(cache_lookup("a.example", key_zone) < 0);	/* zone */
	/* issue #9: RD is in the key (an RD=0 answer may be a bare CNAME
	 * from the upstream's cache) */
	CHECK(cache_lookup("a.example", key_nord) < 0);
	CHECK(cache_lookup("b.example", key0) < 0);
	/* the hit counts TTLs down; stored answers carry an OPT (they are
	 * prepared: the old entries had none when the answer had none) */
	g.now_ms += 25 * 1000;
	len = cget(e, out, 0);
	CHECK_EQ(len, 12 + 15 + 2 * 16 + DNS_OPT_BYTES);
	CHECK_EQ(ttl_at(out, 12 + 15 + 6), 35);
	/* expired: not fresh; kept for serve-stale, else gone */
	g.now_ms += 40 * 1000;
	CHECK(cget(e, out, 0) == 0);
	CHECK(cache_lookup("a.example", key0) < 0);	/* stale_s == 0 */
	cache_put("a.example", 2);
	g.cache.stale_s = 100;
	g.now_ms += 120 * 1000;
	e = cache_lookup("a.example", key0);
	CHECK(e >= 0);
	CHECK(cget(e, out, 0) == 0);
	len = cget(e, out, 1);
	CHECK(len != 0 && ttl_at(out, 12 + 15 + 6) == STALE_TTL_S);
	g.now_ms += 60 * 1000;				/* past the window */
	CHECK(cache_lookup("a.example", key0) < 0);
	g.cache.stale_s = 0;
	/* replacing an entry leaves one */
	cache_put("c.example", 1);
	cache_put("c.example", 3);
	e = cache_lookup("c.example", key0);
	CHECK(e >= 0 && g.cache.entries[e].len == 12 + 15 + 3 * 16 +
	    DNS_OPT_BYTES);
	/* max TTL clamp (--cache-max-ttl, applied by dns_prepare_answer) */
	g.cache.max_ttl_s = 10;
	cache_put("d.example", 1);
	e = cache_lookup("d.example", key0);
	CHECK(e >= 0 && g.cache.entries[e].ttl_s == 10);
	g.cache.max_ttl_s = CACHE_MAX_TTL_S;
	/* type 65 and type 97 are two entries, never one for the other */
	cache_put_type("h.example", 65, 1, key0);
	CHECK(cache_lookup_type("h.example", 65, key0) >= 0);
	CHECK(cache_lookup_type("H.Example", 65, key0) >= 0);
	CHECK(cache_lookup_type("h.example", 97, key0) < 0);
	cache_put_type("h.example", 97, 2, key0);
	e = cache_lookup_type("h.example", 65, key0);
	CHECK(e >= 0 && g.cache.entries[e].len == 12 + 15 + 16 +
	    DNS_OPT_BYTES);
	/* ttl 0 (SERVFAIL, ...): not stored */
	qlen = mkquery(q, 1, "s.example", 1, 0, 0);
	memcpy(a, q, qlen);
	len = mkanswer(a, qlen, 1, 1);
	a[3] |= DNS_RCODE_SERVFAIL;
	len = prepare(a, len, sizeof a, qlen, 0, 86400, &ttl);
	CHECK_EQ(ttl, 0);
	cstore(a, len, qlen, key0, ttl);
	CHECK(cache_lookup("s.example", key0) < 0);
	/* a negative answer: the negative TTL, on the SOA too, counting
	 * down */
	qlen = mkquery(q, 1, "nx.example", 1, 0, 0);
	memcpy(a, q, qlen);
	len = mkanswer(a, qlen, 0, 0);
	a[3] |= DNS_RCODE_NXDOMAIN;
	len = add_soa(a, len, 300, 20);
	len = prepare(a, len, sizeof a, qlen, 0, 86400, &ttl);
	cstore(a, len, qlen, key0, ttl);
	e = cache_lookup("nx.example", key0);
	CHECK(e >= 0 && g.cache.entries[e].ttl_s == 20);
	g.now_ms += 5 * 1000;
	len = cget(e, out, 0);
	CHECK(len != 0 && ttl_at(out, qlen + 6) == 15);
	/* the cached answer keeps the upstream's AD; each client sees it
	 * as its own query asks */
	qlen = mkquery(q, 1, "ad.example", 1, 0, 0);
	memcpy(a, q, qlen);
	len = mkanswer(a, qlen, 1, 1);
	a[3] |= DNS_FLAG_AD;
	len = prepare(a, len, sizeof a, qlen, 0, 86400, &ttl);
	cstore(a, len, qlen, key0, ttl);
	e = cache_lookup("ad.example", key0);
	len = cget(e, out, 0);
	CHECK(len != 0 && (out[3] & DNS_FLAG_AD));
	qi = qinfo(q, qlen);
	len = afc(out, len, q, &qi, 512);
	CHECK(len != 0 && !(out[3] & DNS_FLAG_AD));
	len = cget(e, out, 0);
	q[3] |= DNS_FLAG_AD;
	qi = qinfo(q, qlen);
	len = afc(out, len, q, &qi, 512);
	CHECK(len != 0 && (out[3] & DNS_FLAG_AD));
	/* multi-block answers come back whole */
	cache_put("big.example", 100);
	e = cache_lookup("big.example", key0);
	CHECK(e >= 0);
	len = cget(e, out, 0);
	CHECK(len == 12 + 17 + 100 * 16 + DNS_OPT_BYTES &&
	    out[len - DNS_OPT_BYTES - 1] == 99);
	/* LRU: fill the cache; the entry read last survives, the oldest
	 * untouched one goes */
	cache_put("keep.example", 1);
	cache_put("old.example", 1);
	for (i = 0; i < 2 * g.cache.n_blocks; i++) {
		char name[32];

		if (i % 50 == 0) {
			e = cache_lookup("keep.example", key0);
			if (e >= 0)
				cget(e, out, 0);
		}
		snprintf(name, sizeof name, "n%zu.example", i);
		cache_put(name, 1);
	}
	CHECK(cache_lookup("keep.example", key0) >= 0);
	CHECK(cache_lookup("old.example", key0) < 0);
	CHECK(g.cache.evictions > 0);
	CHECK(g.cache.n_free_blocks <= g.cache.n_blocks);
	/* no cache: nothing stored, nothing found */
	cache_init(0);
	cache_put("a.example", 1);
	CHECK(cache_lookup("a.example", key0) < 0);
}

/* A query from UDP client 127.0.0.1:(1000 + k) in a pending slot, as
 * query_receive leaves it (not yet routed). */
static int
pending_query(const unsigned char *q, size_t qlen, int k)
{
	int slot = pending_alloc();
	struct pending_query *p = &g.pending[slot];

	memset(&p->from, 0, sizeof p->from);
	p->from.kind = ORIGIN_UDP;
	p->from.listener = 0;
	p->from.peer.sin.sin_family = AF_INET;
	p->from.peer.sin.sin_addr.s_addr = htonl(0x7F000001);
	p->from.peer.sin.sin_port = htons((uint16_t)(1000 + k));
	p->from.peerlen = sizeof p->from.peer.sin;
	p->qi = qinfo(q, qlen);
	p->cache_key = cache_key(&p->qi, 0);
	p->qlen = (uint16_t)dns_build_query(p->query, q, &p->qi, 0);
	return slot;
}

/* An answer to a pending query's upstream question, in lower case. */
static size_t
answer_for_slot(unsigned char *a, int slot, uint16_t id)
{
	const struct pending_query *p = &g.pending[slot];
	size_t i, qend = p->qi.qend;

	memcpy(a, p->query, qend);
	for (i = 12; i < qend - 4; i++)
		a[i] = (unsigned char)dns_lower(a[i]);
	put16(a, id);
	return mkanswer(a, qend, 1, 1);
}

/* Which answers reach a query (issue #9 "IDs", RFC 5452): upstream and
 * forward-zone answers with the right ID and the right question. */
static void
test_matching(void)
{
	struct upstream *u = &g.upstreams[0];
	struct pending_query *p;
	unsigned char q[512], a[1024];
	size_t qlen, alen, qend;
	int slot;

	g.log_level = LOG_ERROR;
	g.now_ms = 5000000;
	g.query_timeout_ms = QUERY_TIMEOUT_MS;
	pending_init();
	cache_init(0);
	g.n_listeners = 1;
	g.listeners[0].udp_fd = -1;	/* a flush sends nothing */
	udp_tx.n = 0;
	g.n_upstreams = 1;
	memset(u, 0, offsetof(struct upstream, sc));
	u->fd = -1;
	u->state = UPSTREAM_READY;
	u->queue_head = u->queue_tail = -1;
	u->backoff_ms = BACKOFF_MIN_MS;
	idmap_reset(&u->ids);
	strcpy(u->label, "unit");

	qlen = mkquery(q, 0xC1C1, "Svc.Example", 65, 1, 1232);
	q[3] |= DNS_FLAG_AD;		/* it wants to know */
	slot = pending_query(q, qlen, 0);
	p = &g.pending[slot];
	qend = p->qi.qend;
	p->route = ROUTE_UPSTREAM;
	p->route_idx = 0;
	p->state = PENDING_SENT;
	put16(p->query, take_id(&u->ids, slot, 0x4242));
	u->inflight = 1;
	alen = answer_for_slot(a, slot, 0x4243);
	/* an unknown ID: dropped; the query waits */
	CHECK_EQ(upstream_on_answer(u, a, alen), 0);
	CHECK(p->state == PENDING_SENT && udp_tx.n == 0);
	/* the right ID, type 97 instead of 65: dropped; the query waits
	 * and the upstream is not failed */
	put16(a, 0x4242);
	put16(a + qend - 4, 97);
	CHECK_EQ(upstream_on_answer(u, a, alen), 0);
	CHECK(p->state == PENDING_SENT && udp_tx.n == 0);
	CHECK(u->state == UPSTREAM_READY && u->n_failures == 0 &&
	    u->inflight == 1);
	/* class CH instead of IN: dropped */
	put16(a + qend - 4, 65);
	put16(a + qend - 2, 3);
	CHECK_EQ(upstream_on_answer(u, a, alen), 0);
	CHECK(p->state == PENDING_SENT && udp_tx.n == 0);
	/* the right question, the name in another case: the answer (with
	 * the upstream's AD, which this client asked for) */
	put16(a + qend - 2, 1);
	a[3] |= DNS_FLAG_AD;
	CHECK_EQ(upstream_on_answer(u, a, alen), 0);
	CHECK_EQ(g.pending[slot].state, PENDING_FREE);
	CHECK_EQ(udp_tx.n, 1);
	CHECK_EQ(get16(udp_tx.buf[0]), 0xC1C1);
	CHECK_MEM(udp_tx.buf[0] + 12, q + 12, qend - 12);
	CHECK(udp_tx.buf[0][3] & DNS_FLAG_AD);
	CHECK_EQ(u->inflight, 0);
	CHECK_EQ(g.n_free, MAX_PENDING);
	/* the same answer again (late, or a copy): its ID is not in
	 * flight any more, nothing happens */
	udp_tx.n = 0;
	CHECK_EQ(upstream_on_answer(u, a, alen), 0);
	CHECK_EQ(udp_tx.n, 0);
	/* a new query on the connection never gets that ID back */
	slot = pending_query(q, qlen, 0);
	p = &g.pending[slot];
	p->route = ROUTE_UPSTREAM;
	p->state = PENDING_SENT;
	{
		uint16_t ids[2] = { 0x4242, 0x5353 };

		rng_feed(ids, 2);
		CHECK_EQ(idmap_take(&u->ids, slot), 0x5353);
	}
	u->inflight = 1;
	CHECK_EQ(upstream_on_answer(u, a, alen), 0);	/* ID 0x4242 */
	CHECK(p->state == PENDING_SENT && udp_tx.n == 0);
	query_fail(slot, DNS_RCODE_SERVFAIL);	/* detaches it itself */
	CHECK(u->inflight == 0 && idmap_find(&u->ids, 0x5353) == -1);
	CHECK_EQ(udp_tx.n, 1);
	CHECK_EQ(udp_tx.buf[0][3] & 0x0F, DNS_RCODE_SERVFAIL);
	udp_tx.n = 0;

	/* a forward zone's answer: the same rules */
	slot = pending_query(q, qlen, 1);
	p = &g.pending[slot];
	p->route = ROUTE_ZONE;
	p->route_idx = 0;
	p->state = PENDING_SENT;
	p->up_id = 0x5151;
	put16(p->query, p->up_id);
	alen = answer_for_slot(a, slot, 0x5152);
	zone_on_answer(slot, a, alen, 0);
	CHECK(p->state == PENDING_SENT && udp_tx.n == 0);
	put16(a, 0x5151);
	put16(a + qend - 4, 97);
	zone_on_answer(slot, a, alen, 0);
	CHECK(p->state == PENDING_SENT && udp_tx.n == 0);
	put16(a + qend - 4, 65);
	zone_on_answer(slot, a, 11, 0);		/* shorter than a header */
	CHECK(p->state == PENDING_SENT && udp_tx.n == 0);
	/* plain DNS: its AD says nothing a path could not forge, so no
	 * client sees it */
	a[3] |= DNS_FLAG_AD;
	p->cache_key = cache_key(&p->qi, 1);	/* the source: zone 0 */
	zone_on_answer(slot, a, alen, 0);
	CHECK_EQ(g.pending[slot].state, PENDING_FREE);
	CHECK_EQ(udp_tx.n, 1);
	CHECK_EQ(get16(udp_tx.buf[0]), 0xC1C1);
	CHECK_MEM(udp_tx.buf[0] + 12, q + 12, qend - 12);
	CHECK_EQ(udp_tx.buf[0][3] & DNS_FLAG_AD, 0);
	udp_tx.n = 0;
	g.n_upstreams = 0;
	g.n_listeners = 0;
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
	CHECK(acl_parse_range("192.168.0.0/16", &r) == 0 && r.prefix == 16);
	CHECK(acl_in_range(&r, AF_INET, (const unsigned char *)"\300\250\1\2"));
	CHECK(!acl_in_range(&r, AF_INET, (const unsigned char *)"\300\251\1\2"));
	CHECK(acl_parse_range("172.16.0.0/12", &r) == 0);
	CHECK(acl_in_range(&r, AF_INET, (const unsigned char *)"\254\37\1\1"));
	CHECK(!acl_in_range(&r, AF_INET, (const unsigned char *)"\254\40\1\1"));
	CHECK(acl_parse_range("10.1.2.3", &r) == 0 && r.prefix == 32);
	CHECK(acl_parse_range("::/0", &r) == 0 && r.prefix == 0);
	CHECK(acl_in_range(&r, AF_INET6, (const unsigned char *)
	    "\40\1\15\270\0\0\0\0\0\0\0\0\0\0\0\1"));
	CHECK(!acl_in_range(&r, AF_INET, (const unsigned char *)"\1\2\3\4"));
	CHECK(acl_parse_range("10.0.0.0/33", &r) < 0);
	CHECK(acl_parse_range("fe80::/129", &r) < 0);
	CHECK(acl_parse_range("10.0.0.0/", &r) < 0);
	CHECK(acl_parse_range("example/8", &r) < 0);
	{
		union sockaddr_u a;
		socklen_t len;
		size_t i;

		g.n_allow = 0;
		for (i = 0; i < sizeof acl_default_ranges /
		    sizeof acl_default_ranges[0]; i++)
			CHECK(acl_parse_range(acl_default_ranges[i],
			    &g.allow[g.n_allow++]) == 0);
		CHECK(config_parse_addr("127.0.0.1", 53, &a, &len) == 0 &&
		    acl_allowed(&a));
		CHECK(config_parse_addr("192.168.1.7", 53, &a, &len) == 0 &&
		    acl_allowed(&a));
		/* not by default any more: behind a carrier-grade NAT,
		 * 100.64.0.0/10 is the ISP's other customers */
		CHECK(config_parse_addr("100.100.1.1", 53, &a, &len) == 0 &&
		    !acl_allowed(&a));
		CHECK(config_parse_addr("169.254.3.4", 53, &a, &len) == 0 &&
		    acl_allowed(&a));
		CHECK(config_parse_addr("8.8.8.8", 53, &a, &len) == 0 &&
		    !acl_allowed(&a));
		CHECK(config_parse_addr("::1", 53, &a, &len) == 0 &&
		    acl_allowed(&a));
		CHECK(config_parse_addr("fd12::5", 53, &a, &len) == 0 &&
		    acl_allowed(&a));
		CHECK(config_parse_addr("2001:db8::1", 53, &a, &len) == 0 &&
		    !acl_allowed(&a));
		CHECK(config_parse_addr("::ffff:10.1.1.1", 53, &a, &len) == 0 &&
		    acl_allowed(&a));
		CHECK(config_parse_addr("::ffff:1.1.1.1", 53, &a, &len) == 0 &&
		    !acl_allowed(&a));
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


/* observe_parse_http: a request line and headers up to the blank line
 * (RFC 9112 3); the target as a pointer into the buffer. */
static void
test_http_parse(void)
{
	static const struct {
		const char *in;
		int rc, get;
		const char *path;
	} cases[] = {
		{ "GET /health HTTP/1.1\r\nHost: 127.0.0.1:8053\r\n"
		    "User-Agent: kube-probe/1.29\r\n\r\n", 1, 1, "/health" },
		{ "GET /ready HTTP/1.0\r\n\r\n", 1, 1, "/ready" },
		{ "GET /metrics HTTP/1.1\r\n\r\nbody after", 1, 1, "/metrics" },
		{ "POST /health HTTP/1.1\r\nContent-Length: 0\r\n\r\n", 1, 0,
		    "/health" },
		{ "HEAD / HTTP/1.1\r\n\r\n", 1, 0, "/" },
		{ "GETX /health HTTP/1.1\r\n\r\n", 1, 0, "/health" },
		{ "get /health HTTP/1.1\r\n\r\n", 1, 0, "/health" },
		{ "GET /a?b=c HTTP/1.1\r\n\r\n", 1, 1, "/a?b=c" },
		/* more to come */
		{ "", 0, 0, NULL },
		{ "GET /health HTTP/1.1", 0, 0, NULL },
		{ "GET /health HTTP/1.1\r\nHost: x\r\n", 0, 0, NULL },
		{ "GET /health HTTP/1.1\r\n\r", 0, 0, NULL },
		{ "GET /health HTTP/1.1\n\n", 0, 0, NULL },
		/* never a request we take */
		{ "hello\r\n\r\n", -1, 0, NULL },
		{ "\r\n\r\n", -1, 0, NULL },
		{ "GET /health\r\n\r\n", -1, 0, NULL },
		{ " /health HTTP/1.1\r\n\r\n", -1, 0, NULL },
		{ "GET  /health HTTP/1.1\r\n\r\n", -1, 0, NULL },
		{ "GET /health HTTP/2.0\r\n\r\n", -1, 0, NULL },
		{ "GET /health HTTP/1.1 \r\n\r\n", -1, 0, NULL },
		{ "GET /health HTTP/1.\r\n\r\n", -1, 0, NULL },
		{ "GET /health http/1.1\r\n\r\n", -1, 0, NULL },
		{ "PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n", -1, 0, NULL },
	};
	static char big[HTTP_IN_BYTES + 1];
	const char *path = NULL;
	size_t i, plen = 0;
	int get = -1, rc;

	for (i = 0; i < sizeof cases / sizeof cases[0]; i++) {
		size_t n = strlen(cases[i].in);
		char *b = malloc(n ? n : 1);	/* exact size */

		memcpy(b, cases[i].in, n);
		path = NULL;
		plen = 0;
		get = -1;
		rc = observe_parse_http(b, n, &path, &plen, &get);
		CHECK_EQ(rc, cases[i].rc);
		if (rc != cases[i].rc)
			fprintf(stderr, "  case %zu: '%s'\n", i, cases[i].in);
		if (rc == 1 && cases[i].rc == 1) {
			CHECK_EQ(get, cases[i].get);
			CHECK(path >= b && path + plen <= b + n);
			CHECK_EQ(plen, strlen(cases[i].path));
			CHECK(memcmp(path, cases[i].path, plen) == 0);
		}
		if (rc != 1)
			CHECK(path == NULL && plen == 0 && get == -1);
		free(b);
	}
	/* a full buffer without its blank line: never, not "more" */
	memset(big, 'x', sizeof big);
	CHECK_EQ(observe_parse_http(big, HTTP_IN_BYTES - 1, &path, &plen, &get),
	    0);
	CHECK_EQ(observe_parse_http(big, HTTP_IN_BYTES, &path, &plen, &get),
	    -1);
	memcpy(big, "GET /health HTTP/1.1\r\n", 22);
	CHECK_EQ(observe_parse_http(big, HTTP_IN_BYTES, &path, &plen, &get),
	    -1);
	/* the blank line as the last 4 bytes of a full buffer */
	memcpy(big + HTTP_IN_BYTES - 4, "\r\n\r\n", 4);
	CHECK_EQ(observe_parse_http(big, HTTP_IN_BYTES, &path, &plen, &get), 1);
	CHECK(get == 1 && plen == 7 && path == big + 4);
}

/* dns_add_ede: an EDE option (RFC 8914 2) after the OPT that ends the
 * message, RDLENGTH grown, ARCOUNT as it was; text cut at
 * DNS_EDE_TEXT_MAX; nothing when it does not fit. */
static void
test_ede(void)
{
	unsigned char q[512], m[1024], before[1024], out[DNS_ERROR_MAX_BYTES];
	char long_text[300];
	struct dns_query_info qi;
	struct dns_summary s;
	size_t qlen, len, opt, n;

	qlen = mkquery(q, 0x1234, "example.test", 1, 0, 0);
	memcpy(m, q, qlen);
	opt = qlen;
	len = dns_put_opt(m, qlen, 0, 0, 0);
	CHECK_EQ(len, qlen + DNS_OPT_BYTES);
	CHECK_EQ(get16(m + 10), 1);
	n = dns_add_ede(m, len, sizeof m, opt, EDE_NO_REACHABLE, "no answer");
	CHECK_EQ(n, len + 6 + 9);
	CHECK_MEM(m + len, (const unsigned char *)"\0\x0f\0\x0b\0\x16no answer",
	    15);
	CHECK_EQ(get16(m + opt + 9), 15);
	CHECK_EQ(get16(m + 10), 1);
	CHECK(dns_summarize(m, n, qlen, &s) == 0 && s.opt_start == opt &&
	    s.opt_end == n && s.end == n);
	/* a second one: after the first; no text: INFO-CODE alone */
	len = n;
	n = dns_add_ede(m, len, sizeof m, opt, EDE_STALE, NULL);
	CHECK_EQ(n, len + 6);
	CHECK_MEM(m + len, (const unsigned char *)"\0\x0f\0\x02\0\x03", 6);
	CHECK_EQ(get16(m + opt + 9), 21);
	CHECK(dns_summarize(m, n, qlen, &s) == 0 && s.opt_end == n);
	/* a long text: cut at DNS_EDE_TEXT_MAX bytes */
	memset(long_text, 'y', sizeof long_text - 1);
	long_text[sizeof long_text - 1] = '\0';
	len = dns_put_opt(m, qlen, 0, 0, 0);
	put16(m + 10, 1);
	n = dns_add_ede(m, len, sizeof m, opt, EDE_NETWORK_ERROR, long_text);
	CHECK_EQ(n, len + 6 + DNS_EDE_TEXT_MAX);
	CHECK_EQ(get16(m + len + 2), 2 + DNS_EDE_TEXT_MAX);
	CHECK_EQ(get16(m + len + 4), EDE_NETWORK_ERROR);
	CHECK_EQ(get16(m + opt + 9), 6 + DNS_EDE_TEXT_MAX);
	CHECK(n - len <= DNS_EDE_MAX_BYTES);
	/* no room: the message as it was */
	len = dns_put_opt(m, qlen, 0, 0, 0);
	put16(m + 10, 1);
	memcpy(before, m, len);
	CHECK_EQ(dns_add_ede(m, len, len + 6 + 8, opt, 0, "123456789"), len);
	CHECK_MEM(m, before, len);
	CHECK_EQ(dns_add_ede(m, len, len + 6 + 9, opt, 0, "123456789"),
	    len + 15);
	CHECK_EQ(dns_add_ede(m, len, len + 5, opt, 0, NULL), len);

	/* dns_make_error with an EDE: only for a client that sent an OPT */
	qlen = mkclient(q, 0x4321, "secret.example", 1, 1, 0, 0, 1, 1232, 1);
	qi = qinfo(q, qlen);
	len = dns_make_error(out, q, &qi, DNS_RCODE_SERVFAIL,
	    EDE_NETWORK_ERROR, "upstream 192.0.2.1:853 (dns.example): x");
	CHECK_EQ(len, qlen + 6 + 39);
	CHECK(dns_summarize(out, len, qi.qend, &s) == 0 && s.opt_end == len);
	CHECK_EQ(out[3] & 0x0F, DNS_RCODE_SERVFAIL);
	CHECK_EQ(out[s.opt_start + 7], 0x80);
	CHECK_EQ(get16(out + s.opt_start + 9), 6 + 39);
	CHECK_EQ(get16(out + s.opt_start + 11), EDNS_OPTION_EDE);
	CHECK_EQ(get16(out + s.opt_start + 15), EDE_NETWORK_ERROR);
	CHECK_MEM(out + s.opt_start + 17, (const unsigned char *)
	    "upstream 192.0.2.1:853 (dns.example): x", 39);
	CHECK_EQ(dns_parse_answer(out, len), qi.qend);
	/* the longest question and text: within DNS_ERROR_MAX_BYTES */
	memset(long_text, 'z', sizeof long_text - 1);
	len = dns_make_error(out, q, &qi, DNS_RCODE_SERVFAIL, EDE_OTHER,
	    long_text);
	CHECK_EQ(len, qlen + 6 + DNS_EDE_TEXT_MAX);
	CHECK(len <= DNS_ERROR_MAX_BYTES);
	/* without the client's OPT: no EDE */
	qlen = mkclient(q, 0x4322, "secret.example", 1, 1, 0, 0, 0, 0, 0);
	qi = qinfo(q, qlen);
	len = dns_make_error(out, q, &qi, DNS_RCODE_REFUSED, EDE_PROHIBITED,
	    "not in --allow");
	CHECK_EQ(len, qlen);
	CHECK_EQ(get16(out + 10), 0);
	/* ede < 0: the OPT alone */
	qlen = mkclient(q, 0x4323, "secret.example", 1, 1, 0, 0, 1, 1232, 0);
	qi = qinfo(q, qlen);
	len = dns_make_error(out, q, &qi, DNS_RCODE_FORMERR, -1, "ignored");
	CHECK_EQ(len, qlen);
	CHECK_EQ(get16(out + len - 2), 0);
}

/* A test caught in an endless loop (an ID map that never finds a free
 * place, say) fails instead of hanging. */
/*
 * A query queued on an upstream whose connect() fails at once (socket()
 * refused here: an address family with no socket, as EHOSTUNREACH or
 * ENETUNREACH from connect() would be) goes back where it came from.
 * Review of issue 13: upstream_migrate_queue(A) on a suspect A moved
 * A's queue to B, B failed at once and moved the query back onto A's
 * queue, which then never emptied (an endless loop); and a lost A whose
 * queries came back that way was connected twice (a descriptor leaked).
 */
static void
migrate_add_query(struct upstream *u, int i)
{
	unsigned char q[64];
	struct dns_query_info qi;
	int slot = pending_alloc();
	struct pending_query *p = &g.pending[slot];
	size_t o = DNS_HEADER_BYTES;

	memset(q, 0, sizeof q);
	q[2] = DNS_FLAG_RD;
	put16(q + 4, 1);
	q[o++] = 4;
	q[o++] = 'q';
	q[o++] = (unsigned char)('0' + i / 100 % 10);
	q[o++] = (unsigned char)('0' + i / 10 % 10);
	q[o++] = (unsigned char)('0' + i % 10);
	memcpy(q + o, "\4test\0\0\1\0\1", 10);
	o += 10;
	(void)dns_parse_query(q, o, &qi);
	memset(&p->from, 0, sizeof p->from);
	p->from.kind = ORIGIN_REFRESH;	/* answered to nobody */
	p->from.at_ms = g.now_ms;
	p->qi = qi;
	p->cache_key = cache_key(&qi, 0);
	p->qlen = (uint16_t)dns_build_query(p->query, q, &qi, 0);
	upstream_enqueue(u, slot);
}

static void
migrate_setup(void)
{
	size_t i;

	config_defaults();
	g.log_level = LOG_ERROR;
	g.n_upstreams = 0;
	memset(g.upstreams, 0, 2 * sizeof g.upstreams[0]);
	config_add_upstream("127.0.0.1@9#dns.test", "");	/* A */
	config_add_upstream("127.0.0.1@9#dns.test", "");	/* B */
	cache_init(0);
	for (i = 0; i < g.n_upstreams; i++)
		upstream_tls_init(&g.upstreams[i]);
	pending_init();
	g.now_ms = 1000000;
	g.upstreams[1].addr.sa.sa_family = AF_UNSPEC;	/* fails at once */
	upstream_set_state(&g.upstreams[0], UPSTREAM_READY);
	g.upstreams[0].answered = 1;
}

static void
test_migrate(void)
{
	struct upstream *a, *b;
	unsigned long connects;
	int i, slot, n = 0;

	/* A suspect: its queue, the table full (no twin can be made). */
	migrate_setup();
	a = &g.upstreams[0];
	b = &g.upstreams[1];
	for (i = 0; g.n_free > 0; i++)
		migrate_add_query(a, i);
	slot = a->queue_head;		/* the first went out */
	a->queue_head = g.pending[slot].next;
	put16(g.pending[slot].query, idmap_take(&a->ids, slot));
	pending_set_state(slot, PENDING_SENT);
	g.pending[slot].sent_ms = a->unanswered_ms = g.now_ms;
	a->inflight = 1;
	g.now_ms += upstream_stall_ms(a);
	upstream_timers(a);		/* suspect: an endless loop before */
	CHECK(a->suspect);
	CHECK_EQ(a->state, UPSTREAM_READY);
	CHECK_EQ(b->state, UPSTREAM_BACKOFF);
	for (slot = a->queue_head; slot >= 0; slot = g.pending[slot].next)
		n++;
	CHECK_EQ(n, MAX_PENDING - 1);	/* still queued on A, once each */
	CHECK_EQ(g.n_free, 0);
	/* A lost (it answered before), its queries back on its queue: one
	 * new connection, not two. */
	migrate_setup();
	a = &g.upstreams[0];
	b = &g.upstreams[1];
	for (i = 0; i < 3; i++)
		migrate_add_query(a, i);
	connects = a->n_connects;
	upstream_lost(a, "unit: lost");
	CHECK_EQ(a->state, UPSTREAM_CONNECTING);
	CHECK_EQ(a->n_connects - connects, 1);
	if (a->fd >= 0)
		close(a->fd);
	a->fd = -1;
	/* A slow query's hedge to B, whose connect fails at once: the twin
	 * goes, and neither the counter nor the cap counts a hedge. */
	migrate_setup();
	a = &g.upstreams[0];
	b = &g.upstreams[1];
	g.hedge_pct = 5;
	g.hedge_tokens = 300;
	a->srtt_ms = 10;
	a->rttvar_ms = 5;
	migrate_add_query(a, 0);
	slot = a->queue_head;
	a->queue_head = a->queue_tail = -1;
	put16(g.pending[slot].query, idmap_take(&a->ids, slot));
	pending_set_state(slot, PENDING_SENT);
	g.pending[slot].sent_ms = a->unanswered_ms = g.now_ms;
	a->inflight = 1;
	upstream_hedge_watch(a, slot);
	g.now_ms += upstream_hedge_ms(a);
	upstream_timers(a);
	CHECK_EQ(b->state, UPSTREAM_BACKOFF);
	CHECK_EQ(g.pending[slot].twin, -1);
	CHECK_EQ(g.pending[slot].state, PENDING_SENT);
	CHECK_EQ(g.n_free, MAX_PENDING - 1);
	CHECK_EQ(g.stats.hedged, 0);
	CHECK_EQ(g.hedge_tokens, 300);
}

static const char *current_test = "";

static void
on_alarm(int sig)
{
	static const char msg[] = "unit: FAILED: no end after 60 s in ";

	(void)sig;
	util_write(2, msg, sizeof msg - 1);
	util_write(2, current_test, strlen(current_test));
	util_write(2, "\n", 1);
	_exit(1);
}

#define RUN(test) do { \
		current_test = #test; \
		alarm(60); \
		test(); \
	} while (0)

int
main(void)
{
	signal(SIGALRM, on_alarm);
	RUN(test_names);
	RUN(test_parse_query);
	RUN(test_iter);
	RUN(test_summarize);
	RUN(test_question_equal);
	RUN(test_cache_key);
	RUN(test_answer_for_client);
	RUN(test_answer_path);
	RUN(test_errors);
	RUN(test_build_query);
	RUN(test_prepare_answer);
	RUN(test_local_answer);
	RUN(test_ede);
	RUN(test_http_parse);
	RUN(test_numbers);	/* util_rand16 first: idmap_take needs it */
	RUN(test_idmap);
	RUN(test_specs);
	RUN(test_misc);
	RUN(test_zones);
	RUN(test_cache);
	RUN(test_matching);
	RUN(test_trust);
	RUN(test_migrate);
	alarm(0);
	printf("%d passed, %d failed\n", n_pass, n_fail);
	return n_fail != 0;
}
