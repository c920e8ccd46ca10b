/*
 * libFuzzer harness: what an HTTP client has sent to --http, as a
 * connection's buffer holds it (observe_parse_http). The input is copied
 * into a buffer of exactly its size, so a read past len is caught. Checks
 * against a reference of its own: 0 ("more to come") exactly when no
 * blank line (CRLF CRLF) has come and the buffer is not full; -1 when the
 * buffer is full without one; 1 only with a blank line, the target then
 * lying inside the request line (between its two spaces, before
 * " HTTP/1.x\r"), GET told exactly; the answer depends on the head alone
 * (bytes after the blank line change nothing), and every prefix before
 * the blank line is "more to come", as the loop sees a request arrive in
 * pieces. Then the request is answered as the loop would (observe_serve,
 * but for /ready, which would start an upstream connection), within the
 * connection's output buffer.
 *
 * Build and run: make fuzz (tests/fuzz/README.md).
 */
#define DOTPROXY_NO_MAIN
#include "../../dotproxy.c"
#include "fuzz_util.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

/* Where the first blank line starts, or -1. */
static long
blank_line(const char *b, size_t n)
{
	size_t i;

	for (i = 0; i + 4 <= n; i++)
		if (b[i] == '\r' && b[i + 1] == '\n' && b[i + 2] == '\r' &&
		    b[i + 3] == '\n')
			return (long)i;
	return -1;
}

static int
parse_copy(const char *src, size_t n, const char **path, size_t *plen,
    int *get, char **copy)
{
	*copy = (char *)fuzz_dup((const unsigned char *)src, n);
	return observe_parse_http(*copy, n, path, plen, get);
}

int
LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	static unsigned char out[HTTP_OUT_BYTES];
	const char *path = NULL, *p2 = NULL;
	size_t plen = 0, p2len = 0, head, i;
	int get = -1, get2 = -1, r, r2;
	char *buf, *b2;
	long blank;

	if (size > 4 * HTTP_IN_BYTES)
		return 0;
	r = parse_copy((const char *)data, size, &path, &plen, &get, &buf);
	blank = blank_line(buf, size);
	FUZZ_ASSERT(r == -1 || r == 0 || r == 1);
	FUZZ_ASSERT((r == 0) == (blank < 0 && size < HTTP_IN_BYTES));
	if (blank < 0)
		FUZZ_ASSERT(r == 0 || size >= HTTP_IN_BYTES);
	if (r != 1) {
		FUZZ_ASSERT(path == NULL && plen == 0 && get == -1);
		goto out;
	}
	FUZZ_ASSERT(blank >= 0);
	head = (size_t)blank + 4;
	/* the target: inside the buffer, between two spaces, no space in
	 * it, then "HTTP/1." and one more byte and CR, all before the
	 * blank line; the method before it, not empty */
	FUZZ_ASSERT(path > buf && path + plen < buf + blank);
	FUZZ_ASSERT(plen >= 1);
	FUZZ_ASSERT(path[-1] == ' ' && path[plen] == ' ');
	FUZZ_ASSERT(memchr(path, ' ', plen) == NULL);
	FUZZ_ASSERT(memchr(buf, ' ', (size_t)(path - 1 - buf)) == NULL);
	FUZZ_ASSERT(path - 1 > buf);
	FUZZ_ASSERT((size_t)(path + plen - buf) + 9 <= (size_t)blank);
	FUZZ_ASSERT(memcmp(path + plen + 1, "HTTP/1.", 7) == 0);
	FUZZ_ASSERT(path[plen + 9] == '\r');
	FUZZ_ASSERT(get == (path - buf == 4 && memcmp(buf, "GET ", 4) == 0));

	/* the head alone gives the same answer */
	r2 = parse_copy(buf, head, &p2, &p2len, &get2, &b2);
	FUZZ_ASSERT(r2 == 1 && p2 - b2 == path - buf && p2len == plen &&
	    get2 == get);
	free(b2);
	/* one byte short of the blank line: more to come (or full) */
	p2 = NULL;
	r2 = parse_copy(buf, head - 1, &p2, &p2len, &get2, &b2);
	FUZZ_ASSERT(r2 == (head - 1 >= HTTP_IN_BYTES ? -1 : 0));
	free(b2);
	/* and a few shorter prefixes, as a request comes in pieces */
	for (i = 0; i < 4 && i < head - 1; i++) {
		size_t n = (head - 1) * i / 4;

		r2 = parse_copy(buf, n, &p2, &p2len, &get2, &b2);
		FUZZ_ASSERT(r2 == (n >= HTTP_IN_BYTES ? -1 : 0));
		free(b2);
	}

	/* answered as the loop would, within the output buffer */
	if (!(plen == 6 && memcmp(path, "/ready", 6) == 0)) {
		struct http_conn c;

		memset(&c, 0, sizeof c);
		c.fd = -1;
		c.out = out;
		observe_serve(&c, path, plen, get);
		FUZZ_ASSERT(c.out_len > 0 && c.out_len <= HTTP_OUT_BYTES);
		FUZZ_ASSERT(memcmp(out, get ? "HTTP/1.1 " : "HTTP/1.1 405 ",
		    get ? 9 : 13) == 0);
		FUZZ_ASSERT(blank_line((const char *)out, c.out_len) > 0);
	}
out:
	free(buf);
	return 0;
}
