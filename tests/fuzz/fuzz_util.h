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

#endif
