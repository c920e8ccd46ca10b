/*
 * libFuzzer harness: a client's TCP byte stream through the real framing
 * code. The input goes, in chunks of fuzzer-chosen sizes, into one end of
 * a socketpair whose other end is a struct client_conn slot, and
 * client_on_readable() reads it as the loop would (only while the slot
 * would be in the read set). There are no upstreams, so every query that
 * parses gets SERVFAIL from query_receive() (upstream_none_usable) and
 * nothing touches the network. Checks that every answer that comes back
 * is a well-framed DNS response and that no pending slot leaks.
 *
 * Input: byte 0 picks the client's address (bit 0: allowed or not, so
 * both the REFUSED and SERVFAIL paths run) and seeds the chunk sizes; the
 * rest is the stream.
 */
#define DOTPROXY_NO_MAIN
#include "../../dotproxy.c"
#include "fuzz_util.h"

#include <sys/socket.h>

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);
int LLVMFuzzerInitialize(int *argc, char ***argv);

int
LLVMFuzzerInitialize(int *argc, char ***argv)
{
	(void)argc;
	(void)argv;
	g.log_level = LOG_ERROR;
	g.query_timeout_ms = QUERY_TIMEOUT_MS;
	g.pad_block = PAD_BLOCK_BYTES;
	g.now_ms = 1000000;
	pending_init();
	cache_init(64 * 1024);
	client_init();
	config_default_allow();
	g.n_upstreams = 0;	/* every query: SERVFAIL, no network */
	return 0;
}

/* Reads what the proxy sent back and checks the framing: each frame is
 * a response at least a header long. */
static void
drain(int fd, unsigned char *buf, size_t *len, size_t cap)
{
	for (;;) {
		ssize_t n;
		size_t off = 0;

		if (*len == cap)
			*len = 0;	/* cannot happen: frames < cap */
		n = recv(fd, buf + *len, cap - *len, MSG_DONTWAIT);
		if (n <= 0)
			return;
		*len += (size_t)n;
		while (*len - off >= 2) {
			size_t mlen = get16(buf + off);

			if (*len - off < 2 + mlen)
				break;
			FUZZ_ASSERT(mlen >= DNS_HEADER_BYTES);
			FUZZ_ASSERT(buf[off + 2 + 2] & DNS_FLAG_QR);
			off += 2 + mlen;
		}
		memmove(buf, buf + off, *len - off);
		*len -= off;
	}
}

int
LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	static unsigned char back[2 * (2 + MSG_MAX_BYTES)];
	struct client_conn *c = &g.clients[0];
	size_t off = 1, back_len = 0;
	unsigned seed;
	int sv[2];

	if (size < 1)
		return 0;
	seed = data[0];
	if (socketpair(AF_UNIX, SOCK_STREAM | SOCK_NONBLOCK, 0, sv) < 0)
		abort();
	/* What client_accept() does, with an address of our choice. */
	memset(&c->peer, 0, sizeof c->peer);
	c->peer.sin.sin_family = AF_INET;
	c->peer.sin.sin_addr.s_addr = htonl(seed & 1 ? 0x08080808 :
	    0x7F000001);
	c->fd = sv[0];
	c->state = CLIENT_READ_LEN;
	c->inflight = 0;
	c->in_len = 0;
	c->out_off = c->out_len = 0;
	c->last_active_ms = g.now_ms;
	while (c->state != CLIENT_FREE) {
		size_t chunk = 1 + (seed = seed * 1103515245u + 12345u) %
		    1500u;

		if (off < size) {
			if (chunk > size - off)
				chunk = size - off;
			if (send(sv[1], data + off, chunk, MSG_DONTWAIT) > 0)
				off += chunk;	/* short sends: see below */
		} else if (off == size) {
			shutdown(sv[1], SHUT_WR);	/* client is done */
			off++;
		}
		/* One loop pass: what client_want() would select. */
		if (c->state != CLIENT_EOF &&
		    c->inflight < MAX_INFLIGHT_PER_CLIENT &&
		    c->out_len - c->out_off < CLIENT_OUT_BYTES / 2)
			client_on_readable(c);
		else if (off > size && c->out_len == c->out_off &&
		    c->state != CLIENT_EOF)
			break;		/* nothing left that it would do */
		if (c->state != CLIENT_FREE && c->out_len > c->out_off)
			client_on_writable(c);
		drain(sv[1], back, &back_len, sizeof back);
		g.now_ms += seed % 64;
		if (c->state != CLIENT_FREE)
			client_timers(c);
		if (off > size && c->state == CLIENT_EOF &&
		    c->out_len == c->out_off && c->inflight == 0)
			break;
	}
	drain(sv[1], back, &back_len, sizeof back);
	if (c->state != CLIENT_FREE)
		client_close(c);
	close(sv[1]);
	/* No upstream: every query was answered at once, none is pending. */
	FUZZ_ASSERT(g.n_free == MAX_PENDING);
	FUZZ_ASSERT(c->fd == -1);
	return 0;
}
