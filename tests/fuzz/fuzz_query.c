/*
 * libFuzzer harness: a client's UDP datagram (or TCP frame body) as the
 * proxy sees it. dns_parse_query; every answer dotproxy makes itself
 * (dns_make_error with each RCODE, BADVERS and TC, with and without an
 * Extended DNS Error; dns_local_answer); for a query it would forward:
 * the cache key and hash, dns_match_zone, query_name_text, and
 * dns_build_query at every padding block (the query that goes upstream
 * must be a clean query: the same question, exactly one OPT of ours,
 * nothing else of the client's). Checks the invariants the rest of the
 * proxy relies on (see the asserts).
 *
 * Build and run: make fuzz (tests/fuzz/README.md).
 */
#define DOTPROXY_NO_MAIN
#include "../../dotproxy.c"
#include "fuzz_util.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static const unsigned char zone_lan[] = "\3lan";		/* lan. */
static const unsigned char zone_cl[] = "\7cluster\5local";	/* cluster.local. */
static const unsigned char zone_root[] = "";			/* . */
static char fuzz_ede_text[DNS_EDE_TEXT_MAX + 40];		/* 'e's */

/* An answer of dotproxy's own (error or local) to the query m/qi. */
static void
check_own_answer(const unsigned char *out, size_t len, const unsigned char *m,
    const struct dns_query_info *qi)
{
	struct dns_summary s;
	size_t qe = qi->qend ? qi->qend : DNS_HEADER_BYTES;

	FUZZ_ASSERT(len >= qe);
	FUZZ_ASSERT(get16(out) == qi->id);
	FUZZ_ASSERT(out[2] & DNS_FLAG_QR);
	FUZZ_ASSERT((out[2] & 0x78) == (m[2] & 0x78));	/* opcode */
	FUZZ_ASSERT((out[2] & DNS_FLAG_RD) == qi->rd);
	FUZZ_ASSERT(!!(out[3] & DNS_FLAG_CD) == qi->cd);
	FUZZ_ASSERT(!(out[3] & DNS_FLAG_AD));
	FUZZ_ASSERT(get16(out + 4) == (qi->qend != 0));
	FUZZ_ASSERT(memcmp(out + DNS_HEADER_BYTES, m + DNS_HEADER_BYTES,
	    qe - DNS_HEADER_BYTES) == 0);
	if (qi->qend != 0)
		FUZZ_ASSERT(dns_parse_answer(out, len) == qi->qend);
	FUZZ_ASSERT(dns_summarize(out, len, qe, &s) == 0);
	FUZZ_ASSERT(s.end == len);
	FUZZ_ASSERT(fuzz_count_opt(out, len, qe, NULL) == (s.opt_end != 0));
	/* the OPT iff the client's was well-formed, last, with its DO */
	FUZZ_ASSERT((s.opt_end != 0) == qi->has_opt);
	if (qi->has_opt) {
		FUZZ_ASSERT(s.opt_end == len);
		FUZZ_ASSERT(get16(out + s.opt_start + 3) ==
		    UDP_ADVERTISE_BYTES);
		FUZZ_ASSERT(out[s.opt_start + 6] == 0);
		FUZZ_ASSERT(out[s.opt_start + 7] == (qi->do_bit ? 0x80 : 0));
		FUZZ_ASSERT(out[s.opt_start + 8] == 0);
	}
}

int
LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	static const size_t blocks[] = { 0, 16, 128, 468, PAD_BLOCK_MAX_BYTES };
	static const int rcodes[] = { DNS_RCODE_FORMERR, DNS_RCODE_SERVFAIL,
		DNS_RCODE_NOTIMP, DNS_RCODE_REFUSED, DNS_RCODE_BADVERS,
		DNS_REPLY_TC };
	const unsigned char *zones[3] = { zone_lan, zone_cl, zone_root };
	size_t zone_lens[3] = { sizeof zone_lan, sizeof zone_cl,
	    sizeof zone_root };
	struct dns_query_info qi;
	unsigned char *m, *out;
	char name[DNS_NAME_MAX_BYTES * 4 + 8];
	size_t i, len;
	int rc, z;

	if (size > MSG_MAX_BYTES)
		return 0;
	if (fuzz_ede_text[0] == '\0')
		memset(fuzz_ede_text, 'e', sizeof fuzz_ede_text - 1);
	m = fuzz_dup(data, size);	/* exact size: ASan sees overreads */
	rc = dns_parse_query(m, size, &qi);
	if (rc == DNS_DROP) {
		FUZZ_ASSERT(size < DNS_HEADER_BYTES || (m[2] & DNS_FLAG_QR));
		goto out;
	}
	FUZZ_ASSERT(size >= DNS_HEADER_BYTES && !(m[2] & DNS_FLAG_QR));
	FUZZ_ASSERT(rc == 0 || rc == DNS_RCODE_FORMERR ||
	    rc == DNS_RCODE_NOTIMP || rc == DNS_RCODE_BADVERS);
	FUZZ_ASSERT(qi.id == get16(m));
	FUZZ_ASSERT(qi.qend == 0 || (qi.qend <= size &&
	    qi.qend <= DNS_QUESTION_MAX_BYTES &&
	    dns_check_name(m, size, DNS_HEADER_BYTES) + 4 == qi.qend));
	FUZZ_ASSERT(qi.udp_limit >= UDP_MIN_LIMIT);
	FUZZ_ASSERT(qi.has_opt || (!qi.do_bit && qi.edns_version == 0 &&
	    qi.udp_limit == UDP_MIN_LIMIT));
	if (qi.has_opt && qi.qend != 0)
		FUZZ_ASSERT(fuzz_count_opt(m, size, qi.qend, NULL) == 1);
	if (rc == 0)
		FUZZ_ASSERT(qi.qend != 0 && get16(m + 4) == 1 &&
		    (m[2] & 0x78) == 0 && qi.edns_version == 0);
	if (rc == DNS_RCODE_BADVERS)
		FUZZ_ASSERT(qi.has_opt && qi.edns_version != 0);

	/* Every answer of dotproxy's own: the question and OPT echoed;
	 * without an EDE never longer than the query (REFUSED is no
	 * amplifier). */
	for (i = 0; i < sizeof rcodes / sizeof rcodes[0]; i++) {
		struct dns_summary s;

		out = fuzz_alloc(DNS_ERROR_MAX_BYTES);
		/* with an Extended DNS Error (RFC 8914) and the longest
		 * text: the same answer, the option last in its OPT */
		len = dns_make_error(out, m, &qi, rcodes[i], EDE_NETWORK_ERROR,
		    fuzz_ede_text);
		FUZZ_ASSERT(len <= DNS_ERROR_MAX_BYTES);
		check_own_answer(out, len, m, &qi);
		if (qi.has_opt) {
			size_t e = len - 6 - DNS_EDE_TEXT_MAX;

			FUZZ_ASSERT(get16(out + e) == EDNS_OPTION_EDE);
			FUZZ_ASSERT(get16(out + e + 2) == 2 + DNS_EDE_TEXT_MAX);
			FUZZ_ASSERT(get16(out + e + 4) == EDE_NETWORK_ERROR);
		}
		len = dns_make_error(out, m, &qi, rcodes[i], -1, NULL);
		FUZZ_ASSERT(len <= DNS_ERROR_MAX_BYTES);
		FUZZ_ASSERT(len <= size);
		check_own_answer(out, len, m, &qi);
		FUZZ_ASSERT(get16(out + 6) == 0 && get16(out + 8) == 0);
		FUZZ_ASSERT(!(out[2] & DNS_FLAG_AA));
		FUZZ_ASSERT(!!(out[2] & DNS_FLAG_TC) ==
		    (rcodes[i] == DNS_REPLY_TC));
		FUZZ_ASSERT((out[3] & 0x0F) == (rcodes[i] == DNS_REPLY_TC ? 0 :
		    ((unsigned)rcodes[i] & 0x0F)));
		if (qi.has_opt) {
			(void)dns_summarize(out, len, qi.qend ? qi.qend :
			    DNS_HEADER_BYTES, &s);
			FUZZ_ASSERT(out[s.opt_start + 5] ==
			    (rcodes[i] == DNS_REPLY_TC ? 0 :
			    (unsigned)rcodes[i] >> 4));
		}
		free(out);
	}
	if (rc != 0)
		goto out;

	/* Special-use names: the answer is complete and its own. */
	out = fuzz_alloc(DNS_LOCAL_MAX_BYTES);
	len = dns_local_answer(out, m, &qi);
	FUZZ_ASSERT((len != 0) == (dns_match_zone(m, DNS_HEADER_BYTES,
	    dns_local_zones, dns_local_lens, 4) >= 0));
	if (len != 0) {
		unsigned rcode = out[3] & 0x0F;

		FUZZ_ASSERT(len <= DNS_LOCAL_MAX_BYTES);
		check_own_answer(out, len, m, &qi);
		FUZZ_ASSERT(get16(out + 10) == qi.has_opt);
		if (qi.qclass != DNS_CLASS_IN) {
			FUZZ_ASSERT(rcode == DNS_RCODE_REFUSED);
			FUZZ_ASSERT(get16(out + 6) == 0 && get16(out + 8) == 0);
		} else {
			FUZZ_ASSERT(rcode == 0 || rcode == DNS_RCODE_NXDOMAIN);
			FUZZ_ASSERT(out[2] & DNS_FLAG_AA);
			FUZZ_ASSERT(get16(out + 6) + get16(out + 8) >= 1);
		}
	}
	free(out);

	/* What query_receive does with a query it forwards: the cache key
	 * and hash (the same for the name in another case), the zone. */
	{
		unsigned char *c = fuzz_dup(m, qi.qend);
		uint8_t key = cache_key(&qi, 0);

		for (i = DNS_HEADER_BYTES; i < qi.qend - 4u; i++)
			if (dns_lower(c[i]) != c[i])
				c[i] = (unsigned char)dns_lower(c[i]);
			else if (c[i] >= 'a' && c[i] <= 'z')
				c[i] = (unsigned char)(c[i] - 'a' + 'A');
		FUZZ_ASSERT(dns_question_equal(c, qi.qend, m, qi.qend));
		FUZZ_ASSERT(cache_hash(c, qi.qend, key) ==
		    cache_hash(m, qi.qend, key));
		c[qi.qend - 3] ^= 0x20;		/* type 65 <-> 97 */
		FUZZ_ASSERT(!dns_question_equal(c, qi.qend, m, qi.qend));
		free(c);
	}
	z = dns_match_zone(m, DNS_HEADER_BYTES, zones, zone_lens, 3);
	FUZZ_ASSERT(z >= 0);		/* "." matches every name */
	z = dns_match_zone(m, DNS_HEADER_BYTES, zones, zone_lens, 2);
	FUZZ_ASSERT(z >= -1 && z < 2);
	query_name_text(m, qi.qend, name, sizeof name);
	FUZZ_ASSERT(strlen(name) < sizeof name);

	/* The query sent upstream: rebuilt, a multiple of the block, the
	 * client's question, RD, CD and DO, AD=1, one OPT of ours with
	 * only Padding (none at block 0), no other record. */
	for (i = 0; i < sizeof blocks / sizeof blocks[0]; i++) {
		struct dns_query_info pi;
		size_t o = qi.qend;

		out = fuzz_alloc(PENDING_QUERY_BYTES);
		len = dns_build_query(out, m, &qi, blocks[i]);
		FUZZ_ASSERT(len <= PENDING_QUERY_BYTES);
		FUZZ_ASSERT(blocks[i] == 0 || len % blocks[i] == 0);
		FUZZ_ASSERT(dns_parse_query(out, len, &pi) == 0);
		FUZZ_ASSERT(pi.id == 0 && pi.qend == qi.qend);
		FUZZ_ASSERT(pi.has_opt && pi.edns_version == 0);
		FUZZ_ASSERT(pi.udp_limit == UDP_ADVERTISE_BYTES);
		FUZZ_ASSERT(pi.do_bit == qi.do_bit && pi.rd == qi.rd &&
		    pi.cd == qi.cd && pi.ad == 1);
		FUZZ_ASSERT(out[2] == qi.rd);
		FUZZ_ASSERT((out[3] & ~(DNS_FLAG_AD | DNS_FLAG_CD)) == 0);
		FUZZ_ASSERT(get16(out + 4) == 1 && get16(out + 6) == 0 &&
		    get16(out + 8) == 0 && get16(out + 10) == 1);
		FUZZ_ASSERT(memcmp(out + DNS_HEADER_BYTES,
		    m + DNS_HEADER_BYTES, qi.qend - DNS_HEADER_BYTES) == 0);
		FUZZ_ASSERT(fuzz_records_end(out, len, qi.qend) == len);
		FUZZ_ASSERT(out[o] == 0 && get16(out + o + 1) == DNS_TYPE_OPT);
		FUZZ_ASSERT(out[o + 5] == 0 && out[o + 6] == 0 &&
		    out[o + 7] == (qi.do_bit ? 0x80 : 0) && out[o + 8] == 0);
		if (blocks[i] == 0) {
			FUZZ_ASSERT(len == o + DNS_OPT_BYTES);
		} else {
			size_t k, pad = len - o - DNS_OPT_BYTES - 4;

			FUZZ_ASSERT(get16(out + o + 9) == 4 + pad);
			FUZZ_ASSERT(get16(out + o + 11) == EDNS_OPTION_PADDING);
			FUZZ_ASSERT(get16(out + o + 13) == pad);
			FUZZ_ASSERT(pad < blocks[i]);
			for (k = 0; k < pad; k++)
				FUZZ_ASSERT(out[o + 15 + k] == 0);
		}
		free(out);
	}
out:
	free(m);
	return 0;
}
