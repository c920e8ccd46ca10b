/*
 * Test messages built by hand, shared by tests/unit.c and the fuzz
 * harnesses (each includes dotproxy.c first).
 */
#ifndef DNSMSG_H
#define DNSMSG_H

/* Builds a query: header, name in text form, type, class IN; optional OPT
 * with the given UDP size. Returns the length. */
static size_t
mkquery(unsigned char *m, uint16_t id, const char *name, uint16_t type,
    int opt, uint16_t udp_size)
{
	size_t off = DNS_HEADER_BYTES;

	memset(m, 0, DNS_HEADER_BYTES);
	put16(m, id);
	m[2] = DNS_FLAG_RD;
	put16(m + 4, 1);
	while (*name) {
		const char *dot = strchr(name, '.');
		size_t l = dot ? (size_t)(dot - name) : strlen(name);

		m[off++] = (unsigned char)l;
		memcpy(m + off, name, l);
		off += l;
		name += l + (dot ? 1 : 0);
	}
	m[off++] = 0;
	put16(m + off, type);
	put16(m + off + 2, 1);
	off += 4;
	if (opt) {
		memset(m + off, 0, DNS_OPT_FIXED_BYTES);
		m[off + 2] = DNS_TYPE_OPT;
		put16(m + off + 3, udp_size);
		off += DNS_OPT_FIXED_BYTES;
		put16(m + 10, 1);
	}
	return off;
}

#endif
