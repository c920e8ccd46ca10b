/*
 * Test messages built by hand, shared by tests/unit.c and the fuzz
 * harnesses (each includes dotproxy.c first).
 */
#ifndef DNSMSG_H
#define DNSMSG_H

/* Writes a name in text form ("a.b", "" for the root) in wire form at m.
 * Returns its length. */
static size_t
mkname(unsigned char *m, const char *name)
{
	size_t off = 0;

	while (*name) {
		const char *dot = strchr(name, '.');
		size_t l = dot ? (size_t)(dot - name) : strlen(name);

		m[off++] = (unsigned char)l;
		memcpy(m + off, name, l);
		off += l;
		name += l + (dot ? 1 : 0);
	}
	m[off++] = 0;
	return off;
}

/* Builds a query: header (RD set), name in text form, type, class IN;
 * optional OPT (version 0, no flags, no options) with the given UDP size.
 * Returns the length. */
static size_t
mkquery(unsigned char *m, uint16_t id, const char *name, uint16_t type,
    int opt, uint16_t udp_size)
{
	size_t off = DNS_HEADER_BYTES;

	memset(m, 0, DNS_HEADER_BYTES);
	put16(m, id);
	m[2] = DNS_FLAG_RD;
	put16(m + 4, 1);
	off += mkname(m + off, name);
	put16(m + off, type);
	put16(m + off + 2, 1);
	off += 4;
	if (opt) {
		memset(m + off, 0, DNS_OPT_BYTES);
		m[off + 2] = DNS_TYPE_OPT;
		put16(m + off + 3, udp_size);
		off += DNS_OPT_BYTES;
		put16(m + 10, 1);
	}
	return off;
}

/*
 * Appends a record at len and counts it in section (DNS_SEC_AN, _NS or
 * _AR: the caller appends in section order). owner is in wire form
 * (owner_len bytes, a pointer allowed). Returns the new length.
 */
static size_t
add_rr(unsigned char *m, size_t len, unsigned section,
    const unsigned char *owner, size_t owner_len, uint16_t type,
    uint16_t klass, uint32_t ttl, const void *rdata, size_t rdlen)
{
	unsigned char *p = m + len;

	memcpy(p, owner, owner_len);
	p += owner_len;
	put16(p, type);
	put16(p + 2, klass);
	put16(p + 4, ttl >> 16);
	put16(p + 6, ttl & 0xFFFF);
	put16(p + 8, (unsigned)rdlen);
	if (rdlen)
		memcpy(p + 10, rdata, rdlen);
	put16(m + 6 + 2 * section, get16(m + 6 + 2 * section) + 1u);
	return len + owner_len + 10 + rdlen;
}

/* Appends an OPT record to the additional section: UDP size, extended
 * RCODE byte, version, flags (0x8000: DO) and options (optlen bytes of
 * code, length, data). Returns the new length. */
static size_t
add_opt(unsigned char *m, size_t len, uint16_t udp_size, unsigned ext_rcode,
    unsigned version, unsigned flags, const void *opts, size_t optlen)
{
	static const unsigned char root[1] = { 0 };
	uint32_t ttl = (uint32_t)ext_rcode << 24 | (uint32_t)version << 16 |
	    (flags & 0xFFFF);

	return add_rr(m, len, DNS_SEC_AR, root, 1, DNS_TYPE_OPT, udp_size, ttl,
	    opts, optlen);
}

#endif
