/* Shared by the libFuzzer harnesses (each includes dotproxy.c first). */
#ifndef FUZZ_UTIL_H
#define FUZZ_UTIL_H

#include <stdlib.h>

/* An invariant of the proxy: a failure is a bug, reported like a crash. */
#define FUZZ_ASSERT(c) do { \
		if (!(c)) { \
			fprintf(stderr, "%s:%d: invariant failed: %s\n", \
			    __FILE__, __LINE__, #c); \
			abort(); \
		} \
	} while (0)

/* malloc of exactly n bytes (n == 0 gives 1), so ASan catches a read or
 * write one byte past what the proxy was given. */
static void *
fuzz_alloc(size_t n)
{
	void *p = malloc(n ? n : 1);

	if (p == NULL)
		abort();
	return p;
}

static unsigned char *
fuzz_dup(const unsigned char *d, size_t n)
{
	unsigned char *p = fuzz_alloc(n);

	if (n)
		memcpy(p, d, n);
	return p;
}

/* The end of a message's last record (header counts), or 0 if they do not
 * fit: a message with bytes after it has trailing junk. */
static size_t
fuzz_records_end(const unsigned char *m, size_t len, size_t off)
{
	unsigned i, n = (unsigned)get16(m + 6) + get16(m + 8) + get16(m + 10);

	for (i = 0; i < n; i++) {
		off = dns_skip_name(m, len, off);
		if (off == 0 || off + 10 > len || off + 10 + get16(m + off + 8) > len)
			return 0;
		off += 10 + get16(m + off + 8);
	}
	return off;
}

/* The number of OPT records in a message's additional section (-1 if
 * the records do not parse), and where the last one starts (*opt). */
static int
fuzz_count_opt(const unsigned char *m, size_t len, size_t qend, size_t *opt)
{
	struct dns_iter it;
	struct dns_rr rr;
	int r, n = 0;

	dns_iter_init(&it, m, len, qend);
	while ((r = dns_iter_next(&it, &rr)) > 0)
		if (rr.type == DNS_TYPE_OPT) {
			n++;
			if (opt)
				*opt = rr.start;
		}
	return r < 0 ? -1 : n;
}

/*
 * The invariants of an answer that dotproxy sends to a client who asked
 * query (qi: its dns_parse_query; udp_limit: 0 over TCP), whatever came
 * from upstream: the client's ID, RD and question (its spelling), a
 * response that parses (dns_summarize; to its last byte when exact), an
 * OPT if and only if the client sent one (when opt_iff; else never one
 * it did not send), with our size and the client's DO bit (when exact),
 * no AA (dotproxy is no authority for what it forwards), AD only if the
 * client asked with AD or DO, and over UDP within the client's limit.
 */
static void
fuzz_check_client_answer(const unsigned char *m, size_t len,
    const unsigned char *query, const struct dns_query_info *qi,
    size_t udp_limit, int opt_iff, int exact)
{
	struct dns_summary s;

	FUZZ_ASSERT(len >= qi->qend && qi->qend > DNS_HEADER_BYTES);
	FUZZ_ASSERT(get16(m) == qi->id);
	FUZZ_ASSERT(m[2] & DNS_FLAG_QR);
	FUZZ_ASSERT((m[2] & DNS_FLAG_RD) == qi->rd);
	FUZZ_ASSERT(!(m[2] & DNS_FLAG_AA));
	FUZZ_ASSERT(qi->ad || qi->do_bit || !(m[3] & DNS_FLAG_AD));
	FUZZ_ASSERT(get16(m + 4) == 1);
	FUZZ_ASSERT(memcmp(m + DNS_HEADER_BYTES, query + DNS_HEADER_BYTES,
	    qi->qend - DNS_HEADER_BYTES) == 0);
	FUZZ_ASSERT(dns_parse_answer(m, len) == qi->qend);
	FUZZ_ASSERT(dns_summarize(m, len, qi->qend, &s) == 0);
	if (exact)
		FUZZ_ASSERT(s.end == len);
	FUZZ_ASSERT(fuzz_count_opt(m, len, qi->qend, NULL) == (s.opt_end != 0));
	if (qi->has_opt && opt_iff)
		FUZZ_ASSERT(s.opt_end != 0);
	if (!qi->has_opt)
		FUZZ_ASSERT(s.opt_end == 0);
	if (s.opt_end != 0 && exact) {
		FUZZ_ASSERT(get16(m + s.opt_start + 3) == UDP_ADVERTISE_BYTES);
		FUZZ_ASSERT(m[s.opt_start + 6] == 0);
		FUZZ_ASSERT((m[s.opt_start + 7] & 0x80) ==
		    (qi->do_bit ? 0x80 : 0));
	}
	/* never more than the client takes: the minimal TC answer drops
	 * the OPT's EDE options when they do not fit (so, at 512 bytes and
	 * more, it always fits) */
	if (udp_limit != 0)
		FUZZ_ASSERT(len <= udp_limit);
}

#endif
