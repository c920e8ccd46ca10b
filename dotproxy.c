/*
 * dotproxy - a DNS-over-TLS forwarder that fits on a router.
 *
 * Copyright (c) 2026 the dotproxy authors. MIT licence (see README.md).
 *
 * ==== overview ==========================================================
 *
 * dotproxy listens for plain DNS on UDP and TCP and forwards every query
 * over TLS 1.2 (RFC 7858) to one of an ordered list of upstream resolvers.
 * One C file, statically linked with musl and BearSSL; trust anchors are
 * compiled in; at run time it needs no file at all.
 *
 *   client --UDP/TCP--> listener --> --allow --> special-use name? --> answer
 *                                                      | no
 *                                                      v
 *                                                 cache hit? --> answer
 *                                                      | miss
 *                                                      v
 *             forward zone? --plain DNS--> zone server  pending table
 *             (a socket per query)                     |
 *                                     upstream queue (preferred usable one)
 *                                                      | TLS record
 *                                                      v (many queries)
 *   client <--answer-- cache + deliver <-- match ID+question <-- upstream
 *
 * Every query gets a pending-table slot and is sent as dotproxy builds it
 * (the client's question and DO/CD/RD bits; none of its EDNS options), with
 * a random ID that its upstream connection has never used (an ID map per
 * connection finds the slot in O(1)). The answer is checked (ID and
 * question), prepared once (only EDE options kept, TTL rules) for the
 * cache, and goes back with the client's ID and spelling of the question.
 * TLS sessions are resumed only from a verified handshake with the same
 * upstream (see "upstream").
 *
 * One select() loop runs everything; nothing blocks; nothing allocates
 * after start-up. Memory is fixed by the limits block below:
 *   upstreams  8 x (BearSSL ~7 KB + I/O 33 KB + input 16 KB + answers
 *              64 KB + pinning 9 KB + IDs 12 KB)
 *   pending    1024 x (~170 bytes + a 1.3 KB query buffer)
 *   clients    128 x (~100 bytes + 64 KB in + 68 KB out)
 *   zones      16 x ~600 bytes, 128 UDP sockets, 64 TCP queries x 64 KB
 *   udp        64 x 4 KB in + 64 x 1.5 KB out, batched
 *   cache      --cache-size bytes (default 256 KB), taken at start-up
 * Buffers live apart from their structs and are touched only when used
 * (a client's pages are given back when it leaves after a big query):
 * resident size is about 350 KB idle and under 1 MB forwarding 200
 * queries at once (cache aside).
 *
 * Table of contents (grep for "==== name"):
 *   limits      every tunable, with units and reasons
 *   types       state machines and their invariants
 *   globals     struct proxy g
 *   util        logging, time, errors by name
 *   dns         pure functions on DNS messages
 *   anchors     compiled-in trust anchors, --ca-file loader
 *   trust       SPKI pins, the validation clock, --allow
 *   pending     the pending-query table
 *   cache       answers by question, LRU in fixed memory
 *   zone        private zones forwarded over plain DNS
 *   upstream    TLS connections to resolvers
 *   client      TCP client connections
 *   udp         UDP listeners, batched
 *   query       what happens to a query, from arrival to answer
 *   loop        fd sets, select(), dispatch, timers
 *   config      options, specs, signals
 *   main
 */

#define _GNU_SOURCE	/* recvmmsg, IP_PKTINFO, getrandom, accept4 */

#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <getopt.h>
#include <grp.h>
#include <limits.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <signal.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/random.h>
#include <sys/mman.h>
#include <sys/resource.h>
#include <sys/select.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/types.h>
#include <sys/un.h>
#include <stddef.h>
#include <time.h>
#include <unistd.h>

#include "bearssl.h"

#ifndef DOTPROXY_VERSION
#define DOTPROXY_VERSION "0.1.0-dev"
#endif

/* ==== limits ========================================================== */
/*
 * Every fixed size and every timeout. Arrays are sized from these, so the
 * memory use is known at compile time (see the overview).
 */
#define MAX_LISTENERS		8	/* --listen addresses (UDP+TCP each) */
#define MAX_UPSTREAMS		8	/* --upstream specs */
#define MAX_ZONES		16	/* --forward-zone specs */
#define MAX_ZONE_UDP		128	/* zone queries in flight: one socket
					 * each, so a random source port each
					 * (RFC 5452 9.2) */
#define MAX_ZONE_TCP		64	/* TCP queries to zone servers at once
					 * (after TC=1, or ,tcp zones) */
#define MAX_ALLOW		32	/* --allow ranges */
#define MAX_PINS		8	/* SPKI pins per upstream */
#define PIN_LEAF_MAX_BYTES	8192	/* a pinned server's certificate */
#define MAX_TCP_CLIENTS		128	/* concurrent TCP client connections */
#define MAX_PENDING		1024	/* queries in flight */
#define ID_MAP_SLOTS		(2 * MAX_PENDING)	/* in-flight IDs of one
					 * connection: open addressing, at most
					 * half full */
#define ID_MAX_USED		32768	/* IDs one connection may use (half of
					 * them): then it is made anew, so that
					 * a fresh random ID is found quickly */
#define MAX_INFLIGHT_PER_CLIENT	64	/* per TCP connection (RFC 7766 6.2.1) */
#define MAX_ATTEMPTS		3	/* sends of one query before SERVFAIL */
#define UDP_BATCH		64	/* datagrams per recvmmsg()/sendmmsg() */
#define UDP_TX_SLOT_BYTES	1536	/* answers up to this size are batched;
					 * larger ones are sent at once */

#define DNS_HEADER_BYTES	12
#define DNS_NAME_MAX_BYTES	255	/* RFC 1035 3.1, wire form */
#define DNS_LABEL_MAX_BYTES	63
#define UDP_QUERY_MAX_BYTES	4096	/* longer datagrams get TC=1: the
					 * client asks again over TCP */
#define MSG_MAX_BYTES		65535	/* TCP length prefix maximum */
#define UDP_MIN_LIMIT		512	/* RFC 1035 4.2.1, and EDNS floor */
#define UDP_ADVERTISE_BYTES	1232	/* our OPT size (DNS flag day 2020) */
#define CLIENT_IN_BYTES		(2 + MSG_MAX_BYTES)	/* any frame (RFC 1035
					 * 4.2.2); pages used only when needed */
#define CLIENT_OUT_BYTES	(2 + MSG_MAX_BYTES + 4096)
#define CLIENT_SMALL_BYTES	8192	/* buffers used past this are given
					 * back at close (util_release) */
#define AUTHNAME_MAX_BYTES	253	/* text form of a host name */
#define PAD_BLOCK_BYTES		128	/* RFC 8467 4.1 query policy; --padding */
#define PAD_BLOCK_MAX_BYTES	1024
#define PENDING_QUERY_BYTES	(DNS_HEADER_BYTES + DNS_NAME_MAX_BYTES + 4 + \
				 DNS_OPT_BYTES + 4 + PAD_BLOCK_MAX_BYTES)
					/* the query we send: question, OPT,
					 * Padding (dns_build_query) */
#define DNS_OPT_BYTES		11	/* OPT RR without options */

#define CACHE_BLOCK_BYTES	128	/* an answer is a chain of blocks */
#define CACHE_MAX_ANSWER_BYTES	8192	/* larger answers are not cached */
#define CACHE_DEFAULT_BYTES	(256 * 1024)	/* --cache-size; a router's */
#define CACHE_MIN_TTL_S		0	/* --cache-min-ttl */
#define CACHE_MAX_TTL_S		86400	/* --cache-max-ttl */
#define CACHE_NEG_MAX_TTL_S	3600	/* NXDOMAIN/NODATA cap (RFC 2308 5) */
#define STALE_TTL_S		30	/* TTL of a stale answer (RFC 8767 4) */
#define STALE_TIMEOUT_MS	1800	/* RFC 8767 5: answer stale after this
					 * wait (with --serve-stale), refresh
					 * meanwhile; --stale-timeout */
#define PREFETCH_PCT		25	/* refresh a hit in the last 25 % of its
					 * TTL (unbound's prefetch is 10 %: make
					 * bench's Zipf run, Knot's hit rate at
					 * Knot's upstream cost); --prefetch */
#define PREFETCH_MIN_TTL_S	10	/* shorter TTLs are not prefetched */
#define PREFETCH_MIN_FREE	(MAX_PENDING / 4)	/* pending slots a
					 * prefetch leaves to clients' queries */
#define HEDGE_PCT		5	/* hedges: at most 5 % of queries more;
					 * --hedge-percent */
#define HEDGE_FLOOR_MS		20	/* a hedge waits the upstream's round
					 * trip and four deviations, at least
					 * this (and less than a stall) */
#define HEDGE_BURST		10	/* hedges that may go at once */

#define QUERY_TIMEOUT_MS	4000	/* dig gives up at 5 s; answer first;
					 * --timeout */
#define HANDSHAKE_TIMEOUT_MS	5000	/* TCP connect + TLS handshake */
#define UPSTREAM_IDLE_MS	9000	/* below Cloudflare's 10 s (stubby#183);
					 * --idle-timeout */
#define STALL_FLOOR_MS		200	/* silent for its usual round trip and
					 * four deviations (at least this, at most
					 * STALL_CEIL_MS or timeout / 2) with queries
					 * in flight: suspect (ask another upstream
					 * too), not yet dropped */
#define STALL_CEIL_MS		1000
#define BACKOFF_ALONE_MS	250	/* the back-off when no other upstream is
					 * usable: clients get SERVFAIL meanwhile,
					 * so come back quickly */
#define USER_TIMEOUT_MIN_MS	1000	/* TCP_USER_TIMEOUT: --timeout, at least
					 * this (a half-open path is found by the
					 * kernel, from unacknowledged data) */
#define ACCEPT_PAUSE_MS		1000	/* a listener rests this long after
					 * accept() ran out of descriptors */
#define CLOSE_TIMEOUT_MS	1000	/* wait for close_notify to go out */
#define SESSION_MAX_AGE_MS	3600000	/* a TLS session is resumed for an hour
					 * after its full handshake, no more */
#define DRAIN_TIMEOUT_MS	5000	/* SIGTERM: finish queries in flight for
					 * at most this long; --drain-timeout */
#define LAME_DUCK_MS		0	/* SIGTERM: before the drain, answer as
					 * usual this long while /ready says 503
					 * (a new instance takes over: --reuseport);
					 * --lame-duck */
#define CLIENT_IDLE_MS		10000	/* idle TCP client (RFC 7766 6.2.3) */
#define LAME_DUCK_IDLE_MS	50	/* ... in the lame duck: its next query
					 * goes to the other instance */
#define CLIENT_FRAME_MS		5000	/* a started query must arrive whole
					 * within this (slowloris) */
#define BACKOFF_MIN_MS		500	/* after a failed connection ... */
#define BACKOFF_MAX_MS		10000	/* ... doubling, capped (stubby#373);
					 * --max-backoff */
#define MAX_HTTP_CLIENTS	4	/* --http: a few probes at a time */
#define HTTP_IN_BYTES		1024	/* a request line and its headers */
#define HTTP_OUT_BYTES		32768	/* /metrics with 8 upstreams, 16 zones */
#define HTTP_TIMEOUT_MS		5000	/* a request must come, and be read, in
					 * this long */
#define PROBE_WAIT_MS		1000	/* --probe waits this long */
#define MAX_SELECT_MS		1000
#define LOG_RATE_MS		10000	/* repeatable warnings: one per 10 s */

#define DEFAULT_PORT		53
#define DOT_PORT		853	/* RFC 7858 3.1 */

#if MAX_LISTENERS * 2 + MAX_UPSTREAMS + MAX_ZONE_UDP + MAX_ZONE_TCP + \
    MAX_TCP_CLIENTS + MAX_HTTP_CLIENTS + 16 > FD_SETSIZE
#error "the limits need more descriptors than select() can watch"
#endif
#if MAX_PENDING > 0x7FFF || (ID_MAP_SLOTS & (ID_MAP_SLOTS - 1)) != 0
#error "ID maps hold int16_t slots and need a power-of-two size"
#endif

/* ==== types =========================================================== */

union sockaddr_u {
	struct sockaddr sa;
	struct sockaddr_in sin;
	struct sockaddr_in6 sin6;
};

/*
 * Upstream TLS connection. upstream_set_state() is the only writer of
 * ->state; it arms the deadline of the new state.
 */
enum upstream_state {
	UPSTREAM_DISCONNECTED,	/* fd == -1; may connect at once */
	UPSTREAM_CONNECTING,	/* connect() in progress; want write */
	UPSTREAM_HANDSHAKING,	/* engine running; SENDAPP not yet seen */
	UPSTREAM_READY,		/* queries may be injected */
	UPSTREAM_CLOSING,	/* close_notify queued; deadline armed */
	UPSTREAM_BACKOFF,	/* fd == -1; not used until retry_at */
};

/*
 * Pending query. A slot is QUEUED on exactly one upstream's FIFO, or
 * SENT on exactly one upstream connection, and always on the age list.
 */
enum pending_state {
	PENDING_FREE,		/* on the free stack */
	PENDING_QUEUED,		/* waiting for its upstream to be READY */
	PENDING_SENT,		/* written into the TLS engine, or sent to a
				 * zone server */
	PENDING_FOLLOWING,	/* on no route: takes its leader's answer
				 * (the same question in flight: coalesced) */
};

/* Where a pending query went: its route says which section owns it. */
enum route_kind {
	ROUTE_NONE,		/* detached: about to be answered */
	ROUTE_UPSTREAM,		/* queued on, or sent to, g.upstreams[idx] */
	ROUTE_ZONE,		/* sent to g.zones[idx] (UDP, maybe TCP) */
};

enum origin_kind {
	ORIGIN_UDP,
	ORIGIN_TCP,
	ORIGIN_PROBE,			/* dotproxy's own test of a failed
					 * upstream: nobody to answer */
	ORIGIN_REFRESH,			/* a cache refresh (prefetch, or a
					 * query answered stale meanwhile):
					 * nobody to answer, the cache to fill */
};

/*
 * TCP client connection (RFC 7766). Reading pauses while the client has
 * MAX_INFLIGHT_PER_CLIENT queries in flight or output is backed up.
 */
enum client_state {
	CLIENT_FREE,		/* fd == -1 */
	CLIENT_OPEN,		/* reading frames (in[0..in_len): the start
				 * of the next ones) and answering */
	CLIENT_EOF,		/* client shut down writing; drain and close */
};

/* What the dns section learns about a client's query in one pass. */
struct dns_query_info {
	uint16_t id;
	uint16_t qend;		/* just past QTYPE/QCLASS; 0: no question */
	uint16_t qtype, qclass;
	uint16_t udp_limit;	/* largest UDP answer the client takes */
	uint8_t rd;		/* DNS_FLAG_RD or 0, as asked */
	uint8_t ad, cd;		/* 1 or 0, as asked */
	uint8_t has_opt;	/* a well-formed OPT record */
	uint8_t do_bit;		/* its DNSSEC OK bit (RFC 3225) */
	uint8_t edns_version;
};

/*
 * X.509 engine wrapper for SPKI pinning (RFC 7858 4.2): runs BearSSL's
 * minimal engine and keeps the leaf certificate to hash its key. The
 * vtable pointer MUST stay the first member (BearSSL passes &vtable).
 */
struct pin_x509 {
	const br_x509_class *vtable;
	struct upstream *u;
	unsigned cert_index;
	size_t leaf_len;
	int leaf_overflow;
	br_x509_decoder_context dc;	/* pin-only: the leaf's key */
	unsigned char leaf[PIN_LEAF_MAX_BYTES];
};

/* An --allow range. */
struct acl_range {
	int family;
	unsigned char addr[16];
	unsigned prefix;
};

/*
 * The IDs of one upstream connection: which it has used (none is used
 * twice, so a late answer never meets a newer query), and which pending
 * slot waits for each ID in flight (open addressing by the ID's low bits:
 * the IDs are random).
 */
struct id_map {
	uint32_t used[65536 / 32];	/* bit per ID used on the connection */
	unsigned n_used;
	int16_t slot[ID_MAP_SLOTS];	/* -1: empty */
};

/* A list of pending slots through one pair of their links (struct
 * pq_link at a given offset in struct pending_query): pq_append,
 * pq_unlink, pq_replace. */
struct pq_list {
	int head, tail;			/* -1: empty */
};

struct pq_link {
	int16_t prev, next;
};

struct upstream {
	enum upstream_state state;
	int fd;
	union sockaddr_u addr;
	socklen_t addrlen;
	char name[AUTHNAME_MAX_BYTES + 1];	/* SNI and certificate name */
	char label[AUTHNAME_MAX_BYTES + 64];	/* "ip:port (name)" for logs */
	int failing;			/* failed since it last answered */
	char why[128];			/* the last failure, for logs */
	int64_t deadline_ms;		/* CONNECTING/HANDSHAKING/CLOSING */
	int64_t idle_since_ms;		/* READY with nothing in flight */
	int64_t retry_at_ms;		/* BACKOFF end */
	int64_t answer_ms;		/* last answer to an ID we sent: the
					 * connection lives */
	int64_t ok_ms;			/* last verified handshake or answer */
	int64_t unanswered_ms;		/* first send since answer_ms; 0: none */
	int suspect;			/* silent for upstream_stall_ms(): new
					 * queries go elsewhere, queries in
					 * flight are asked elsewhere too */
	int64_t srtt_ms, rttvar_ms;	/* its answers' round trips (RFC 6298) */
	int64_t probe_ms;		/* last probe while failing */
	unsigned backoff_ms;
	int queue_head, queue_tail;	/* FIFO of QUEUED pending slots */
	struct pq_list hedge;		/* SENT slots not yet weighed for a
					 * hedge, in send order */
	size_t inflight;		/* SENT slots on this connection */
	int answered;			/* an answer came on this connection */
	unsigned long n_queries, n_connects, n_failures, n_resumed;
	int has_session;		/* session: from a verified handshake */
	int session_clock_behind;	/* verified at the build time */
	int64_t session_ms;		/* its full handshake */
	br_ssl_session_parameters session;
	struct id_map ids;		/* IDs of this connection */
	size_t rlen;			/* bytes of answer stream in rbuf */
	unsigned char pins[MAX_PINS][32];	/* SHA-256 of SPKI DER */
	size_t n_pins;
	int pin_only;			/* pins replace the chain check */
	br_ssl_client_context sc;
	br_x509_minimal_context xc;
	struct pin_x509 px;
	unsigned char iobuf[BR_SSL_BUFSIZE_BIDI]; /* full duplex: a send
				 * never waits for an unread answer */
	size_t in_off, in_len;		/* TLS bytes read, not yet fed */
	unsigned char inbuf[BR_SSL_BUFSIZE_INPUT];
	unsigned char rbuf[2 + MSG_MAX_BYTES];
};

/* Where a query came from, and so where its answer goes. */
struct origin {
	enum origin_kind kind;
	int listener;			/* UDP: the socket it came in on */
	union sockaddr_u peer;		/* UDP: the client */
	socklen_t peerlen;
	union sockaddr_u local;		/* UDP: address it was sent to */
	int has_local;			/* local is set (wildcard listener) */
	int slot;			/* TCP: client slot ... */
	unsigned gen;			/* ... and its generation */
	int64_t at_ms;			/* when the query came */
};

/*
 * Counters, for /metrics and the SIGUSR1 line alike. Latency: from a
 * query's arrival to its answer, in STATS_BUCKETS buckets of at most
 * stats_bucket_ms[i] (and one more for the rest).
 */
#define STATS_BUCKETS		12
#define STATS_RCODES		7	/* NOERROR .. REFUSED, then "other" */

struct stats {
	unsigned long queries_udp, queries_tcp;
	unsigned long answers[STATS_RCODES];
	unsigned long latency[STATS_BUCKETS + 1];
	unsigned long long latency_sum_ms;
	unsigned long refused, dropped, local;
	unsigned long hedged;		/* twins: suspect upstream, or hedging */
	unsigned long hedges_capped;	/* hedges not sent: --hedge-percent */
	unsigned long coalesced;	/* queries that took another's answer */
	unsigned long prefetched;	/* refreshes started by a hit */
	unsigned long stale_timer;	/* stale answers after --stale-timeout */
};

/*
 * Pending query. A leader (a query that went out) may have followers:
 * later queries with the same question and cache key, which wait in
 * state FOLLOWING on its list and take its answer (or its failure). A
 * follower is never indexed, never has a twin nor followers of its own.
 */
#define PQ_INDEXED	1		/* in the coalescing index */
#define PQ_STALE_WATCH	2		/* on the stale watch list */
#define PQ_HEDGE_WATCH	4		/* on its upstream's hedge watch list */

struct pending_query {
	enum pending_state state;
	uint8_t route;			/* enum route_kind ... */
	uint8_t route_idx;		/* ... and which upstream or zone */
	uint8_t attempts;
	uint8_t cache_key;		/* see cache_key() */
	uint8_t flags;			/* PQ_* */
	int16_t zudp, ztcp;		/* zone UDP socket, TCP connection */
	int16_t twin;			/* the same query asked of another
					 * upstream (the first answer wins), -1 */
	int16_t leader;			/* FOLLOWING: whose answer it takes */
	int16_t coal_next;		/* coalescing index bucket chain */
	int followers;			/* first follower (linked by next), -1 */
	struct pq_link stale_link;	/* g.stale: arrival order */
	struct pq_link hedge_link;	/* its upstream's hedge: send order */
	uint16_t up_id;			/* ID of the query as sent */
	uint16_t qlen;
	uint32_t hash;			/* cache_hash(): the coalescing index */
	int next;			/* upstream FIFO link, or the next
					 * follower of the same leader */
	int age_prev, age_next;		/* age list, oldest first */
	int64_t deadline_ms;
	int64_t sent_ms;		/* last written to a connection */
	struct dns_query_info qi;	/* the client's query, as asked */
	struct origin from;
	unsigned char *query;		/* g.query_bytes[slot]: the query we
					 * send (dns_build_query) */
};

struct client_conn {
	enum client_state state;
	int fd;
	unsigned gen;			/* bumped each time the slot is reused */
	size_t inflight;
	int64_t last_active_ms;
	int64_t frame_start_ms;		/* first byte of an unfinished frame */
	union sockaddr_u peer;		/* for --allow */
	size_t in_len;
	size_t out_off, out_len;
	int big;			/* buffers grew past a page or two */
	int answered;			/* an answer went out on it */
	unsigned char *in;		/* g.client_in[slot] */
	unsigned char *out;		/* g.client_out[slot] */
};

struct listener {
	union sockaddr_u addr;
	socklen_t addrlen;
	int udp_fd, tcp_fd;
	int wildcard;			/* bound to 0.0.0.0 or ::: use PKTINFO */
	int64_t accept_pause_ms;	/* TCP not watched before this: accept()
					 * ran out of descriptors */
	int steer_probing;		/* lame duck: our token not yet seen
					 * here (start_steer_probe) */
};

/*
 * Cache entry. Free: first == -1, on the free-entry list (via hnext).
 * Used: in one hash bucket chain and on the LRU list; its answer is the
 * chain of blocks from first.
 */
struct cache_entry {
	uint32_t hash;
	int32_t hnext;			/* bucket chain, or free list */
	int32_t lru_prev, lru_next;	/* most recent first */
	int32_t first;			/* first block, -1 when free */
	uint16_t len, qend;
	uint16_t opt_start, ns_end;	/* its summary (dns_summary): the OPT
					 * (0: none; it is last), the end of
					 * the authority section */
	uint8_t key;			/* DO, CD, RD bits and source */
	uint8_t prefetched;		/* a refresh was started (once) */
	int64_t stored_ms;
	uint32_t ttl_s;			/* lifetime from stored_ms */
};

struct cache {
	size_t n_blocks, n_entries, n_buckets;	/* 0 blocks: no cache */
	unsigned char (*blocks)[CACHE_BLOCK_BYTES];
	int32_t *block_next;		/* chain links, and the free list */
	int32_t free_block, free_entry;
	size_t n_free_blocks;
	struct cache_entry *entries;
	int32_t *buckets;
	int32_t lru_head, lru_tail;
	uint32_t min_ttl_s, max_ttl_s, stale_s;
	unsigned long hits, misses, stale, inserts, evictions;
};

/* A private zone forwarded over plain DNS (--forward-zone). */
struct zone {
	unsigned char name[DNS_NAME_MAX_BYTES];	/* wire form, lower case */
	size_t name_len;
	char domain[DNS_NAME_MAX_BYTES + 2];	/* text, as given */
	char label[DNS_NAME_MAX_BYTES * 2 + INET6_ADDRSTRLEN + 16];
	union sockaddr_u addr;
	socklen_t addrlen;
	int last_err;			/* errno logged last; 0 = healthy */
	int tcp_only;			/* ",tcp": never UDP (CoreDNS force_tcp:
					 * no conntrack entry races behind a
					 * Kubernetes Service) */
	unsigned long n_queries, n_tcp, n_failures;
};

/* A zone query in flight over UDP: its own socket, connected to the
 * zone's server, so the kernel reads only that address and port. */
struct zone_udp {
	int fd;				/* -1: free */
	int slot;			/* pending slot it answers */
};

/*
 * TCP query to a zone server, after a truncated UDP answer (RFC 7766 5).
 * One query per connection; the pending slot's deadline bounds it.
 */
enum ztcp_state {
	ZTCP_FREE,			/* fd == -1 */
	ZTCP_CONNECTING,		/* connect() in progress; want write */
	ZTCP_SENDING,			/* buf[off..len) still to send */
	ZTCP_READING,			/* answer arriving in buf[0..len) */
};

struct zone_tcp {
	enum ztcp_state state;
	int fd;
	int slot;			/* pending slot it answers */
	size_t off, len;
	unsigned char *buf;		/* g.ztcp_bufs[i] */
};

struct ratelimit {
	int64_t last_ms;
	unsigned long suppressed;
};

/* An HTTP connection (--http): fd == -1 when free; a request is read into
 * in, its whole response written from out, then it closes. */
struct http_conn {
	int fd;
	int64_t since_ms;		/* accepted: HTTP_TIMEOUT_MS bounds it */
	size_t in_len, out_off, out_len;	/* out_len != 0: answering */
	unsigned char *in, *out;	/* g.http_in[i], g.http_out[i] */
};

/* ==== globals ========================================================= */

enum log_level { LOG_ERROR, LOG_WARN, LOG_INFO, LOG_DEBUG };

static struct proxy {
	int log_level;
	int64_t now_ms;
	unsigned query_timeout_ms;	/* --timeout */
	unsigned idle_timeout_ms;	/* --idle-timeout */
	unsigned max_backoff_ms;	/* --max-backoff */
	unsigned pad_block;		/* --padding; 0 = off */
	int none_usable;		/* "no upstream" logged, not yet fixed */
	unsigned drain_ms;		/* --drain-timeout */
	int draining;			/* stopping: no new queries */
	int reuseport;			/* --reuseport */
	unsigned lame_duck_ms;		/* --lame-duck */
	int lame_duck;			/* stopping: answering, not ready */
	int64_t lame_duck_end_ms;
	int steer_wait;			/* --reuseport beside another instance:
					 * it keeps the queries until we are
					 * ready (start_steer_all) */
	unsigned char steer_token[16];	/* start_steer_probe's datagram */
	sig_atomic_t drain_signals;	/* signals seen when the drain began */
	int64_t drain_deadline_ms;
	struct listener listeners[MAX_LISTENERS];
	size_t n_listeners;
	struct upstream upstreams[MAX_UPSTREAMS];
	size_t n_upstreams;
	struct pending_query pending[MAX_PENDING];
	int free_stack[MAX_PENDING];
	size_t n_free;
	int age_head, age_tail;
	int16_t coal[MAX_PENDING];	/* coalescing index: leader by
					 * cache_hash, chained by coal_next */
	struct pq_list stale;		/* queries that a stale answer waits
					 * for (--stale-timeout), by arrival */
	int no_coalesce;		/* --no-coalesce */
	unsigned prefetch_pct;		/* --prefetch; 0 = off */
	unsigned stale_timeout_ms;	/* --stale-timeout; 0 = off */
	unsigned hedge_pct;		/* --hedge-percent; 0 = off */
	unsigned hedge_tokens;		/* in hundredths of a hedge */
	struct client_conn clients[MAX_TCP_CLIENTS];
	/* Buffers apart from the structs that own them, so that setting up
	 * a struct does not touch (and make resident) its buffer's pages. */
	unsigned char query_bytes[MAX_PENDING][PENDING_QUERY_BYTES];
	unsigned char client_in[MAX_TCP_CLIENTS][CLIENT_IN_BYTES];
	unsigned char client_out[MAX_TCP_CLIENTS][CLIENT_OUT_BYTES];
	unsigned char ztcp_bufs[MAX_ZONE_TCP][2 + MSG_MAX_BYTES];
	const br_x509_trust_anchor *tas;
	size_t n_tas;
	struct ratelimit rl_table_full, rl_clients_full, rl_mismatch,
	    rl_zone_full, rl_accept;
	struct cache cache;
	struct zone zones[MAX_ZONES];
	size_t n_zones;
	const unsigned char *zone_names[MAX_ZONES];	/* for dns_match_zone */
	size_t zone_lens[MAX_ZONES];
	struct zone_udp zudp[MAX_ZONE_UDP];
	int zudp_free[MAX_ZONE_UDP];	/* free stack of zudp */
	size_t n_zudp_free;
	struct zone_tcp ztcp[MAX_ZONE_TCP];
	struct acl_range allow[MAX_ALLOW];
	size_t n_allow;
	int clock_behind;		/* validating at the build time */
	struct stats stats;
	time_t start_time;		/* for dotproxy_start_time_seconds */
	int http_fd;			/* --http listener, -1: none */
	struct http_conn http[MAX_HTTP_CLIENTS];
	unsigned char http_in[MAX_HTTP_CLIENTS][HTTP_IN_BYTES];
	unsigned char http_out[MAX_HTTP_CLIENTS][HTTP_OUT_BYTES];
} g;

/* Where log lines go (util section; set up by the start section). */
static struct {
	int journal;			/* stderr is journald's: <N> prefixes */
	int syslog_fd;			/* --syslog: /dev/log, else -1 */
	int notify_fd;			/* NOTIFY_SOCKET, else -1 */
	int64_t watchdog_ms;		/* half of WATCHDOG_USEC, 0: none */
	int64_t watchdog_last_ms;
} g_log = { 0, -1, -1, 0, 0 };

static volatile sig_atomic_t g_stop_signal;	/* last SIGTERM/SIGINT */
static volatile sig_atomic_t g_stop_count;	/* how many of them */
static volatile sig_atomic_t g_stats_wanted;	/* SIGUSR1 */
static volatile sig_atomic_t g_retry_wanted;	/* SIGHUP */

/* ==== util ============================================================ */

static const char *const log_names[] = { "error", "warn", "info", "debug" };

/*
 * A small vsnprintf for what dotproxy prints: %s %c %d %u %x with the l,
 * ll and z sizes and a zero-padded width (%03u). Always terminates the
 * string when cap > 0; returns the length written (at most cap - 1).
 * musl's printf would bring 10 KB of floating-point formatting along.
 */
static size_t
util_vfmt(char *out, size_t cap, const char *fmt, va_list ap)
{
	size_t o = 0;

#define UTIL_PUT(ch) do { if (o + 1 < cap) out[o++] = (char)(ch); } while (0)
	for (; *fmt != '\0'; fmt++) {
		char num[24];
		int n = 0, width = 0, zero = 0, size = 0, neg = 0, base = 10;
		unsigned long long v;
		const char *str;

		if (*fmt != '%') {
			UTIL_PUT(*fmt);
			continue;
		}
		if (*++fmt == '0')
			zero = *fmt++;
		while (*fmt >= '0' && *fmt <= '9')
			width = width * 10 + (*fmt++ - '0');
		for (; *fmt == 'l'; fmt++)
			size++;
		if (*fmt == 'z') {
			size = 3;
			fmt++;
		}
		switch (*fmt) {
		case 's':
			str = va_arg(ap, const char *);
			for (str = str ? str : "(null)"; *str; str++)
				UTIL_PUT(*str);
			continue;
		case 'c':
			UTIL_PUT(va_arg(ap, int));
			continue;
		case 'd': {
			long long x = size == 2 ? va_arg(ap, long long) :
			    size == 1 ? va_arg(ap, long) : va_arg(ap, int);

			neg = x < 0;
			v = neg ? 0 - (unsigned long long)x :
			    (unsigned long long)x;
			break;
		}
		case 'x':
			base = 16;
			/* FALLTHROUGH */
		case 'u':
			v = size == 3 ? va_arg(ap, size_t) :
			    size == 2 ? va_arg(ap, unsigned long long) :
			    size == 1 ? va_arg(ap, unsigned long) :
			    va_arg(ap, unsigned);
			break;
		case '\0':
			fmt--;
			continue;
		default:
			UTIL_PUT(*fmt);
			continue;
		}
		do {
			num[n++] = "0123456789abcdef"[v % (unsigned)base];
			v /= (unsigned)base;
		} while (v != 0);
		if (neg)
			UTIL_PUT('-');
		for (width -= n + neg; width > 0; width--)
			UTIL_PUT(zero ? '0' : ' ');
		while (n > 0)
			UTIL_PUT(num[--n]);
	}
#undef UTIL_PUT
	if (cap > 0)
		out[o] = '\0';
	return o;
}

static size_t util_fmt(char *out, size_t cap, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

static size_t
util_fmt(char *out, size_t cap, const char *fmt, ...)
{
	va_list ap;
	size_t n;

	va_start(ap, fmt);
	n = util_vfmt(out, cap, fmt, ap);
	va_end(ap);
	return n;
}

/*
 * Start-up memory (trust anchors from --ca-file, the cache): anonymous
 * pages, never freed, untouched until used. A bump allocator over 64 KB
 * chunks; musl's malloc would add 9 KB for memory never given back.
 */
static void *
util_alloc(size_t n)
{
	static unsigned char *chunk;
	static size_t left;
	void *p;

	n = (n + 15) & ~(size_t)15;
	if (n > left) {
		size_t sz = n > 65536 ? n : 65536;

		p = mmap(NULL, sz, PROT_READ | PROT_WRITE,
		    MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
		if (p == MAP_FAILED)
			return NULL;
		if (sz > 65536)
			return p;	/* a big one keeps its own pages */
		chunk = p;
		left = sz;
	}
	p = chunk;
	chunk += n;
	left -= n;
	return p;
}

/* Gives the whole pages inside [p, p + len) back to the kernel: they
 * read as zeros, and are resident again only when written. */
static void
util_release(void *p, size_t len)
{
	uintptr_t page = 4096, a = ((uintptr_t)p + page - 1) & ~(page - 1);
	uintptr_t e = ((uintptr_t)p + len) & ~(page - 1);

	if (e > a)
		madvise((void *)a, e - a, MADV_DONTNEED);
}

/* Writes all of buf to fd (a terminal or pipe may take it in parts). */
static void
util_write(int fd, const char *buf, size_t len)
{
	while (len > 0) {
		ssize_t n = write(fd, buf, len);

		if (n < 0 && errno == EINTR)
			continue;
		if (n <= 0)
			return;
		buf += n;
		len -= (size_t)n;
	}
}

static void log_msg(int level, const char *fmt, ...)
    __attribute__((format(printf, 2, 3)));
static void die(const char *fmt, ...)
    __attribute__((format(printf, 1, 2), noreturn));

/*
 * Writes one log line (text, without a newline) at a level: to --syslog
 * with the facility and severity, else to stderr, with journald's level
 * prefix when stderr is the journal's (sd-daemon(3)). One write per line:
 * lines from one process never interleave.
 */
/*
 * Sends one line to /dev/log without ever waiting: a log daemon that
 * stops reading must not stop DNS (its queue holds a few lines), so a
 * line it has no room for is dropped. One that restarted (a new socket at
 * the same path: ECONNREFUSED) is connected again. Returns -1 if the line
 * is for stderr instead.
 */
static int
log_syslog(const char *line, size_t n)
{
	struct sockaddr_un sun = { AF_UNIX, "/dev/log" };
	int again;

	for (again = 1;; again = 0) {
		if (send(g_log.syslog_fd, line, n, MSG_NOSIGNAL |
		    MSG_DONTWAIT) >= 0 || errno == EAGAIN ||
		    errno == EWOULDBLOCK || errno == ENOBUFS)
			return 0;
		if (!again || connect(g_log.syslog_fd, (struct sockaddr *)&sun,
		    sizeof sun) < 0)
			return -1;
	}
}

static void
log_line(int level, char *line, size_t cap, size_t n)
{
	/* syslog(3) severities: err, warning, info, debug */
	static const unsigned char severity[] = { 3, 4, 6, 7 };
	char pre[8];
	size_t k = 0;

	if (g_log.syslog_fd >= 0)	/* facility daemon (3) */
		k = util_fmt(pre, sizeof pre, "<%d>", 24 + severity[level]);
	else if (g_log.journal)
		k = util_fmt(pre, sizeof pre, "<%d>", severity[level]);
	if (n + k + 1 > cap)
		n = cap - k - 1;
	memmove(line + k, line, n);
	memcpy(line, pre, k);
	n += k;
	line[n++] = '\n';
	if (g_log.syslog_fd >= 0 && log_syslog(line, n - 1) == 0)
		return;
	util_write(2, line, n);
}

static void
log_msg(int level, const char *fmt, ...)
{
	char line[512];
	va_list ap;
	size_t n;

	if (level > g.log_level)
		return;
	n = util_fmt(line, sizeof line - 8, "dotproxy: %s: ", log_names[level]);
	va_start(ap, fmt);
	n += util_vfmt(line + n, sizeof line - 8 - n, fmt, ap);
	va_end(ap);
	log_line(level, line, sizeof line, n);
}

/* Tells the service manager something (sd_notify(3): "READY=1",
 * "STATUS=...", "STOPPING=1", "WATCHDOG=1"), when it listens. */
static void
util_notify(const char *fmt, ...) __attribute__((format(printf, 1, 2)));

static void
util_notify(const char *fmt, ...)
{
	char msg[256];
	va_list ap;
	size_t n;

	if (g_log.notify_fd < 0)
		return;
	va_start(ap, fmt);
	n = util_vfmt(msg, sizeof msg, fmt, ap);
	va_end(ap);
	(void)!send(g_log.notify_fd, msg, n, MSG_NOSIGNAL | MSG_DONTWAIT);
}

#define log_error(...) log_msg(LOG_ERROR, __VA_ARGS__)
#define log_warn(...)  log_msg(LOG_WARN, __VA_ARGS__)
#define log_info(...)  log_msg(LOG_INFO, __VA_ARGS__)
#define log_debug(...) do { \
		if (g.log_level >= LOG_DEBUG) \
			log_msg(LOG_DEBUG, __VA_ARGS__); \
	} while (0)

static void
die(const char *fmt, ...)
{
	char line[512];
	va_list ap;
	size_t n = util_fmt(line, sizeof line, "%sdotproxy: fatal: ",
	    g_log.journal ? "<3>" : "");

	va_start(ap, fmt);
	n += util_vfmt(line + n, sizeof line - n - 1, fmt, ap);
	va_end(ap);
	line[n++] = '\n';
	util_write(2, line, n);
	exit(1);
}

/* Returns 1 if a repeatable warning may be logged now (one per period). */
static int
ratelimit_ok(struct ratelimit *rl)
{
	if (rl->last_ms != 0 && g.now_ms - rl->last_ms < LOG_RATE_MS) {
		rl->suppressed++;
		return 0;
	}
	rl->last_ms = g.now_ms ? g.now_ms : 1;
	return 1;
}

static int64_t
time_now_ms(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

static uint16_t
get16(const unsigned char *p)
{
	return (uint16_t)(p[0] << 8 | p[1]);
}

static void
put16(unsigned char *p, unsigned v)
{
	p[0] = (unsigned char)(v >> 8);
	p[1] = (unsigned char)v;
}

/* Parses a decimal number in [min, max]. Returns 0 or -1. */
static int
util_parse_uint(const char *s, unsigned long min, unsigned long max,
    unsigned long *out)
{
	unsigned long v = 0;

	if (*s == '\0')
		return -1;
	for (; *s; s++) {
		unsigned long d = (unsigned long)(*s - '0');

		if (*s < '0' || *s > '9')
			return -1;
		/* Checked before it can wrap: unsigned long has 32 bits on
		 * the router targets (armhf, mips). */
		if (d > max || v > (max - d) / 10)
			return -1;
		v = v * 10 + d;
	}
	if (v < min)
		return -1;
	*out = v;
	return 0;
}

/* Fills buf with len bytes from the getrandom(2) system call: no files. */
static int
util_random(void *buf, size_t len)
{
	unsigned char *p = buf;

	while (len > 0) {
		ssize_t n = getrandom(p, len, 0);

		if (n < 0) {
			if (errno == EINTR)
				continue;
			return -1;
		}
		p += n;
		len -= (size_t)n;
	}
	return 0;
}

/*
 * Random numbers for query IDs, many a second: ChaCha20 (RFC 8439)
 * keystream under a key taken from getrandom(2) at start-up
 * (util_rand_init), 64 bytes at a time, so no system call per query.
 */
static struct {
	unsigned char key[32];
	uint32_t counter;
	size_t left;
	unsigned char buf[64];
} util_rng;

static void
util_rand_init(void)
{
	if (util_random(util_rng.key, sizeof util_rng.key) < 0)
		die("getrandom failed: %s", strerror(errno));
	util_rng.left = 0;
}

static uint16_t
util_rand16(void)
{
	static const unsigned char iv[12];

	if (util_rng.left < 2) {
		memset(util_rng.buf, 0, sizeof util_rng.buf);
		util_rng.counter = br_chacha20_ct_run(util_rng.key, iv,
		    util_rng.counter, util_rng.buf, sizeof util_rng.buf);
		util_rng.left = sizeof util_rng.buf;
	}
	util_rng.left -= 2;
	return get16(util_rng.buf + util_rng.left);
}

/*
 * Writes an IP address in text (RFC 5952 for IPv6: lower-case hex, the
 * longest run of two or more zero groups as "::", an IPv4-mapped address
 * as ::ffff:1.2.3.4). out MUST hold INET6_ADDRSTRLEN bytes. musl's
 * inet_ntop would bring its whole printf along (8 KB).
 */
static void
util_ntop(int family, const unsigned char *a, char *out)
{
	static const unsigned char mapped[12] = { [10] = 0xFF, [11] = 0xFF };
	size_t o = 0;
	int i, best = -1, best_n = 1, run = 0;

	if (family == AF_INET || memcmp(a, mapped, 12) == 0) {
		if (family != AF_INET)
			o = util_fmt(out, 8, "::ffff:");
		util_fmt(out + o, 16, "%u.%u.%u.%u", a[family == AF_INET ? 0 :
		    12], a[family == AF_INET ? 1 : 13], a[family == AF_INET ? 2 :
		    14], a[family == AF_INET ? 3 : 15]);
		return;
	}
	for (i = 0; i < 8; i++) {
		run = a[2 * i] == 0 && a[2 * i + 1] == 0 ? run + 1 : 0;
		if (run > best_n) {
			best_n = run;
			best = i - run + 1;
		}
	}
	for (i = 0; i < 8; i++) {
		if (i == best) {
			out[o++] = ':';
			if (i == 0)
				out[o++] = ':';
			i += best_n - 1;
			continue;
		}
		o += util_fmt(out + o, 6, "%x", (unsigned)get16(a + 2 * i));
		if (i < 7)
			out[o++] = ':';
	}
	out[o] = '\0';
}

/* Formats an address as "1.2.3.4:53" or "[::1]:53". */
static void
util_format_addr(const union sockaddr_u *a, char *out, size_t outlen)
{
	char ip[INET6_ADDRSTRLEN];

	if (a->sa.sa_family == AF_INET6) {
		util_ntop(AF_INET6, a->sin6.sin6_addr.s6_addr, ip);
		util_fmt(out, outlen, "[%s]:%u", ip, ntohs(a->sin6.sin6_port));
	} else {
		util_ntop(AF_INET, (const unsigned char *)&a->sin.sin_addr, ip);
		util_fmt(out, outlen, "%s:%u", ip, ntohs(a->sin.sin_port));
	}
}

static const struct {
	int code;
	const char *name;
} br_errors[] = {
	{ BR_ERR_BAD_PARAM, "BR_ERR_BAD_PARAM" },
	{ BR_ERR_BAD_STATE, "BR_ERR_BAD_STATE" },
	{ BR_ERR_UNSUPPORTED_VERSION, "BR_ERR_UNSUPPORTED_VERSION" },
	{ BR_ERR_BAD_VERSION, "BR_ERR_BAD_VERSION" },
	{ BR_ERR_BAD_LENGTH, "BR_ERR_BAD_LENGTH" },
	{ BR_ERR_TOO_LARGE, "BR_ERR_TOO_LARGE" },
	{ BR_ERR_BAD_MAC, "BR_ERR_BAD_MAC" },
	{ BR_ERR_NO_RANDOM, "BR_ERR_NO_RANDOM" },
	{ BR_ERR_UNKNOWN_TYPE, "BR_ERR_UNKNOWN_TYPE" },
	{ BR_ERR_UNEXPECTED, "BR_ERR_UNEXPECTED" },
	{ BR_ERR_BAD_CCS, "BR_ERR_BAD_CCS" },
	{ BR_ERR_BAD_ALERT, "BR_ERR_BAD_ALERT" },
	{ BR_ERR_BAD_HANDSHAKE, "BR_ERR_BAD_HANDSHAKE" },
	{ BR_ERR_OVERSIZED_ID, "BR_ERR_OVERSIZED_ID" },
	{ BR_ERR_BAD_CIPHER_SUITE, "BR_ERR_BAD_CIPHER_SUITE" },
	{ BR_ERR_BAD_COMPRESSION, "BR_ERR_BAD_COMPRESSION" },
	{ BR_ERR_BAD_FRAGLEN, "BR_ERR_BAD_FRAGLEN" },
	{ BR_ERR_BAD_SECRENEG, "BR_ERR_BAD_SECRENEG" },
	{ BR_ERR_EXTRA_EXTENSION, "BR_ERR_EXTRA_EXTENSION" },
	{ BR_ERR_BAD_SNI, "BR_ERR_BAD_SNI" },
	{ BR_ERR_BAD_HELLO_DONE, "BR_ERR_BAD_HELLO_DONE" },
	{ BR_ERR_LIMIT_EXCEEDED, "BR_ERR_LIMIT_EXCEEDED" },
	{ BR_ERR_BAD_FINISHED, "BR_ERR_BAD_FINISHED" },
	{ BR_ERR_RESUME_MISMATCH, "BR_ERR_RESUME_MISMATCH" },
	{ BR_ERR_INVALID_ALGORITHM, "BR_ERR_INVALID_ALGORITHM" },
	{ BR_ERR_BAD_SIGNATURE, "BR_ERR_BAD_SIGNATURE" },
	{ BR_ERR_WRONG_KEY_USAGE, "BR_ERR_WRONG_KEY_USAGE" },
	{ BR_ERR_NO_CLIENT_AUTH, "BR_ERR_NO_CLIENT_AUTH" },
	{ BR_ERR_IO, "BR_ERR_IO" },
	{ BR_ERR_X509_INVALID_VALUE, "BR_ERR_X509_INVALID_VALUE" },
	{ BR_ERR_X509_TRUNCATED, "BR_ERR_X509_TRUNCATED" },
	{ BR_ERR_X509_EMPTY_CHAIN, "BR_ERR_X509_EMPTY_CHAIN" },
	{ BR_ERR_X509_INNER_TRUNC, "BR_ERR_X509_INNER_TRUNC" },
	{ BR_ERR_X509_BAD_TAG_CLASS, "BR_ERR_X509_BAD_TAG_CLASS" },
	{ BR_ERR_X509_BAD_TAG_VALUE, "BR_ERR_X509_BAD_TAG_VALUE" },
	{ BR_ERR_X509_INDEFINITE_LENGTH, "BR_ERR_X509_INDEFINITE_LENGTH" },
	{ BR_ERR_X509_EXTRA_ELEMENT, "BR_ERR_X509_EXTRA_ELEMENT" },
	{ BR_ERR_X509_UNEXPECTED, "BR_ERR_X509_UNEXPECTED" },
	{ BR_ERR_X509_NOT_CONSTRUCTED, "BR_ERR_X509_NOT_CONSTRUCTED" },
	{ BR_ERR_X509_NOT_PRIMITIVE, "BR_ERR_X509_NOT_PRIMITIVE" },
	{ BR_ERR_X509_PARTIAL_BYTE, "BR_ERR_X509_PARTIAL_BYTE" },
	{ BR_ERR_X509_BAD_BOOLEAN, "BR_ERR_X509_BAD_BOOLEAN" },
	{ BR_ERR_X509_OVERFLOW, "BR_ERR_X509_OVERFLOW" },
	{ BR_ERR_X509_BAD_DN, "BR_ERR_X509_BAD_DN" },
	{ BR_ERR_X509_BAD_TIME, "BR_ERR_X509_BAD_TIME" },
	{ BR_ERR_X509_UNSUPPORTED, "BR_ERR_X509_UNSUPPORTED" },
	{ BR_ERR_X509_LIMIT_EXCEEDED, "BR_ERR_X509_LIMIT_EXCEEDED" },
	{ BR_ERR_X509_WRONG_KEY_TYPE, "BR_ERR_X509_WRONG_KEY_TYPE" },
	{ BR_ERR_X509_BAD_SIGNATURE, "BR_ERR_X509_BAD_SIGNATURE" },
	{ BR_ERR_X509_TIME_UNKNOWN, "BR_ERR_X509_TIME_UNKNOWN" },
	{ BR_ERR_X509_EXPIRED, "BR_ERR_X509_EXPIRED" },
	{ BR_ERR_X509_DN_MISMATCH, "BR_ERR_X509_DN_MISMATCH" },
	{ BR_ERR_X509_BAD_SERVER_NAME, "BR_ERR_X509_BAD_SERVER_NAME" },
	{ BR_ERR_X509_CRITICAL_EXTENSION, "BR_ERR_X509_CRITICAL_EXTENSION" },
	{ BR_ERR_X509_NOT_CA, "BR_ERR_X509_NOT_CA" },
	{ BR_ERR_X509_FORBIDDEN_KEY_USAGE, "BR_ERR_X509_FORBIDDEN_KEY_USAGE" },
	{ BR_ERR_X509_WEAK_PUBLIC_KEY, "BR_ERR_X509_WEAK_PUBLIC_KEY" },
	{ BR_ERR_X509_NOT_TRUSTED, "BR_ERR_X509_NOT_TRUSTED" },
};

/*
 * Names a BearSSL error code; alerts are decoded ("BR_ERR_RECV_FATAL_ALERT
 * 40 handshake_failure" style is left to the caller's buffer).
 */
static const char *
util_br_error_name(int err, char *buf, size_t buflen)
{
	size_t i;

	if (err >= BR_ERR_SEND_FATAL_ALERT) {
		util_fmt(buf, buflen, "BR_ERR_SEND_FATAL_ALERT (alert %d)",
		    err - BR_ERR_SEND_FATAL_ALERT);
		return buf;
	}
	if (err >= BR_ERR_RECV_FATAL_ALERT) {
		util_fmt(buf, buflen, "BR_ERR_RECV_FATAL_ALERT (alert %d)",
		    err - BR_ERR_RECV_FATAL_ALERT);
		return buf;
	}
	for (i = 0; i < sizeof br_errors / sizeof br_errors[0]; i++)
		if (br_errors[i].code == err)
			return br_errors[i].name;
	if (err == 250)		/* TRUST_ERR_PIN */
		return "no pin matches the server's key";
	util_fmt(buf, buflen, "BearSSL error %d", err);
	return buf;
}

/* ==== dns: pure functions on messages ================================= */
/*
 * No state, no I/O: every function here takes a buffer and its length and
 * never reads past it. Offsets of 0 mean "malformed" (a valid offset is
 * never 0: names start after the 12-byte header). One walker steps over
 * names (dns_walk_name), one over records (dns_iter_next); a message is
 * summarised in one walk (dns_summarize) for the cache, the TTL rules,
 * delivery and truncation.
 *
 * The EDNS rule (RFC 6891): options are hop-by-hop. A client's options
 * (a COOKIE, Client Subnet, NSID, keepalive) are never forwarded, and of
 * an upstream's only Extended DNS Errors (RFC 8914) reach a client.
 */

#define DNS_TYPE_A		1
#define DNS_TYPE_SOA		6
#define DNS_TYPE_AAAA		28
#define DNS_TYPE_OPT		41
#define DNS_CLASS_IN		1
#define DNS_RCODE_FORMERR	1
#define DNS_RCODE_SERVFAIL	2
#define DNS_RCODE_NXDOMAIN	3
#define DNS_RCODE_NOTIMP	4
#define DNS_RCODE_REFUSED	5
#define DNS_RCODE_BADVERS	16	/* extended: in the OPT (RFC 6891 9) */
#define DNS_DROP		(-1)	/* dns_parse_query: send nothing */
#define DNS_REPLY_TC		(-2)	/* dns_make_error: NOERROR, TC=1 */
#define DNS_FLAG_QR		0x80	/* byte 2 */
#define DNS_FLAG_AA		0x04	/* byte 2 */
#define DNS_FLAG_TC		0x02	/* byte 2 */
#define DNS_FLAG_RD		0x01	/* byte 2 */
#define DNS_FLAG_RA		0x80	/* byte 3 */
#define DNS_FLAG_AD		0x20	/* byte 3 */
#define DNS_FLAG_CD		0x10	/* byte 3 */
#define DNS_SEC_AN		0	/* dns_rr.section */
#define DNS_SEC_NS		1
#define DNS_SEC_AR		2
#define DNS_TTL_MAX		0x7FFFFFFFu	/* RFC 2181 8 */
#define EDNS_OPTION_PADDING	12	/* RFC 7830 */
#define EDNS_OPTION_EDE		15	/* RFC 8914 */
#define DNS_LOCAL_TTL_S		10800	/* special-use answers, as unbound */
#define DNS_QUESTION_MAX_BYTES	(DNS_HEADER_BYTES + DNS_NAME_MAX_BYTES + 4)
#define DNS_EDE_TEXT_MAX	160	/* EXTRA-TEXT of our own EDEs */
#define DNS_EDE_MAX_BYTES	(4 + 2 + DNS_EDE_TEXT_MAX)
#define DNS_ERROR_MAX_BYTES	(DNS_QUESTION_MAX_BYTES + DNS_OPT_BYTES + \
				 DNS_EDE_MAX_BYTES)
#define DNS_LOCAL_MAX_BYTES	(DNS_QUESTION_MAX_BYTES + 16 + 28 + 59 + \
				 DNS_OPT_BYTES + DNS_EDE_MAX_BYTES)
					/* A, AAAA, SOA, OPT with an EDE */
#define EDE_OTHER		0	/* RFC 8914 4: INFO-CODEs we send */
#define EDE_STALE		3
#define EDE_PROHIBITED		18
#define EDE_NO_REACHABLE	22
#define EDE_NOT_SUPPORTED	21
#define EDE_NETWORK_ERROR	23

/* RFC 4343: ASCII letters match without case; no other byte does. */
static unsigned
dns_lower(unsigned c)
{
	return c >= 'A' && c <= 'Z' ? c + ('a' - 'A') : c;
}

static void
put32(unsigned char *p, uint32_t v)
{
	put16(p, v >> 16);
	put16(p + 2, v & 0xFFFF);
}

/*
 * Walks a name at off without following pointers (so no loop is
 * possible): a pointer ends it when allow_ptr, and is an error otherwise
 * (the question's form: RFC 1035 4.1.4 allows pointers there, but no
 * client points into the header, and a pointer is how a question loops).
 * Returns the offset past the name, or 0 if it is malformed.
 */
static size_t
dns_walk_name(const unsigned char *m, size_t len, size_t off, int allow_ptr)
{
	size_t total = 0;

	for (;;) {
		unsigned lab;

		if (off >= len)
			return 0;
		lab = m[off];
		if ((lab & 0xC0) == 0xC0 && allow_ptr)
			return off + 2 <= len ? off + 2 : 0;
		if (lab > DNS_LABEL_MAX_BYTES)	/* pointer or reserved type */
			return 0;
		total += lab + 1;
		if (total > DNS_NAME_MAX_BYTES)
			return 0;
		off += lab + 1;
		if (lab == 0)
			return off;
	}
}

static size_t
dns_check_name(const unsigned char *m, size_t len, size_t off)
{
	return dns_walk_name(m, len, off, 0);
}

static size_t
dns_skip_name(const unsigned char *m, size_t len, size_t off)
{
	return dns_walk_name(m, len, off, 1);
}

/*
 * The record iterator: every pass over the answer, authority and
 * additional sections uses it (djbdns dns_packet_skipname and dnsmasq
 * skip_section are the models). dns_iter_init starts after the question
 * (qend); dns_iter_next returns 1 with the next record, 0 after the last
 * (it->off is then the end of the records), -1 if the message is
 * malformed.
 */
struct dns_rr {
	size_t start;		/* owner name */
	size_t hdr;		/* TYPE, CLASS, TTL, RDLENGTH */
	size_t rdata, end;
	unsigned section;	/* DNS_SEC_AN, DNS_SEC_NS or DNS_SEC_AR */
	uint16_t type;
};

struct dns_iter {
	const unsigned char *m;
	size_t len, off;
	unsigned left[3];	/* records left in each section */
	unsigned section;
};

static void
dns_iter_init(struct dns_iter *it, const unsigned char *m, size_t len,
    size_t qend)
{
	it->m = m;
	it->len = len;
	it->off = qend;
	it->left[0] = get16(m + 6);
	it->left[1] = get16(m + 8);
	it->left[2] = get16(m + 10);
	it->section = 0;
}

static int
dns_iter_next(struct dns_iter *it, struct dns_rr *rr)
{
	size_t off;

	while (it->section < 3 && it->left[it->section] == 0)
		it->section++;
	if (it->section == 3)
		return 0;
	it->left[it->section]--;
	off = dns_skip_name(it->m, it->len, it->off);
	if (off == 0 || off + 10 > it->len ||
	    off + 10 + get16(it->m + off + 8) > it->len)
		return -1;
	rr->start = it->off;
	rr->hdr = off;
	rr->rdata = off + 10;
	rr->end = rr->rdata + get16(it->m + off + 8);
	rr->type = get16(it->m + off);
	rr->section = it->section;
	it->off = rr->end;
	return 1;
}

/* A record's TTL; one with the top bit set counts as 0 (RFC 2181 8). */
static uint32_t
dns_rr_ttl(const unsigned char *m, const struct dns_rr *rr)
{
	uint32_t ttl = (uint32_t)get16(m + rr->hdr + 4) << 16 |
	    get16(m + rr->hdr + 6);

	return ttl > DNS_TTL_MAX ? 0 : ttl;
}

/*
 * What the proxy needs to know about a message's records, found in one
 * walk from qend: where the sections end, the OPT record (RFC 6891
 * 6.1.1: at most one, in the additional section, owned by the root), the
 * smallest TTL, and for a negative answer (NXDOMAIN, or no answer record)
 * the negative TTL of its SOA, min(TTL, MINIMUM) (RFC 2308 5).
 */
struct dns_summary {
	size_t an_end, ns_end, end;	/* ends of the answer and authority
					 * sections, and of the last record */
	size_t opt_start, opt_end;	/* opt_end == 0: no OPT */
	uint32_t min_ttl;		/* DNS_TTL_MAX: no record but OPT */
	uint32_t neg_ttl;		/* when has_soa */
	int negative, has_soa;
};

/* The MINIMUM field of a SOA record (RFC 1035 3.3.13): past MNAME and
 * RNAME, the fifth 32-bit number. Returns 0, or -1 if malformed. */
static int
dns_soa_minimum(const unsigned char *m, const struct dns_rr *rr,
    uint32_t *min)
{
	size_t p = dns_skip_name(m, rr->end, rr->rdata);

	p = p ? dns_skip_name(m, rr->end, p) : 0;
	if (p == 0 || p + 20 != rr->end)
		return -1;
	*min = (uint32_t)get16(m + p + 16) << 16 | get16(m + p + 18);
	return 0;
}

/* Returns 0 with s filled, or -1 if the message is malformed. */
static int
dns_summarize(const unsigned char *m, size_t len, size_t qend,
    struct dns_summary *s)
{
	struct dns_iter it;
	struct dns_rr rr;
	uint32_t ttl, minimum;
	int r;

	memset(s, 0, sizeof *s);
	s->min_ttl = DNS_TTL_MAX;
	s->negative = (m[3] & 0x0F) == DNS_RCODE_NXDOMAIN || get16(m + 6) == 0;
	s->an_end = s->ns_end = qend;
	dns_iter_init(&it, m, len, qend);
	while ((r = dns_iter_next(&it, &rr)) > 0) {
		if (rr.section == DNS_SEC_AN)
			s->an_end = rr.end;
		if (rr.section != DNS_SEC_AR)
			s->ns_end = rr.end;
		if (rr.type == DNS_TYPE_OPT) {
			if (s->opt_end != 0 || rr.section != DNS_SEC_AR ||
			    m[rr.start] != 0)
				return -1;
			s->opt_start = rr.start;
			s->opt_end = rr.end;
			continue;
		}
		ttl = dns_rr_ttl(m, &rr);
		s->min_ttl = ttl < s->min_ttl ? ttl : s->min_ttl;
		if (s->negative && !s->has_soa && rr.section == DNS_SEC_NS &&
		    rr.type == DNS_TYPE_SOA &&
		    dns_soa_minimum(m, &rr, &minimum) == 0) {
			s->has_soa = 1;
			s->neg_ttl = minimum < ttl ? minimum : ttl;
		}
	}
	s->end = it.off;
	return r;
}

/*
 * Validates a client's query and learns what the proxy needs (ID, flags,
 * question, EDNS). Returns 0 to go on, DNS_DROP to ignore it (too short
 * to answer, or a response: answering responses makes loops), or an
 * RCODE to answer with at once. qi->qend is set whenever the question
 * parsed, and qi->has_opt whenever a well-formed OPT was found, so that
 * an error answer can echo both (RFC 6891 6.1.1).
 */
static int
dns_parse_query(const unsigned char *m, size_t len, struct dns_query_info *qi)
{
	struct dns_summary s;
	size_t off = DNS_HEADER_BYTES;
	unsigned qd, i;

	memset(qi, 0, sizeof *qi);
	qi->udp_limit = UDP_MIN_LIMIT;
	if (len < DNS_HEADER_BYTES || len > MSG_MAX_BYTES)
		return DNS_DROP;
	qi->id = get16(m);
	if (m[2] & DNS_FLAG_QR)
		return DNS_DROP;
	qi->rd = m[2] & DNS_FLAG_RD;
	qi->ad = (m[3] & DNS_FLAG_AD) != 0;
	qi->cd = (m[3] & DNS_FLAG_CD) != 0;
	qd = get16(m + 4);
	for (i = 0; i < qd; i++) {
		off = dns_check_name(m, len, off);
		if (off == 0 || off + 4 > len)
			return DNS_RCODE_FORMERR;
		off += 4;
		if (qd == 1) {
			qi->qtype = get16(m + off - 4);
			qi->qclass = get16(m + off - 2);
			qi->qend = (uint16_t)off;
		}
	}
	if (dns_summarize(m, len, off, &s) < 0)
		return DNS_RCODE_FORMERR;
	if (s.opt_end != 0) {
		unsigned size = get16(m + s.opt_start + 3);

		qi->has_opt = 1;
		qi->edns_version = m[s.opt_start + 6];
		qi->do_bit = (m[s.opt_start + 7] & 0x80) != 0;
		/* Larger UDP answers would be sent as IP fragments, which
		 * are lost or spoofed (DNS flag day 2020): TC=1 instead. */
		qi->udp_limit = size < UDP_MIN_LIMIT ? UDP_MIN_LIMIT :
		    size > UDP_ADVERTISE_BYTES ? UDP_ADVERTISE_BYTES :
		    (uint16_t)size;
	}
	if ((m[2] >> 3 & 0x0F) != 0)		/* only QUERY (RFC 1035) */
		return DNS_RCODE_NOTIMP;
	if (qd != 1 || (m[2] & DNS_FLAG_TC))	/* RFC 9619: exactly one; a
						 * cut query, as unbound */
		return DNS_RCODE_FORMERR;
	if (qi->edns_version != 0)		/* RFC 6891 6.1.3 */
		return DNS_RCODE_BADVERS;
	return 0;
}

/*
 * Checks that an upstream's message is a response with exactly one
 * uncompressed question. Returns the offset past the question, or 0.
 */
static size_t
dns_parse_answer(const unsigned char *m, size_t len)
{
	size_t off;

	if (len < DNS_HEADER_BYTES || !(m[2] & DNS_FLAG_QR) ||
	    get16(m + 4) != 1)
		return 0;
	off = dns_check_name(m, len, DNS_HEADER_BYTES);
	if (off == 0 || off + 4 > len)
		return 0;
	return off + 4;
}

/*
 * Compares two questions: the name's letters without case (RFC 4343),
 * QTYPE and QCLASS exactly (type 65 is not type 97). Both MUST have
 * passed dns_check_name, and the lengths are their qend offsets.
 */
static int
dns_question_equal(const unsigned char *a, size_t aend,
    const unsigned char *b, size_t bend)
{
	size_t i;

	if (aend != bend)
		return 0;
	for (i = DNS_HEADER_BYTES; i < aend - 4; i++)
		if (dns_lower(a[i]) != dns_lower(b[i]))
			return 0;
	return memcmp(a + aend - 4, b + bend - 4, 4) == 0;
}

/*
 * Appends an OPT record at len (RFC 6891 6.1.2): our UDP size, the
 * extended RCODE, version 0, the DO bit, and RDLENGTH rdlen (the caller
 * writes the options after it); ARCOUNT counts it. Returns the new
 * length.
 */
static size_t
dns_put_opt(unsigned char *m, size_t len, unsigned ext_rcode, int do_bit,
    size_t rdlen)
{
	unsigned char *o = m + len;

	o[0] = 0;
	put16(o + 1, DNS_TYPE_OPT);
	put16(o + 3, UDP_ADVERTISE_BYTES);
	o[5] = (unsigned char)ext_rcode;
	o[6] = 0;
	o[7] = do_bit ? 0x80 : 0;
	o[8] = 0;
	put16(o + 9, (unsigned)rdlen);
	put16(m + 10, get16(m + 10) + 1u);
	return len + DNS_OPT_BYTES;
}

/*
 * Appends an Extended DNS Error option (RFC 8914: INFO-CODE, EXTRA-TEXT,
 * at most DNS_EDE_TEXT_MAX bytes of it) to the OPT record that ends the
 * message at opt_start, when cap allows. Returns the new length.
 */
static size_t
dns_add_ede(unsigned char *m, size_t len, size_t cap, size_t opt_start,
    int code, const char *text)
{
	size_t n = text ? strlen(text) : 0;

	n = n < DNS_EDE_TEXT_MAX ? n : DNS_EDE_TEXT_MAX;
	if (len + 6 + n > cap)
		return len;
	put16(m + len, EDNS_OPTION_EDE);
	put16(m + len + 2, (unsigned)(2 + n));
	put16(m + len + 4, (unsigned)code);
	if (n != 0)
		memcpy(m + len + 6, text, n);
	put16(m + opt_start + DNS_OPT_BYTES - 2,
	    get16(m + opt_start + DNS_OPT_BYTES - 2) + 6u + (unsigned)n);
	return len + 6 + n;
}

/*
 * Builds an answer of dotproxy's own to a query: an RCODE (extended ones
 * too), or DNS_REPLY_TC. It has the query's ID, opcode, RD and CD, its
 * question when qi->qend != 0, and an OPT record when the query had a
 * well-formed one (RFC 6891 6.1.1), with its DO bit (RFC 3225 3) and,
 * when ede >= 0, an Extended DNS Error saying why (RFC 8914; the text
 * never names the query). out MUST hold DNS_ERROR_MAX_BYTES. Returns the
 * length.
 */
static size_t
dns_make_error(unsigned char *out, const unsigned char *query,
    const struct dns_query_info *qi, int rcode, int ede, const char *text)
{
	size_t len = qi->qend ? qi->qend : DNS_HEADER_BYTES;

	memcpy(out, query, len);
	put16(out, qi->id);
	out[2] = (unsigned char)(DNS_FLAG_QR | (query[2] & 0x78) | qi->rd);
	if (rcode == DNS_REPLY_TC) {
		out[2] |= DNS_FLAG_TC;
		rcode = 0;
	}
	out[3] = (unsigned char)(DNS_FLAG_RA | (qi->cd ? DNS_FLAG_CD : 0) |
	    (rcode & 0x0F));
	put16(out + 4, qi->qend ? 1 : 0);
	memset(out + 6, 0, 6);
	if (qi->has_opt) {
		size_t opt = len;

		len = dns_put_opt(out, len, (unsigned)rcode >> 4, qi->do_bit, 0);
		if (ede >= 0)
			len = dns_add_ede(out, len, DNS_ERROR_MAX_BYTES, opt, ede,
			    text);
	}
	return len;
}

/*
 * Builds the query dotproxy sends for a client's: its question as the
 * client spelled it, its RD and CD, AD=1 (RFC 6840 5.7: the upstream then
 * says whether the data is authentic; each client sees AD as its own
 * query asks), and one OPT record of ours with the client's DO bit and,
 * when block != 0, Padding to a multiple of block bytes (RFC 7830, RFC
 * 8467 4.1). Nothing else the client sent goes on: its EDNS options are
 * for one hop (RFC 7873 cookies, RFC 7871 11.1 Client Subnet), and a TSIG
 * cannot survive a new ID. The ID is 0 until the query is sent. out MUST
 * hold PENDING_QUERY_BYTES. Returns the length.
 */
static size_t
dns_build_query(unsigned char *out, const unsigned char *m,
    const struct dns_query_info *qi, size_t block)
{
	size_t len = qi->qend + DNS_OPT_BYTES + 4, pad;

	memcpy(out, m, qi->qend);
	put16(out, 0);
	out[2] = qi->rd;
	out[3] = (unsigned char)(DNS_FLAG_AD | (qi->cd ? DNS_FLAG_CD : 0));
	memset(out + 6, 0, 6);
	if (block == 0)
		return dns_put_opt(out, qi->qend, 0, qi->do_bit, 0);
	pad = (block - len % block) % block;
	len = dns_put_opt(out, qi->qend, 0, qi->do_bit, 4 + pad);
	put16(out + len, EDNS_OPTION_PADDING);
	put16(out + len + 2, (unsigned)pad);
	memset(out + len + 4, 0, pad);
	return len + 4 + pad;
}

/*
 * Keeps only the Extended DNS Error options (RFC 8914) of the OPT record
 * at [s, e), in place. Padding, NSID, COOKIE, keepalive and the rest
 * describe one hop and must not cross a proxy (RFC 7828 3.3.2, RFC 5001
 * 2.2). Returns the new length of the message, or 0 if an option
 * overruns the record.
 */
static size_t
dns_keep_ede(unsigned char *m, size_t len, size_t s, size_t e)
{
	size_t o = s + DNS_OPT_BYTES;

	while (o + 4 <= e) {
		size_t cut = 4u + get16(m + o + 2);

		if (o + cut > e)
			return 0;
		if (get16(m + o) == EDNS_OPTION_EDE) {
			o += cut;
			continue;
		}
		/* Only what follows moves: the OPT is normally last. */
		memmove(m + o, m + o + cut, len - o - cut);
		len -= cut;
		e -= cut;
	}
	if (o != e)
		return 0;
	put16(m + s + DNS_OPT_BYTES - 2, (unsigned)(e - s - DNS_OPT_BYTES));
	return len;
}

/*
 * Rewrites the TTL of every record but OPT: ttl - sub, clamped to
 * [min, max]. Counts TTLs down at a cache hit and sets STALE_TTL_S on a
 * stale answer. Returns 0, or -1 if the message is malformed.
 */
static int
dns_rewrite_ttls(unsigned char *m, size_t len, size_t qend, uint32_t sub,
    uint32_t min, uint32_t max)
{
	struct dns_iter it;
	struct dns_rr rr;
	int r;

	dns_iter_init(&it, m, len, qend);
	while ((r = dns_iter_next(&it, &rr)) > 0) {
		uint32_t ttl = dns_rr_ttl(m, &rr);

		if (rr.type == DNS_TYPE_OPT)
			continue;
		ttl = ttl > sub ? ttl - sub : 0;
		put32(m + rr.hdr + 4, ttl < min ? min : ttl > max ? max : ttl);
	}
	return r;
}

/*
 * Readies an upstream's answer (it MUST have passed dns_parse_answer) for
 * the cache and every client, in place in a buffer of cap bytes: its OPT
 * (one of ours is added when it has none and cap allows) keeps only EDE
 * options (dns_keep_ede), with version 0 and no flag but DO; AA is
 * cleared (dotproxy is no authority); TTLs are clamped to [min, max];
 * and in a negative answer each authority record (the SOA, NSEC, ...) has
 * at most the negative TTL (RFC 2308 3 and 5, RFC 9077), at most
 * CACHE_NEG_MAX_TTL_S, so clients cache it no longer than dotproxy does.
 * *ttl is how long it may be cached: its smallest TTL, or 0 if it must
 * not be (SERVFAIL, REFUSED, TC, extended RCODE, negative without SOA, no
 * TTL to go by). An OPT that is not the last record makes the answer
 * malformed here: cutting it would move records that later ones may
 * point at (RFC 1035 4.1.4). Returns the new length, or 0 if malformed.
 */
static size_t
dns_prepare_answer(unsigned char *m, size_t len, size_t cap, size_t qend,
    uint32_t min, uint32_t max, uint32_t *ttl, struct dns_summary *out)
{
	struct dns_summary s;
	struct dns_iter it;
	struct dns_rr rr;
	unsigned rcode = m[3] & 0x0F;
	uint32_t neg, least = DNS_TTL_MAX;

	*ttl = 0;
	if (dns_summarize(m, len, qend, &s) < 0 ||
	    (s.opt_end != 0 && s.opt_end != s.end))
		return 0;
	len = s.end;			/* bytes after the last record go */
	if (s.opt_end == 0 && len + DNS_OPT_BYTES <= cap) {
		s.opt_start = len;
		len = dns_put_opt(m, len, 0, 0, 0);
		s.opt_end = len;
	}
	if (s.opt_end != 0) {
		unsigned char *o = m + s.opt_start;

		rcode |= (unsigned)o[5] << 4;
		put16(o + 3, UDP_ADVERTISE_BYTES);
		o[6] = 0;
		o[7] &= 0x80;
		o[8] = 0;
		len = dns_keep_ede(m, len, s.opt_start, s.opt_end);
		if (len == 0)
			return 0;
	}
	m[2] &= (unsigned char)~DNS_FLAG_AA;
	neg = s.neg_ttl < CACHE_NEG_MAX_TTL_S ? s.neg_ttl : CACHE_NEG_MAX_TTL_S;
	dns_iter_init(&it, m, len, qend);
	while (dns_iter_next(&it, &rr) > 0) {
		uint32_t t = dns_rr_ttl(m, &rr);

		if (rr.type == DNS_TYPE_OPT)
			continue;
		if (s.has_soa && rr.section == DNS_SEC_NS && t > neg)
			t = neg;
		t = t < min ? min : t > max ? max : t;
		put32(m + rr.hdr + 4, t);
		least = t < least ? t : least;
	}
	if (!(m[2] & DNS_FLAG_TC) && (rcode == 0 || rcode ==
	    DNS_RCODE_NXDOMAIN) && (!s.negative || s.has_soa) &&
	    least != DNS_TTL_MAX)
		*ttl = least;
	s.end = len;			/* the OPT, if any, is last */
	s.opt_end = s.opt_end ? len : 0;
	*out = s;
	return len;
}

/*
 * Compares two names of a message (compression followed, 32 hops at
 * most), letters without case. Returns 1 if they are the same name.
 */
static int
dns_name_equal(const unsigned char *m, size_t len, size_t a, size_t b)
{
	unsigned hops = 0, i;

	for (;;) {
		while (a + 1 < len && (m[a] & 0xC0) == 0xC0 && hops++ < 32)
			a = (size_t)(m[a] & 0x3F) << 8 | m[a + 1];
		while (b + 1 < len && (m[b] & 0xC0) == 0xC0 && hops++ < 32)
			b = (size_t)(m[b] & 0x3F) << 8 | m[b + 1];
		if (a >= len || b >= len || m[a] != m[b] ||
		    m[a] > DNS_LABEL_MAX_BYTES || a + m[a] >= len ||
		    b + m[b] >= len)
			return 0;
		if (m[a] == 0)
			return 1;
		for (i = 1; i <= m[a]; i++)
			if (dns_lower(m[a + i]) != dns_lower(m[b + i]))
				return 0;
		a += m[a] + 1u;
		b += m[b] + 1u;
	}
}

/* Returns 1 if two records are of one RRset: owner, type and class. */
static int
dns_same_rrset(const unsigned char *m, size_t len, const struct dns_rr *x,
    const struct dns_rr *y)
{
	return memcmp(m + x->hdr, m + y->hdr, 4) == 0 &&
	    dns_name_equal(m, len, x->start, y->start);
}

/*
 * Fits an answer into a UDP client's limit (RFC 1035 4.2.1, RFC 2181 9):
 * when the answer and authority sections fit, whole RRsets of the
 * additional section are left out from the first that does not fit (the
 * OPT stays), with TC=0 (a partial RRset would be cached as if whole,
 * RFC 2181 5); else only the header, the question and the OPT remain,
 * with TC=1, and the client asks again over TCP (RFC 7766 5). The OPT
 * MUST be the last record (dns_prepare_answer), so what is kept is a
 * prefix that does not move. s is the message's summary. Works in
 * place; returns the new length.
 */
static size_t
dns_truncate(unsigned char *m, size_t len, size_t qend,
    const struct dns_summary *s, size_t limit)
{
	size_t optlen = s->opt_end ? s->opt_end - s->opt_start : 0, w, set_w;
	unsigned kept = 0, set_kept = 0;
	struct dns_iter it;
	struct dns_rr rr, prev;

	if (optlen > DNS_OPT_BYTES && s->ns_end + optlen > limit) {
		/* Extended errors help; never at the cost of the answer
		 * or authority records, nor of TC. */
		put16(m + s->opt_start + DNS_OPT_BYTES - 2, 0);
		optlen = DNS_OPT_BYTES;
	}
	if (s->ns_end + optlen > limit) {
		memmove(m + qend, m + s->opt_start, optlen);
		m[2] |= DNS_FLAG_TC;
		memset(m + 6, 0, 4);
		put16(m + 10, optlen != 0);
		return qend + optlen;
	}
	w = set_w = s->ns_end;
	dns_iter_init(&it, m, len, qend);
	while (dns_iter_next(&it, &rr) > 0) {
		if (rr.section != DNS_SEC_AR || rr.type == DNS_TYPE_OPT)
			continue;
		if (kept == 0 || !dns_same_rrset(m, len, &prev, &rr)) {
			set_w = w;		/* a new RRset starts here */
			set_kept = kept;
		}
		if (rr.end + optlen > limit) {
			w = set_w;		/* none of its RRset goes */
			kept = set_kept;
			break;
		}
		w = rr.end;
		kept++;
		prev = rr;
	}
	memmove(m + w, m + s->opt_start, optlen);
	put16(m + 10, kept + (optlen != 0));
	return w + optlen;
}

/*
 * Makes a prepared answer (dns_prepare_answer) the answer to one query,
 * in place: its ID, its RD, its spelling of the question (the names are
 * equal but for case), AD only if it asked with AD or DO (RFC 6840 5.7),
 * the OPT only if it sent one (RFC 6891 7), with our size and its DO bit
 * (RFC 3225 3), and truncation when udp_limit != 0 (dns_truncate). sum is
 * the answer's summary as dns_prepare_answer gave it (or the cache kept
 * it): the message is not walked again. Returns the new length.
 */
static size_t
dns_answer_for_client(unsigned char *m, size_t len, const unsigned char *query,
    const struct dns_query_info *qi, size_t udp_limit,
    const struct dns_summary *sum)
{
	struct dns_summary s = *sum;

	put16(m, qi->id);
	m[2] = (unsigned char)((m[2] & ~DNS_FLAG_RD) | qi->rd);
	if (!qi->ad && !qi->do_bit)
		m[3] &= (unsigned char)~DNS_FLAG_AD;
	memcpy(m + DNS_HEADER_BYTES, query + DNS_HEADER_BYTES,
	    qi->qend - DNS_HEADER_BYTES);
	if (s.opt_end != 0 && !qi->has_opt) {
		memmove(m + s.opt_start, m + s.opt_end, len - s.opt_end);
		put16(m + 10, get16(m + 10) - 1u);
		len -= s.opt_end - s.opt_start;
		s.opt_end = 0;
	} else if (s.opt_end != 0) {
		m[s.opt_start + 7] = qi->do_bit ? 0x80 : 0;
	}
	if (udp_limit != 0 && len > udp_limit)
		len = dns_truncate(m, len, qi->qend, &s, udp_limit);
	return len;
}

/*
 * Finds the longest zone (wire form, lower case) that name at off is at
 * or below, on label boundaries. zones[i] points to wire names. Returns
 * its index, or -1. The name MUST have passed dns_check_name.
 */
static int
dns_match_zone(const unsigned char *m, size_t off,
    const unsigned char *const *zones, const size_t *zone_lens, size_t n)
{
	int best = -1;
	size_t best_len = 0;

	for (;;) {
		size_t i, left = 0, o;

		for (o = off; m[o] != 0; o += m[o] + 1u)
			;
		left = o + 1 - off;	/* wire length of this suffix */
		for (i = 0; i < n; i++) {
			size_t k;

			if (zone_lens[i] != left || left <= best_len)
				continue;
			for (k = 0; k < left; k++)
				if (dns_lower(m[off + k]) != zones[i][k])
					break;
			if (k == left) {
				best = (int)i;
				best_len = left;
			}
		}
		if (m[off] == 0)
			return best;
		off += m[off] + 1u;
	}
}

/*
 * Special-use names that dotproxy answers itself and never forwards:
 * localhost (RFC 6761 6.3: the loopback addresses), invalid (6.4) and
 * onion (RFC 7686): no such name; resolver.arpa (RFC 9462 6.1): nothing,
 * for a forwarder that forwarded it would let a client discover the
 * upstream's own encrypted resolver and go around dotproxy. Each answer
 * carries the zone's SOA, as unbound's local zones do.
 */
enum { DNS_LOCAL_LOCALHOST, DNS_LOCAL_INVALID, DNS_LOCAL_ONION,
	DNS_LOCAL_RESOLVER };

static const unsigned char *const dns_local_zones[] = {
	(const unsigned char *)"\x09localhost",
	(const unsigned char *)"\x07invalid",
	(const unsigned char *)"\x05onion",
	(const unsigned char *)"\x08resolver\x04" "arpa",
};
static const size_t dns_local_lens[] = { 11, 9, 7, 15 };

/*
 * Answers a query (which passed dns_parse_query) for a special-use name
 * into out (DNS_LOCAL_MAX_BYTES). Returns the length, or 0 if the name is
 * not one of them.
 */
static size_t
dns_local_answer(unsigned char *out, const unsigned char *m,
    const struct dns_query_info *qi)
{
	static const unsigned char loop6[16] = { [15] = 1 };
	int zone = dns_match_zone(m, DNS_HEADER_BYTES, dns_local_zones,
	    dns_local_lens, 4);
	size_t apex, len = qi->qend;
	unsigned an = 0, t = qi->qtype;

	if (zone < 0)
		return 0;
	if (qi->qclass != DNS_CLASS_IN)
		return dns_make_error(out, m, qi, DNS_RCODE_REFUSED,
		    EDE_NOT_SUPPORTED, "special-use name: class IN only");
	apex = qi->qend - 4 - dns_local_lens[zone];
	dns_make_error(out, m, qi, zone == DNS_LOCAL_INVALID ||
	    zone == DNS_LOCAL_ONION ? DNS_RCODE_NXDOMAIN : 0, -1, NULL);
	out[2] |= DNS_FLAG_AA;
	put16(out + 10, 0);		/* the OPT goes last */
	if (zone == DNS_LOCAL_LOCALHOST && t == DNS_TYPE_A) {
		memcpy(out + len, "\xc0\x0c\0\x01\0\x01\0\0\0\0\0\x04"
		    "\x7f\0\0\x01", 16);
		put32(out + len + 6, DNS_LOCAL_TTL_S);
		len += 16;
		an++;
	}
	if (zone == DNS_LOCAL_LOCALHOST && t == DNS_TYPE_AAAA) {
		memcpy(out + len, "\xc0\x0c\0\x1c\0\x01\0\0\0\0\0\x10", 12);
		put32(out + len + 6, DNS_LOCAL_TTL_S);
		memcpy(out + len + 12, loop6, 16);
		len += 28;
		an++;
	}
	if (an == 0) {			/* the SOA, in the answer if asked */
		put16(out + len, 0xC000 | (unsigned)apex);
		put16(out + len + 2, DNS_TYPE_SOA);
		put16(out + len + 4, DNS_CLASS_IN);
		put32(out + len + 6, DNS_LOCAL_TTL_S);
		put16(out + len + 10, 47);
		memcpy(out + len + 12, "\x09localhost\0\x06nobody\x07invalid",
		    27);
		put32(out + len + 39, 1);		/* serial */
		put32(out + len + 43, 3600);		/* refresh */
		put32(out + len + 47, 1200);		/* retry */
		put32(out + len + 51, 604800);		/* expire */
		put32(out + len + 55, DNS_LOCAL_TTL_S);	/* minimum */
		len += 59;
		if (t == DNS_TYPE_SOA && apex == DNS_HEADER_BYTES &&
		    zone != DNS_LOCAL_INVALID && zone != DNS_LOCAL_ONION)
			an = 1;
		else
			put16(out + 8, 1);
	}
	put16(out + 6, an);
	if (qi->has_opt) {
		size_t opt = len;

		len = dns_put_opt(out, len, 0, qi->do_bit, 0);
		len = dns_add_ede(out, len, DNS_LOCAL_MAX_BYTES, opt, EDE_OTHER,
		    "special-use name, answered locally (RFC 6761)");
	}
	return len;
}

/* ==== anchors: trust anchors ========================================== */
/*
 * anchors.inc is generated, do not edit: the build runs `brssl ta` on
 * anchors.pem (or on ANCHORS=file) and it defines TAs[] and TAs_NUM.
 * --ca-file replaces them at start-up with roots read from a PEM file;
 * that is the only place the proxy allocates, and only before the loop.
 */
#include "anchors.inc"

#define ANCHORS_MAX		512	/* certificates in a --ca-file */
#define ANCHOR_DER_MAX_BYTES	16384	/* one certificate */
#define ANCHOR_DN_MAX_BYTES	2048	/* one subject name */

struct byte_buf {
	unsigned char *data;
	size_t len, cap;
	int overflow;
};

static void
anchors_buf_append(void *ctx, const void *data, size_t len)
{
	struct byte_buf *b = ctx;

	if (b->len + len > b->cap) {
		b->overflow = 1;
		return;
	}
	memcpy(b->data + b->len, data, len);
	b->len += len;
}

static void *
anchors_dup(const void *src, size_t len)
{
	void *p = util_alloc(len ? len : 1);

	if (p == NULL)
		die("out of memory reading trust anchors");
	memcpy(p, src, len);
	return p;
}

/*
 * Turns one DER certificate into a trust anchor, as `brssl ta` does: a
 * CA certificate anchors chains, any other is trusted directly. Returns
 * 0, or a BearSSL X.509 error code.
 */
static int
anchors_from_der(const unsigned char *der, size_t len,
    br_x509_trust_anchor *ta)
{
	static unsigned char dn_data[ANCHOR_DN_MAX_BYTES];
	struct byte_buf dn = { dn_data, 0, sizeof dn_data, 0 };
	br_x509_decoder_context dc;
	br_x509_pkey *pk;

	br_x509_decoder_init(&dc, anchors_buf_append, &dn);
	br_x509_decoder_push(&dc, der, len);
	pk = br_x509_decoder_get_pkey(&dc);
	if (pk == NULL) {
		int err = br_x509_decoder_last_error(&dc);

		return err ? err : BR_ERR_X509_INVALID_VALUE;
	}
	if (dn.overflow)
		return BR_ERR_X509_LIMIT_EXCEEDED;
	memset(ta, 0, sizeof *ta);
	ta->dn.data = anchors_dup(dn.data, dn.len);
	ta->dn.len = dn.len;
	ta->flags = br_x509_decoder_isCA(&dc) ? BR_X509_TA_CA : 0;
	ta->pkey.key_type = pk->key_type;
	if (pk->key_type == BR_KEYTYPE_RSA) {
		ta->pkey.key.rsa.n = anchors_dup(pk->key.rsa.n, pk->key.rsa.nlen);
		ta->pkey.key.rsa.nlen = pk->key.rsa.nlen;
		ta->pkey.key.rsa.e = anchors_dup(pk->key.rsa.e, pk->key.rsa.elen);
		ta->pkey.key.rsa.elen = pk->key.rsa.elen;
	} else if (pk->key_type == BR_KEYTYPE_EC) {
		ta->pkey.key.ec.curve = pk->key.ec.curve;
		ta->pkey.key.ec.q = anchors_dup(pk->key.ec.q, pk->key.ec.qlen);
		ta->pkey.key.ec.qlen = pk->key.ec.qlen;
	} else {
		return BR_ERR_X509_UNSUPPORTED;
	}
	return 0;
}

/* Reads a whole file into start-up memory. Returns its length. */
static size_t
anchors_read_file(const char *path, unsigned char **out)
{
	struct stat st;
	size_t len = 0;
	int fd = open(path, O_RDONLY | O_CLOEXEC);

	if (fd < 0 || fstat(fd, &st) < 0)
		die("cannot read --ca-file '%s': %s", path, strerror(errno));
	if (!S_ISREG(st.st_mode) || st.st_size > 16 * 1024 * 1024)
		die("cannot read --ca-file '%s': not a regular file of at most "
		    "16 MB", path);
	*out = util_alloc((size_t)st.st_size + 1);
	if (*out == NULL)
		die("out of memory reading --ca-file '%s'", path);
	while (len < (size_t)st.st_size) {
		ssize_t n = read(fd, *out + len, (size_t)st.st_size - len);

		if (n < 0 && errno == EINTR)
			continue;
		if (n < 0)
			die("cannot read --ca-file '%s': %s", path,
			    strerror(errno));
		if (n == 0)
			break;
		len += (size_t)n;
	}
	close(fd);
	(*out)[len++] = '\n';	/* in case the file lacks a final newline */
	return len;
}

/*
 * Loads every certificate of a PEM file as a trust anchor (start-up
 * only; fatal on any error, naming the file). Replaces the compiled-in
 * set.
 */
static void
anchors_load_file(const char *path)
{
	static unsigned char der_data[ANCHOR_DER_MAX_BYTES];
	struct byte_buf der = { der_data, 0, sizeof der_data, 0 };
	br_pem_decoder_context pc;
	br_x509_trust_anchor *tas;
	unsigned char *file;
	size_t n_tas = 0, off = 0, len;
	int in_cert = 0, err;
	char ebuf[64];

	len = anchors_read_file(path, &file);
	tas = util_alloc(ANCHORS_MAX * sizeof *tas);
	if (tas == NULL)
		die("out of memory reading --ca-file '%s'", path);
	br_pem_decoder_init(&pc);
	while (off < len) {
		off += br_pem_decoder_push(&pc, file + off, len - off);
		switch (br_pem_decoder_event(&pc)) {
		case BR_PEM_BEGIN_OBJ:
			in_cert = strcmp(br_pem_decoder_name(&pc),
			    "CERTIFICATE") == 0 || strcmp(br_pem_decoder_name(
			    &pc), "X509 CERTIFICATE") == 0;
			der.len = 0;
			der.overflow = 0;
			br_pem_decoder_setdest(&pc,
			    in_cert ? anchors_buf_append : NULL,
			    in_cert ? &der : NULL);
			break;
		case BR_PEM_END_OBJ:
			if (!in_cert)
				break;
			in_cert = 0;
			if (n_tas == ANCHORS_MAX)
				die("--ca-file '%s': more than %d certificates",
				    path, ANCHORS_MAX);
			err = der.overflow ? BR_ERR_X509_LIMIT_EXCEEDED :
			    anchors_from_der(der.data, der.len, &tas[n_tas]);
			if (err)
				die("--ca-file '%s': certificate %zu: %s", path,
				    n_tas + 1, util_br_error_name(err, ebuf,
				    sizeof ebuf));
			n_tas++;
			break;
		case BR_PEM_ERROR:
			die("--ca-file '%s': not a valid PEM file", path);
		default:
			break;
		}
	}
	if (n_tas == 0)
		die("--ca-file '%s': no certificate found", path);
	g.tas = tas;
	g.n_tas = n_tas;
}

/* ==== trust: pins and the validation clock ============================ */
/*
 * Pure checks around TLS: SPKI pins (RFC 7858 4.2, the sha256/BASE64 form
 * of stubby and Knot Resolver) and the time certificates are checked
 * against.
 */

#ifndef DOTPROXY_BUILD_EPOCH
#define DOTPROXY_BUILD_EPOCH	0
#endif
#define TRUST_ERR_PIN		250	/* not a BearSSL code (those stop at 62) */
#define TRUST_UNIX_DAYS		719528	/* 1970-01-01 in BearSSL's day count */

/* Decodes standard base64 (with padding) into out. Returns the number of
 * bytes, or -1. */
static long
trust_base64(const char *s, unsigned char *out, size_t cap)
{
	size_t n = 0, len = strlen(s), i;
	uint32_t acc = 0;
	int bits = 0, pad = 0;

	if (len == 0 || len % 4 != 0)
		return -1;
	for (i = 0; i < len; i++) {
		int c = (unsigned char)s[i], v;

		if (c == '=' && i >= len - 2) {
			pad++;
			continue;
		}
		if (pad)
			return -1;
		v = c >= 'A' && c <= 'Z' ? c - 'A' : c >= 'a' && c <= 'z' ?
		    c - 'a' + 26 : c >= '0' && c <= '9' ? c - '0' + 52 :
		    c == '+' ? 62 : c == '/' ? 63 : -1;
		if (v < 0)
			return -1;
		acc = acc << 6 | (uint32_t)v;
		bits += 6;
		if (bits >= 8) {
			bits -= 8;
			if (n == cap)
				return -1;
			out[n++] = (unsigned char)(acc >> bits);
		}
	}
	return (long)n;
}

/* Parses "sha256/BASE64" (32 bytes) into pin. Returns 0 or -1. */
static int
trust_parse_pin(const char *s, unsigned char pin[32])
{
	return strncmp(s, "sha256/", 7) == 0 &&
	    trust_base64(s + 7, pin, 32) == 32 ? 0 : -1;
}

/* Reads a DER tag and length at off. Returns the offset of the value, or
 * 0 if it does not fit in len. */
static size_t
trust_der(const unsigned char *d, size_t len, size_t off, unsigned *tag,
    size_t *vlen)
{
	size_t l;

	if (off + 2 > len)
		return 0;
	*tag = d[off++];
	l = d[off++];
	if (l & 0x80) {
		unsigned n = l & 0x7F;

		if (n == 0 || n > 3 || off + n > len)
			return 0;
		for (l = 0; n > 0; n--)
			l = l << 8 | d[off++];
	}
	if (l > len - off)
		return 0;
	*vlen = l;
	return off;
}

/*
 * Finds the SubjectPublicKeyInfo of a DER certificate (RFC 5280 4.1:
 * TBSCertificate = [0] version?, serial, signature, issuer, validity,
 * subject, subjectPublicKeyInfo). Returns 0 with its bounds, or -1.
 */
static int
trust_find_spki(const unsigned char *c, size_t len, size_t *start,
    size_t *slen)
{
	unsigned tag;
	size_t vl, off, end, h;
	int i;

	off = trust_der(c, len, 0, &tag, &vl);
	if (off == 0 || tag != 0x30)
		return -1;
	off = trust_der(c, len, off, &tag, &vl);
	if (off == 0 || tag != 0x30)
		return -1;
	end = off + vl;
	h = trust_der(c, end, off, &tag, &vl);
	if (h != 0 && tag == 0xA0)
		off = h + vl;		/* version */
	for (i = 0; i < 5; i++) {	/* serial .. subject */
		h = trust_der(c, end, off, &tag, &vl);
		if (h == 0)
			return -1;
		off = h + vl;
	}
	h = trust_der(c, end, off, &tag, &vl);
	if (h == 0 || tag != 0x30)
		return -1;
	*start = off;
	*slen = h + vl - off;
	return 0;
}

/* Returns 1 if the SHA-256 of a certificate's SPKI is one of the pins. */
static int
trust_pin_matches(const unsigned char *cert, size_t len,
    const unsigned char (*pins)[32], size_t n_pins)
{
	br_sha256_context h;
	unsigned char sum[32];
	size_t s, l, i;

	if (trust_find_spki(cert, len, &s, &l) < 0)
		return 0;
	br_sha256_init(&h);
	br_sha256_update(&h, cert + s, l);
	br_sha256_out(&h, sum);
	for (i = 0; i < n_pins; i++)
		if (memcmp(sum, pins[i], 32) == 0)
			return 1;
	return 0;
}

/*
 * The time to check certificates against. A router without a real-time
 * clock boots in 1970 and would refuse every certificate, and so could
 * not resolve the NTP server that sets the clock (stubby#274, #146).
 * The binary cannot be older than its build, so a clock before the build
 * time is wrong: the build time is used instead, which still refuses a
 * certificate that expired before the build.
 */
static int64_t
trust_validation_time(int64_t now, int64_t build, int *behind)
{
	*behind = now < build;
	return now < build ? build : now;
}

/* Sets the validation time of an upstream's X.509 engine, logging when
 * the system clock falls behind the build time and when it is set. */
static void
trust_set_time(br_x509_minimal_context *xc)
{
	int behind;
	int64_t t = trust_validation_time((int64_t)time(NULL),
	    DOTPROXY_BUILD_EPOCH, &behind);

	if (behind && !g.clock_behind)
		log_warn("system clock is before this binary's build time: "
		    "checking certificates against the build time until the "
		    "clock is set");
	else if (!behind && g.clock_behind)
		log_info("system clock set: checking certificates against it");
	g.clock_behind = behind;
	br_x509_minimal_set_time(xc, (uint32_t)(t / 86400 + TRUST_UNIX_DAYS),
	    (uint32_t)(t % 86400));
}

static struct pin_x509 *
trust_px(const br_x509_class *const *ctx)
{
	return (struct pin_x509 *)(void *)(uintptr_t)ctx;
}

static void
trust_start_chain(const br_x509_class **ctx, const char *server_name)
{
	struct pin_x509 *px = trust_px(ctx);

	px->cert_index = 0;
	px->leaf_len = 0;
	px->leaf_overflow = 0;
	px->u->xc.vtable->start_chain(&px->u->xc.vtable, server_name);
}

static void
trust_start_cert(const br_x509_class **ctx, uint32_t length)
{
	struct pin_x509 *px = trust_px(ctx);

	px->u->xc.vtable->start_cert(&px->u->xc.vtable, length);
}

static void
trust_append(const br_x509_class **ctx, const unsigned char *buf, size_t len)
{
	struct pin_x509 *px = trust_px(ctx);

	px->u->xc.vtable->append(&px->u->xc.vtable, buf, len);
	if (px->cert_index != 0)
		return;
	if (px->leaf_len + len > sizeof px->leaf) {
		px->leaf_overflow = 1;
		return;
	}
	memcpy(px->leaf + px->leaf_len, buf, len);
	px->leaf_len += len;
}

static void
trust_end_cert(const br_x509_class **ctx)
{
	struct pin_x509 *px = trust_px(ctx);

	px->u->xc.vtable->end_cert(&px->u->xc.vtable);
	px->cert_index++;
}

/*
 * The chain ends: the chain check's verdict, then the pins (any one must
 * match the leaf's key). With pin-only, the pins alone decide (a server
 * with a self-signed certificate), and the leaf's key is decoded here.
 */
static unsigned
trust_end_chain(const br_x509_class **ctx)
{
	struct pin_x509 *px = trust_px(ctx);
	struct upstream *u = px->u;
	unsigned err = u->xc.vtable->end_chain(&u->xc.vtable);

	if (u->n_pins == 0)
		return err;
	if (err != 0 && !u->pin_only)
		return err;
	if (px->leaf_overflow || !trust_pin_matches(px->leaf, px->leaf_len,
	    (const unsigned char (*)[32])u->pins, u->n_pins))
		return TRUST_ERR_PIN;
	if (u->pin_only) {
		br_x509_decoder_init(&px->dc, 0, 0);
		br_x509_decoder_push(&px->dc, px->leaf, px->leaf_len);
		if (br_x509_decoder_get_pkey(&px->dc) == NULL)
			return BR_ERR_X509_UNSUPPORTED;
	}
	return 0;
}

static const br_x509_pkey *
trust_get_pkey(const br_x509_class *const *ctx, unsigned *usages)
{
	struct pin_x509 *px = trust_px(ctx);

	if (!px->u->pin_only)
		return px->u->xc.vtable->get_pkey(&px->u->xc.vtable, usages);
	if (usages != NULL)
		*usages = BR_KEYTYPE_KEYX | BR_KEYTYPE_SIGN;
	return br_x509_decoder_get_pkey(&px->dc);
}

static const br_x509_class trust_pin_vtable = {
	sizeof(struct pin_x509),
	trust_start_chain, trust_start_cert, trust_append, trust_end_cert,
	trust_end_chain, trust_get_pkey,
};

/* ==== acl: who may ask =============================================== */
/*
 * Owns g.allow: the --allow ranges (by default loopback, private and
 * link-local ones). Not an open resolver: anyone else gets REFUSED.
 */

/*
 * Parses an --allow range, "IP/PREFIX" or "IP" (one address). Returns 0
 * or -1.
 */
static int
acl_parse_range(const char *s, struct acl_range *r)
{
	char ip[INET6_ADDRSTRLEN + 1];
	const char *slash = strchr(s, '/');
	size_t len = slash ? (size_t)(slash - s) : strlen(s);
	unsigned long prefix;

	if (len == 0 || len >= sizeof ip)
		return -1;
	memcpy(ip, s, len);
	ip[len] = '\0';
	memset(r, 0, sizeof *r);
	if (inet_pton(AF_INET, ip, r->addr) == 1)
		r->family = AF_INET;
	else if (inet_pton(AF_INET6, ip, r->addr) == 1)
		r->family = AF_INET6;
	else
		return -1;
	prefix = r->family == AF_INET ? 32 : 128;
	if (slash && util_parse_uint(slash + 1, 0, prefix, &prefix) < 0)
		return -1;
	r->prefix = (unsigned)prefix;
	return 0;
}

/* Returns 1 if addr (4 or 16 bytes of family) is inside range r. */
static int
acl_in_range(const struct acl_range *r, int family, const unsigned char *a)
{
	unsigned full = r->prefix / 8, rest = r->prefix % 8;

	if (r->family != family)
		return 0;
	if (memcmp(r->addr, a, full) != 0)
		return 0;
	return rest == 0 || ((r->addr[full] ^ a[full]) &
	    (0xFF00u >> rest & 0xFF)) == 0;
}

/*
 * Who may ask without --allow: loopback, the private ranges (RFC 1918,
 * ULA) and link-local (never routed). Not 100.64.0.0/10: behind a
 * carrier-grade NAT that is the ISP's other customers.
 */
static const char *const acl_default_ranges[] = {
	"127.0.0.0/8", "10.0.0.0/8", "172.16.0.0/12", "192.168.0.0/16",
	"169.254.0.0/16", "::1/128", "fc00::/7", "fe80::/10",
};

/* Returns 1 if a client may query (an IPv4-mapped IPv6 address counts as
 * its IPv4 address). */
static int
acl_allowed(const union sockaddr_u *peer)
{
	static const unsigned char mapped[12] = {
		0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xFF, 0xFF,
	};
	const unsigned char *a;
	int family = peer->sa.sa_family;
	size_t i;

	if (family == AF_INET6) {
		a = peer->sin6.sin6_addr.s6_addr;
		if (memcmp(a, mapped, 12) == 0) {
			family = AF_INET;
			a += 12;
		}
	} else {
		a = (const unsigned char *)&peer->sin.sin_addr;
	}
	for (i = 0; i < g.n_allow; i++)
		if (acl_in_range(&g.allow[i], family, a))
			return 1;
	return 0;
}

/* Adds an --allow range, or dies naming it. */
static void
acl_add(const char *spec)
{
	if (g.n_allow == MAX_ALLOW)
		die("too many --allow ranges (at most %d): '%s'", MAX_ALLOW,
		    spec);
	if (acl_parse_range(spec, &g.allow[g.n_allow]) < 0)
		die("bad --allow '%s' (want IP/PREFIX, e.g. 192.168.0.0/16 or "
		    "::/0)", spec);
	g.n_allow++;
}

/* Without --allow: loopback and the private ranges (acl_default_ranges). */
static void
acl_add_defaults(void)
{
	size_t i;

	for (i = 0; i < sizeof acl_default_ranges /
	    sizeof acl_default_ranges[0]; i++)
		acl_add(acl_default_ranges[i]);
}

/* ==== pending: the pending-query table ================================ */
/*
 * Owns g.pending, the free stack and the age list, and the ID maps of
 * upstream connections. A query sent on a connection gets a fresh random
 * ID (util_rand16) that no earlier query on that connection had: an
 * answer that comes after its query timed out can then never be taken
 * for the answer to a newer one, and an on-path guess has 1 chance in
 * 65,536 per query (RFC 5452 9.2 gives the reason).
 */

/*
 * The only writer of a slot's state. FREE -> QUEUED (pending_alloc),
 * QUEUED -> SENT (written into a TLS engine, or sent to a zone server),
 * SENT -> QUEUED (its connection went: it is sent again), QUEUED ->
 * FOLLOWING (the same question is in flight: query_follow), any -> FREE
 * (pending_free, once its route has let go of it).
 */
static void
pending_set_state(int slot, enum pending_state st)
{
	g.pending[slot].state = st;
}

static void
pending_init(void)
{
	int i;

	util_rand_init();
	g.n_free = 0;
	for (i = MAX_PENDING - 1; i >= 0; i--) {
		pending_set_state(i, PENDING_FREE);
		g.pending[i].query = g.query_bytes[i];
		g.free_stack[g.n_free++] = i;
	}
	g.age_head = g.age_tail = -1;
	for (i = 0; i < MAX_PENDING; i++)
		g.coal[i] = -1;
	g.stale.head = g.stale.tail = -1;
}

/* Takes a free slot, puts it last on the age list. Returns -1 if full. */
static int
pending_alloc(void)
{
	struct pending_query *p;
	int slot;

	if (g.n_free == 0)
		return -1;
	slot = g.free_stack[--g.n_free];
	p = &g.pending[slot];
	pending_set_state(slot, PENDING_QUEUED);
	p->route = ROUTE_NONE;
	p->attempts = 0;
	p->next = -1;
	p->zudp = p->ztcp = p->twin = p->leader = -1;
	p->followers = -1;
	p->flags = 0;
	p->deadline_ms = g.now_ms + g.query_timeout_ms;
	p->age_next = -1;
	p->age_prev = g.age_tail;
	if (g.age_tail >= 0)
		g.pending[g.age_tail].age_next = slot;
	else
		g.age_head = slot;
	g.age_tail = slot;
	return slot;
}

/* Moves a slot just after another on the age list (a twin shares its
 * original's deadline, so it must expire there, not at the tail). */
static void
pending_age_after(int slot, int after)
{
	struct pending_query *p = &g.pending[slot], *a = &g.pending[after];

	if (p->age_prev >= 0)
		g.pending[p->age_prev].age_next = p->age_next;
	else
		g.age_head = p->age_next;
	if (p->age_next >= 0)
		g.pending[p->age_next].age_prev = p->age_prev;
	else
		g.age_tail = p->age_prev;
	p->age_prev = after;
	p->age_next = a->age_next;
	if (a->age_next >= 0)
		g.pending[a->age_next].age_prev = slot;
	else
		g.age_tail = slot;
	a->age_next = slot;
}

/* The pair of links at off (offsetof a struct pq_link) of a slot. */
static struct pq_link *
pq_link(int slot, size_t off)
{
	return (struct pq_link *)(void *)((char *)&g.pending[slot] + off);
}

/* Appends a slot to a list through its links at off. */
static void
pq_append(struct pq_list *l, size_t off, int slot)
{
	struct pq_link *k = pq_link(slot, off);

	k->prev = (int16_t)l->tail;
	k->next = -1;
	if (l->tail >= 0)
		pq_link(l->tail, off)->next = (int16_t)slot;
	else
		l->head = slot;
	l->tail = slot;
}

/* Takes a slot off a list through its links at off. */
static void
pq_unlink(struct pq_list *l, size_t off, int slot)
{
	struct pq_link *k = pq_link(slot, off);

	if (k->prev >= 0)
		pq_link(k->prev, off)->next = k->next;
	else
		l->head = k->next;
	if (k->next >= 0)
		pq_link(k->next, off)->prev = k->prev;
	else
		l->tail = k->prev;
}

/* Puts slot nu in old's place on a list (a twin taking over). */
static void
pq_replace(struct pq_list *l, size_t off, int old, int nu)
{
	struct pq_link *k = pq_link(old, off), *n = pq_link(nu, off);

	*n = *k;
	if (k->prev >= 0)
		pq_link(k->prev, off)->next = (int16_t)nu;
	else
		l->head = nu;
	if (k->next >= 0)
		pq_link(k->next, off)->prev = (int16_t)nu;
	else
		l->tail = nu;
}

#define PQ_STALE	offsetof(struct pending_query, stale_link)
#define PQ_HEDGE	offsetof(struct pending_query, hedge_link)

/*
 * The coalescing index: queries that went out (leaders), by the hash of
 * their question and cache key (cache_hash), newest first in a chain, so
 * that a later query with the same question and key can wait for the
 * same answer (query_follow) instead of asking again.
 */
static void
pending_index(int slot, uint32_t hash)
{
	struct pending_query *p = &g.pending[slot];
	int16_t *b = &g.coal[hash & (MAX_PENDING - 1)];

	p->hash = hash;
	p->coal_next = *b;
	*b = (int16_t)slot;
	p->flags |= PQ_INDEXED;
}

static void
pending_unindex(int slot)
{
	struct pending_query *p = &g.pending[slot];
	int16_t *link = &g.coal[p->hash & (MAX_PENDING - 1)];

	if (!(p->flags & PQ_INDEXED))
		return;
	while (*link != slot)
		link = &g.pending[*link].coal_next;
	*link = p->coal_next;
	p->flags &= (uint8_t)~PQ_INDEXED;
}

/* The newest leader of a question (m up to qend) and key, or -1. */
static int
pending_find_leader(const unsigned char *m, size_t qend, uint8_t key,
    uint32_t hash)
{
	int slot;

	for (slot = g.coal[hash & (MAX_PENDING - 1)]; slot >= 0;
	    slot = g.pending[slot].coal_next) {
		const struct pending_query *p = &g.pending[slot];

		if (p->hash == hash && p->cache_key == key &&
		    dns_question_equal(p->query, p->qi.qend, m, qend))
			return slot;
	}
	return -1;
}

/* The stale watch (--stale-timeout): a query that a stale answer waits
 * for, in arrival order, so the first to be due is the head. */
static void
pending_stale_watch(int slot)
{
	pq_append(&g.stale, PQ_STALE, slot);
	g.pending[slot].flags |= PQ_STALE_WATCH;
}

static void
pending_stale_unwatch(int slot)
{
	if (!(g.pending[slot].flags & PQ_STALE_WATCH))
		return;
	pq_unlink(&g.stale, PQ_STALE, slot);
	g.pending[slot].flags &= (uint8_t)~PQ_STALE_WATCH;
}

/*
 * Returns a slot to the free stack (and out of the coalescing index and
 * the stale watch). It MUST be detached (ROUTE_NONE), have no followers
 * and follow nobody.
 */
static void
pending_free(int slot)
{
	struct pending_query *p = &g.pending[slot];

	pending_unindex(slot);
	pending_stale_unwatch(slot);

	if (p->age_prev >= 0)
		g.pending[p->age_prev].age_next = p->age_next;
	else
		g.age_head = p->age_next;
	if (p->age_next >= 0)
		g.pending[p->age_next].age_prev = p->age_prev;
	else
		g.age_tail = p->age_prev;
	pending_set_state(slot, PENDING_FREE);
	g.free_stack[g.n_free++] = slot;
}

/* A new connection: no ID used yet, none in flight. */
static void
idmap_reset(struct id_map *m)
{
	memset(m->used, 0, sizeof m->used);
	m->n_used = 0;
	memset(m->slot, 0xFF, sizeof m->slot);
}

/* The ID map's place for an ID: its own, or where probing found it. */
static size_t
idmap_home(uint16_t id)
{
	return id & (ID_MAP_SLOTS - 1);
}

/*
 * Gives a slot a random ID not used before on the connection and
 * records it in flight. The caller MUST have checked that fewer than
 * ID_MAX_USED are used (so a free ID is found in two draws on average).
 */
static uint16_t
idmap_take(struct id_map *m, int slot)
{
	uint16_t id;
	size_t h;

	do
		id = util_rand16();
	while (m->used[id / 32] & (1u << (id % 32)));
	m->used[id / 32] |= 1u << (id % 32);
	m->n_used++;
	for (h = idmap_home(id); m->slot[h] >= 0; h = (h + 1) &
	    (ID_MAP_SLOTS - 1))
		;
	m->slot[h] = (int16_t)slot;
	g.pending[slot].up_id = id;
	return id;
}

/* Where an ID in flight is in the map, or -1. */
static long
idmap_pos(const struct id_map *m, uint16_t id)
{
	size_t h;

	for (h = idmap_home(id); m->slot[h] >= 0; h = (h + 1) &
	    (ID_MAP_SLOTS - 1))
		if (g.pending[m->slot[h]].up_id == id)
			return (long)h;
	return -1;
}

/* Returns 1 if an ID was given on the connection (in flight or not). */
static int
idmap_used(const struct id_map *m, uint16_t id)
{
	return (m->used[id / 32] >> (id % 32)) & 1;
}

/* The slot waiting for an ID, or -1. */
static int
idmap_find(const struct id_map *m, uint16_t id)
{
	long h = idmap_pos(m, id);

	return h < 0 ? -1 : m->slot[h];
}

/*
 * An ID is no longer in flight (answered, timed out, moved): out of the
 * map, but still used, so the connection never gives it again. Later
 * entries of its probe run move back (deletion without tombstones).
 */
static void
idmap_drop(struct id_map *m, uint16_t id)
{
	long pos = idmap_pos(m, id);
	size_t h, j, home;

	if (pos < 0)
		return;
	h = j = (size_t)pos;
	m->slot[h] = -1;
	for (;;) {
		j = (j + 1) & (ID_MAP_SLOTS - 1);
		if (m->slot[j] < 0)
			return;
		home = idmap_home(g.pending[m->slot[j]].up_id);
		/* Stays if its home lies cyclically in (h, j]. */
		if (h <= j ? (home > h && home <= j) : (home > h || home <= j))
			continue;
		m->slot[h] = m->slot[j];
		m->slot[j] = -1;
		h = j;
	}
}

/* ==== cache: answers by question ===================================== */
/*
 * Owns g.cache. Its memory is taken once at start-up (--cache-size bytes,
 * everything included) and cut into CACHE_BLOCK_BYTES blocks: an answer
 * takes a chain of blocks, so answers of any size share the memory
 * without fragmenting it. When blocks run out, the least recently used
 * entries go. The key is the question (the name's letters without case,
 * type and class exactly), the DO, CD and RD bits, and where the answer
 * came from (DoT, or which forward zone), so private-zone answers never
 * mix with public ones. Nothing a client sent beyond that shapes an
 * answer: its EDNS options are never forwarded (dns_build_query). Stored
 * answers are prepared (dns_prepare_answer: EDE options only, clamped and
 * negative TTLs); a hit counts the TTLs down by the time spent here.
 */

/*
 * Packs the key bits that change an answer: DO, CD, RD (an RD=0 answer
 * may be a bare CNAME from the upstream's cache), and the source (0 DoT,
 * 1 + forward zone). AD is not one: each client sees the stored AD as
 * its own query asks (dns_answer_for_client).
 */
static uint8_t
cache_key(const struct dns_query_info *qi, unsigned source)
{
	return (uint8_t)((qi->do_bit ? 1 : 0) | (qi->cd ? 2 : 0) |
	    (qi->rd ? 4 : 0) | source << 3);
}

/* FNV-1a over the question, the name's letters folded to lower case
 * (QTYPE and QCLASS as they are), and the key. */
static uint32_t
cache_hash(const unsigned char *m, size_t qend, uint8_t key)
{
	uint32_t h = 2166136261u ^ key;
	size_t i;

	for (i = DNS_HEADER_BYTES; i < qend; i++)
		h = (h ^ (i < qend - 4 ? dns_lower(m[i]) : m[i])) * 16777619u;
	return h;
}

/*
 * Takes the cache's memory: bytes in all (0: no cache). Each block costs
 * its data, its link, an entry and two bucket slots, so the number of
 * entries can never exceed the number of blocks.
 */
static void
cache_init(size_t bytes)
{
	struct cache *c = &g.cache;
	size_t per = CACHE_BLOCK_BYTES + sizeof(int32_t) +
	    sizeof(struct cache_entry) + 2 * sizeof(int32_t);
	size_t i;

	memset(c, 0, sizeof *c);
	c->min_ttl_s = CACHE_MIN_TTL_S;
	c->max_ttl_s = CACHE_MAX_TTL_S;
	c->lru_head = c->lru_tail = -1;
	if (bytes == 0)
		return;
	c->n_blocks = bytes / per;
	c->n_entries = c->n_blocks;
	for (c->n_buckets = 1; c->n_buckets * 2 <= c->n_entries * 2;
	    c->n_buckets *= 2)
		;
	c->blocks = util_alloc(c->n_blocks * CACHE_BLOCK_BYTES);
	c->block_next = util_alloc(c->n_blocks * sizeof(int32_t));
	c->entries = util_alloc(c->n_entries * sizeof(struct cache_entry));
	c->buckets = util_alloc(c->n_buckets * sizeof(int32_t));
	if (!c->blocks || !c->block_next || !c->entries || !c->buckets)
		die("cannot allocate a %zu-byte cache", bytes);
	for (i = 0; i < c->n_blocks; i++)
		c->block_next[i] = (int32_t)i + 1 < (int32_t)c->n_blocks ?
		    (int32_t)i + 1 : -1;
	for (i = 0; i < c->n_entries; i++) {
		c->entries[i].first = -1;
		c->entries[i].hnext = (int32_t)i + 1 < (int32_t)c->n_entries ?
		    (int32_t)i + 1 : -1;
	}
	for (i = 0; i < c->n_buckets; i++)
		c->buckets[i] = -1;
	c->free_block = 0;
	c->n_free_blocks = c->n_blocks;
	c->free_entry = 0;
}

/* Copies the first n bytes of an entry's answer into out. */
static void
cache_read(int e, unsigned char *out, size_t n)
{
	struct cache *c = &g.cache;
	int32_t b = c->entries[e].first;

	while (n > 0 && b >= 0) {
		size_t k = n < CACHE_BLOCK_BYTES ? n : CACHE_BLOCK_BYTES;

		memcpy(out, c->blocks[b], k);
		out += k;
		n -= k;
		b = c->block_next[b];
	}
}

static void
cache_lru_unlink(int e)
{
	struct cache *c = &g.cache;
	struct cache_entry *x = &c->entries[e];

	if (x->lru_prev >= 0)
		c->entries[x->lru_prev].lru_next = x->lru_next;
	else
		c->lru_head = x->lru_next;
	if (x->lru_next >= 0)
		c->entries[x->lru_next].lru_prev = x->lru_prev;
	else
		c->lru_tail = x->lru_prev;
}

static void
cache_lru_push(int e)
{
	struct cache *c = &g.cache;

	c->entries[e].lru_prev = -1;
	c->entries[e].lru_next = c->lru_head;
	if (c->lru_head >= 0)
		c->entries[c->lru_head].lru_prev = e;
	else
		c->lru_tail = e;
	c->lru_head = e;
}

/* Frees an entry: its blocks, its bucket link, its LRU place. */
static void
cache_remove(int e)
{
	struct cache *c = &g.cache;
	struct cache_entry *x = &c->entries[e];
	int32_t *link = &c->buckets[x->hash & (c->n_buckets - 1)];
	int32_t b = x->first;

	while (*link != e)
		link = &c->entries[*link].hnext;
	*link = x->hnext;
	cache_lru_unlink(e);
	while (b >= 0) {
		int32_t next = c->block_next[b];

		c->block_next[b] = c->free_block;
		c->free_block = b;
		c->n_free_blocks++;
		b = next;
	}
	x->first = -1;
	x->hnext = c->free_entry;
	c->free_entry = e;
}

/*
 * Finds the entry for a question (m up to qend) and key, fresh or not;
 * one expired for longer than the serve-stale window is removed. Returns
 * its index, or -1.
 */
static int
cache_find(const unsigned char *m, size_t qend, uint8_t key, uint32_t hash)
{
	struct cache *c = &g.cache;
	int32_t e;

	if (c->n_blocks == 0)
		return -1;
	for (e = c->buckets[hash & (c->n_buckets - 1)]; e >= 0;
	    e = c->entries[e].hnext) {
		struct cache_entry *x = &c->entries[e];
		unsigned char q[DNS_HEADER_BYTES + DNS_NAME_MAX_BYTES + 4];

		if (x->hash != hash || x->key != key || x->qend != qend)
			continue;
		cache_read(e, q, qend);
		if (!dns_question_equal(q, qend, m, qend))
			continue;
		if (g.now_ms - x->stored_ms >=
		    ((int64_t)x->ttl_s + c->stale_s) * 1000) {
			cache_remove(e);
			return -1;
		}
		return e;
	}
	return -1;
}

/* Number of free entries (for the counters). */
static size_t
cache_free_entries(void)
{
	size_t n = 0;
	int32_t e;

	for (e = g.cache.free_entry; e >= 0; e = g.cache.entries[e].hnext)
		n++;
	return n;
}

/* Seconds an entry has spent in the cache. */
static uint32_t
cache_age_s(int e)
{
	return (uint32_t)((g.now_ms - g.cache.entries[e].stored_ms) / 1000);
}

/*
 * Copies a fresh entry's answer into out (at least CACHE_MAX_ANSWER_BYTES)
 * with its TTLs counted down, or with STALE_TTL_S when stale is set, and
 * marks it recently used. Returns its length, or 0 if it is not fresh
 * (and stale is not set).
 */
static size_t
cache_get(int e, unsigned char *out, int stale, struct dns_summary *s)
{
	struct cache_entry *x = &g.cache.entries[e];
	uint32_t age = cache_age_s(e);

	if (!stale && age >= x->ttl_s)
		return 0;
	memset(s, 0, sizeof *s);
	s->ns_end = x->ns_end;
	s->opt_start = x->opt_start;
	s->opt_end = x->opt_start ? x->len : 0;
	s->end = x->len;
	cache_read(e, out, x->len);
	if (stale)
		dns_rewrite_ttls(out, x->len, x->qend, 0, STALE_TTL_S,
		    STALE_TTL_S);
	else
		dns_rewrite_ttls(out, x->len, x->qend, age, 0, DNS_TTL_MAX);
	cache_lru_unlink(e);
	cache_lru_push(e);
	return x->len;
}

/*
 * Stores an answer (qend: end of its question) under key for ttl
 * seconds, replacing any entry for the same question. The answer MUST
 * have been prepared (dns_prepare_answer, which says the ttl; 0: not
 * cached). Evicts the least recently used entries to make room.
 */
static void
cache_store(const unsigned char *m, size_t len, size_t qend, uint8_t key,
    uint32_t ttl, const struct dns_summary *s)
{
	struct cache *c = &g.cache;
	struct cache_entry *x;
	uint32_t hash;
	size_t need, off;
	int32_t e, *tail;

	if (c->n_blocks == 0 || ttl == 0 || len > CACHE_MAX_ANSWER_BYTES)
		return;
	hash = cache_hash(m, qend, key);
	e = cache_find(m, qend, key, hash);
	if (e >= 0)
		cache_remove(e);
	need = (len + CACHE_BLOCK_BYTES - 1) / CACHE_BLOCK_BYTES;
	if (need > c->n_blocks)
		return;
	while (c->n_free_blocks < need || c->free_entry < 0) {
		cache_remove(c->lru_tail);
		c->evictions++;
	}
	e = c->free_entry;
	x = &c->entries[e];
	c->free_entry = x->hnext;
	x->hash = hash;
	x->key = key;
	x->len = (uint16_t)len;
	x->qend = (uint16_t)qend;
	x->opt_start = (uint16_t)(s->opt_end ? s->opt_start : 0);
	x->ns_end = (uint16_t)s->ns_end;
	x->stored_ms = g.now_ms;
	x->ttl_s = ttl;
	x->prefetched = 0;
	tail = &x->first;
	for (off = 0; off < len; off += CACHE_BLOCK_BYTES) {
		int32_t b = c->free_block;
		size_t k = len - off < CACHE_BLOCK_BYTES ? len - off :
		    CACHE_BLOCK_BYTES;

		c->free_block = c->block_next[b];
		c->n_free_blocks--;
		memcpy(c->blocks[b], m + off, k);
		*tail = b;
		tail = &c->block_next[b];
	}
	*tail = -1;
	x->hnext = c->buckets[hash & (c->n_buckets - 1)];
	c->buckets[hash & (c->n_buckets - 1)] = e;
	cache_lru_push(e);
	c->inserts++;
}

/* ==== forward declarations ============================================ */
/*
 * The query section comes after upstream, client and udp (it is the only
 * code that knows where an answer goes); they call into it through these.
 */
static void query_deliver(int slot, const unsigned char *answer, size_t len);
static void query_fail(int slot, int rcode);
static int query_hedge(int slot);
static void query_drop(int slot);
static void zone_tcp_start(int slot, unsigned char *tc, size_t tclen);
static void query_hedge_slow(int slot);
static void start_steer(int fd, unsigned index);
static void start_steer_all(unsigned index);
static void start_steer_probe(void);
static void query_probe(struct upstream *u);
static void observe_status(void);
static void query_receive(const unsigned char *msg, size_t len,
    const struct origin *from);
static void query_receive_oversized(const unsigned char *msg, size_t len,
    const struct origin *from);

/* ==== zone: private zones over plain DNS ============================== */
/*
 * Owns g.zones, g.zudp and g.ztcp. A query at or below a --forward-zone
 * domain (longest match wins) goes to that zone's server over plain UDP,
 * and over TCP when the answer is truncated. This is what keeps
 * cluster.local resolving through kube-dns, and lan through the router's
 * dnsmasq; its answers are cached apart from DoT answers. Plain DNS can
 * be spoofed, so each query follows RFC 5452: its own socket (a random
 * source port from the kernel), connected to the server (no other
 * address or port is read), a random ID, and an answer counts only with
 * that ID and the same question.
 */

/* Start-up: every UDP socket free. */
static void
zone_init(void)
{
	size_t i;

	for (i = 0; i < MAX_ZONE_UDP; i++) {
		g.zudp[i].fd = -1;
		g.zudp_free[i] = (int)(MAX_ZONE_UDP - 1 - i);
	}
	g.n_zudp_free = MAX_ZONE_UDP;
	for (i = 0; i < MAX_ZONE_TCP; i++) {
		g.ztcp[i].fd = -1;
		g.ztcp[i].slot = -1;
		g.ztcp[i].buf = g.ztcp_bufs[i];
	}
}

static void
zone_udp_close(int ui)
{
	struct zone_udp *zu = &g.zudp[ui];

	close(zu->fd);
	zu->fd = -1;
	g.pending[zu->slot].zudp = -1;
	g.zudp_free[g.n_zudp_free++] = ui;
}

/* Closes with a reset (SO_LINGER 0): closing first, a connection per
 * query would leave a TIME_WAIT socket each for a minute, and a busy
 * zone would run out of local ports (28,232 by default). */
static void
zone_tcp_close(int ti)
{
	struct zone_tcp *t = &g.ztcp[ti];
	struct linger now = { 1, 0 };

	if (t->fd >= 0) {
		setsockopt(t->fd, SOL_SOCKET, SO_LINGER, &now, sizeof now);
		close(t->fd);
	}
	t->fd = -1;
	t->state = ZTCP_FREE;
	if (t->slot >= 0 && g.pending[t->slot].ztcp == ti)
		g.pending[t->slot].ztcp = -1;
	t->slot = -1;
}

/* A query leaves its zone (answered, failed, timed out): its sockets
 * close. */
static void
zone_detach(int slot)
{
	struct pending_query *p = &g.pending[slot];

	if (p->zudp >= 0)
		zone_udp_close(p->zudp);
	if (p->ztcp >= 0)
		zone_tcp_close(p->ztcp);
}

/* Logs a zone server error once per distinct errno. */
static void
zone_error(struct zone *z, const char *what, int err)
{
	if (err != z->last_err)
		log_warn("forward zone %s: %s: %s", z->label, what,
		    strerror(err));
	z->last_err = err;
	z->n_failures++;
}

/* A socket for a zone server: non-blocking, within FD_SETSIZE, and
 * connected (TCP: the connect is under way). Returns it, or -1. */
static int
zone_socket(const struct zone *z, int type)
{
	int fd = socket(z->addr.sa.sa_family, type | SOCK_NONBLOCK |
	    SOCK_CLOEXEC, 0);

	if (fd >= FD_SETSIZE) {
		close(fd);
		errno = EMFILE;
		return -1;
	}
	if (fd >= 0 && connect(fd, &z->addr.sa, z->addrlen) < 0 &&
	    errno != EINPROGRESS) {
		int err = errno;

		close(fd);
		errno = err;
		return -1;
	}
	return fd;
}

/* Sends a pending query to its zone's server over UDP, from a socket of
 * its own, with a random ID. */
static void
zone_send(size_t zi, int slot)
{
	struct zone *z = &g.zones[zi];
	struct pending_query *p = &g.pending[slot];
	int fd, ui;

	p->route = ROUTE_ZONE;
	p->route_idx = (uint8_t)zi;
	pending_set_state(slot, PENDING_SENT);
	p->up_id = util_rand16();
	put16(p->query, p->up_id);
	z->n_queries++;
	if (z->tcp_only) {
		zone_tcp_start(slot, NULL, 0);
		return;
	}
	if (g.n_zudp_free == 0) {
		if (ratelimit_ok(&g.rl_zone_full))
			log_warn("%d forward-zone queries in flight: new ones "
			    "get SERVFAIL", MAX_ZONE_UDP);
		query_fail(slot, DNS_RCODE_SERVFAIL);
		return;
	}
	fd = zone_socket(z, SOCK_DGRAM);
	if (fd < 0 || send(fd, p->query, p->qlen, MSG_DONTWAIT) < 0) {
		zone_error(z, "send failed", errno);
		if (fd >= 0)
			close(fd);
		query_fail(slot, DNS_RCODE_SERVFAIL);
		return;
	}
	ui = g.zudp_free[--g.n_zudp_free];
	g.zudp[ui].fd = fd;
	g.zudp[ui].slot = slot;
	p->zudp = (int16_t)ui;
}

/* Asks a query over TCP: again after a truncated answer (tc), or at once
 * for a ,tcp zone (tc NULL). If no connection can be had, the truncated
 * answer goes to the client as it is (or SERVFAIL without one). */
static void
zone_tcp_start(int slot, unsigned char *tc, size_t tclen)
{
	struct pending_query *p = &g.pending[slot];
	struct zone *z = &g.zones[p->route_idx];
	struct zone_tcp *t = NULL;
	int ti, fd;

	for (ti = 0; ti < MAX_ZONE_TCP; ti++)
		if (g.ztcp[ti].state == ZTCP_FREE) {
			t = &g.ztcp[ti];
			break;
		}
	fd = t ? zone_socket(z, SOCK_STREAM) : -1;
	if (fd < 0) {
		if (t != NULL)
			zone_error(z, "TCP connect failed", errno);
		else if (ratelimit_ok(&g.rl_zone_full))
			log_warn("%d forward-zone TCP queries in flight: new "
			    "ones get %s", MAX_ZONE_TCP, tc ? "the truncated "
			    "answer" : "SERVFAIL");
		if (tc != NULL)
			query_deliver(slot, tc, tclen);
		else
			query_fail(slot, DNS_RCODE_SERVFAIL);
		return;
	}
	z->n_tcp++;
	t->fd = fd;
	t->slot = slot;
	p->ztcp = (int16_t)ti;
	put16(t->buf, p->qlen);
	memcpy(t->buf + 2, p->query, p->qlen);
	t->off = 0;
	t->len = 2u + p->qlen;
	t->state = ZTCP_CONNECTING;
}

/* One answer from a zone server (UDP or TCP) for a slot: taken with the
 * right ID and question, else dropped (the deadline stands). */
static void
zone_on_answer(int slot, unsigned char *m, size_t len, int over_tcp)
{
	struct pending_query *p = &g.pending[slot];
	size_t qend;

	if (len < DNS_HEADER_BYTES || get16(m) != p->up_id)
		return;
	qend = dns_parse_answer(m, len);
	if (qend == 0 || !dns_question_equal(m, qend, p->query, p->qi.qend))
		return;
	g.zones[p->route_idx].last_err = 0;
	if (!over_tcp && p->ztcp >= 0)
		return;		/* a copy; the query is asked over TCP now */
	if (!over_tcp && (m[2] & DNS_FLAG_TC)) {
		zone_tcp_start(slot, m, len);
		return;
	}
	query_deliver(slot, m, len);
}

/* Reads a zone query's socket: its answer, or what a spoofer sent to
 * its port (a few datagrams a pass; the query's deadline bounds it). */
static void
zone_on_readable(int ui)
{
	static unsigned char buf[MSG_MAX_BYTES];
	struct zone_udp *zu = &g.zudp[ui];
	int slot = zu->slot, i;

	for (i = 0; i < 8 && zu->fd >= 0 && zu->slot == slot; i++) {
		ssize_t n = recv(zu->fd, buf, sizeof buf, MSG_DONTWAIT);

		if (n >= 0) {
			zone_on_answer(slot, buf, (size_t)n, 0);
			continue;
		}
		if (errno == EINTR)
			continue;
		if (errno == EAGAIN || errno == EWOULDBLOCK)
			return;
		/* ICMP port unreachable: no need to wait for the deadline. */
		zone_error(&g.zones[g.pending[slot].route_idx],
		    "receive failed", errno);
		query_fail(slot, DNS_RCODE_SERVFAIL);
		return;
	}
}

/* Progress on one zone TCP connection: connect, send, read. */
static void
zone_tcp_io(int ti, int readable, int writable)
{
	struct zone_tcp *t = &g.ztcp[ti];
	int slot = t->slot;
	struct zone *z = &g.zones[g.pending[slot].route_idx];
	ssize_t n;
	int err = 0;

	if (t->state == ZTCP_CONNECTING && writable) {
		socklen_t el = sizeof err;

		if (getsockopt(t->fd, SOL_SOCKET, SO_ERROR, &err, &el) < 0)
			err = errno;
		if (err != 0)
			goto fail;
		t->state = ZTCP_SENDING;
	}
	if (t->state == ZTCP_SENDING && writable) {
		n = send(t->fd, t->buf + t->off, t->len - t->off, MSG_NOSIGNAL);
		if (n < 0 && errno != EAGAIN && errno != EINTR) {
			err = errno;
			goto fail;
		}
		if (n > 0)
			t->off += (size_t)n;
		if (t->off == t->len) {
			t->state = ZTCP_READING;
			t->len = 0;
		}
		return;
	}
	if (t->state != ZTCP_READING || !readable)
		return;
	n = recv(t->fd, t->buf + t->len, 2 + MSG_MAX_BYTES - t->len, 0);
	if (n < 0 && (errno == EAGAIN || errno == EINTR))
		return;
	if (n <= 0) {
		err = n < 0 ? errno : ECONNRESET;
		goto fail;
	}
	t->len += (size_t)n;
	if (t->len < 2 || t->len < 2u + get16(t->buf))
		return;
	zone_on_answer(slot, t->buf + 2, get16(t->buf), 1);
	if (g.pending[slot].state == PENDING_FREE || g.pending[slot].ztcp != ti)
		return;		/* answered, and the connection closed */
	err = EPROTO;		/* an answer that does not match */
fail:
	zone_error(z, "TCP query failed", err);
	query_fail(slot, DNS_RCODE_SERVFAIL);
}

/* Adds the zone sockets to the fd sets. */
static void
zone_want(fd_set *rd, fd_set *wr, int *maxfd)
{
	size_t i;

	for (i = 0; i < MAX_ZONE_UDP; i++) {
		if (g.zudp[i].fd < 0)
			continue;
		FD_SET(g.zudp[i].fd, rd);
		if (g.zudp[i].fd > *maxfd)
			*maxfd = g.zudp[i].fd;
	}
	for (i = 0; i < MAX_ZONE_TCP; i++) {
		struct zone_tcp *t = &g.ztcp[i];

		if (t->state == ZTCP_FREE)
			continue;
		FD_SET(t->fd, t->state == ZTCP_READING ? rd : wr);
		if (t->fd > *maxfd)
			*maxfd = t->fd;
	}
}

/* Serves the zone sockets select() found ready. */
static void
zone_dispatch(fd_set *rd, fd_set *wr)
{
	size_t i;

	for (i = 0; i < MAX_ZONE_TCP; i++) {
		struct zone_tcp *t = &g.ztcp[i];
		int fd = t->fd;

		if (t->state != ZTCP_FREE)
			zone_tcp_io((int)i, FD_ISSET(fd, rd), FD_ISSET(fd, wr));
	}
	for (i = 0; i < MAX_ZONE_UDP; i++)
		if (g.zudp[i].fd >= 0 && FD_ISSET(g.zudp[i].fd, rd))
			zone_on_readable((int)i);
}

/* ==== upstream: TLS connections to resolvers ========================== */
/*
 * Owns struct upstream. One persistent TLS connection per upstream; the
 * list is an order of preference. Engine pump (see STYLE): drain RECVAPP,
 * inject every queued query while SENDAPP, one flush; interest comes from
 * a fresh engine state; after select() send first, then receive.
 *
 * Failures (connect, handshake, a close before any answer, TLS or
 * protocol errors) put the upstream in BACKOFF, logged once per episode;
 * its queries go to the next usable upstream. A close or reset by the
 * server after answers is normal: the connection is made again at once
 * and the queries in flight are sent again (RFC 7766 6.2.3, RFC 7858
 * 3.4). Silence is judged by evidence: suspect after upstream_stall_ms()
 * (queries asked elsewhere too: upstream_suspect), lost after a whole
 * --timeout or the kernel's TCP_USER_TIMEOUT (upstream_lost).
 */


/*
 * All ECDHE (forward secrecy), all AEAD. Which one runs is the server's
 * choice, and servers often prefer ChaCha20; so a CPU with AES and
 * carry-less multiply instructions offers AES-GCM only (3 to 4 times
 * cheaper per byte there), and any other (a MIPS or ARM router) offers
 * ChaCha20-Poly1305 first (constant-time AES is slow without them).
 */
static const uint16_t upstream_suites_soft[] = {
	BR_TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305_SHA256,
	BR_TLS_ECDHE_RSA_WITH_CHACHA20_POLY1305_SHA256,
	BR_TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256,
	BR_TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256,
	BR_TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384,
	BR_TLS_ECDHE_RSA_WITH_AES_256_GCM_SHA384,
};
#define UPSTREAM_SUITES_AES_FIRST	2	/* offset of the AES-GCM suites */

static const char *upstream_alpn[] = { "dot" };	/* RFC 7858 */

/*
 * Elliptic curves: X25519 (what servers pick for ECDHE) with its own
 * code, P-256/384/521 (certificate signatures) with BearSSL's generic
 * prime-curve code. BearSSL's br_ec_all_m31 adds an 8 KB P-256 special
 * case that only speeds up a handshake, which resumption mostly avoids.
 */
static const br_ec_impl *
upstream_ec_for(int curve)
{
	return curve == BR_EC_curve25519 ? &br_ec_c25519_m31 :
	    &br_ec_prime_i31;
}

static const unsigned char *
upstream_ec_generator(int curve, size_t *len)
{
	return upstream_ec_for(curve)->generator(curve, len);
}

static const unsigned char *
upstream_ec_order(int curve, size_t *len)
{
	return upstream_ec_for(curve)->order(curve, len);
}

static size_t
upstream_ec_xoff(int curve, size_t *len)
{
	return upstream_ec_for(curve)->xoff(curve, len);
}

static uint32_t
upstream_ec_mul(unsigned char *g, size_t glen, const unsigned char *x,
    size_t xlen, int curve)
{
	return upstream_ec_for(curve)->mul(g, glen, x, xlen, curve);
}

static size_t
upstream_ec_mulgen(unsigned char *r, const unsigned char *x, size_t xlen,
    int curve)
{
	return upstream_ec_for(curve)->mulgen(r, x, xlen, curve);
}

static uint32_t
upstream_ec_muladd(unsigned char *a, const unsigned char *b, size_t len,
    const unsigned char *x, size_t xlen, const unsigned char *y, size_t ylen,
    int curve)
{
	return upstream_ec_for(curve)->muladd(a, b, len, x, xlen, y, ylen,
	    curve);
}

static const br_ec_impl upstream_ec = {
	(1u << BR_EC_secp256r1) | (1u << BR_EC_secp384r1) |
	    (1u << BR_EC_secp521r1) | (1u << BR_EC_curve25519),
	upstream_ec_generator, upstream_ec_order, upstream_ec_xoff,
	upstream_ec_mul, upstream_ec_mulgen, upstream_ec_muladd,
};

static const char *const upstream_state_names[] = {
	"disconnected", "connecting", "handshaking", "ready", "closing",
	"backoff",
};

static size_t
upstream_index(const struct upstream *u)
{
	return (size_t)(u - g.upstreams);
}

/*
 * Configures a client context once, at start-up: TLS 1.2 only, the
 * suites above, and only the algorithms they and X.509 chains need (this
 * is what keeps the binary small).
 */
static void
upstream_tls_init(struct upstream *u)
{
	static const br_hash_class *const hashes[] = {
		&br_sha256_vtable, &br_sha384_vtable, &br_sha512_vtable,
	};
	br_ssl_engine_context *eng = &u->sc.eng;
	size_t i;

	br_ssl_client_zero(&u->sc);
	br_ssl_engine_set_versions(eng, BR_TLS12, BR_TLS12);
	if (br_aes_x86ni_ctr_get_vtable() != NULL && br_ghash_pclmul_get())
		br_ssl_engine_set_suites(eng, upstream_suites_soft +
		    UPSTREAM_SUITES_AES_FIRST, sizeof upstream_suites_soft /
		    sizeof upstream_suites_soft[0] - UPSTREAM_SUITES_AES_FIRST);
	else
		br_ssl_engine_set_suites(eng, upstream_suites_soft,
		    sizeof upstream_suites_soft /
		    sizeof upstream_suites_soft[0]);
	br_x509_minimal_init(&u->xc, &br_sha256_vtable, g.tas, g.n_tas);
	for (i = 0; i < sizeof hashes / sizeof hashes[0]; i++) {
		int id = (int)(hashes[i]->desc >> BR_HASHDESC_ID_OFF &
		    BR_HASHDESC_ID_MASK);

		br_ssl_engine_set_hash(eng, id, hashes[i]);
		br_x509_minimal_set_hash(&u->xc, id, hashes[i]);
	}
	br_ssl_engine_set_prf_sha256(eng, &br_tls12_sha256_prf);
	br_ssl_engine_set_prf_sha384(eng, &br_tls12_sha384_prf);
	br_ssl_engine_set_default_aes_gcm(eng);
	br_ssl_engine_set_default_chapol(eng);
	br_ssl_engine_set_ec(eng, &upstream_ec);
	br_ssl_engine_set_rsavrfy(eng, &br_rsa_i31_pkcs1_vrfy);
	br_ssl_engine_set_ecdsa(eng, &br_ecdsa_i31_vrfy_asn1);
	br_x509_minimal_set_rsa(&u->xc, &br_rsa_i31_pkcs1_vrfy);
	br_x509_minimal_set_ecdsa(&u->xc, &upstream_ec,
	    &br_ecdsa_i31_vrfy_asn1);
	u->px.vtable = &trust_pin_vtable;
	u->px.u = u;
	br_ssl_engine_set_x509(eng, u->n_pins ? &u->px.vtable : &u->xc.vtable);
	br_ssl_engine_set_buffer(eng, u->iobuf, sizeof u->iobuf, 1);
	br_ssl_engine_set_protocol_names(eng, upstream_alpn, 1);
	br_ssl_engine_add_flags(eng, BR_OPT_NO_RENEGOTIATION);
	u->fd = -1;
	u->queue_head = u->queue_tail = -1;
	u->hedge.head = u->hedge.tail = -1;
	u->backoff_ms = BACKOFF_MIN_MS;
	u->state = UPSTREAM_DISCONNECTED;
	u->has_session = 0;		/* nothing to resume before a handshake */
	idmap_reset(&u->ids);
}

/* Returns 1 if an upstream other than u may be used now. */
static int
upstream_other_usable(const struct upstream *u)
{
	size_t i;

	for (i = 0; i < g.n_upstreams; i++)
		if (&g.upstreams[i] != u &&
		    g.upstreams[i].state != UPSTREAM_BACKOFF)
			return 1;
	return 0;
}

/* The only writer of u->state: logs the change and arms deadlines. */
static void
upstream_set_state(struct upstream *u, enum upstream_state st)
{
	log_debug("upstream %s: %s -> %s", u->label,
	    upstream_state_names[u->state], upstream_state_names[st]);
	switch (st) {
	case UPSTREAM_CONNECTING:
		u->deadline_ms = g.now_ms + HANDSHAKE_TIMEOUT_MS;
		break;
	case UPSTREAM_CLOSING:
		u->deadline_ms = g.now_ms + CLOSE_TIMEOUT_MS;
		break;
	case UPSTREAM_READY:
		u->idle_since_ms = g.now_ms;	/* backoff: see first answer */
		break;
	case UPSTREAM_BACKOFF:
		u->retry_at_ms = g.now_ms + (u->backoff_ms > BACKOFF_ALONE_MS &&
		    !upstream_other_usable(u) ? BACKOFF_ALONE_MS : u->backoff_ms);
		u->backoff_ms = u->backoff_ms * 2 > g.max_backoff_ms ?
		    g.max_backoff_ms : u->backoff_ms * 2;
		break;
	case UPSTREAM_DISCONNECTED:
	case UPSTREAM_HANDSHAKING:
		break;
	}
	u->state = st;
}

/* SIGHUP: an upstream backing off may be used again at once, its
 * back-off from the bottom (a network that came back, a resolver
 * restarted by hand). */
static void
upstream_retry_now(struct upstream *u)
{
	if (u->state != UPSTREAM_BACKOFF)
		return;
	u->backoff_ms = BACKOFF_MIN_MS;
	upstream_set_state(u, UPSTREAM_DISCONNECTED);
}

/* Returns the first upstream (in preference order) that may be used,
 * other than except (-1: any), or -1 if every one is backing off. */
static int
upstream_pick_except(int except)
{
	int i, best = -1, rank = 3;

	for (i = 0; i < (int)g.n_upstreams && rank > 0; i++) {
		const struct upstream *u = &g.upstreams[i];
		/* Healthy first; then one that failed lately (its back-off
		 * over, but not proven again: upstream_probe); then a
		 * suspect one. In preference order within each. */
		int r = u->suspect ? 2 : u->failing ? 1 : 0;

		if (u->state != UPSTREAM_BACKOFF && r < rank && i != except) {
			best = i;
			rank = r;
		}
	}
	return best;
}

static int
upstream_pick(void)
{
	return upstream_pick_except(-1);
}

static int upstream_connect(struct upstream *u);

/* Appends a pending slot to an upstream's FIFO; connects if needed. */
static void
upstream_enqueue(struct upstream *u, int slot)
{
	struct pending_query *p = &g.pending[slot];

	pending_set_state(slot, PENDING_QUEUED);
	p->route = ROUTE_UPSTREAM;
	p->route_idx = (uint8_t)upstream_index(u);
	p->next = -1;
	if (u->queue_tail >= 0)
		g.pending[u->queue_tail].next = slot;
	else
		u->queue_head = slot;
	u->queue_tail = slot;
	if (u->state == UPSTREAM_DISCONNECTED)
		upstream_connect(u);
}

/*
 * The hedge watch of an upstream: the queries sent on it, in send order,
 * until each is answered, or has waited upstream_hedge_ms() and was
 * weighed for a hedge (upstream_timers). Only with more than one
 * upstream, --hedge-percent, and a round trip measured.
 */
static void
upstream_hedge_watch(struct upstream *u, int slot)
{
	struct pending_query *p = &g.pending[slot];

	if (g.hedge_pct == 0 || g.n_upstreams < 2 || p->twin >= 0 ||
	    p->from.kind == ORIGIN_PROBE || u->srtt_ms + u->rttvar_ms == 0)
		return;
	pq_append(&u->hedge, PQ_HEDGE, slot);
	p->flags |= PQ_HEDGE_WATCH;
}

static void
upstream_hedge_unwatch(struct upstream *u, int slot)
{
	struct pending_query *p = &g.pending[slot];

	if (!(p->flags & PQ_HEDGE_WATCH))
		return;
	pq_unlink(&u->hedge, PQ_HEDGE, slot);
	p->flags &= (uint8_t)~PQ_HEDGE_WATCH;
}

/* Detaches a slot from its upstream (its queue, or the connection's
 * in-flight count and ID map: the ID stays used) so that the query
 * section can answer it and free it. */
static void
upstream_detach(int slot)
{
	struct pending_query *p = &g.pending[slot];
	struct upstream *u = &g.upstreams[p->route_idx];
	int prev = -1, cur;

	if (p->state == PENDING_SENT) {
		/* its last query left it (a twin answered it, or it
		 * timed out: upstream_expired judges that): no silence to
		 * time (upstream_silent_at); alone or never answered, its
		 * queries only time out, and the silence goes on */
		if (--u->inflight == 0 && u->answered &&
		    upstream_other_usable(u))
			u->unanswered_ms = 0;
		idmap_drop(&u->ids, p->up_id);
		upstream_hedge_unwatch(u, slot);
		return;
	}
	for (cur = u->queue_head; cur >= 0; prev = cur,
	    cur = g.pending[cur].next) {
		if (cur != slot)
			continue;
		if (prev >= 0)
			g.pending[prev].next = p->next;
		else
			u->queue_head = p->next;
		if (u->queue_tail == slot)
			u->queue_tail = prev;
		return;
	}
}

/*
 * Closes the socket and puts every query that was in flight on it back
 * at the head of the queue (a new connection gives it a new ID); a query
 * that has used its MAX_ATTEMPTS sends gets SERVFAIL instead (a query
 * that makes servers close would otherwise be sent without end).
 */
static void
upstream_teardown(struct upstream *u)
{
	int slots[MAX_PENDING];
	size_t i, n = 0;

	if (u->fd >= 0)
		close(u->fd);
	u->fd = -1;
	u->rlen = 0;
	u->in_off = u->in_len = 0;
	u->unanswered_ms = 0;
	u->suspect = 0;
	/* The ID map holds exactly the slots in flight: an idle close (the
	 * usual case) has none to look for. */
	for (i = 0; i < ID_MAP_SLOTS && n < u->inflight; i++)
		if (u->ids.slot[i] >= 0)
			slots[n++] = u->ids.slot[i];
	idmap_reset(&u->ids);
	u->inflight = 0;
	while (n > 0) {
		int slot = slots[--n];
		struct pending_query *p = &g.pending[slot];

		upstream_hedge_unwatch(u, slot);
		if (p->attempts >= MAX_ATTEMPTS) {
			p->route = ROUTE_NONE;	/* detached just above */
			query_fail(slot, DNS_RCODE_SERVFAIL);
			continue;
		}
		pending_set_state(slot, PENDING_QUEUED);
		p->next = u->queue_head;
		u->queue_head = slot;
		if (u->queue_tail < 0)
			u->queue_tail = slot;
	}
}

/* Logs, once until an upstream works again, that none is usable. */
static void
upstream_none_usable(void)
{
	if (g.none_usable)
		return;
	g.none_usable = 1;
	log_warn("no upstream available: answering SERVFAIL until one is "
	    "back");
}

/* Returns 1 if a slot's twin waits on upstream to (or to is -1: none is
 * usable, and the twin still may answer): moving the slot there would ask
 * the same upstream twice. */
static int
upstream_twin_on(int slot, int to)
{
	const struct pending_query *p = &g.pending[slot], *t;

	if (p->twin < 0)
		return 0;
	t = &g.pending[p->twin];
	return to < 0 || (t->route == ROUTE_UPSTREAM && t->route_idx == to);
}

/* Moves the queue of a failed (or suspect) upstream to the next usable
 * one (a twin whose other half is there goes: query_drop), or answers
 * SERVFAIL when none is left. Stops when u itself is the best left: a
 * suspect u whose pick failed at once (a connect() refused on the spot
 * moves the query back here) keeps the rest. */
static void
upstream_migrate_queue(struct upstream *u)
{
	while (u->queue_head >= 0) {
		int slot = u->queue_head, to = upstream_pick();

		if (to == (int)upstream_index(u))
			break;
		u->queue_head = g.pending[slot].next;
		if (u->queue_head < 0)
			u->queue_tail = -1;
		if (g.pending[slot].from.kind == ORIGIN_PROBE) {
			g.pending[slot].route = ROUTE_NONE;	/* it probed u */
			query_fail(slot, DNS_RCODE_SERVFAIL);
		} else if (upstream_twin_on(slot, to)) {
			g.pending[slot].route = ROUTE_NONE;	/* asked there */
			query_drop(slot);
		} else if (to >= 0) {
			upstream_enqueue(&g.upstreams[to], slot);
		} else {
			upstream_none_usable();
			query_fail(slot, DNS_RCODE_SERVFAIL);
		}
	}
}

/*
 * TLS sessions (RFC 5246 7.4.1.2). BearSSL writes a ServerHello's session
 * ID, version and suite into the engine before it checks anything, so
 * the engine's own state is never offered again: an attacker could plant
 * an ID, hang up, and "resume" with the master secret of a handshake
 * that never ran. Only parameters saved from a handshake that passed
 * every check (chain, name, pins, Finished) are offered, only to the
 * upstream they came from, and any failure forgets them.
 */
static void
upstream_forget_session(struct upstream *u)
{
	memset(&u->session, 0, sizeof u->session);
	u->has_session = 0;
}

/*
 * Before a connect (the clock rule applied): the engine gets the saved
 * session, or none. A session vouches for the certificate only as of its
 * full handshake: it is not resumed after SESSION_MAX_AGE_MS (the
 * certificate may have expired since), nor once the clock is set if it
 * was checked against the build time.
 */
static void
upstream_restore_session(struct upstream *u)
{
	if (u->has_session && (g.now_ms - u->session_ms >= SESSION_MAX_AGE_MS ||
	    (u->session_clock_behind && !g.clock_behind)))
		upstream_forget_session(u);
	br_ssl_engine_set_session_parameters(&u->sc.eng, &u->session);
}

/* A handshake completed: returns 1 if it resumed the saved session, and
 * saves what BearSSL now holds (a new session, or the same) for the next
 * connection. */
static int
upstream_save_session(struct upstream *u)
{
	br_ssl_session_parameters now;
	int resumed;

	br_ssl_engine_get_session_parameters(&u->sc.eng, &now);
	resumed = u->has_session && now.session_id_len != 0 &&
	    now.session_id_len == u->session.session_id_len &&
	    memcmp(now.session_id, u->session.session_id,
	    now.session_id_len) == 0;
	if (!resumed) {			/* a full handshake: checked now */
		u->session_ms = g.now_ms;
		u->session_clock_behind = g.clock_behind;
	}
	u->session = now;
	u->has_session = now.session_id_len != 0;
	return resumed;
}

/*
 * A failure: logged when a working upstream starts failing, and at debug
 * level while it goes on failing (whatever the reason: a flapping path
 * alternates between reasons), connection torn down, upstream in
 * BACKOFF, its queries moved on.
 */
static void
upstream_fail(struct upstream *u, const char *what)
{
	if (!u->failing)
		log_warn("upstream %s: %s", u->label, what);
	else
		log_debug("upstream %s: %s (still failing)", u->label, what);
	u->failing = 1;
	observe_status();
	util_fmt(u->why, sizeof u->why, "%s", what);
	u->n_failures++;
	upstream_forget_session(u);
	upstream_teardown(u);
	upstream_set_state(u, UPSTREAM_BACKOFF);
	upstream_migrate_queue(u);
}

static void
upstream_fail_errno(struct upstream *u, const char *what, int err)
{
	char buf[128];

	util_fmt(buf, sizeof buf, "%s: %s", what, strerror(err));
	upstream_fail(u, buf);
}

/* A connection closed on purpose (by the server, or by us when idle),
 * or lost: not a failure of the upstream (no back-off, no failover).
 * Reconnects at once if queries are waiting; those in flight are sent
 * again. */
static void
upstream_closed(struct upstream *u, const char *why)
{
	log_debug("upstream %s: %s", u->label, why);
	upstream_teardown(u);
	upstream_set_state(u, UPSTREAM_DISCONNECTED);
	if (u->queue_head >= 0)
		upstream_connect(u);
}

/*
 * Starts a non-blocking connection and a TLS handshake (resuming the
 * last session when the server allows it). Returns 0, or -1 after
 * upstream_fail().
 */
static int
upstream_connect(struct upstream *u)
{
	unsigned char seed[32];
	int fd, one = 1;

	if (util_random(seed, sizeof seed) < 0) {
		upstream_fail_errno(u, "getrandom failed", errno);
		return -1;
	}
	br_ssl_engine_inject_entropy(&u->sc.eng, seed, sizeof seed);
	/* A server that resumes echoes the session ID (RFC 5246 7.4.1.3):
	 * one round trip less than a full handshake. Without a saved one,
	 * the engine offers none (resume_session 0 forgets its own). */
	trust_set_time(&u->xc);
	upstream_restore_session(u);
	if (!br_ssl_client_reset(&u->sc, u->name[0] ? u->name : NULL,
	    u->has_session)) {
		char ebuf[64];

		upstream_fail(u, util_br_error_name(br_ssl_engine_last_error(
		    &u->sc.eng),
		    ebuf, sizeof ebuf));
		return -1;
	}
	fd = socket(u->addr.sa.sa_family,
	    SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
	if (fd < 0) {
		upstream_fail_errno(u, "socket failed", errno);
		return -1;
	}
	if (fd >= FD_SETSIZE) {
		close(fd);
		upstream_fail_errno(u, "socket failed", EMFILE);
		return -1;
	}
	/* Queries are small and latency matters: no Nagle delay. Data the
	 * server does not acknowledge within --timeout ends the connection
	 * (ETIMEDOUT): the evidence of a half-open path. */
	setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
	u->fd = fd;
	u->rlen = 0;
	u->in_off = u->in_len = 0;
	u->n_connects++;
	upstream_set_state(u, UPSTREAM_CONNECTING);
	if (connect(fd, &u->addr.sa, u->addrlen) == 0) {
		upstream_set_state(u, UPSTREAM_HANDSHAKING);
		return 0;
	}
	if (errno == EINPROGRESS || errno == EINTR)
		return 0;
	upstream_fail_errno(u, "connect failed", errno);
	return -1;
}

/*
 * The server ended the connection (close_notify, EOF, a reset). After an
 * answer that is normal life for a DoT client, with queries in flight or
 * not (RFC 7766 6.2.3, RFC 7858 3.4: a resolver that closes after N
 * queries, a load balancer, a WAN change): connect again at once and send
 * them again, with no back-off and no failover.
 */
static void
upstream_server_closed(struct upstream *u)
{
	/* Not a close but a failure: during the handshake (a path attacker
	 * sends a close_notify or a FIN for free), or before the first
	 * answer with queries sent. Reconnecting at once would go on as
	 * long as queries come, and never let another upstream take them. */
	if (u->state == UPSTREAM_HANDSHAKING) {
		upstream_fail(u, "handshake failed: "
		    "connection closed by the server");
		return;
	}
	if (!u->answered && u->inflight > 0) {
		upstream_fail(u, "closed by the server "
		    "before any answer");
		return;
	}
	upstream_closed(u, u->inflight > 0 ? "closed by the server with "
	    "queries in flight: connecting again" : "closed by the server");
}

/*
 * Evidence that a connection is dead: the kernel gave up on
 * unacknowledged data (TCP_USER_TIMEOUT: a half-open path after a WAN
 * change), or nothing answered for a whole --timeout with a query in
 * flight. The one place that decides what follows. A connection that
 * never answered has failed, when another upstream can take its queries
 * (back-off, failover). One that answered before may only have met a
 * question its resolver cannot answer (any client can ask one, at will),
 * and a lone upstream has nowhere to send its queries: the connection is
 * made again, with no back-off; if the new one stays silent too, that
 * tells. With another upstream usable, it is made again as a failed
 * one's is (upstream_pick ranks it after the healthy ones; a probe of our
 * own, not clients' queries, shows when it answers again): a resolver
 * that holds every answer for seconds would otherwise take clients'
 * queries into each new connection's handshake and answer them too late.
 */
static void
upstream_lost(struct upstream *u, const char *what)
{
	int other = upstream_other_usable(u);

	if (!u->answered && other) {
		upstream_fail(u, what);
		return;
	}
	if (!u->failing && (!u->answered || other)) {
		log_warn("upstream %s: %s: connecting again%s", u->label,
		    what, other ? "; others take the queries until it "
		    "answers" : "");
		u->failing = 1;
		util_fmt(u->why, sizeof u->why, "%s", what);
	}
	/* upstream_closed, but what was in flight goes where upstream_pick
	 * says (nowhere else when u is the only choice) */
	log_debug("upstream %s: lost connection closed", u->label);
	upstream_teardown(u);
	upstream_set_state(u, UPSTREAM_DISCONNECTED);
	upstream_migrate_queue(u);
	if (u->queue_head >= 0 && u->state == UPSTREAM_DISCONNECTED)
		upstream_connect(u);	/* (a pick that failed at once may
					 * have come back and connected) */
}

/*
 * Milliseconds of silence with queries in flight after which an upstream
 * is suspect: its smoothed round trip plus four deviations (RFC 6298's
 * rule, from its own answers), at least STALL_FLOOR_MS, at most the
 * larger of STALL_CEIL_MS and half the query timeout (and that until it
 * has answered once).
 */
static int64_t
upstream_stall_ms(const struct upstream *u)
{
	int64_t ceil = g.query_timeout_ms / 2 > STALL_CEIL_MS ?
	    g.query_timeout_ms / 2 : STALL_CEIL_MS;
	int64_t d = u->srtt_ms + 4 * u->rttvar_ms;

	if (u->srtt_ms == 0 && u->rttvar_ms == 0)
		return ceil;
	return d < STALL_FLOOR_MS ? STALL_FLOOR_MS : d > ceil ? ceil : d;
}

/*
 * How long a query waits on u before it is also asked of another
 * upstream (a hedge, capped by --hedge-percent): u's usual round trip
 * and four deviations, at least HEDGE_FLOOR_MS, at most the stall time
 * (beyond which the whole connection is suspect).
 */
static int64_t
upstream_hedge_ms(const struct upstream *u)
{
	int64_t d = u->srtt_ms + 4 * u->rttvar_ms, stall = upstream_stall_ms(u);

	d = d < HEDGE_FLOOR_MS ? HEDGE_FLOOR_MS : d;
	return d < stall ? d : stall;
}

/* When the oldest query sent on u not yet weighed for a hedge is due,
 * or INT64_MAX. */
static int64_t
upstream_hedge_due(const struct upstream *u)
{
	return u->hedge.head < 0 ? INT64_MAX :
	    g.pending[u->hedge.head].sent_ms + upstream_hedge_ms(u);
}

/* A round trip of an answered query, into the smoothed round trip and
 * its mean deviation (RFC 6298 2, gains 1/8 and 1/4). */
static void
upstream_rtt(struct upstream *u, int64_t sample)
{
	int64_t dev;

	sample = sample > 0 ? sample : 1;
	if (u->srtt_ms == 0 && u->rttvar_ms == 0) {
		u->srtt_ms = sample;
		u->rttvar_ms = sample / 2;
		return;
	}
	dev = u->srtt_ms > sample ? u->srtt_ms - sample : sample - u->srtt_ms;
	u->rttvar_ms = (3 * u->rttvar_ms + dev) / 4;
	u->srtt_ms = (7 * u->srtt_ms + sample) / 8;
}

/*
 * Nothing has come back for upstream_stall_ms() on a connection with
 * queries in flight: maybe a dead path, maybe only slow recursion. Not
 * proof enough to drop it (RFC 7766 6.2.3 aside, a healthy resolver may
 * take seconds): new queries go to another upstream while it is suspect,
 * and each query in flight is asked of another one too (a twin); the
 * first answer wins. Any answer on the connection lifts the suspicion;
 * a query timing out on it with no answer at all makes it lost
 * (upstream_silent).
 */
static void
upstream_suspect(struct upstream *u)
{
	size_t i;

	u->suspect = 1;
	log_debug("upstream %s: no answer for %lld ms: asking another too",
	    u->label, (long long)(g.now_ms - u->unanswered_ms));
	for (i = 0; i < ID_MAP_SLOTS; i++)
		if (u->ids.slot[i] >= 0)
			query_hedge(u->ids.slot[i]);
	if (upstream_pick() != (int)upstream_index(u))
		upstream_migrate_queue(u);	/* not yet sent: go now */
}

/*
 * A whole --timeout of silence with a query in flight: the evidence of a
 * dead server, a half-open path or a stream stuck in the middle of a
 * message. One slow answer that still comes in time is never taken for
 * that (recursion can take seconds).
 */
static void
upstream_silent(struct upstream *u)
{
	char what[64];

	util_fmt(what, sizeof what, "no answer for %u ms", g.query_timeout_ms);
	upstream_lost(u, what);
}

/* A query sent at sent_ms on u timed out at deadline_ms: if u has
 * answered nothing since (and the query had its fair wait there: it may
 * have come from another upstream, or out of a slow handshake, just
 * before its deadline), the connection is silent. The wait it was given,
 * not the time the loop came round to it: a busy machine is no silence. */
static void
upstream_expired(struct upstream *u, int64_t sent_ms, int64_t deadline_ms)
{
	if (u->state == UPSTREAM_READY && u->answer_ms < sent_ms &&
	    deadline_ms - sent_ms >= upstream_stall_ms(u) && !g.draining)
		upstream_silent(u);
}

/* A read or write failed. A reset or a broken pipe is the server closing
 * (upstream_server_closed); the kernel's timeout a lost path; any other
 * error a failure. */
static void
upstream_io_error(struct upstream *u, const char *what, int err)
{
	int reset = err == ECONNRESET || err == EPIPE;
	/* TCP_USER_TIMEOUT ran out: ETIMEDOUT, or the last ICMP error the
	 * path gave (a WAN change) */
	int lost = err == ETIMEDOUT || err == EHOSTUNREACH ||
	    err == ENETUNREACH || err == EHOSTDOWN || err == ENETDOWN;

	if (u->state == UPSTREAM_CLOSING && reset)
		upstream_closed(u, "reset while closing");
	else if (u->state == UPSTREAM_READY && reset)
		upstream_server_closed(u);
	else if (u->state == UPSTREAM_READY && lost)
		upstream_lost(u, strerror(err));
	else
		upstream_fail_errno(u, what, err);
}

/* Sends what the engine has for the peer. Returns 0, or -1 if the
 * upstream was torn down. */
static int
upstream_send(struct upstream *u)
{
	br_ssl_engine_context *eng = &u->sc.eng;
	unsigned char *buf;
	size_t len;

	while ((buf = br_ssl_engine_sendrec_buf(eng, &len)) != NULL) {
		ssize_t n = send(u->fd, buf, len, MSG_NOSIGNAL);

		if (n < 0) {
			if (errno == EINTR)
				continue;
			if (errno == EAGAIN || errno == EWOULDBLOCK)
				return 0;
			upstream_io_error(u, "send failed", errno);
			return -1;
		}
		br_ssl_engine_sendrec_ack(eng, (size_t)n);
	}
	return 0;
}

/*
 * The first answer on a connection: only now is an upstream known to
 * work (a server may complete handshakes and never answer), so only now
 * does its back-off start again from the bottom, and a recovery is told.
 */
static void
upstream_on_first_answer(struct upstream *u)
{
	u->answered = 1;
	u->backoff_ms = BACKOFF_MIN_MS;
	if (u->failing)
		log_info("upstream %s: connected again", u->label);
	u->failing = 0;
	observe_status();
}

/* An answer to an ID asked on the connection: it lives (see
 * upstream_suspect). An answer to another question does not count. */
static void
upstream_alive(struct upstream *u)
{
	u->answer_ms = u->ok_ms = g.now_ms;
	u->unanswered_ms = 0;
	u->suspect = 0;
}

/* One answer from the stream: matched by ID and question, or dropped.
 * Returns 0, or -1 if the upstream was torn down. */
static int
upstream_on_answer(struct upstream *u, unsigned char *m, size_t len)
{
	struct pending_query *p;
	size_t qend;
	int slot;

	if (len < DNS_HEADER_BYTES) {
		upstream_fail(u, "protocol error: message shorter than a DNS header");
		return -1;
	}
	u->idle_since_ms = g.now_ms;
	slot = idmap_find(&u->ids, get16(m));
	if (slot < 0) {
		/* A late answer to a query that timed out or that its twin
		 * answered: its ID is never given again on this connection,
		 * so it matches nothing; but the connection lives. With
		 * queries in flight (and another upstream usable) it says
		 * nothing of them: their silence is still timed (a resolver
		 * holding every answer for seconds would otherwise be sent
		 * new queries again with each late one, until the table is
		 * full). With none, a suspect one is tried again. */
		if (idmap_used(&u->ids, get16(m)) && dns_parse_answer(m, len)) {
			if (u->inflight > 0 && upstream_other_usable(u))
				u->answer_ms = u->ok_ms = g.now_ms;
			else
				upstream_alive(u);
		}
		log_debug("upstream %s: answer with unknown ID %u dropped",
		    u->label, get16(m));
		return 0;
	}
	p = &g.pending[slot];
	qend = dns_parse_answer(m, len);
	if (qend == 0 || !dns_question_equal(m, qend, p->query, p->qi.qend)) {
		/* Never a wrong answer; the query waits for its own until
		 * its deadline. One odd message is no proof that the
		 * upstream is broken. */
		if (ratelimit_ok(&g.rl_mismatch))
			log_warn("upstream %s: an answer's question does not "
			    "match its ID: dropped", u->label);
		return 0;
	}
	upstream_alive(u);
	upstream_rtt(u, g.now_ms - p->sent_ms);
	if (!u->answered)
		upstream_on_first_answer(u);
	query_deliver(slot, m, len);
	return 0;
}

/* Splits the decrypted stream into length-prefixed messages (RFC 7858
 * 3.3, RFC 1035 4.2.2). Returns 0, or -1 if the upstream was torn down. */
static int
upstream_parse_stream(struct upstream *u)
{
	size_t off = 0;

	while (u->rlen - off >= 2) {
		size_t mlen = get16(u->rbuf + off);

		if (u->rlen - off < 2 + mlen)
			break;
		if (upstream_on_answer(u, u->rbuf + off + 2, mlen) < 0)
			return -1;
		off += 2 + mlen;
	}
	/* Only the incomplete tail moves, never more than one message. */
	if (off > 0) {
		memmove(u->rbuf, u->rbuf + off, u->rlen - off);
		u->rlen -= off;
	}
	return 0;
}

/*
 * Copies every queued query that fits into the engine, then flushes once,
 * so that queries ready in the same pass share a TLS record.
 */
static void
upstream_inject(struct upstream *u)
{
	br_ssl_engine_context *eng = &u->sc.eng;
	int injected = 0;

	while (u->queue_head >= 0) {
		int slot = u->queue_head;
		struct pending_query *p = &g.pending[slot];
		size_t avail;
		unsigned char *buf = br_ssl_engine_sendapp_buf(eng, &avail);

		if (buf == NULL)
			break;
		if (avail < 2u + p->qlen) {
			/* The record is full: send it; the rest goes in the
			 * next pass (an empty record holds 16 KB). */
			br_ssl_engine_flush(eng, 0);
			injected = 0;
			break;
		}
		if (u->ids.n_used >= ID_MAX_USED)
			break;		/* upstream_timers makes a new one */
		p->sent_ms = g.now_ms;
		if (u->unanswered_ms == 0)
			u->unanswered_ms = g.now_ms;
		put16(p->query, idmap_take(&u->ids, slot));
		put16(buf, p->qlen);
		memcpy(buf + 2, p->query, p->qlen);
		br_ssl_engine_sendapp_ack(eng, 2u + p->qlen);
		u->queue_head = p->next;
		if (u->queue_head < 0)
			u->queue_tail = -1;
		pending_set_state(slot, PENDING_SENT);
		upstream_hedge_watch(u, slot);
		p->attempts++;
		u->inflight++;
		u->n_queries++;
		injected = 1;
	}
	if (injected) {
		br_ssl_engine_flush(eng, 0);
		u->idle_since_ms = g.now_ms;
	}
}

/* Names of the suites upstream_suites_soft offers, for logs. */
static const char *
upstream_suite_name(uint16_t suite)
{
	switch (suite) {
	case BR_TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256:
		return "ECDHE-ECDSA-AES128-GCM-SHA256";
	case BR_TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256:
		return "ECDHE-RSA-AES128-GCM-SHA256";
	case BR_TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305_SHA256:
		return "ECDHE-ECDSA-CHACHA20-POLY1305";
	case BR_TLS_ECDHE_RSA_WITH_CHACHA20_POLY1305_SHA256:
		return "ECDHE-RSA-CHACHA20-POLY1305";
	case BR_TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384:
		return "ECDHE-ECDSA-AES256-GCM-SHA384";
	case BR_TLS_ECDHE_RSA_WITH_AES_256_GCM_SHA384:
		return "ECDHE-RSA-AES256-GCM-SHA384";
	}
	return "?";
}

/* The handshake just completed: logs it (info after a failure, else
 * debug), and notes a resumed session. */
static void
upstream_on_handshake(struct upstream *u)
{
	const char *alpn = br_ssl_engine_get_selected_protocol(&u->sc.eng);
	int resumed = upstream_save_session(u);

	u->ok_ms = g.now_ms;
	unsigned user_timeout = g.query_timeout_ms > USER_TIMEOUT_MIN_MS ?
	    g.query_timeout_ms : USER_TIMEOUT_MIN_MS;

	/* From now on (not during connect: it would also cut SYN retries),
	 * data the server does not acknowledge within --timeout ends the
	 * connection: the evidence of a half-open path. */
	setsockopt(u->fd, IPPROTO_TCP, TCP_USER_TIMEOUT, &user_timeout,
	    sizeof user_timeout);
	if (resumed)
		u->n_resumed++;
	u->answered = 0;
	log_debug("upstream %s: connected (%s%s%s%s)", u->label,
	    upstream_suite_name(u->session.cipher_suite),
	    resumed ? ", resumed" : "", alpn ? ", ALPN " : "",
	    alpn ? alpn : "");
}

/*
 * Runs the engine without system calls until nothing changes, then sends
 * what it produced. Called after every I/O event and once per loop pass.
 */
static void
upstream_pump(struct upstream *u)
{
	br_ssl_engine_context *eng = &u->sc.eng;

	for (;;) {
		unsigned st = br_ssl_engine_current_state(eng);
		unsigned char *buf;
		size_t len;

		if (st & BR_SSL_CLOSED) {
			int err = br_ssl_engine_last_error(eng);
			char ebuf[64], what[128];

			if (err == BR_ERR_OK) {
				if (u->state == UPSTREAM_CLOSING)
					upstream_closed(u, "closed");
				else
					upstream_server_closed(u);
				return;
			}
			util_fmt(what, sizeof what, "%s failed: %s",
			    u->state == UPSTREAM_READY ? "TLS" : "handshake",
			    util_br_error_name(err, ebuf, sizeof ebuf));
			upstream_fail(u, what);
			return;
		}
		if ((st & BR_SSL_SENDAPP) &&
		    u->state == UPSTREAM_HANDSHAKING) {
			upstream_on_handshake(u);
			g.none_usable = 0;
			upstream_set_state(u, UPSTREAM_READY);
		}
		buf = br_ssl_engine_recvapp_buf(eng, &len);
		if (buf != NULL) {
			size_t room = sizeof u->rbuf - u->rlen;

			if (len > room)
				len = room;
			memcpy(u->rbuf + u->rlen, buf, len);
			u->rlen += len;
			br_ssl_engine_recvapp_ack(eng, len);
			if (upstream_parse_stream(u) < 0)
				return;
			continue;
		}
		if (u->state == UPSTREAM_READY && u->queue_head >= 0 &&
		    (st & BR_SSL_SENDAPP)) {
			size_t before = u->inflight;

			upstream_inject(u);
			if (u->inflight != before)
				continue;
		}
		break;
	}
	if (br_ssl_engine_current_state(eng) & BR_SSL_SENDREC)
		upstream_send(u);
}

static void
upstream_on_writable(struct upstream *u)
{
	if (u->state == UPSTREAM_CONNECTING) {
		int err = 0;
		socklen_t len = sizeof err;

		if (getsockopt(u->fd, SOL_SOCKET, SO_ERROR, &err, &len) < 0)
			err = errno;
		if (err != 0) {
			upstream_fail_errno(u, "connect failed", err);
			return;
		}
		upstream_set_state(u, UPSTREAM_HANDSHAKING);
	}
	if (upstream_send(u) == 0)
		upstream_pump(u);
}

/*
 * Hands the bytes waiting in u->inbuf to the engine, record by record,
 * draining each record's answers before the next (the engine holds one
 * record at a time). Bytes the engine cannot take yet stay for the next
 * pass (loop_run calls this again while any are left).
 */
static void
upstream_feed(struct upstream *u)
{
	br_ssl_engine_context *eng = &u->sc.eng;
	unsigned long conn = u->n_connects;

	while (u->in_off < u->in_len) {
		size_t len;
		unsigned char *buf = br_ssl_engine_recvrec_buf(eng, &len);

		if (buf == NULL) {
			upstream_pump(u);
			if (u->fd < 0 || u->n_connects != conn)
				return;		/* torn down */
			if (br_ssl_engine_recvrec_buf(eng, &len) == NULL)
				return;		/* engine busy sending */
			continue;
		}
		if (len > u->in_len - u->in_off)
			len = u->in_len - u->in_off;
		memcpy(buf, u->inbuf + u->in_off, len);
		br_ssl_engine_recvrec_ack(eng, len);
		u->in_off += len;
	}
	upstream_pump(u);
}

/*
 * Reads what the socket has in one call into u->inbuf (BearSSL asks for a
 * record's 5-byte header and its body separately: two system calls per
 * record if it read the socket itself), then feeds the engine.
 */
static void
upstream_on_readable(struct upstream *u)
{
	ssize_t n;

	if (u->state == UPSTREAM_CONNECTING || u->in_off < u->in_len)
		return;
	n = recv(u->fd, u->inbuf, sizeof u->inbuf, 0);
	if (n < 0) {
		if (errno == EINTR || errno == EAGAIN || errno == EWOULDBLOCK)
			return;
		upstream_io_error(u, "receive failed", errno);
		return;
	}
	if (n == 0) {
		/* EOF without close_notify. After the handshake this is how
		 * most servers end an idle connection: not a failure. */
		upstream_server_closed(u);
		return;
	}
	u->in_off = 0;
	u->in_len = (size_t)n;
	upstream_feed(u);
}


/*
 * When a suspect connection is lost for silence: a whole --timeout after
 * the first query it has not answered; or INT64_MAX. Not when that query
 * and every later one were answered by their twins on another upstream
 * (its in-flight count went to 0 with one usable): it stays suspect (new
 * queries go elsewhere) until it answers or closes idle, since a client
 * can make one name slow at will (no warning, no failover for that). A
 * new connection that has answered nothing, and a lone upstream (its
 * queries only time out), are lost all the same (upstream_lost).
 */
static int64_t
upstream_silent_at(const struct upstream *u)
{
	if (!u->suspect || u->unanswered_ms == 0)
		return INT64_MAX;
	return u->unanswered_ms + g.query_timeout_ms;
}

/* upstream_timers of a READY connection: silence, suspicion, hedges,
 * the idle close and the renewal of the ID space. */
static void
upstream_ready_timers(struct upstream *u)
{
	if (g.now_ms >= upstream_silent_at(u)) {
		upstream_silent(u);
		return;
	}
	if (!u->suspect && u->unanswered_ms != 0 && u->inflight > 0 &&
	    g.now_ms - u->unanswered_ms >= upstream_stall_ms(u))
		upstream_suspect(u);
	/* One query slower than u's usual round trip, while others
	 * are answered: ask another upstream too (query_hedge_slow
	 * keeps to --hedge-percent). */
	while (upstream_hedge_due(u) <= g.now_ms) {
		int slot = u->hedge.head;

		upstream_hedge_unwatch(u, slot);
		query_hedge_slow(slot);
	}
	/* Half the IDs used (an ID is never used twice on a
	 * connection), and the last answer in: a new connection, the
	 * same session. Meanwhile queries wait (upstream_inject). */
	if ((u->inflight == 0 && u->ids.n_used >= ID_MAX_USED) ||
	    (u->inflight == 0 && u->queue_head < 0 &&
	    g.now_ms - u->idle_since_ms >= g.idle_timeout_ms)) {
		/* Close before the server does, so a query never
		 * races a server-side close (stubby#346). */
		br_ssl_engine_close(&u->sc.eng);
		upstream_set_state(u, UPSTREAM_CLOSING);
		upstream_pump(u);
	}
}

/* Deadlines of one upstream: handshake, stall, idle close, close,
 * backoff. */
static void
upstream_timers(struct upstream *u)
{
	switch (u->state) {
	case UPSTREAM_CONNECTING:
	case UPSTREAM_HANDSHAKING:
		if (g.now_ms >= u->deadline_ms)
			upstream_fail(u, u->state == UPSTREAM_CONNECTING ?
			    "connect timed out" : "handshake timed out");
		break;
	case UPSTREAM_READY:
		upstream_ready_timers(u);
		break;
	case UPSTREAM_CLOSING:
		if (g.now_ms >= u->deadline_ms)
			upstream_closed(u, "closed (close_notify timed out)");
		break;
	case UPSTREAM_BACKOFF:
		if (g.now_ms >= u->retry_at_ms)
			upstream_set_state(u, UPSTREAM_DISCONNECTED);
		break;
	case UPSTREAM_DISCONNECTED:
		/* Back-off over, but queries go to a healthy one: a probe
		 * of our own shows when this one works again. */
		if (u->failing && upstream_pick() != (int)upstream_index(u) &&
		    !g.draining)
			query_probe(u);
		break;
	}
}

/* Earliest deadline of an upstream, or INT64_MAX. */
static int64_t
upstream_next_deadline(const struct upstream *u)
{
	int64_t h = upstream_hedge_due(u), d;

	switch (u->state) {
	case UPSTREAM_CONNECTING:
	case UPSTREAM_HANDSHAKING:
	case UPSTREAM_CLOSING:
		return u->deadline_ms;
	case UPSTREAM_READY:		/* as upstream_timers acts */
		if (u->inflight > 0 || upstream_silent_at(u) != INT64_MAX) {
			/* and the queries' own deadlines */
			d = u->suspect ? upstream_silent_at(u) :
			    u->unanswered_ms == 0 ? INT64_MAX :
			    u->unanswered_ms + upstream_stall_ms(u);
			return d < h ? d : h;
		}
		if (u->ids.n_used >= ID_MAX_USED)
			return g.now_ms;
		if (u->queue_head < 0)
			return u->idle_since_ms + g.idle_timeout_ms;
		break;			/* queries wait for the socket */
	case UPSTREAM_BACKOFF:
		return u->retry_at_ms;
	case UPSTREAM_DISCONNECTED:
		break;
	}
	return INT64_MAX;
}

/* Adds the upstream's socket to the fd sets, from a fresh engine state. */
static void
upstream_want(struct upstream *u, fd_set *rd, fd_set *wr, int *maxfd)
{
	unsigned st;

	if (u->fd < 0)
		return;
	if (u->state == UPSTREAM_CONNECTING) {
		FD_SET(u->fd, wr);
	} else {
		st = br_ssl_engine_current_state(&u->sc.eng);
		if (st & BR_SSL_SENDREC)
			FD_SET(u->fd, wr);
		if ((st & BR_SSL_RECVREC) && u->in_off == u->in_len)
			FD_SET(u->fd, rd);
	}
	if (u->fd > *maxfd)
		*maxfd = u->fd;
}

/* At exit: close_notify if it can go out at once, then close. */
static void
upstream_shutdown(struct upstream *u)
{
	if (u->fd < 0)
		return;
	if (u->state == UPSTREAM_READY) {
		br_ssl_engine_close(&u->sc.eng);
		upstream_send(u);
	}
	if (u->fd >= 0)
		close(u->fd);
	u->fd = -1;
}

/* ==== client: TCP client connections ================================== */
/*
 * Owns g.clients. RFC 7766: 2-byte length framing, many queries per
 * connection, answers in whatever order they come. An answer is sent
 * straight from the upstream's buffer when the socket takes it; only what
 * the socket refuses is copied into the client's output buffer.
 */

/* Start-up: every slot free, pointing at its own buffers. */
static void
client_init(void)
{
	size_t i;

	for (i = 0; i < MAX_TCP_CLIENTS; i++) {
		g.clients[i].fd = -1;
		g.clients[i].in = g.client_in[i];
		g.clients[i].out = g.client_out[i];
	}
}

static void
client_close(struct client_conn *c)
{
	if (c->fd >= 0)
		close(c->fd);
	c->fd = -1;
	c->state = CLIENT_FREE;
	c->gen++;		/* answers still in flight will not match */
	c->inflight = 0;
	c->in_len = 0;
	c->out_off = c->out_len = 0;
	if (c->big) {
		/* A big query or a backlog of answers made pages resident:
		 * give them back, so that hostile clients cannot keep
		 * 17 MB of the router's memory. */
		util_release(c->in, CLIENT_IN_BYTES);
		util_release(c->out, CLIENT_OUT_BYTES);
		c->big = 0;
	}
}

/* Returns 1 if a client has nothing in flight and nothing to send. */
static int
client_is_idle(const struct client_conn *c)
{
	return c->inflight == 0 && c->out_len == c->out_off;
}

/*
 * Accepts one connection. When every slot is taken, the longest idle
 * connection is closed to make room (RFC 7766 6.2.3); if none is idle,
 * the new one is refused.
 */
static void
client_accept(struct listener *l)
{
	struct client_conn *c = NULL, *oldest = NULL;
	size_t i;
	union sockaddr_u peer;
	socklen_t peerlen = sizeof peer;
	int fd = accept4(l->tcp_fd, &peer.sa, &peerlen,
	    SOCK_NONBLOCK | SOCK_CLOEXEC);

	if (fd < 0 && errno != EAGAIN && errno != EWOULDBLOCK &&
	    errno != EINTR && errno != ECONNABORTED) {
		/* The connection stays queued and the listener readable:
		 * watching it now would spin. Rest, then try again. */
		l->accept_pause_ms = g.now_ms + ACCEPT_PAUSE_MS;
		if (ratelimit_ok(&g.rl_accept))
			log_warn("cannot accept TCP clients: %s; trying again "
			    "in %d ms", strerror(errno), ACCEPT_PAUSE_MS);
		return;
	}
	if (fd < 0)
		return;		/* EAGAIN, or the client already left */
	if (fd >= FD_SETSIZE) {
		close(fd);
		return;
	}
	for (i = 0; i < MAX_TCP_CLIENTS && c == NULL; i++) {
		struct client_conn *x = &g.clients[i];

		if (x->state == CLIENT_FREE)
			c = x;
		else if (client_is_idle(x) && (oldest == NULL ||
		    x->last_active_ms < oldest->last_active_ms))
			oldest = x;
	}
	/* A client outside --allow (it will get REFUSED) takes a free slot
	 * at most: it never pushes out one that may ask. */
	if (c == NULL && oldest != NULL && acl_allowed(&peer)) {
		client_close(oldest);
		c = oldest;
	}
	if (c == NULL) {
		if (ratelimit_ok(&g.rl_clients_full))
			log_warn("%d TCP clients, all busy: connection refused",
			    MAX_TCP_CLIENTS);
		close(fd);
		return;
	}
	c->fd = fd;
	c->peer = peer;
	c->state = CLIENT_OPEN;
	c->inflight = 0;
	c->answered = 0;
	c->in_len = 0;
	c->out_off = c->out_len = 0;
	c->last_active_ms = g.now_ms;
}

/*
 * Queues one framed answer. Tries the socket first; keeps the rest. A
 * client that lets more than CLIENT_OUT_BYTES pile up is closed.
 */
static void
client_send_frame(struct client_conn *c, const unsigned char *msg, size_t len)
{
	unsigned char pfx[2];
	size_t sent = 0, total = len + 2;

	if (len > MSG_MAX_BYTES)
		return;		/* no frame can say it (never: see callers) */
	put16(pfx, (unsigned)len);
	if (c->out_len == c->out_off) {
		struct iovec iov[2] = {
			{ pfx, 2 }, { (void *)msg, len },
		};
		struct msghdr mh = { 0 };
		ssize_t n;

		mh.msg_iov = iov;
		mh.msg_iovlen = 2;
		n = sendmsg(c->fd, &mh, MSG_NOSIGNAL | MSG_DONTWAIT);
		if (n < 0 && errno != EAGAIN && errno != EWOULDBLOCK &&
		    errno != EINTR) {
			client_close(c);
			return;
		}
		if (n > 0) {
			sent = (size_t)n;
			c->last_active_ms = g.now_ms;
		}
		c->out_off = c->out_len = 0;
		if (sent == total)
			return;
	}
	if (c->out_off > 0 && c->out_len + total - sent > CLIENT_OUT_BYTES) {
		memmove(c->out, c->out + c->out_off, c->out_len - c->out_off);
		c->out_len -= c->out_off;
		c->out_off = 0;
	}
	if (c->out_len + total - sent > CLIENT_OUT_BYTES) {
		log_debug("TCP client not reading its answers: closed");
		client_close(c);
		return;
	}
	if (sent < 2) {
		memcpy(c->out + c->out_len, pfx + sent, 2 - sent);
		c->out_len += 2 - sent;
		sent = 2;
	}
	memcpy(c->out + c->out_len, msg + (sent - 2), total - sent);
	c->out_len += total - sent;
	c->big |= c->out_len > CLIENT_SMALL_BYTES;
}

static void
client_on_writable(struct client_conn *c)
{
	ssize_t n = send(c->fd, c->out + c->out_off, c->out_len - c->out_off,
	    MSG_NOSIGNAL);

	if (n < 0) {
		if (errno != EAGAIN && errno != EWOULDBLOCK && errno != EINTR)
			client_close(c);
		return;
	}
	c->out_off += (size_t)n;
	c->last_active_ms = g.now_ms;
	if (c->out_off == c->out_len)
		c->out_off = c->out_len = 0;
	if (c->state == CLIENT_EOF && client_is_idle(c))
		client_close(c);
}

/* Returns 1 if a whole frame waits in the input buffer. */
static int
client_has_frame(const struct client_conn *c)
{
	return c->in_len >= 2 && c->in_len >= 2u + get16(c->in);
}

/*
 * Hands complete frames to the query section while the client has fewer
 * than MAX_INFLIGHT_PER_CLIENT queries in flight; the rest wait in the
 * buffer (loop_run calls this again when answers have gone out). Any
 * frame size is taken (RFC 1035 4.2.2); a frame too short to be a query
 * (it has no ID to answer) closes the connection.
 */
static void
client_take_frames(struct client_conn *c)
{
	struct origin from = { 0 };
	size_t off = 0;

	from.kind = ORIGIN_TCP;
	from.at_ms = g.now_ms;
	from.peer = c->peer;
	from.slot = (int)(c - g.clients);
	from.gen = c->gen;
	while (c->in_len - off >= 2 && c->inflight < MAX_INFLIGHT_PER_CLIENT) {
		size_t mlen = get16(c->in + off);

		if (mlen < DNS_HEADER_BYTES) {
			log_debug("TCP client sent a %zu-byte frame: closed",
			    mlen);
			client_close(c);
			return;
		}
		if (c->in_len - off < 2 + mlen)
			break;
		c->inflight++;
		query_receive(c->in + off + 2, mlen, &from);
		if (c->state == CLIENT_FREE || c->gen != from.gen)
			return;	/* closed while answering */
		off += 2 + mlen;
	}
	if (off == 0)
		return;
	memmove(c->in, c->in + off, c->in_len - off);
	c->in_len -= off;
	c->frame_start_ms = g.now_ms;	/* the next frame's clock starts */
	if (c->state == CLIENT_EOF && client_is_idle(c) && !client_has_frame(c))
		client_close(c);
}

/* Reads what the socket has, then takes the complete frames. */
static void
client_on_readable(struct client_conn *c)
{
	ssize_t n;

	if (c->in_len == CLIENT_IN_BYTES)
		return;		/* whole frames wait for answers to go */
	n = recv(c->fd, c->in + c->in_len, CLIENT_IN_BYTES - c->in_len, 0);
	if (n < 0) {
		if (errno != EAGAIN && errno != EWOULDBLOCK && errno != EINTR)
			client_close(c);
		return;
	}
	if (n == 0) {
		/* Half-close: queries already read are still answered. */
		c->state = CLIENT_EOF;
		if (client_is_idle(c) && !client_has_frame(c))
			client_close(c);
		return;
	}
	if (c->in_len == 0)
		c->frame_start_ms = g.now_ms;
	c->in_len += (size_t)n;
	c->big |= c->in_len > CLIENT_SMALL_BYTES;
	c->last_active_ms = g.now_ms;
	client_take_frames(c);
}

/* Called when an answer (or error) for a TCP query is ready; msg == NULL
 * means the query gets no answer at all. */
static void
client_answer(int slot, unsigned gen, const unsigned char *msg, size_t len)
{
	struct client_conn *c = &g.clients[slot];

	if (c->state == CLIENT_FREE || c->gen != gen)
		return;		/* the client left; drop the answer */
	c->inflight--;
	c->answered = 1;
	if (msg != NULL)
		client_send_frame(c, msg, len);
	if (c->state == CLIENT_EOF && c->fd >= 0 && client_is_idle(c) &&
	    !client_has_frame(c))
		client_close(c);
}

static void
client_want(struct client_conn *c, fd_set *rd, fd_set *wr, int *maxfd)
{
	if (c->state == CLIENT_FREE)
		return;
	if (c->state != CLIENT_EOF && !g.draining &&
	    c->inflight < MAX_INFLIGHT_PER_CLIENT &&
	    c->out_len - c->out_off < CLIENT_OUT_BYTES / 2)
		FD_SET(c->fd, rd);
	if (c->out_len > c->out_off)
		FD_SET(c->fd, wr);
	if (c->fd > *maxfd)
		*maxfd = c->fd;
}

/* Returns 1 if a client is to be closed because we are stopping: in
 * the lame duck, once answered, with nothing in flight, nothing to send
 * and no query begun for LAME_DUCK_IDLE_MS (a pipelined query may be on
 * the way; a connection not yet answered is waited for), so that its
 * next connection goes to the instance the listener's group is steered
 * to; in the drain (nothing is read any more) as soon as it is idle.
 * RFC 7766 6.2.3 lets a server close idle connections; clients connect
 * again. */
static int
client_stop_close(const struct client_conn *c)
{
	if (!client_is_idle(c))
		return 0;
	if (g.draining)
		return 1;
	return g.lame_duck && g.reuseport && c->answered && c->in_len == 0 &&
	    g.now_ms - c->last_active_ms >= LAME_DUCK_IDLE_MS;
}

/* Closes a connection idle for CLIENT_IDLE_MS, or one whose answers have
 * not been read for as long, or one that started a query and has not
 * finished it within CLIENT_FRAME_MS (a slowloris trickles bytes to stay
 * "active"). Waiting for an upstream is not idleness: the query timeout
 * bounds that. */
static void
client_timers(struct client_conn *c)
{
	if (c->state == CLIENT_FREE)
		return;
	if (client_stop_close(c)) {
		log_debug("TCP client idle while stopping: closed");
		client_close(c);
		return;
	}
	if (c->inflight >= MAX_INFLIGHT_PER_CLIENT || client_has_frame(c))
		c->frame_start_ms = g.now_ms;	/* the proxy is not reading */
	else if (c->in_len > 0 &&
	    g.now_ms - c->frame_start_ms >= CLIENT_FRAME_MS) {
		log_debug("TCP client too slow to send a query: closed");
		client_close(c);
		return;
	}
	if (g.now_ms - c->last_active_ms < CLIENT_IDLE_MS)
		return;
	if (c->inflight == 0 || c->out_len > c->out_off) {
		log_debug("TCP client idle: closed");
		client_close(c);
	}
}

/* When client_timers has something to do for a client, or INT64_MAX:
 * a client waiting for answers is not idle, and must not wake select()
 * before its queries' own deadlines (a busy loop otherwise). */
static int64_t
client_next_deadline(const struct client_conn *c)
{
	int64_t d = INT64_MAX;

	if (c->state == CLIENT_FREE)
		return d;
	if (client_stop_close(c))
		return g.now_ms;
	if (g.lame_duck && g.reuseport && c->answered && client_is_idle(c) &&
	    c->in_len == 0)
		return c->last_active_ms + LAME_DUCK_IDLE_MS;
	if (c->in_len > 0 && c->inflight < MAX_INFLIGHT_PER_CLIENT &&
	    !client_has_frame(c))
		d = c->frame_start_ms + CLIENT_FRAME_MS;
	if ((c->inflight == 0 || c->out_len > c->out_off) &&
	    c->last_active_ms + CLIENT_IDLE_MS < d)
		d = c->last_active_ms + CLIENT_IDLE_MS;
	return d;
}

/* ==== udp: UDP listeners ============================================== */
/*
 * Owns the UDP half of g.listeners and the two datagram batches. Queries
 * are read UDP_BATCH at a time with recvmmsg(); answers are collected and
 * sent UDP_BATCH at a time with sendmmsg(), once per loop pass: system
 * calls, not DNS work, are what a forwarder spends its CPU on. A listener
 * bound to a wildcard address learns each query's destination
 * (IP_PKTINFO) and answers from it, so a multi-homed host answers from
 * the address it was asked on.
 */

#define UDP_CTL_BYTES	CMSG_SPACE(sizeof(struct in6_pktinfo))

union udp_ctl {
	struct cmsghdr align;
	unsigned char buf[UDP_CTL_BYTES];
};

static struct {
	struct mmsghdr hdr[UDP_BATCH];
	struct iovec iov[UDP_BATCH];
	union sockaddr_u peer[UDP_BATCH];
	union udp_ctl ctl[UDP_BATCH];
	/* A longer datagram is cut (MSG_TRUNC): TC=1 sends its client to
	 * TCP. Pages past the first of a slot are touched only by one. */
	unsigned char buf[UDP_BATCH][UDP_QUERY_MAX_BYTES];
} udp_rx;

static struct {
	struct mmsghdr hdr[UDP_BATCH];
	struct iovec iov[UDP_BATCH];
	union sockaddr_u peer[UDP_BATCH];
	union udp_ctl ctl[UDP_BATCH];
	unsigned char buf[UDP_BATCH][UDP_TX_SLOT_BYTES];
	size_t n;
	int listener;			/* the batch goes out of this one */
} udp_tx;

static void
udp_enable_pktinfo(int fd, int family)
{
	int one = 1;

	if (family == AF_INET6)
		setsockopt(fd, IPPROTO_IPV6, IPV6_RECVPKTINFO, &one, sizeof one);
	else
		setsockopt(fd, IPPROTO_IP, IP_PKTINFO, &one, sizeof one);
}

/* Fills a message header to send to a client, from its local address
 * when the listener is a wildcard. */
static void
udp_fill_msghdr(struct msghdr *mh, const struct origin *to,
    union sockaddr_u *peer, struct iovec *iov, union udp_ctl *ctl)
{
	struct cmsghdr *cm = (struct cmsghdr *)ctl->buf;

	memset(mh, 0, sizeof *mh);
	*peer = to->peer;
	mh->msg_name = peer;
	mh->msg_namelen = to->peerlen;
	mh->msg_iov = iov;
	mh->msg_iovlen = 1;
	if (!to->has_local)
		return;
	memset(ctl, 0, sizeof *ctl);
	mh->msg_control = ctl->buf;
	if (to->local.sa.sa_family == AF_INET6) {
		struct in6_pktinfo pi = { 0 };

		pi.ipi6_addr = to->local.sin6.sin6_addr;
		pi.ipi6_ifindex = to->local.sin6.sin6_scope_id;
		cm->cmsg_level = IPPROTO_IPV6;
		cm->cmsg_type = IPV6_PKTINFO;
		cm->cmsg_len = CMSG_LEN(sizeof pi);
		memcpy(CMSG_DATA(cm), &pi, sizeof pi);
		mh->msg_controllen = CMSG_SPACE(sizeof pi);
	} else {
		struct in_pktinfo pi = { 0 };

		pi.ipi_spec_dst = to->local.sin.sin_addr;
		cm->cmsg_level = IPPROTO_IP;
		cm->cmsg_type = IP_PKTINFO;
		cm->cmsg_len = CMSG_LEN(sizeof pi);
		memcpy(CMSG_DATA(cm), &pi, sizeof pi);
		mh->msg_controllen = CMSG_SPACE(sizeof pi);
	}
}

/* Sends the collected answers. A full socket buffer drops the rest (the
 * clients retry, as after any loss); an answer that cannot be sent to its
 * client (EPERM from a firewall, an address gone) is skipped, and the
 * others go. */
static void
udp_flush(void)
{
	size_t off = 0;

	while (off < udp_tx.n) {
		/* The system call itself: musl's sendmmsg() loops over
		 * sendmsg() on 64-bit targets. The kernel's struct layout is
		 * musl's with its padding fields zero (udp_fill_msghdr). */
		int n = (int)syscall(SYS_sendmmsg,
		    g.listeners[udp_tx.listener].udp_fd, udp_tx.hdr + off,
		    (unsigned)(udp_tx.n - off), MSG_NOSIGNAL | MSG_DONTWAIT);

		if (n < 0) {
			if (errno == EINTR)
				continue;
			if (errno == EAGAIN || errno == EWOULDBLOCK)
				break;
			n = 1;		/* the first of them failed: skip it */
		}
		off += (size_t)n;
	}
	udp_tx.n = 0;
}

/* Queues one answer to a UDP client; one larger than a batch slot (rare:
 * an EDNS client taking more than UDP_TX_SLOT_BYTES) goes out at once. */
static void
udp_send(const struct origin *to, const unsigned char *msg, size_t len)
{
	size_t i;

	if (udp_tx.n > 0 && (udp_tx.listener != to->listener ||
	    udp_tx.n == UDP_BATCH))
		udp_flush();
	if (len > UDP_TX_SLOT_BYTES) {
		struct msghdr mh;
		struct iovec iov = { (void *)msg, len };
		union sockaddr_u peer;
		union udp_ctl ctl;

		udp_fill_msghdr(&mh, to, &peer, &iov, &ctl);
		while (sendmsg(g.listeners[to->listener].udp_fd, &mh,
		    MSG_NOSIGNAL | MSG_DONTWAIT) < 0 && errno == EINTR)
			;
		return;
	}
	i = udp_tx.n++;
	udp_tx.listener = to->listener;
	memcpy(udp_tx.buf[i], msg, len);
	udp_tx.iov[i].iov_base = udp_tx.buf[i];
	udp_tx.iov[i].iov_len = len;
	udp_fill_msghdr(&udp_tx.hdr[i].msg_hdr, to, &udp_tx.peer[i],
	    &udp_tx.iov[i], &udp_tx.ctl[i]);
}

/* Learns where a datagram was sent (wildcard listeners only). */
static void
udp_read_pktinfo(struct msghdr *mh, struct origin *from)
{
	struct cmsghdr *cm;

	for (cm = CMSG_FIRSTHDR(mh); cm; cm = CMSG_NXTHDR(mh, cm)) {
		if (cm->cmsg_level == IPPROTO_IP &&
		    cm->cmsg_type == IP_PKTINFO) {
			struct in_pktinfo pi;

			memcpy(&pi, CMSG_DATA(cm), sizeof pi);
			from->local.sin.sin_family = AF_INET;
			from->local.sin.sin_addr = pi.ipi_addr;
			from->has_local = 1;
		} else if (cm->cmsg_level == IPPROTO_IPV6 &&
		    cm->cmsg_type == IPV6_PKTINFO) {
			struct in6_pktinfo pi;

			memcpy(&pi, CMSG_DATA(cm), sizeof pi);
			from->local.sin6.sin6_family = AF_INET6;
			from->local.sin6.sin6_addr = pi.ipi6_addr;
			from->local.sin6.sin6_scope_id = pi.ipi6_ifindex;
			from->has_local = 1;
		}
	}
}

/* Reads up to UDP_BATCH datagrams in one system call and hands each to
 * the query section. */
static void
udp_on_readable(size_t li)
{
	struct listener *l = &g.listeners[li];
	int i, n;

	for (i = 0; i < UDP_BATCH; i++) {
		struct msghdr *mh = &udp_rx.hdr[i].msg_hdr;

		udp_rx.iov[i].iov_base = udp_rx.buf[i];
		udp_rx.iov[i].iov_len = sizeof udp_rx.buf[i];
		mh->msg_name = &udp_rx.peer[i];
		mh->msg_namelen = sizeof udp_rx.peer[i];
		mh->msg_iov = &udp_rx.iov[i];
		mh->msg_iovlen = 1;
		mh->msg_control = l->wildcard ? udp_rx.ctl[i].buf : NULL;
		mh->msg_controllen = l->wildcard ? UDP_CTL_BYTES : 0;
		mh->msg_flags = 0;
	}
	do
		n = recvmmsg(l->udp_fd, udp_rx.hdr, UDP_BATCH, MSG_DONTWAIT,
		    NULL);
	while (n < 0 && errno == EINTR);
	for (i = 0; i < n; i++) {
		struct msghdr *mh = &udp_rx.hdr[i].msg_hdr;
		struct origin from;

		if (l->steer_probing && udp_rx.hdr[i].msg_len ==
		    sizeof g.steer_token && udp_rx.buf[i][3] ==
		    (unsigned char)li && memcmp(udp_rx.buf[i],
		    g.steer_token, 3) == 0 && memcmp(udp_rx.buf[i] + 4,
		    g.steer_token + 4, sizeof g.steer_token - 4) == 0) {
			/* our own token: we are index 0 (start_steer_probe) */
			l->steer_probing = 0;
			start_steer(l->udp_fd, 1);
			start_steer(l->tcp_fd, 1);
			continue;
		}
		memset(&from, 0, sizeof from);
		from.kind = ORIGIN_UDP;
		from.at_ms = g.now_ms;
		from.listener = (int)li;
		memcpy(&from.peer, &udp_rx.peer[i], sizeof from.peer);
		from.peerlen = mh->msg_namelen;
		if (l->wildcard)
			udp_read_pktinfo(mh, &from);
		if (mh->msg_flags & MSG_TRUNC)
			query_receive_oversized(udp_rx.buf[i],
			    udp_rx.hdr[i].msg_len, &from);
		else
			query_receive(udp_rx.buf[i], udp_rx.hdr[i].msg_len,
			    &from);
	}
}

/* ==== query: from arrival to answer =================================== */
/*
 * The only code that knows both ends: it validates a query, answers it
 * itself (errors, special-use names, the cache) or gives it a pending
 * slot and a route (a forward zone, or an upstream), and sends the answer
 * back the way the query came. query_deliver() and query_fail() detach
 * the slot from its route (query_detach) and free it.
 */

/* The latency buckets' upper bounds, in ms, and as /metrics writes them. */
static const unsigned stats_bucket_ms[STATS_BUCKETS] = {
	1, 2, 5, 10, 25, 50, 100, 250, 500, 1000, 2500, 5000,
};
static const char *const stats_bucket_le[STATS_BUCKETS] = {
	"0.001", "0.002", "0.005", "0.01", "0.025", "0.05", "0.1", "0.25",
	"0.5", "1", "2.5", "5",
};

/* Sends an answer the way its query came, and counts it (its RCODE, the
 * time since the query came). */
static void
query_send(const struct origin *to, const unsigned char *msg, size_t len)
{
	int64_t ms = g.now_ms - to->at_ms;
	size_t b;

	if (to->kind == ORIGIN_PROBE || to->kind == ORIGIN_REFRESH)
		return;
	for (b = 0; b < STATS_BUCKETS && ms > stats_bucket_ms[b]; b++)
		;
	g.stats.latency[b]++;
	g.stats.latency_sum_ms += (unsigned long long)(ms > 0 ? ms : 0);
	g.stats.answers[(msg[3] & 0x0F) < STATS_RCODES - 1 ? msg[3] & 0x0F :
	    STATS_RCODES - 1]++;
	if (to->kind == ORIGIN_UDP)
		udp_send(to, msg, len);
	else
		client_answer(to->slot, to->gen, msg, len);
}

/* Writes a question's name as text for debug logs ("example.com."). */
static void
query_name_text(const unsigned char *m, size_t qend, char *out, size_t outlen)
{
	size_t off = DNS_HEADER_BYTES, o = 0;

	while (off < qend && m[off] != 0 && o + 5 < outlen) {
		size_t i, lab = m[off++];

		for (i = 0; i < lab && off < qend && o + 5 < outlen; i++) {
			unsigned char ch = m[off++];

			if (ch > ' ' && ch < 0x7F && ch != '.' && ch != '\\')
				out[o++] = (char)ch;
			else
				o += util_fmt(out + o, outlen - o,
				    "\\%03u", ch);
		}
		out[o++] = '.';
	}
	if (o == 0)
		out[o++] = '.';
	out[o] = '\0';
}

/* Takes a slot off its route (an upstream's queue or connection, a
 * zone's sockets); idempotent. */
static void
query_detach(int slot)
{
	struct pending_query *p = &g.pending[slot];

	if (p->route == ROUTE_UPSTREAM)
		upstream_detach(slot);
	else if (p->route == ROUTE_ZONE)
		zone_detach(slot);
	p->route = ROUTE_NONE;
}

/*
 * Coalescing. A query whose question and cache key are those of a query
 * already out (a leader, in the coalescing index) follows it instead of
 * asking again: it waits in state FOLLOWING on its leader's list, and
 * takes its answer (query_deliver) or its failure (query_fail). When the
 * leader dies but its twin lives, the twin takes the followers over.
 */
static void
query_follow(int slot, int leader)
{
	struct pending_query *p = &g.pending[slot], *l = &g.pending[leader];

	pending_set_state(slot, PENDING_FOLLOWING);
	p->route = ROUTE_NONE;
	p->leader = (int16_t)leader;
	p->next = l->followers;
	l->followers = slot;
	g.stats.coalesced++;
}

/* Takes a follower off its leader's list (it is answered on its own). */
static void
query_unfollow(int slot)
{
	struct pending_query *p = &g.pending[slot];
	int *link = &g.pending[p->leader].followers;

	while (*link != slot)
		link = &g.pending[*link].next;
	*link = p->next;
	p->leader = -1;
}

/* A leader goes while its twin (to) lives: the twin takes its followers,
 * its place in the coalescing index and on the stale watch. */
static void
query_adopt(int to, int from)
{
	struct pending_query *t = &g.pending[to], *f = &g.pending[from];
	int x, last = -1;

	for (x = f->followers; x >= 0; x = g.pending[x].next) {
		g.pending[x].leader = (int16_t)to;
		last = x;
	}
	if (last >= 0) {
		g.pending[last].next = t->followers;
		t->followers = f->followers;
		f->followers = -1;
	}
	if (f->flags & PQ_INDEXED) {
		pending_unindex(from);
		pending_index(to, f->hash);
	}
	if (f->flags & PQ_STALE_WATCH) {
		pq_replace(&g.stale, PQ_STALE, from, to);
		f->flags &= (uint8_t)~PQ_STALE_WATCH;
		t->flags |= PQ_STALE_WATCH;
	}
}

/* Frees a slot without an answer: its twin answered, or timed out with
 * it. Any followers go to the twin. */
static void
query_drop(int slot)
{
	struct pending_query *p = &g.pending[slot];

	query_detach(slot);
	if (p->twin >= 0) {
		query_adopt(p->twin, slot);
		g.pending[p->twin].twin = -1;
		p->twin = -1;
	}
	pending_free(slot);
}

/* The largest UDP answer a pending query's client takes; 0 over TCP. */
static size_t
query_udp_limit(const struct pending_query *p)
{
	return p->from.kind == ORIGIN_UDP ? p->qi.udp_limit : 0;
}

/* Sends a prepared answer (msg, len, s: left as they are) to one slot's
 * client, as it asked, and frees the slot. */
static void
query_answer(int slot, const unsigned char *msg, size_t len,
    const struct dns_summary *s)
{
	static unsigned char out[MSG_MAX_BYTES + DNS_OPT_BYTES];
	struct pending_query *p = &g.pending[slot];

	if (p->from.kind == ORIGIN_UDP || p->from.kind == ORIGIN_TCP) {
		memcpy(out, msg, len);
		len = dns_answer_for_client(out, len, p->query, &p->qi,
		    query_udp_limit(p), s);
		query_send(&p->from, out, len);
	}
	pending_free(slot);
}

/* Sends a prepared answer to every follower of a leader. */
static void
query_answer_followers(int leader, const unsigned char *msg, size_t len,
    const struct dns_summary *s)
{
	struct pending_query *l = &g.pending[leader];

	while (l->followers >= 0) {
		int f = l->followers;

		l->followers = g.pending[f].next;
		g.pending[f].leader = -1;
		query_answer(f, msg, len, s);
	}
}

/*
 * An answer from an upstream or a zone server for a pending query (its
 * ID and question checked): prepared once, cached, then sent to it, its
 * followers and its twin's, each as it asked (an error while the twin is
 * still out goes nowhere: the twin may answer). It is prepared in a buffer
 * of its own: the upstream's stream buffer holds the next answers right
 * after it, and an answer without an OPT gets one (a few hundred bytes
 * copied; no system call).
 */
static void
query_deliver(int slot, const unsigned char *answer, size_t len)
{
	static unsigned char msg[MSG_MAX_BYTES + DNS_OPT_BYTES];
	struct pending_query *p = &g.pending[slot];
	struct dns_summary s;
	uint32_t ttl;
	int twin = p->twin, rcode = answer[3] & 0x0F;

	query_detach(slot);
	/* An error is no answer while the twin may still bring one: an
	 * upstream that fails fast (REFUSED to us, a broken resolver) must
	 * not beat a slow good answer from the other. */
	if (twin >= 0 && (rcode == DNS_RCODE_SERVFAIL || rcode ==
	    DNS_RCODE_REFUSED || rcode == DNS_RCODE_NOTIMP || rcode ==
	    DNS_RCODE_FORMERR)) {
		query_drop(slot);
		return;
	}
	memcpy(msg, answer, len);
	len = dns_prepare_answer(msg, len, MSG_MAX_BYTES, p->qi.qend,
	    g.cache.min_ttl_s, g.cache.max_ttl_s, &ttl, &s);
	if (len == 0) {
		if (ratelimit_ok(&g.rl_mismatch))
			log_warn("%s answer is malformed: client gets "
			    "SERVFAIL", p->cache_key >> 3 ? "a forward zone's" :
			    "an upstream's");
		query_fail(slot, DNS_RCODE_SERVFAIL);
		return;
	}
	if ((p->cache_key >> 3) != 0)
		msg[3] &= (unsigned char)~DNS_FLAG_AD;	/* plain DNS: AD says
						 * nothing a path could not forge */
	cache_store(msg, len, p->qi.qend, p->cache_key, ttl, &s);
	if (twin >= 0) {
		g.pending[twin].twin = -1;
		p->twin = -1;
		query_answer_followers(twin, msg, len, &s);
		query_drop(twin);
	}
	query_answer_followers(slot, msg, len, &s);
	query_answer(slot, msg, len, &s);
}

/*
 * With --serve-stale, answers a query that no upstream answered (in
 * time: --stale-timeout) from an expired cache entry (RFC 8767), with a
 * 30 s TTL (or from the entry as it is, if another query's answer made
 * it fresh again). Returns 1 if it did.
 */
static int
query_serve_stale(struct pending_query *p)
{
	static unsigned char out[CACHE_MAX_ANSWER_BYTES + DNS_EDE_MAX_BYTES];
	struct dns_summary s;
	size_t len;
	int e, stale;

	if (g.cache.stale_s == 0 || (p->from.kind != ORIGIN_UDP &&
	    p->from.kind != ORIGIN_TCP))
		return 0;
	e = cache_find(p->query, p->qi.qend, p->cache_key,
	    cache_hash(p->query, p->qi.qend, p->cache_key));
	if (e < 0)
		return 0;
	/* Another query for the key may have refreshed it meanwhile: then
	 * it goes as it is, fresh. */
	stale = (len = cache_get(e, out, 0, &s)) == 0;
	if (stale)
		len = cache_get(e, out, 1, &s);
	if (stale && s.opt_end != 0)	/* RFC 8914 4.4: this is stale */
		s.end = s.opt_end = len = dns_add_ede(out, len, sizeof out,
		    s.opt_start, EDE_STALE, NULL);
	len = dns_answer_for_client(out, len, p->query, &p->qi,
	    query_udp_limit(p), &s);
	if (len == 0)
		return 0;
	if (stale)
		g.cache.stale++;
	query_send(&p->from, out, len);
	return 1;
}

/*
 * Why a query gets SERVFAIL, as an Extended DNS Error (RFC 8914) and its
 * text: the upstream (or zone) it waited on and what went wrong there,
 * else the preferred upstream's last failure. Never the query's name.
 */
static int
query_why(const struct pending_query *p, char *why, size_t cap)
{
	const struct upstream *u = &g.upstreams[0];
	size_t i;

	if (p->route == ROUTE_ZONE) {
		const struct zone *z = &g.zones[p->route_idx];

		util_fmt(why, cap, "forward zone %s: %s", z->label,
		    z->last_err ? strerror(z->last_err) : "no answer in time");
		return z->last_err ? EDE_NETWORK_ERROR : EDE_NO_REACHABLE;
	}
	if (p->route == ROUTE_UPSTREAM)
		u = &g.upstreams[p->route_idx];
	else
		for (i = 0; i < g.n_upstreams; i++)
			if (g.upstreams[i].failing) {
				u = &g.upstreams[i];
				break;
			}
	if (u->failing) {
		util_fmt(why, cap, "upstream %s: %s", u->label, u->why);
		return EDE_NETWORK_ERROR;
	}
	util_fmt(why, cap, "no answer from upstream %s in %u ms", u->label,
	    g.query_timeout_ms);
	return EDE_NO_REACHABLE;
}

/* Answers one slot rcode (a stale answer for SERVFAIL when there is
 * one), with an Extended DNS Error ede (-1: none) saying why; frees it. */
static void
query_fail_one(int slot, int rcode, int ede, const char *why)
{
	struct pending_query *p = &g.pending[slot];
	unsigned char out[DNS_ERROR_MAX_BYTES];
	size_t len;

	if (rcode != DNS_RCODE_SERVFAIL || !query_serve_stale(p)) {
		len = dns_make_error(out, p->query, &p->qi, rcode, ede, why);
		query_send(&p->from, out, len);
	}
	pending_free(slot);
}

/*
 * A query fails on its route. When its twin is still out, that one may
 * yet answer: this slot goes quietly, and the twin takes its followers.
 * Otherwise the client and every follower get rcode (or, for SERVFAIL, a
 * stale answer when --serve-stale has one), with an Extended DNS Error
 * saying why.
 */
static void
query_fail(int slot, int rcode)
{
	struct pending_query *p = &g.pending[slot];
	char why[DNS_EDE_TEXT_MAX + 1];
	int ede = rcode == DNS_RCODE_SERVFAIL ? query_why(p, why, sizeof why) :
	    -1;

	query_detach(slot);
	if (p->twin >= 0) {
		query_drop(slot);
		return;
	}
	while (p->followers >= 0) {
		int f = p->followers;

		p->followers = g.pending[f].next;
		g.pending[f].leader = -1;
		query_fail_one(f, rcode, ede, why);
	}
	query_fail_one(slot, rcode, ede, why);
}

/*
 * A query's deadline has come: it, its twin and its followers are done,
 * SERVFAIL. (A follower's deadline comes after its leader's, but for
 * one that arrived when the leader had little time left.)
 */
static void
query_expire(int slot)
{
	struct pending_query *p = &g.pending[slot];
	enum route_kind route = (enum route_kind)p->route;
	size_t idx = p->route_idx;
	int sent = p->state == PENDING_SENT;
	int64_t sent_ms = p->sent_ms, deadline_ms = p->deadline_ms;
	int both = 0;

	if (p->state == PENDING_FOLLOWING)
		query_unfollow(slot);
	if (p->twin >= 0) {
		int twin = p->twin;
		struct pending_query *t = &g.pending[twin];
		struct upstream *tu = t->route == ROUTE_UPSTREAM &&
		    t->state == PENDING_SENT ? &g.upstreams[t->route_idx] : NULL;

		both = tu != NULL && sent;
		g.pending[twin].twin = -1;
		p->twin = -1;
		query_drop(twin);
		/* neither answered it: the name, not the upstreams */
		if (both && tu->inflight == 0) {
			tu->suspect = 0;
			tu->unanswered_ms = 0;
		}
	}
	query_fail(slot, DNS_RCODE_SERVFAIL);
	if (both && g.upstreams[idx].inflight == 0) {
		g.upstreams[idx].suspect = 0;
		g.upstreams[idx].unanswered_ms = 0;
	}
	/* What a timeout tells the route it was on. */
	if (route == ROUTE_UPSTREAM && sent && !both)
		upstream_expired(&g.upstreams[idx], sent_ms, deadline_ms);
	else if (route == ROUTE_ZONE)
		zone_error(&g.zones[idx], "no answer in time", ETIMEDOUT);
}

/*
 * Asks a query that waits on an upstream of another usable one too: a
 * twin slot with the same client, question and deadline. The first
 * answer wins (query_deliver drops the other). Used for every query on a
 * suspect upstream (upstream_suspect), and for a slow one
 * (query_hedge_slow). Does nothing without another upstream or a free
 * slot, or for a query that has a twin already. Returns 1 if it asked.
 */
static int
query_hedge(int slot)
{
	struct pending_query *p = &g.pending[slot], *t;
	int up = upstream_pick_except(p->route_idx), ts;

	if (p->twin >= 0 || p->route != ROUTE_UPSTREAM || up < 0 ||
	    (ts = pending_alloc()) < 0)
		return 0;
	t = &g.pending[ts];
	t->from = p->from;
	t->qi = p->qi;
	t->cache_key = p->cache_key;
	t->hash = p->hash;
	t->deadline_ms = p->deadline_ms;
	pending_age_after(ts, slot);
	t->qlen = p->qlen;
	memcpy(t->query, p->query, p->qlen);
	t->twin = (int16_t)slot;
	p->twin = (int16_t)ts;
	upstream_enqueue(&g.upstreams[up], ts);
	if (p->twin != ts)
		return 0;	/* its connect() failed at once: dropped */
	g.stats.hedged++;
	return 1;
}

/*
 * A query has waited on a healthy upstream longer than its usual round
 * trip (upstream_hedge_ms): asked of another upstream too, if the cap
 * allows. The cap is a token bucket: each query sent upstream earns
 * --hedge-percent hundredths of a hedge, up to HEDGE_BURST hedges, so
 * that hedges add at most that share to the queries upstreams get.
 */
static void
query_hedge_slow(int slot)
{
	struct pending_query *p = &g.pending[slot];

	if (p->twin >= 0 || p->from.kind == ORIGIN_PROBE)
		return;
	if (g.hedge_tokens < 100) {
		g.stats.hedges_capped++;
		return;
	}
	if (query_hedge(slot))
		g.hedge_tokens -= 100;
}

/*
 * RFC 8767's client response timer: a query has waited --stale-timeout
 * and its expired entry is still in the cache. Its client gets the stale
 * answer now; the query goes on as a refresh of the entry (a follower
 * simply leaves its leader, who goes on).
 */
static void
query_stale_timer(int slot)
{
	struct pending_query *p = &g.pending[slot];

	pending_stale_unwatch(slot);
	if (!query_serve_stale(p))
		return;			/* gone meanwhile: wait on */
	g.stats.stale_timer++;
	if (p->state == PENDING_FOLLOWING) {
		query_unfollow(slot);
		pending_free(slot);
		return;
	}
	p->from.kind = ORIGIN_REFRESH;
	if (p->twin >= 0)
		g.pending[p->twin].from.kind = ORIGIN_REFRESH;
}

/*
 * A probe of a failed upstream whose back-off is over while a healthy one
 * takes the queries (upstream_timers): ". NS", which any resolver answers
 * from its cache, sent as a client's query would be. Its answer goes to
 * nobody; that it comes makes the upstream healthy again
 * (upstream_on_first_answer), its failure backs it off again.
 */
static void
query_probe(struct upstream *u)
{
	static const unsigned char root_ns[] = {
		0, 0, DNS_FLAG_RD, 0, 0, 1, 0, 0, 0, 0, 0, 0,	/* header */
		0, 0, 2, 0, 1,				/* . NS IN */
	};
	struct pending_query *p;
	int slot = pending_alloc();

	if (slot < 0)
		return;
	p = &g.pending[slot];
	memset(&p->from, 0, sizeof p->from);
	p->from.kind = ORIGIN_PROBE;
	(void)dns_parse_query(root_ns, sizeof root_ns, &p->qi);
	p->cache_key = cache_key(&p->qi, 0);
	p->qlen = (uint16_t)dns_build_query(p->query, root_ns, &p->qi,
	    g.pad_block);
	log_debug("upstream %s: probing", u->label);
	upstream_enqueue(u, slot);
}

/*
 * Sends a query that has its slot, cache key, hash and built query on
 * its way: to its forward zone's server (zi >= 0), or queued on the
 * preferred usable upstream (SERVFAIL when none is). It becomes a leader
 * that later queries may follow (unless --no-coalesce).
 */
static void
query_forward(int slot, int zi)
{
	struct pending_query *p = &g.pending[slot];
	int up;

	if (!g.no_coalesce)
		pending_index(slot, p->hash);
	if (zi >= 0) {
		zone_send((size_t)zi, slot);
		return;
	}
	up = upstream_pick();
	if (up < 0) {
		upstream_none_usable();
		query_fail(slot, DNS_RCODE_SERVFAIL);
		return;
	}
	g.hedge_tokens += g.hedge_pct;
	if (g.hedge_tokens > HEDGE_BURST * 100)
		g.hedge_tokens = HEDGE_BURST * 100;
	upstream_enqueue(&g.upstreams[up], slot);
}

/*
 * Prefetch: a hit on an entry in the last --prefetch percent of its TTL
 * (a TTL of PREFETCH_MIN_TTL_S or more) refreshes it now, once, while
 * the question is not in flight already and the pending table has room
 * to spare, so that the next askers still hit (unbound's prefetch).
 */
static void
query_prefetch(int e, const unsigned char *msg,
    const struct dns_query_info *qi, uint8_t key, uint32_t hash)
{
	struct cache_entry *x = &g.cache.entries[e];
	int64_t left_ms = (int64_t)x->ttl_s * 1000 - (g.now_ms - x->stored_ms);
	struct pending_query *p;
	int slot;

	if (g.prefetch_pct == 0 || x->prefetched || g.draining ||
	    x->ttl_s < PREFETCH_MIN_TTL_S || g.n_free <= PREFETCH_MIN_FREE ||
	    left_ms * 100 > (int64_t)x->ttl_s * 1000 * g.prefetch_pct ||
	    pending_find_leader(msg, qi->qend, key, hash) >= 0)
		return;
	x->prefetched = 1;
	slot = pending_alloc();
	p = &g.pending[slot];
	memset(&p->from, 0, sizeof p->from);
	p->from.kind = ORIGIN_REFRESH;
	p->from.at_ms = g.now_ms;
	p->qi = *qi;
	p->cache_key = key;
	p->hash = hash;
	p->qlen = (uint16_t)dns_build_query(p->query, msg, qi,
	    key >> 3 ? 0 : g.pad_block);
	g.stats.prefetched++;
	query_forward(slot, (int)(key >> 3) - 1);
}

/*
 * Answers a query from the cache if a fresh entry is there: no slot, no
 * upstream (and maybe a prefetch). Returns 1 if it did; else sets *stale
 * when an expired entry is there (--serve-stale keeps them).
 */
static int
query_from_cache(const unsigned char *msg, const struct dns_query_info *qi,
    const struct origin *from, uint8_t key, uint32_t hash, int *stale)
{
	static unsigned char out[CACHE_MAX_ANSWER_BYTES];
	struct dns_summary s;
	size_t len;
	int e;

	e = cache_find(msg, qi->qend, key, hash);
	if (e < 0 || (len = cache_get(e, out, 0, &s)) == 0) {
		*stale = e >= 0;
		g.cache.misses++;
		return 0;
	}
	len = dns_answer_for_client(out, len, msg, qi,
	    from->kind == ORIGIN_UDP ? qi->udp_limit : 0, &s);
	g.cache.hits++;
	query_send(from, out, len);
	query_prefetch(e, msg, qi, key, hash);
	return 1;
}

/* Answers a query at once with an error RCODE (or SERVFAIL). */
static void
query_reply_error(const unsigned char *msg, const struct dns_query_info *qi,
    const struct origin *from, int rcode, int ede, const char *why)
{
	unsigned char out[DNS_ERROR_MAX_BYTES];
	size_t len = dns_make_error(out, msg, qi, rcode, ede, why);

	query_send(from, out, len);
}

/*
 * A client not in --allow: REFUSED (RFC 8906 3.1.5; not an open
 * resolver) with the Extended DNS Error "Prohibited" and its text. Over
 * UDP never larger than its query (len), so that a forged source address
 * gains nothing: the code alone, or no EDE, when the text does not fit.
 */
static void
query_refuse(const unsigned char *msg, size_t len,
    const struct dns_query_info *qi, const struct origin *from)
{
	unsigned char out[DNS_ERROR_MAX_BYTES];
	size_t n = dns_make_error(out, msg, qi, DNS_RCODE_REFUSED,
	    EDE_PROHIBITED, "not in --allow");

	g.stats.refused++;
	if (from->kind == ORIGIN_UDP && n > len)
		n = dns_make_error(out, msg, qi, DNS_RCODE_REFUSED,
		    EDE_PROHIBITED, NULL);
	if (from->kind == ORIGIN_UDP && n > len)
		n = dns_make_error(out, msg, qi, DNS_RCODE_REFUSED, -1, NULL);
	query_send(from, out, n);
}

/*
 * A UDP datagram longer than UDP_QUERY_MAX_BYTES (its end is lost): TC=1
 * with its question, so that the client asks again over TCP, where any
 * size is taken.
 */
static void
query_receive_oversized(const unsigned char *msg, size_t len,
    const struct origin *from)
{
	struct dns_query_info qi;

	g.stats.queries_udp++;
	if (dns_parse_query(msg, len, &qi) == DNS_DROP) {
		g.stats.dropped++;
		return;
	}
	if (!acl_allowed(&from->peer)) {
		query_refuse(msg, len, &qi, from);
		return;
	}
	query_reply_error(msg, &qi, from, DNS_REPLY_TC, -1, NULL);
}

/*
 * A query from a client (UDP datagram or TCP frame): answered at once if
 * it is malformed, not allowed, for a special-use name, in the cache, or
 * nothing can take it; else sent to its forward zone's server, or queued
 * on the preferred usable upstream.
 */
static void
query_receive(const unsigned char *msg, size_t len, const struct origin *from)
{
	unsigned char out[DNS_LOCAL_MAX_BYTES];
	struct dns_query_info qi;
	struct pending_query *p;
	int rc, slot, zi, leader, stale = 0;
	uint8_t key;
	uint32_t hash;

	if (from->kind == ORIGIN_UDP)
		g.stats.queries_udp++;
	else
		g.stats.queries_tcp++;
	rc = dns_parse_query(msg, len, &qi);
	if (rc == DNS_DROP) {
		g.stats.dropped++;
		if (from->kind == ORIGIN_TCP)
			client_answer(from->slot, from->gen, NULL, 0);
		return;
	}
	if (!acl_allowed(&from->peer)) {
		query_refuse(msg, len, &qi, from);	/* whatever else it is */
		return;
	}
	if (rc != 0) {
		query_reply_error(msg, &qi, from, rc, -1, NULL);
		return;
	}
	if (g.log_level >= LOG_DEBUG) {
		char name[DNS_NAME_MAX_BYTES * 4 + 8];

		query_name_text(msg, qi.qend, name, sizeof name);
		log_debug("query %s type %u over %s", name, qi.qtype,
		    from->kind == ORIGIN_UDP ? "UDP" : "TCP");
	}
	if ((len = dns_local_answer(out, msg, &qi)) != 0) {
		g.stats.local++;
		query_send(from, out, len);
		return;
	}
	zi = g.n_zones == 0 ? -1 : dns_match_zone(msg, DNS_HEADER_BYTES,
	    g.zone_names, g.zone_lens, g.n_zones);
	key = cache_key(&qi, (unsigned)(zi + 1));
	hash = cache_hash(msg, qi.qend, key);
	if (g.cache.n_blocks != 0 &&
	    query_from_cache(msg, &qi, from, key, hash, &stale))
		return;
	slot = pending_alloc();
	if (slot < 0) {
		if (ratelimit_ok(&g.rl_table_full))
			log_warn("%d queries in flight: new ones get SERVFAIL",
			    MAX_PENDING);
		query_reply_error(msg, &qi, from, DNS_RCODE_SERVFAIL, EDE_OTHER,
		    "too many queries in flight");
		return;
	}
	p = &g.pending[slot];
	p->from = *from;
	p->qi = qi;
	p->cache_key = key;
	p->hash = hash;
	/* Plain DNS to a private server has nothing to pad for. */
	p->qlen = (uint16_t)dns_build_query(p->query, msg, &qi,
	    zi >= 0 ? 0 : g.pad_block);
	if (stale && g.stale_timeout_ms != 0)
		pending_stale_watch(slot);
	/* The same question in flight, with time enough left: wait for its
	 * answer rather than ask again. */
	leader = g.no_coalesce ? -1 : pending_find_leader(msg, qi.qend, key,
	    hash);
	if (leader >= 0 && g.pending[leader].deadline_ms - g.now_ms >=
	    (int64_t)g.query_timeout_ms / 2) {
		query_follow(slot, leader);
		return;
	}
	query_forward(slot, zi);
}

/* ==== observe: counters, /health, /ready, /metrics ===================== */
/*
 * Owns the HTTP endpoint (--http: off by default) and what it says; the
 * SIGUSR1 line says the same numbers. HTTP/1.1 GET only, one request per
 * connection, MAX_HTTP_CLIENTS of them in fixed buffers, answered by the
 * loop itself: a frozen or wedged loop fails /health, which a kernel's
 * TCP handshake on port 53 cannot.
 */

/* Writes a label value as Prometheus wants it (\\, \" and \n escaped). */
static size_t
observe_label(char *out, size_t cap, const char *s)
{
	size_t o = 0;

	for (; *s && o + 3 < cap; s++) {
		if (*s == '\\' || *s == '"' || *s == '\n')
			out[o++] = '\\';
		out[o++] = *s == '\n' ? 'n' : *s;
	}
	out[o] = '\0';
	return o;
}

/* A metric's HELP and TYPE lines. */
static size_t
observe_head(char *out, size_t cap, const char *name, const char *type,
    const char *help)
{
	return util_fmt(out, cap, "# HELP dotproxy_%s %s\n# TYPE dotproxy_%s "
	    "%s\n", name, help, name, type);
}

/* A counter without labels: its HELP and TYPE lines and its sample. */
static size_t
observe_counter(char *out, size_t cap, const char *name, const char *help,
    unsigned long v)
{
	size_t o = observe_head(out, cap, name, "counter", help);

	return o + util_fmt(out + o, cap - o, "dotproxy_%s %lu\n", name, v);
}

/* Number of TCP clients connected now. */
static size_t
observe_tcp_clients(void)
{
	size_t i, n = 0;

	for (i = 0; i < MAX_TCP_CLIENTS; i++)
		n += g.clients[i].state != CLIENT_FREE;
	return n;
}

/* Returns 1 if an upstream answers now: verified (handshake or answer)
 * and not failing since. */
static int
observe_upstream_up(const struct upstream *u)
{
	return u->ok_ms != 0 && !u->failing;
}

static const char *const observe_rcodes[STATS_RCODES] = {
	"NOERROR", "FORMERR", "SERVFAIL", "NXDOMAIN", "NOTIMP", "REFUSED",
	"other",
};

/* Per-upstream and per-zone metrics: name (after "dotproxy_"), help. */
static const char *const observe_upstream_metrics[][2] = {
	{ "upstream_up", "1 if the upstream is verified and not failing." },
	{ "upstream_queries_total", "Queries sent to the upstream." },
	{ "upstream_connects_total", "TLS connections made." },
	{ "upstream_resumptions_total", "TLS sessions resumed." },
	{ "upstream_failures_total", "Connections that failed." },
	{ "upstream_rtt_seconds", "Smoothed round trip of its answers "
	    "(RFC 6298)." },
};
static const char *const observe_zone_metrics[][2] = {
	{ "zone_queries_total", "Queries sent to a forward zone's server." },
	{ "zone_tcp_total", "Of them, asked again over TCP." },
	{ "zone_failures_total", "Of them, failed." },
};

/*
 * The Prometheus text format (0.0.4) of every counter, into out. Names
 * follow Prometheus' conventions (dotproxy_ prefix, _total counters, base
 * units); labels are bounded sets (transports, RCODEs, the configured
 * upstreams and zones). Returns the length.
 */
static size_t
observe_metrics(char *out, size_t cap)
{
	char addr[INET6_ADDRSTRLEN + 8], name[2 * AUTHNAME_MAX_BYTES];
	unsigned long long cum = 0;
	size_t o = 0, i, b, m;

#define M_HEAD(n, t, h) (o += observe_head(out + o, cap - o, n, t, h))
#define M_LINE(...) (o += util_fmt(out + o, cap - o, __VA_ARGS__))
#define M_COUNTER(n, h, v) (o += observe_counter(out + o, cap - o, n, h, v))
	M_HEAD("queries_total", "counter", "Queries received, by transport.");
	M_LINE("dotproxy_queries_total{transport=\"udp\"} %lu\n"
	    "dotproxy_queries_total{transport=\"tcp\"} %lu\n",
	    g.stats.queries_udp, g.stats.queries_tcp);
	M_HEAD("responses_total", "counter", "Answers sent, by RCODE.");
	for (i = 0; i < STATS_RCODES; i++)
		M_LINE("dotproxy_responses_total{rcode=\"%s\"} %lu\n",
		    observe_rcodes[i], g.stats.answers[i]);
	M_HEAD("request_duration_seconds", "histogram", "Time from a query's "
	    "arrival to its answer.");
	for (b = 0; b <= STATS_BUCKETS; b++) {
		cum += g.stats.latency[b];
		M_LINE("dotproxy_request_duration_seconds_bucket{le=\"%s\"} "
		    "%llu\n", b < STATS_BUCKETS ? stats_bucket_le[b] : "+Inf",
		    cum);
	}
	M_LINE("dotproxy_request_duration_seconds_sum %llu.%03llu\n"
	    "dotproxy_request_duration_seconds_count %llu\n",
	    g.stats.latency_sum_ms / 1000, g.stats.latency_sum_ms % 1000, cum);
	M_COUNTER("cache_hits_total", "Queries answered from the cache.",
	    g.cache.hits);
	M_COUNTER("cache_misses_total", "Queries the cache could not answer.",
	    g.cache.misses);
	M_COUNTER("cache_stale_total", "Stale answers served (RFC 8767).",
	    g.cache.stale);
	M_COUNTER("cache_evictions_total", "Entries evicted for room.",
	    g.cache.evictions);
	M_HEAD("cache_entries", "gauge", "Answers in the cache.");
	M_LINE("dotproxy_cache_entries %zu\n", g.cache.n_blocks ?
	    g.cache.n_entries - cache_free_entries() : 0);
	M_COUNTER("refused_total", "Queries refused by --allow.",
	    g.stats.refused);
	M_COUNTER("dropped_total", "Messages dropped unanswered (responses, "
	    "too short).",
	    g.stats.dropped);
	M_COUNTER("local_total", "Special-use names answered locally.",
	    g.stats.local);
	M_COUNTER("hedged_total", "Queries also asked of a second upstream "
	    "(suspect or slow upstream).",
	    g.stats.hedged);
	M_COUNTER("hedges_capped_total", "Slow queries not asked of a second "
	    "upstream: --hedge-percent.",
	    g.stats.hedges_capped);
	M_COUNTER("coalesced_total", "Queries answered with the answer to the "
	    "same question already in flight.",
	    g.stats.coalesced);
	M_COUNTER("prefetches_total", "Cache entries refreshed before they "
	    "expired (--prefetch).",
	    g.stats.prefetched);
	M_COUNTER("stale_timer_total", "Stale answers sent after "
	    "--stale-timeout while the entry is refreshed.",
	    g.stats.stale_timer);
	M_HEAD("queries_in_flight", "gauge", "Queries waiting for an "
	    "upstream or a zone server.");
	M_LINE("dotproxy_queries_in_flight %zu\n", MAX_PENDING - g.n_free);
	M_HEAD("tcp_clients", "gauge", "TCP client connections.");
	M_LINE("dotproxy_tcp_clients %zu\n", observe_tcp_clients());
	/* One group per metric (HELP, TYPE, then its samples), each with a
	 * sample per upstream or zone. */
	for (m = 0; m < sizeof observe_upstream_metrics /
	    sizeof observe_upstream_metrics[0]; m++) {
		M_HEAD(observe_upstream_metrics[m][0],
		    m == 0 || m == 5 ? "gauge" : "counter",
		    observe_upstream_metrics[m][1]);
		for (i = 0; i < g.n_upstreams; i++) {
			const struct upstream *u = &g.upstreams[i];
			unsigned long v[5] = { (unsigned long)
			    observe_upstream_up(u), u->n_queries,
			    u->n_connects, u->n_resumed, u->n_failures };

			util_format_addr(&u->addr, addr, sizeof addr);
			observe_label(name, sizeof name, u->name);
			M_LINE("dotproxy_%s{upstream=\"%s\",name=\"%s\"} ",
			    observe_upstream_metrics[m][0], addr, name);
			if (m < 5)
				M_LINE("%lu\n", v[m]);
			else
				M_LINE("%lld.%03lld\n",
				    (long long)(u->srtt_ms / 1000),
				    (long long)(u->srtt_ms % 1000));
		}
	}
	for (m = 0; m < 3 && g.n_zones != 0; m++) {
		M_HEAD(observe_zone_metrics[m][0], "counter",
		    observe_zone_metrics[m][1]);
		for (i = 0; i < g.n_zones; i++) {
			const struct zone *z = &g.zones[i];
			unsigned long v[3] = { z->n_queries, z->n_tcp,
			    z->n_failures };

			observe_label(name, sizeof name, z->domain);
			M_LINE("dotproxy_%s{zone=\"%s\"} %lu\n",
			    observe_zone_metrics[m][0], name, v[m]);
		}
	}
	M_HEAD("build_info", "gauge", "Version, and the TLS library.");
	M_LINE("dotproxy_build_info{version=\"%s\",bearssl=\"0.6\"} 1\n",
	    DOTPROXY_VERSION);
	M_HEAD("start_time_seconds", "gauge", "Start time, Unix seconds.");
	M_LINE("dotproxy_start_time_seconds %lld\n", (long long)g.start_time);
#undef M_HEAD
#undef M_LINE
#undef M_COUNTER
	return o;
}

/*
 * Returns 1 if dotproxy is ready for clients: listening, not draining,
 * and an upstream verified (a handshake or an answer) with no failure
 * since. Else 0, with why. With no upstream tried yet (connections are
 * made on demand), the preferred one is probed, so that a readiness
 * check alone brings readiness.
 */
static int
observe_ready(char *why, size_t cap)
{
	size_t i;

	if (g.draining || g.lame_duck) {
		util_fmt(why, cap, "%s: stopping on a signal", g.draining ?
		    "draining" : "lame duck");
		return 0;
	}
	for (i = 0; i < g.n_upstreams; i++)
		if (observe_upstream_up(&g.upstreams[i]))
			return 1;
	for (i = 0; i < g.n_upstreams; i++) {
		struct upstream *u = &g.upstreams[i];

		if (u->failing) {
			/* its back-off over and no client query to try it:
			 * the check itself does (an idle node's rollout) */
			if (u->state == UPSTREAM_DISCONNECTED)
				query_probe(u);
			util_fmt(why, cap, "upstream %s: %s", u->label, u->why);
			return 0;
		}
	}
	util_fmt(why, cap, "no upstream verified yet: connecting to %s",
	    g.upstreams[0].label);
	if (g.upstreams[0].state == UPSTREAM_DISCONNECTED)
		query_probe(&g.upstreams[0]);
	return 0;
}

/*
 * Parses an HTTP request in buf[0..len) (RFC 9112 3: a request line, then
 * header lines, then an empty line). Returns 0 when more is needed, -1 if
 * it can never be a request we take, else 1 with the target in
 * [*path, *path + *plen) and *get set for a GET.
 */
static int
observe_parse_http(const char *buf, size_t len, const char **path,
    size_t *plen, int *get)
{
	size_t i, sp1, sp2;

	for (i = 0; i + 3 < len; i++)
		if (memcmp(buf + i, "\r\n\r\n", 4) == 0)
			break;
	if (i + 3 >= len)
		return len >= HTTP_IN_BYTES ? -1 : 0;
	for (sp1 = 0; sp1 < i && buf[sp1] != ' '; sp1++)
		;
	for (sp2 = sp1 + 1; sp2 < i && buf[sp2] != ' '; sp2++)
		;
	if (sp1 == 0 || sp2 >= i || sp2 == sp1 + 1 || i - sp2 < 9 ||
	    memcmp(buf + sp2 + 1, "HTTP/1.", 7) != 0 || buf[sp2 + 9] != '\r')
		return -1;
	*get = sp1 == 3 && memcmp(buf, "GET", 3) == 0;
	*path = buf + sp1 + 1;
	*plen = sp2 - sp1 - 1;
	return 1;
}

/* Writes a whole response (status line, headers, body) into c's buffer. */
static void
observe_respond(struct http_conn *c, int status, const char *type,
    const char *body, size_t blen)
{
	const char *reason = status == 200 ? "OK" : status == 404 ?
	    "Not Found" : status == 405 ? "Method Not Allowed" : status ==
	    503 ? "Service Unavailable" : "Bad Request";
	size_t o = util_fmt((char *)c->out, HTTP_OUT_BYTES, "HTTP/1.1 %d %s\r\n"
	    "Content-Type: %s\r\nContent-Length: %zu\r\nCache-Control: "
	    "no-store\r\nConnection: close\r\n%s\r\n", status, reason, type,
	    blen, status == 405 ? "Allow: GET\r\n" : "");

	blen = blen < HTTP_OUT_BYTES - o ? blen : HTTP_OUT_BYTES - o;
	memcpy(c->out + o, body, blen);
	c->out_len = o + blen;
	c->out_off = 0;
}

/* Answers the request in c's buffer: /health, /ready, /metrics. */
static void
observe_serve(struct http_conn *c, const char *path, size_t plen, int get)
{
	static char body[HTTP_OUT_BYTES];
	size_t n;

#define HTTP_IS(p) (plen == sizeof p - 1 && memcmp(path, p, plen) == 0)
	if (!get) {
		observe_respond(c, 405, "text/plain", "GET only\n", 9);
	} else if (HTTP_IS("/health")) {
		observe_respond(c, 200, "text/plain", "ok\n", 3);
	} else if (HTTP_IS("/ready")) {
		if (observe_ready(body, sizeof body - 1)) {
			observe_respond(c, 200, "text/plain", "ready\n", 6);
		} else {
			n = strlen(body);
			body[n++] = '\n';
			observe_respond(c, 503, "text/plain", body, n);
		}
	} else if (HTTP_IS("/metrics")) {
		n = observe_metrics(body, sizeof body);
		observe_respond(c, 200, "text/plain; version=0.0.4; "
		    "charset=utf-8", body, n);
	} else {
		observe_respond(c, 404, "text/plain", "/health, /ready or "
		    "/metrics\n", 28);
	}
#undef HTTP_IS
}

static void
observe_close(struct http_conn *c)
{
	if (c->fd >= 0)
		close(c->fd);
	c->fd = -1;
}

static void
observe_accept(void)
{
	size_t i;
	int fd = accept4(g.http_fd, NULL, NULL, SOCK_NONBLOCK | SOCK_CLOEXEC);

	if (fd < 0)
		return;
	for (i = 0; i < MAX_HTTP_CLIENTS; i++) {
		struct http_conn *c = &g.http[i];

		if (c->fd < 0 && fd < FD_SETSIZE) {
			c->fd = fd;
			c->since_ms = g.now_ms;
			c->in_len = c->out_len = c->out_off = 0;
			return;
		}
	}
	close(fd);		/* all busy (a few probes at a time) */
}

static void
observe_on_readable(struct http_conn *c)
{
	const char *path;
	size_t plen;
	int get, r;
	ssize_t n = recv(c->fd, c->in + c->in_len, HTTP_IN_BYTES - c->in_len,
	    0);

	if (n <= 0) {
		if (n == 0 || (errno != EAGAIN && errno != EINTR))
			observe_close(c);
		return;
	}
	c->in_len += (size_t)n;
	r = observe_parse_http((const char *)c->in, c->in_len, &path, &plen,
	    &get);
	if (r < 0)
		observe_respond(c, 400, "text/plain", "bad request\n", 12);
	else if (r > 0)
		observe_serve(c, path, plen, get);
}

static void
observe_on_writable(struct http_conn *c)
{
	ssize_t n = send(c->fd, c->out + c->out_off, c->out_len - c->out_off,
	    MSG_NOSIGNAL);

	if (n < 0 && (errno == EAGAIN || errno == EINTR))
		return;
	if (n <= 0 || (c->out_off += (size_t)n) == c->out_len)
		observe_close(c);	/* sent (Connection: close), or gone */
}

/* Adds the HTTP sockets to the fd sets; closes connections older than
 * HTTP_TIMEOUT_MS (a request must come whole, and be read, in time). */
static void
observe_want(fd_set *rd, fd_set *wr, int *maxfd)
{
	size_t i;

	if (g.http_fd < 0)
		return;
	FD_SET(g.http_fd, rd);
	*maxfd = g.http_fd > *maxfd ? g.http_fd : *maxfd;
	for (i = 0; i < MAX_HTTP_CLIENTS; i++) {
		struct http_conn *c = &g.http[i];

		if (c->fd >= 0 && g.now_ms - c->since_ms >= HTTP_TIMEOUT_MS)
			observe_close(c);
		if (c->fd < 0)
			continue;
		FD_SET(c->fd, c->out_len > 0 ? wr : rd);
		*maxfd = c->fd > *maxfd ? c->fd : *maxfd;
	}
}

static void
observe_dispatch(fd_set *rd, fd_set *wr)
{
	size_t i;

	if (g.http_fd < 0)
		return;
	for (i = 0; i < MAX_HTTP_CLIENTS; i++) {
		struct http_conn *c = &g.http[i];
		int fd = c->fd;

		if (fd >= 0 && c->out_len > 0 && FD_ISSET(fd, wr))
			observe_on_writable(c);
		else if (fd >= 0 && c->out_len == 0 && FD_ISSET(fd, rd))
			observe_on_readable(c);
	}
	if (FD_ISSET(g.http_fd, rd))
		observe_accept();
}

/* Tells the service manager how many upstreams work (STATUS=), when that
 * number changes. */
static void
observe_status(void)
{
	static size_t last = (size_t)-1;
	size_t i, up = 0;

	for (i = 0; i < g.n_upstreams; i++)
		up += observe_upstream_up(&g.upstreams[i]);
	if (up != last)
		util_notify("STATUS=%zu of %zu upstream%s up%s", up,
		    g.n_upstreams, g.n_upstreams == 1 ? "" : "s",
		    g.draining ? "; draining" : "");
	last = up;
}

/* The SIGUSR1 line: the same counters as /metrics, on one line. */
static void
observe_log_stats(void)
{
	char line[4096];
	size_t i, o;

	o = util_fmt(line, sizeof line, "dotproxy: stats: queries udp=%lu "
	    "tcp=%lu; cache hits=%lu misses=%lu stale=%lu entries=%zu "
	    "evictions=%lu prefetches=%lu stale_timer=%lu; servfail=%lu "
	    "refused=%lu dropped=%lu local=%lu coalesced=%lu hedged=%lu "
	    "hedges_capped=%lu; in_flight=%zu tcp_clients=%zu",
	    g.stats.queries_udp,
	    g.stats.queries_tcp, g.cache.hits, g.cache.misses, g.cache.stale,
	    g.cache.n_blocks ? g.cache.n_entries - cache_free_entries() : 0,
	    g.cache.evictions, g.stats.prefetched, g.stats.stale_timer,
	    g.stats.answers[DNS_RCODE_SERVFAIL], g.stats.refused,
	    g.stats.dropped, g.stats.local, g.stats.coalesced, g.stats.hedged,
	    g.stats.hedges_capped,
	    MAX_PENDING - g.n_free, observe_tcp_clients());
	for (i = 0; i < g.n_upstreams && o < sizeof line; i++) {
		struct upstream *u = &g.upstreams[i];

		o += util_fmt(line + o, sizeof line - o, "; upstream "
		    "%s %s queries=%lu connects=%lu resumed=%lu failures=%lu",
		    u->label, upstream_state_names[u->state], u->n_queries,
		    u->n_connects, u->n_resumed, u->n_failures);
	}
	for (i = 0; i < g.n_zones && o < sizeof line; i++) {
		struct zone *z = &g.zones[i];

		o += util_fmt(line + o, sizeof line - o, "; zone %s "
		    "queries=%lu tcp=%lu failures=%lu", z->label, z->n_queries,
		    z->n_tcp, z->n_failures);
	}
	/* Asked for: written whatever --quiet says, with info's prefix. */
	log_line(LOG_INFO, line, sizeof line, o < sizeof line ? o :
	    sizeof line - 1);
}

/* ==== loop: fd sets, select(), dispatch, timers ======================= */

/* --reuseport beside another instance (start_steer_all): our own
 * upstreams are probed at once (no client query comes to connect them;
 * each again after its back-off), and once one has answered, the
 * queries come here (a handshake alone is no answer). */
static void
loop_steer_when_ready(void)
{
	size_t i;

	for (i = 0; i < g.n_upstreams; i++) {
		struct upstream *u = &g.upstreams[i];

		if (u->answered && !u->failing) {
			g.steer_wait = 0;
			start_steer_all(1);
			log_info("upstream %s answers: taking the queries from "
			    "the other instance", u->label);
			return;
		}
	}
	for (i = 0; i < g.n_upstreams; i++)
		if (g.upstreams[i].state == UPSTREAM_DISCONNECTED)
			query_probe(&g.upstreams[i]);
}

/* Expires queries (SERVFAIL at the query timeout), then the timers of
 * upstreams and clients. */
static void
loop_expire(void)
{
	size_t i;

	while (g.age_head >= 0 &&
	    g.pending[g.age_head].deadline_ms <= g.now_ms) {
		log_debug("query timed out: SERVFAIL");
		query_expire(g.age_head);
	}
	while (g.stale.head >= 0 && g.pending[g.stale.head].from.at_ms +
	    g.stale_timeout_ms <= g.now_ms)
		query_stale_timer(g.stale.head);
	for (i = 0; i < g.n_upstreams; i++)
		upstream_timers(&g.upstreams[i]);
	if (g.steer_wait)
		loop_steer_when_ready();
	for (i = 0; i < MAX_TCP_CLIENTS; i++)
		client_timers(&g.clients[i]);
}

/* Milliseconds until the nearest deadline, at most MAX_SELECT_MS. */
static int64_t
loop_timeout_ms(void)
{
	int64_t next = g.now_ms + MAX_SELECT_MS;
	size_t i;

	if (g.age_head >= 0 && g.pending[g.age_head].deadline_ms < next)
		next = g.pending[g.age_head].deadline_ms;
	if (g.stale.head >= 0 && g.pending[g.stale.head].from.at_ms +
	    g.stale_timeout_ms < next)
		next = g.pending[g.stale.head].from.at_ms + g.stale_timeout_ms;
	for (i = 0; i < g.n_upstreams; i++) {
		int64_t d = upstream_next_deadline(&g.upstreams[i]);

		if (d < next)
			next = d;
	}
	for (i = 0; i < MAX_TCP_CLIENTS; i++) {
		int64_t d = client_next_deadline(&g.clients[i]);

		if (d < next)
			next = d;
	}
	for (i = 0; i < g.n_listeners; i++)
		if (g.listeners[i].accept_pause_ms > g.now_ms &&
		    g.listeners[i].accept_pause_ms < next)
			next = g.listeners[i].accept_pause_ms;
	if (g_log.watchdog_ms != 0 &&
	    g_log.watchdog_last_ms + g_log.watchdog_ms < next)
		next = g_log.watchdog_last_ms + g_log.watchdog_ms;
	if (g.lame_duck && g.lame_duck_end_ms < next)
		next = g.lame_duck_end_ms;
	return next > g.now_ms ? next - g.now_ms : 0;
}

static void
loop_dispatch(fd_set *rd, fd_set *wr)
{
	size_t i;

	/* Upstreams first: their answers free slots for new queries. */
	for (i = 0; i < g.n_upstreams; i++) {
		struct upstream *u = &g.upstreams[i];
		unsigned long conn = u->n_connects;	/* same connection? */
		int fd = u->fd;

		if (fd >= 0 && FD_ISSET(fd, wr))
			upstream_on_writable(u);
		if (fd >= 0 && u->fd == fd && u->n_connects == conn &&
		    FD_ISSET(fd, rd))
			upstream_on_readable(u);
	}
	for (i = 0; i < MAX_TCP_CLIENTS; i++) {
		struct client_conn *c = &g.clients[i];
		int fd = c->fd;
		unsigned gen = c->gen;

		if (c->state == CLIENT_FREE)
			continue;
		if (FD_ISSET(fd, wr))
			client_on_writable(c);
		if (c->state != CLIENT_FREE && c->gen == gen &&
		    FD_ISSET(fd, rd))
			client_on_readable(c);
	}
	zone_dispatch(rd, wr);
	observe_dispatch(rd, wr);	/* /health too while draining */
	if (g.draining)
		return;		/* listeners are not watched any more */
	for (i = 0; i < g.n_listeners; i++)
		if (g.listeners[i].udp_fd >= 0 &&
		    FD_ISSET(g.listeners[i].udp_fd, rd))
			udp_on_readable(i);
	/* New TCP clients last: existing work goes first. */
	for (i = 0; i < g.n_listeners; i++)
		if (g.listeners[i].tcp_fd >= 0 &&
		    FD_ISSET(g.listeners[i].tcp_fd, rd))
			client_accept(&g.listeners[i]);
}

/*
 * SIGTERM/SIGINT with --lame-duck: for that long, answer as usual while
 * /ready says 503 (a load balancer or kubelet takes the instance out),
 * and steer new datagrams and connections to another --reuseport
 * instance on the same addresses, if there is one (start_steer_all,
 * start_steer_probe), and close TCP clients once answered and idle
 * (client_stop_close), so that nothing is left in this one's queues when
 * it closes them. A second signal ends it early.
 */
static void
loop_begin_lame_duck(void)
{
	g.lame_duck = 1;
	g.lame_duck_end_ms = g.now_ms + g.lame_duck_ms;
	util_notify("STOPPING=1\nSTATUS=lame duck: answering for %u ms",
	    g.lame_duck_ms);
	g.steer_wait = 0;
	if (g.reuseport) {
		start_steer_all(0);
		start_steer_probe();
	}
	log_info("stopping on signal %d: answering for %u ms more (lame "
	    "duck), then draining", (int)g_stop_signal, g.lame_duck_ms);
}

/*
 * SIGTERM/SIGINT (after the lame duck): stop taking queries (TCP
 * listeners closed, UDP and TCP clients no longer read) but keep the
 * sockets that answers go out of.
 */
static void
loop_begin_drain(void)
{
	size_t i, n = MAX_PENDING - g.n_free;

	g.draining = 1;
	g.lame_duck = 0;
	g.drain_signals = g_stop_count;
	g.drain_deadline_ms = g.now_ms + g.drain_ms;
	util_notify("STOPPING=1\nSTATUS=draining: %zu quer%s in flight", n,
	    n == 1 ? "y" : "ies");
	for (i = 0; i < g.n_listeners; i++) {
		if (g.listeners[i].tcp_fd >= 0)
			close(g.listeners[i].tcp_fd);
		g.listeners[i].tcp_fd = -1;
	}
	log_info("stopping on signal %d: %zu quer%s in flight, waiting up to "
	    "%u ms", (int)g_stop_signal, n, n == 1 ? "y" : "ies", g.drain_ms);
}

/*
 * Returns 1 when a drain is over: every query answered, every answer
 * written, every upstream closed with close_notify. At the deadline (or a
 * second signal) what is left gets SERVFAIL and the drain is over.
 */
static int
loop_drain_done(void)
{
	size_t i;
	int busy = 0;

	if (g_stop_count > g.drain_signals || g.now_ms >= g.drain_deadline_ms) {
		while (g.age_head >= 0)
			query_expire(g.age_head);
		udp_flush();
		return 1;
	}
	if (g.age_head >= 0)
		return 0;
	for (i = 0; i < MAX_TCP_CLIENTS; i++)
		if (g.clients[i].state != CLIENT_FREE &&
		    g.clients[i].out_len > g.clients[i].out_off)
			return 0;
	for (i = 0; i < g.n_upstreams; i++) {
		struct upstream *u = &g.upstreams[i];

		if (u->state == UPSTREAM_READY) {
			br_ssl_engine_close(&u->sc.eng);
			upstream_set_state(u, UPSTREAM_CLOSING);
			upstream_pump(u);
		}
		if (u->state == UPSTREAM_CLOSING ||
		    u->state == UPSTREAM_CONNECTING ||
		    u->state == UPSTREAM_HANDSHAKING)
			busy = 1;
	}
	return !busy;
}


/* Runs until SIGTERM or SIGINT, and the drain after it. */
static void
loop_run(void)
{
	for (;;) {
		fd_set rd, wr;
		struct timeval tv;
		int64_t ms;
		int maxfd = -1, n;
		size_t i;

		g.now_ms = time_now_ms();
		if (g_stop_count > 0 && !g.draining && !g.lame_duck &&
		    g.lame_duck_ms != 0)
			loop_begin_lame_duck();
		else if (g_stop_count > 0 && !g.draining && (!g.lame_duck ||
		    g_stop_count > 1 || g.now_ms >= g.lame_duck_end_ms))
			loop_begin_drain();
		if (g_stats_wanted) {
			g_stats_wanted = 0;
			observe_log_stats();
		}
		if (g_log.watchdog_ms != 0 &&
		    g.now_ms - g_log.watchdog_last_ms >= g_log.watchdog_ms) {
			util_notify("WATCHDOG=1");	/* the loop turns */
			g_log.watchdog_last_ms = g.now_ms;
		}
		if (g_retry_wanted) {
			g_retry_wanted = 0;
			log_info("SIGHUP: trying every upstream again");
			for (i = 0; i < g.n_upstreams; i++)
				upstream_retry_now(&g.upstreams[i]);
		}
		loop_expire();
		for (i = 0; i < g.n_upstreams; i++) {
			struct upstream *u = &g.upstreams[i];

			if (u->state == UPSTREAM_HANDSHAKING ||
			    u->state == UPSTREAM_READY ||
			    u->state == UPSTREAM_CLOSING)
				upstream_feed(u);	/* and pump */
		}
		if (g.draining && loop_drain_done())
			break;
		for (i = 0; i < MAX_TCP_CLIENTS && !g.draining; i++) {
			struct client_conn *c = &g.clients[i];

			if (c->state != CLIENT_FREE && client_has_frame(c) &&
			    c->inflight < MAX_INFLIGHT_PER_CLIENT)
				client_take_frames(c);	/* held back */
		}
		FD_ZERO(&rd);
		FD_ZERO(&wr);
		for (i = 0; i < g.n_listeners && !g.draining; i++) {
			struct listener *l = &g.listeners[i];

			if (l->udp_fd >= 0)
				FD_SET(l->udp_fd, &rd);
			if (l->udp_fd > maxfd)
				maxfd = l->udp_fd;
			if (l->accept_pause_ms > g.now_ms || l->tcp_fd < 0)
				continue;
			FD_SET(l->tcp_fd, &rd);
			if (l->tcp_fd > maxfd)
				maxfd = l->tcp_fd;
		}
		for (i = 0; i < g.n_upstreams; i++)
			upstream_want(&g.upstreams[i], &rd, &wr, &maxfd);
		for (i = 0; i < MAX_TCP_CLIENTS; i++)
			client_want(&g.clients[i], &rd, &wr, &maxfd);
		zone_want(&rd, &wr, &maxfd);
		observe_want(&rd, &wr, &maxfd);
		if (udp_tx.n > 0)
			udp_flush();	/* this pass's answers, in one call */
		ms = loop_timeout_ms();
		tv.tv_sec = (time_t)(ms / 1000);
		tv.tv_usec = (suseconds_t)(ms % 1000 * 1000);
		n = select(maxfd + 1, &rd, &wr, NULL, &tv);
		if (n < 0) {
			if (errno == EINTR)
				continue;
			die("select failed: %s", strerror(errno));
		}
		g.now_ms = time_now_ms();
		if (n > 0)
			loop_dispatch(&rd, &wr);
	}
}

/* ==== config: specs and the command line ============================ */
/*
 * Start-up only: every error here is fatal and names the bad value. The
 * spec parsers are pure functions (the unit tests call them); one table,
 * config_options, drives the command line, the range checks and --help.
 */

/* Public resolvers whose authentication name is known (their
 * certificates carry it as a dNSName; BearSSL does not match IP SANs). */
static const struct {
	const char *ip;
	const char *name;
} config_known[] = {
	{ "1.1.1.1", "cloudflare-dns.com" },
	{ "1.0.0.1", "cloudflare-dns.com" },
	{ "2606:4700:4700::1111", "cloudflare-dns.com" },
	{ "2606:4700:4700::1001", "cloudflare-dns.com" },
	{ "1.1.1.2", "security.cloudflare-dns.com" },
	{ "1.0.0.2", "security.cloudflare-dns.com" },
	{ "1.1.1.3", "family.cloudflare-dns.com" },
	{ "1.0.0.3", "family.cloudflare-dns.com" },
	{ "8.8.8.8", "dns.google" },
	{ "8.8.4.4", "dns.google" },
	{ "2001:4860:4860::8888", "dns.google" },
	{ "2001:4860:4860::8844", "dns.google" },
	{ "9.9.9.9", "dns.quad9.net" },
	{ "149.112.112.112", "dns.quad9.net" },
	{ "2620:fe::fe", "dns.quad9.net" },
	{ "2620:fe::9", "dns.quad9.net" },
	{ "9.9.9.10", "dns10.quad9.net" },
	{ "149.112.112.10", "dns10.quad9.net" },
	{ "9.9.9.11", "dns11.quad9.net" },
	{ "149.112.112.11", "dns11.quad9.net" },
	{ "94.140.14.14", "dns.adguard-dns.com" },
	{ "94.140.15.15", "dns.adguard-dns.com" },
	{ "2a10:50c0::ad1:ff", "dns.adguard-dns.com" },
	{ "2a10:50c0::ad2:ff", "dns.adguard-dns.com" },
	{ "94.140.14.140", "unfiltered.adguard-dns.com" },
	{ "94.140.14.141", "unfiltered.adguard-dns.com" },
	{ "194.242.2.2", "dns.mullvad.net" },
	{ "2a07:e340::2", "dns.mullvad.net" },
	{ "45.90.28.0", "dns.nextdns.io" },
	{ "45.90.30.0", "dns.nextdns.io" },
	{ "185.228.168.168", "family-filter-dns.cleanbrowsing.org" },
	{ "185.228.169.168", "family-filter-dns.cleanbrowsing.org" },
	{ "208.67.222.222", "dns.opendns.com" },
	{ "208.67.220.220", "dns.opendns.com" },
};

/* Cloudflare, as the Python proxy this replaces did. */
static const char *const config_default_upstreams[] = {
	"1.1.1.1", "1.0.0.1",
};

/* Parses a decimal port 1..65535. Returns 0 or -1. */
static int
config_parse_port(const char *s, uint16_t *port)
{
	unsigned long v;

	if (util_parse_uint(s, 1, 65535, &v) < 0)
		return -1;
	*port = (uint16_t)v;
	return 0;
}

/* Parses an IPv4 or IPv6 literal. Returns 0 or -1. */
static int
config_parse_ip(const char *s, uint16_t port, union sockaddr_u *a,
    socklen_t *len)
{
	memset(a, 0, sizeof *a);
	if (inet_pton(AF_INET, s, &a->sin.sin_addr) == 1) {
		a->sin.sin_family = AF_INET;
		a->sin.sin_port = htons(port);
		*len = sizeof a->sin;
		return 0;
	}
	if (inet_pton(AF_INET6, s, &a->sin6.sin6_addr) == 1) {
		a->sin6.sin6_family = AF_INET6;
		a->sin6.sin6_port = htons(port);
		*len = sizeof a->sin6;
		return 0;
	}
	return -1;
}

/*
 * Splits "IP", "IP@PORT", "IPv4:PORT", "[IPv6]", "[IPv6]:PORT" or
 * "[IPv6]@PORT" and parses it. A bare IPv6 address has several colons and
 * takes no ":PORT" (use @PORT or brackets). Returns 0 or -1.
 */
static int
config_parse_addr(const char *spec, uint16_t defport, union sockaddr_u *a,
    socklen_t *len)
{
	char host[INET6_ADDRSTRLEN + 1];
	const char *port_s = NULL, *h = spec;
	const char *colon = strchr(spec, ':');
	const char *at = strchr(spec, '@');
	uint16_t port = defport;
	size_t hl;

	if (spec[0] == '[') {
		const char *rb = strchr(spec, ']');

		if (rb == NULL)
			return -1;
		h = spec + 1;
		hl = (size_t)(rb - h);
		if (rb[1] == ':' || rb[1] == '@')
			port_s = rb + 2;
		else if (rb[1] != '\0')
			return -1;
	} else if (at != NULL) {
		hl = (size_t)(at - spec);
		port_s = at + 1;
	} else if (colon != NULL && strchr(colon + 1, ':') == NULL) {
		hl = (size_t)(colon - spec);
		port_s = colon + 1;
	} else {
		hl = strlen(spec);
	}
	if (hl == 0 || hl >= sizeof host)
		return -1;
	memcpy(host, h, hl);
	host[hl] = '\0';
	if (port_s != NULL && config_parse_port(port_s, &port) < 0)
		return -1;
	return config_parse_ip(host, port, a, len);
}

/* Returns 1 if s is a host name usable for SNI and name checks. */
static int
config_valid_hostname(const char *s)
{
	size_t label = 0, total = 0;

	if (*s == '\0' || *s == '.')
		return 0;
	for (; *s; s++, total++) {
		char ch = *s;

		if (ch == '.') {
			if (label == 0)
				return 0;
			label = 0;
			continue;
		}
		if (!((ch >= 'a' && ch <= 'z') || (ch >= 'A' && ch <= 'Z') ||
		    (ch >= '0' && ch <= '9') || ch == '-' || ch == '_'))
			return 0;
		if (++label > DNS_LABEL_MAX_BYTES)
			return 0;
	}
	return label > 0 && total <= AUTHNAME_MAX_BYTES;
}

/* Returns the known authentication name of a public resolver, or NULL. */
static const char *
config_known_name(const union sockaddr_u *a)
{
	size_t i;

	for (i = 0; i < sizeof config_known / sizeof config_known[0]; i++) {
		union sockaddr_u k;
		socklen_t len;

		if (config_parse_ip(config_known[i].ip, 0, &k, &len) < 0 ||
		    k.sa.sa_family != a->sa.sa_family)
			continue;
		if (k.sa.sa_family == AF_INET ? memcmp(&k.sin.sin_addr,
		    &a->sin.sin_addr, 4) == 0 : memcmp(&k.sin6.sin6_addr,
		    &a->sin6.sin6_addr, 16) == 0)
			return config_known[i].name;
	}
	return NULL;
}

/*
 * Parses an upstream spec, IP[@PORT][#AUTHNAME] (unbound's forward-addr
 * syntax) with optional pins, ^sha256/BASE64 (repeatable; one must match
 * the server's key, as well as the chain) and ^pin-only (the pins alone
 * decide: a server with a self-signed certificate), into u. Returns NULL,
 * or what is wrong with it.
 */
static const char *
config_parse_upstream(const char *spec, struct upstream *u)
{
	char buf[INET6_ADDRSTRLEN + 8 + AUTHNAME_MAX_BYTES + 2 +
	    MAX_PINS * 52 + 16];
	char addr[INET6_ADDRSTRLEN + 8];
	const char *name = NULL;
	char *hash, *pin;

	if (strlen(spec) >= sizeof buf)
		return "too long";
	strcpy(buf, spec);
	u->n_pins = 0;
	u->pin_only = 0;
	pin = strchr(buf, '^');
	while (pin != NULL) {
		char *next = strchr(pin + 1, '^');

		*pin++ = '\0';
		if (next != NULL)
			*next = '\0';
		if (strcmp(pin, "pin-only") == 0)
			u->pin_only = 1;
		else if (u->n_pins == MAX_PINS)
			return "too many pins";
		else if (trust_parse_pin(pin, u->pins[u->n_pins++]) < 0)
			return "bad pin after '^' (want sha256/BASE64 of the "
			    "key's SubjectPublicKeyInfo, 44 characters)";
		pin = next;
	}
	if (u->pin_only && u->n_pins == 0)
		return "pin-only needs a ^sha256/... pin";
	hash = strchr(buf, '#');
	if (hash != NULL) {
		*hash = '\0';
		name = hash + 1;
		if (!config_valid_hostname(name))
			return "bad authentication name after '#'";
	}
	if (strchr(buf, '@') == NULL && strchr(buf, ']') == NULL &&
	    strchr(buf, ':') != NULL && strchr(strchr(buf, ':') + 1, ':') ==
	    NULL)
		return "give the port as IP@PORT";
	if (config_parse_addr(buf, DOT_PORT, &u->addr, &u->addrlen) < 0)
		return strchr(buf, '@') != NULL ? "bad IP address or port" :
		    "not an IP address";
	if (name == NULL)
		name = config_known_name(&u->addr);
	if (name == NULL && !u->pin_only)
		return "no authentication name for this resolver: add "
		    "#AUTHNAME, the name in its certificate (e.g. "
		    "192.0.2.1#dns.example.net)";
	strcpy(u->name, name ? name : "");
	util_format_addr(&u->addr, addr, sizeof addr);
	util_fmt(u->label, sizeof u->label, "%s (%s%s)", addr,
	    name ? u->name : "no name", u->pin_only ? ", pinned key only" :
	    u->n_pins ? ", pinned" : "");
	return NULL;
}

/*
 * Converts a domain in text form ("cluster.local", "lan.", ".") to wire
 * form in lower case. Returns its length, or 0 if it is not a valid name.
 */
static size_t
config_domain_to_wire(const char *s, unsigned char *out)
{
	size_t o = 0;

	if (strcmp(s, ".") == 0) {
		out[0] = 0;
		return 1;
	}
	while (*s != '\0') {
		const char *dot = strchr(s, '.');
		size_t i, l = dot ? (size_t)(dot - s) : strlen(s);

		if (l == 0 || l > DNS_LABEL_MAX_BYTES ||
		    o + 1 + l + 1 > DNS_NAME_MAX_BYTES)
			return 0;
		out[o++] = (unsigned char)l;
		for (i = 0; i < l; i++) {
			unsigned char c = (unsigned char)s[i];

			if (c <= ' ' || c >= 0x7F || c == '\\')
				return 0;
			out[o++] = (unsigned char)(c >= 'A' && c <= 'Z' ?
			    c + 'a' - 'A' : c);
		}
		s += l;
		if (*s == '.')
			s++;		/* a trailing dot is fine */
	}
	if (o == 0)
		return 0;
	out[o++] = 0;
	return o;
}

/*
 * Parses DOMAIN=IP[@PORT] (--forward-zone) into z. Returns NULL, or what
 * is wrong with it.
 */
static const char *
config_parse_zone(const char *spec, struct zone *z)
{
	char dom[DNS_NAME_MAX_BYTES * 2], srv[INET6_ADDRSTRLEN + 16];
	const char *eq = strchr(spec, '='), *comma;
	char addr[INET6_ADDRSTRLEN + 8];

	if (eq == NULL)
		return "want DOMAIN=IP[@PORT][,tcp]";
	if ((size_t)(eq - spec) >= sizeof dom)
		return "domain too long";
	memcpy(dom, spec, (size_t)(eq - spec));
	dom[eq - spec] = '\0';
	z->name_len = config_domain_to_wire(dom, z->name);
	if (z->name_len == 0)
		return "bad domain name";
	comma = strchr(eq + 1, ',');
	z->tcp_only = 0;
	if (comma != NULL && strcmp(comma, ",tcp") != 0)
		return "unknown flag after ',' (want ,tcp)";
	if ((size_t)((comma ? comma : eq + 1 + strlen(eq + 1)) - (eq + 1)) >=
	    sizeof srv)
		return "bad server address (want IP, IP@PORT or [IPv6]:PORT)";
	util_fmt(srv, sizeof srv, "%s", eq + 1);
	if (comma != NULL) {
		srv[comma - (eq + 1)] = '\0';
		z->tcp_only = 1;
	}
	if (config_parse_addr(srv, DEFAULT_PORT, &z->addr, &z->addrlen) < 0)
		return "bad server address (want IP, IP@PORT or [IPv6]:PORT)";
	util_format_addr(&z->addr, addr, sizeof addr);
	util_fmt(z->label, sizeof z->label, "%s (%s%s)", dom, addr,
	    z->tcp_only ? ", TCP" : "");
	util_fmt(z->domain, sizeof z->domain, "%s", dom);
	return NULL;
}

/* Parses a byte count with an optional k or m suffix (--cache-size). */
static int
config_parse_size(const char *s, size_t *out)
{
	char num[32];
	size_t n = strlen(s), mult = 1;
	unsigned long v;

	if (n == 0 || n >= sizeof num)
		return -1;
	memcpy(num, s, n + 1);
	if (num[n - 1] == 'k' || num[n - 1] == 'K')
		mult = 1024;
	else if (num[n - 1] == 'm' || num[n - 1] == 'M')
		mult = 1024 * 1024;
	if (mult != 1)
		num[n - 1] = '\0';
	if (util_parse_uint(num, 0, 1024UL * 1024 * 1024 / mult, &v) < 0)
		return -1;
	*out = v * mult;
	return 0;
}

/* Parses UID[:GID] (numbers: a scratch image has no /etc/passwd). */
static int
config_parse_user(const char *s, long *uid, long *gid)
{
	char buf[32];
	char *colon;
	unsigned long v;

	if (strlen(s) >= sizeof buf)
		return -1;
	strcpy(buf, s);
	colon = strchr(buf, ':');
	if (colon != NULL)
		*colon = '\0';
	if (util_parse_uint(buf, 0, 0x7FFFFFFF, &v) < 0)
		return -1;
	*uid = (long)v;
	if (colon == NULL) {
		*gid = *uid;
		return 0;
	}
	if (util_parse_uint(colon + 1, 0, 0x7FFFFFFF, &v) < 0)
		return -1;
	*gid = (long)v;
	return 0;
}

/* Start-up choices that live only until the loop starts. */
static struct start_opts {
	const char *listen_specs[MAX_LISTENERS];
	size_t n_listen;
	const char *ca_file, *chroot_dir;
	const char *http_spec;		/* --http, or NULL */
	const char *probe_spec;		/* --probe: its address, or NULL */
	int probe;			/* --probe given */
	int syslog;			/* --syslog */
	size_t cache_bytes;
	unsigned cache_min_ttl, cache_max_ttl, serve_stale;
	long uid, gid;			/* -1: keep */
} config;

/*
 * The command line: one table drives parsing, the range checks and
 * --help (dnsmasq's opts[]/usage[] are the model). A number goes straight
 * into its target; any other value goes through config_take(). A new
 * option is one line here (and one in config_take if it is not a plain
 * number), and one row in the README's table (tests/test_docs.py checks
 * that the two agree).
 */
enum config_kind {
	CONFIG_FLAG,			/* no value */
	CONFIG_NUMBER,			/* unsigned, in [min, max] */
	CONFIG_SIZE,			/* bytes, k or m suffix, in [min, max] */
	CONFIG_VALUE,			/* text for config_take() */
	CONFIG_OPTIONAL,		/* a value only with = or when the next
					 * argument is not an option */
};

struct config_option {
	char shortname;			/* 0: the long name only */
	uint8_t kind;			/* enum config_kind */
	uint8_t zero_off;		/* 0 is allowed too: "off" */
	const char *name;		/* the long name, without "--" */
	const char *arg;		/* the value's name in --help */
	void *target;			/* unsigned (NUMBER), size_t (SIZE) */
	unsigned long min, max;
	const char *unit;		/* of a number, for messages */
	const char *help;		/* --help adds default and range */
};

static const struct config_option config_options[] = {
	{ 'l', CONFIG_VALUE, 0, "listen", "ADDR", NULL, 0, 0, NULL,
	    "listen on ADDR, UDP and TCP (repeatable): IP, IP@PORT, "
	    "IPv4:PORT or [IPv6]:PORT; default 0.0.0.0@53 and ::@53" },
	{ 'u', CONFIG_VALUE, 0, "upstream", "SPEC", NULL, 0, 0, NULL,
	    "forward to SPEC (repeatable, in order of preference): "
	    "IP[@PORT][#AUTHNAME][^PIN]..., PORT 853 by default, AUTHNAME "
	    "the name its certificate must carry (built in for the resolvers "
	    "below), PIN sha256/BASE64 of its key, or pin-only to trust the "
	    "pins alone; default 1.1.1.1 and 1.0.0.1 (or DOT_SERVER)" },
	{ 'c', CONFIG_VALUE, 0, "ca-file", "FILE", NULL, 0, 0, NULL,
	    "trust the PEM roots in FILE instead of the compiled-in ones" },
	{ 't', CONFIG_NUMBER, 0, "timeout", "MS", &g.query_timeout_ms,
	    100, 60000, "milliseconds",
	    "answer SERVFAIL to a query not answered within MS" },
	{ 0, CONFIG_NUMBER, 0, "idle-timeout", "MS", &g.idle_timeout_ms,
	    100, 3600000, "milliseconds",
	    "close an upstream connection idle for MS" },
	{ 0, CONFIG_NUMBER, 0, "max-backoff", "MS", &g.max_backoff_ms,
	    BACKOFF_MIN_MS, 3600000, "milliseconds",
	    "wait at most MS before trying a failed upstream again" },
	{ 0, CONFIG_NUMBER, 1, "padding", "BLOCK", &g.pad_block,
	    16, PAD_BLOCK_MAX_BYTES, "bytes",
	    "pad queries to a multiple of BLOCK (RFC 8467)" },
	{ 0, CONFIG_SIZE, 1, "cache-size", "BYTES", &config.cache_bytes,
	    4096, 1024UL * 1024 * 1024, "bytes",
	    "memory for the answer cache, with a k or m suffix" },
	{ 0, CONFIG_NUMBER, 0, "cache-min-ttl", "S", &config.cache_min_ttl,
	    0, 86400, "seconds", "keep answers in the cache at least S" },
	{ 0, CONFIG_NUMBER, 0, "cache-max-ttl", "S", &config.cache_max_ttl,
	    1, 7 * 86400, "seconds", "keep answers in the cache at most S" },
	{ 0, CONFIG_NUMBER, 0, "serve-stale", "S", &config.serve_stale,
	    0, 7 * 86400, "seconds",
	    "when no upstream answers, serve answers expired less than S "
	    "ago, with TTL 30 (RFC 8767); 0: never" },
	{ 0, CONFIG_NUMBER, 1, "stale-timeout", "MS", &g.stale_timeout_ms,
	    10, 60000, "milliseconds",
	    "with --serve-stale, answer from an expired entry a query that "
	    "no upstream answered within MS, and refresh the entry meanwhile "
	    "(RFC 8767 5)" },
	{ 0, CONFIG_NUMBER, 1, "prefetch", "PCT", &g.prefetch_pct,
	    1, 50, "percent",
	    "refresh a cached answer asked for in the last PCT percent of "
	    "its TTL (TTLs of 10 s or more), before it expires" },
	{ 0, CONFIG_FLAG, 0, "no-coalesce", NULL, &g.no_coalesce, 0, 0, NULL,
	    "ask the upstream again for a question already in flight "
	    "(default: ask once and answer every client that asked)" },
	{ 0, CONFIG_NUMBER, 1, "hedge-percent", "PCT", &g.hedge_pct,
	    1, 100, "percent",
	    "also ask the next upstream a query that is slower than its "
	    "upstream's usual round trip, for at most PCT percent more "
	    "queries" },
	{ 0, CONFIG_VALUE, 0, "forward-zone", "DOMAIN=IP[@PORT][,tcp]", NULL,
	    0, 0, NULL, "send queries at or below DOMAIN to the plain-DNS "
	    "server IP (repeatable; the longest match wins), over TCP only "
	    "with ,tcp" },
	{ 0, CONFIG_NUMBER, 0, "drain-timeout", "MS", &g.drain_ms,
	    0, 600000, "milliseconds",
	    "on SIGTERM, finish the queries in flight for at most MS" },
	{ 0, CONFIG_NUMBER, 0, "lame-duck", "MS", &g.lame_duck_ms,
	    0, 600000, "milliseconds",
	    "on SIGTERM, first keep answering for MS while /ready says 503, "
	    "new queries go to a --reuseport instance beside this one and "
	    "idle TCP clients are closed, then drain" },
	{ 0, CONFIG_FLAG, 0, "reuseport", NULL, &g.reuseport, 0, 0, NULL,
	    "let another dotproxy bind the same addresses (SO_REUSEPORT), "
	    "for restarts with no gap: a new one takes the queries once an "
	    "upstream answers it; then stop the old one (--lame-duck)" },
	{ 0, CONFIG_VALUE, 0, "allow", "CIDR", NULL, 0, 0, NULL,
	    "answer clients in CIDR (repeatable); default loopback, RFC "
	    "1918, link-local and ULA; others get REFUSED" },
	{ 0, CONFIG_VALUE, 0, "user", "UID[:GID]", NULL, 0, 0, NULL,
	    "run as UID:GID (numbers) once the ports are open" },
	{ 0, CONFIG_VALUE, 0, "chroot", "DIR", NULL, 0, 0, NULL,
	    "chroot to DIR once the ports are open" },
	{ 0, CONFIG_VALUE, 0, "http", "ADDR", NULL, 0, 0, NULL,
	    "serve /health, /ready and /metrics (Prometheus) over HTTP on "
	    "ADDR: PORT (on 127.0.0.1) or a --listen form; default: off" },
	{ 0, CONFIG_OPTIONAL, 0, "probe", "[ADDR]", NULL, 0, 0, NULL,
	    "ask the dotproxy at ADDR (default 127.0.0.1@53) for localhost. "
	    "and exit 0 if it answers within a second, else 1: a health "
	    "check for images without a shell" },
	{ 0, CONFIG_FLAG, 0, "syslog", NULL, &config.syslog, 0, 0, NULL,
	    "log to the system logger (/dev/log, facility daemon) with each "
	    "line's level, instead of stderr" },
	{ 'v', CONFIG_FLAG, 0, "verbose", NULL, NULL, 0, 0, NULL,
	    "log every event, query names included" },
	{ 'q', CONFIG_FLAG, 0, "quiet", NULL, NULL, 0, 0, NULL,
	    "log warnings and errors only" },
	{ 'h', CONFIG_FLAG, 0, "help", NULL, NULL, 0, 0, NULL,
	    "show this help" },
	{ 'V', CONFIG_FLAG, 0, "version", NULL, NULL, 0, 0, NULL,
	    "show the version" },
};

#define CONFIG_N_OPTIONS (sizeof config_options / sizeof config_options[0])

/* Defaults, before the command line. */
static void
config_defaults(void)
{
	memset(&config, 0, sizeof config);
	config.cache_bytes = CACHE_DEFAULT_BYTES;
	config.cache_min_ttl = CACHE_MIN_TTL_S;
	config.cache_max_ttl = CACHE_MAX_TTL_S;
	config.uid = config.gid = -1;
	g.log_level = LOG_INFO;
	g.query_timeout_ms = QUERY_TIMEOUT_MS;
	g.idle_timeout_ms = UPSTREAM_IDLE_MS;
	g.max_backoff_ms = BACKOFF_MAX_MS;
	g.pad_block = PAD_BLOCK_BYTES;
	g.drain_ms = DRAIN_TIMEOUT_MS;
	g.lame_duck_ms = LAME_DUCK_MS;
	g.stale_timeout_ms = STALE_TIMEOUT_MS;
	g.prefetch_pct = PREFETCH_PCT;
	g.hedge_pct = HEDGE_PCT;
	g.tas = TAs;
	g.n_tas = TAs_NUM;
	g.now_ms = time_now_ms();
	g.start_time = time(NULL);
	g.http_fd = -1;
}

/* Writes text into out at o, words wrapped at 78 columns, each new line
 * indented by 8. Returns the new offset. */
static size_t
config_wrap(char *out, size_t cap, size_t o, const char *text, size_t col)
{
	while (*text != '\0') {
		size_t w = strcspn(text, " ");

		if (col > 8 && col + 1 + w > 78) {
			o += util_fmt(out + o, cap - o, "\n        ");
			col = 8;
		} else if (col > 8) {
			o += util_fmt(out + o, cap - o, " ");
			col++;
		}
		if (o + w < cap) {
			memcpy(out + o, text, w);
			o += w;
		}
		col += w;
		text += w;
		text += *text == ' ';
	}
	return o;
}

/* Writes a size as 256k, 1m or bytes. */
static void
config_size_text(size_t v, char *out, size_t cap)
{
	if (v != 0 && v % (1024 * 1024) == 0)
		util_fmt(out, cap, "%zum", v / (1024 * 1024));
	else if (v != 0 && v % 1024 == 0)
		util_fmt(out, cap, "%zuk", v / 1024);
	else
		util_fmt(out, cap, "%zu", v);
}

/*
 * --help: every option of the table, with its default (the value it has
 * now, before the command line is read) and its range, then the public
 * resolvers whose authentication name is built in.
 */
static void
config_usage(int fd)
{
	static char text[8192];
	size_t o, i, j;

	o = util_fmt(text, sizeof text, "Usage: dotproxy [OPTION]...\n"
	    "Serve plain DNS on UDP and TCP; forward every query over "
	    "DNS-over-TLS.\n\n");
	for (i = 0; i < CONFIG_N_OPTIONS; i++) {
		const struct config_option *c = &config_options[i];
		char line[512], lo[16], hi[16], def[16];
		size_t n = 0;

		o += util_fmt(text + o, sizeof text - o, "  %c%c%s--%s%s%s\n"
		    "        ", c->shortname ? '-' : ' ', c->shortname ?
		    c->shortname : ' ', c->shortname ? ", " : "  ", c->name,
		    c->arg ? " " : "", c->arg ? c->arg : "");
		n = util_fmt(line, sizeof line, "%s", c->help);
		if (c->kind == CONFIG_NUMBER || c->kind == CONFIG_SIZE) {
			if (c->kind == CONFIG_SIZE) {
				config_size_text(*(size_t *)c->target, def,
				    sizeof def);
				config_size_text(c->min, lo, sizeof lo);
				config_size_text(c->max, hi, sizeof hi);
			} else {
				util_fmt(def, sizeof def, "%u",
				    *(unsigned *)c->target);
				util_fmt(lo, sizeof lo, "%lu", c->min);
				util_fmt(hi, sizeof hi, "%lu", c->max);
			}
			util_fmt(line + n, sizeof line - n, " (default %s%s%s; "
			    "%s to %s%s)", def, c->kind == CONFIG_SIZE ? "" : " ",
			    c->kind == CONFIG_SIZE ? "" : c->unit, lo, hi,
			    c->zero_off ? ", 0: off" : "");
		}
		o = config_wrap(text, sizeof text, o, line, 8);
		o += util_fmt(text + o, sizeof text - o, "\n");
	}
	o += util_fmt(text + o, sizeof text - o, "\nEnvironment: "
	    "DOT_SERVER=SPEC[,SPEC]... is used when no --upstream is given.\n"
	    "Signals: SIGTERM and SIGINT stop it (exit status 0) after the "
	    "queries in\nflight are answered; SIGHUP tries upstreams in "
	    "back-off again at once;\nSIGUSR1 writes a line of counters to "
	    "stderr.\n\nResolvers whose AUTHNAME is built in:\n");
	for (i = 0; i < sizeof config_known / sizeof config_known[0]; i = j) {
		o += util_fmt(text + o, sizeof text - o, "  %s:",
		    config_known[i].name);
		for (j = i; j < sizeof config_known / sizeof config_known[0] &&
		    strcmp(config_known[j].name, config_known[i].name) == 0;
		    j++)
			o += util_fmt(text + o, sizeof text - o, " %s",
			    config_known[j].ip);
		o += util_fmt(text + o, sizeof text - o, "\n");
	}
	util_write(fd, text, o);
}

/* A usage error (unknown option, missing value): exit status 2. */
static void
config_usage_error(const char *what, const char *arg)
{
	char line[512];
	size_t n = util_fmt(line, sizeof line, "dotproxy: %s '%s'\n"
	    "Try 'dotproxy --help'.\n", what, arg);

	util_write(2, line, n);
	exit(2);
}

/* Adds an upstream spec (from -u or DOT_SERVER), or dies naming it. */
static void
config_add_upstream(const char *spec, const char *source)
{
	struct upstream *u;
	const char *why;

	if (g.n_upstreams == MAX_UPSTREAMS)
		die("too many upstreams (at most %d): '%s'", MAX_UPSTREAMS,
		    spec);
	u = &g.upstreams[g.n_upstreams];
	why = config_parse_upstream(spec, u);
	if (why != NULL)
		die("bad upstream '%s'%s: %s", spec, source, why);
	g.n_upstreams++;
}

/* Adds upstreams from a comma- or space-separated list (DOT_SERVER). */
static void
config_add_upstream_list(const char *list, const char *source)
{
	char buf[4096], *tok, *save = NULL;
	int n = 0;

	if (strlen(list) >= sizeof buf)
		die("DOT_SERVER is too long");
	strcpy(buf, list);
	for (tok = strtok_r(buf, ", \t", &save); tok != NULL;
	    tok = strtok_r(NULL, ", \t", &save), n++)
		config_add_upstream(tok, source);
	if (n == 0)
		die("DOT_SERVER is set but names no upstream");
}

/* Takes the value of an option that is not a plain number (dies naming
 * a bad one). */
static void
config_take(const struct config_option *c, const char *arg)
{
	const char *why;

	if (c->shortname == 'l') {
		if (config.n_listen == MAX_LISTENERS)
			die("too many listen addresses (at most %d): '%s'",
			    MAX_LISTENERS, arg);
		config.listen_specs[config.n_listen++] = arg;
	} else if (c->shortname == 'u') {
		config_add_upstream(arg, "");
	} else if (c->shortname == 'c') {
		config.ca_file = arg;
	} else if (strcmp(c->name, "forward-zone") == 0) {
		if (g.n_zones == MAX_ZONES)
			die("too many forward zones (at most %d): '%s'",
			    MAX_ZONES, arg);
		why = config_parse_zone(arg, &g.zones[g.n_zones]);
		if (why != NULL)
			die("bad --forward-zone '%s': %s", arg, why);
		g.n_zones++;
	} else if (strcmp(c->name, "allow") == 0) {
		acl_add(arg);
	} else if (strcmp(c->name, "http") == 0) {
		config.http_spec = arg;
	} else if (strcmp(c->name, "probe") == 0) {
		config.probe = 1;
		config.probe_spec = arg;
	} else if (strcmp(c->name, "user") == 0) {
		if (config_parse_user(arg, &config.uid, &config.gid) < 0)
			die("bad --user '%s' (want UID or UID:GID, numbers)",
			    arg);
	} else {			/* --chroot */
		config.chroot_dir = arg;
	}
}

/* Takes one option and its value (NULL for a flag); --help and
 * --version exit here. */
static void
config_apply(const struct config_option *c, const char *arg)
{
	static const char version[] = "dotproxy " DOTPROXY_VERSION
	    " (BearSSL 0.6, TLS 1.2)\n";
	unsigned long v;
	size_t size = 0;
	int bad;

	switch (c->kind) {
	case CONFIG_FLAG:
		if (c->target != NULL)
			*(int *)c->target = 1;
		else if (c->shortname == 'v')
			g.log_level = LOG_DEBUG;
		else if (c->shortname == 'q')
			g.log_level = LOG_WARN;
		else if (c->shortname == 'h') {
			config_usage(1);
			exit(0);
		} else {
			util_write(1, version, sizeof version - 1);
			exit(0);
		}
		return;
	case CONFIG_NUMBER:
		bad = util_parse_uint(arg, c->zero_off ? 0 : c->min, c->max,
		    &v) < 0 || (v != 0 && v < c->min);
		if (!bad)
			*(unsigned *)c->target = (unsigned)v;
		break;
	case CONFIG_SIZE:
		bad = config_parse_size(arg, &size) < 0 || size > c->max ||
		    (size < c->min && !(c->zero_off && size == 0));
		if (!bad)
			*(size_t *)c->target = size;
		break;
	default:
		config_take(c, arg);
		return;
	}
	if (bad && c->kind == CONFIG_SIZE)
		die("bad --%s '%s' (want bytes, with k or m for KiB or MiB, "
		    "4k to 1024m, or 0 for none)", c->name, arg);
	if (bad)
		die("bad --%s '%s' (want %s, %lu to %lu%s)", c->name, arg,
		    c->unit, c->min, c->max, c->zero_off ? ", or 0 for none" :
		    "");
}

/* The table entry for a long name (up to len) or a short one. */
static const struct config_option *
config_find(const char *name, size_t len, char shortname)
{
	size_t i;

	for (i = 0; i < CONFIG_N_OPTIONS; i++) {
		const struct config_option *c = &config_options[i];

		if (shortname ? c->shortname == shortname :
		    strlen(c->name) == len && memcmp(c->name, name, len) == 0)
			return c;
	}
	return NULL;
}

/*
 * Parses the command line: --name VALUE, --name=VALUE, -x VALUE, -xVALUE,
 * flags grouped (-vq), "--" ends the options. A usage error (unknown
 * option, missing value, stray argument) exits with status 2, a bad value
 * with status 1 (config_apply).
 */
static void
config_parse_args(int argc, char **argv)
{
	int i;

	for (i = 1; i < argc; i++) {
		const char *a = argv[i], *val = NULL, *eq;
		const struct config_option *c = NULL;

		if (strcmp(a, "--") == 0) {
			i++;
			break;
		}
		if (a[0] != '-' || a[1] == '\0')
			break;
		if (a[1] == '-') {
			eq = strchr(a + 2, '=');
			c = config_find(a + 2, eq ? (size_t)(eq - a - 2) :
			    strlen(a + 2), 0);
			val = eq ? eq + 1 : NULL;
			if (c == NULL || (c->kind == CONFIG_FLAG && eq))
				config_usage_error("unknown option", a);
		} else {
			for (a++; *a && (c = config_find(NULL, 0, *a)) &&
			    c->kind == CONFIG_FLAG && a[1]; a++)
				config_apply(c, NULL);	/* -vq */
			if (c == NULL)
				config_usage_error("unknown option", argv[i]);
			val = a[1] ? a + 1 : NULL;
		}
		if (c->kind == CONFIG_OPTIONAL && val == NULL && i + 1 < argc &&
		    argv[i + 1][0] != '-')
			val = argv[++i];
		if (c->kind != CONFIG_FLAG && c->kind != CONFIG_OPTIONAL &&
		    val == NULL) {
			if (i + 1 >= argc)
				config_usage_error("this option needs a value:",
				    argv[i]);
			val = argv[++i];
		}
		config_apply(c, val);
	}
	if (i < argc)
		config_usage_error("unexpected argument", argv[i]);
}

/* ==== start: from the options to a running loop, and back ============= */
/*
 * The operating system's part: descriptors, listening sockets, signals,
 * the privilege drop, and the order they come in. Fatal on any error.
 */

/*
 * Closes every descriptor a parent left open past stderr: they are not
 * ours, and they would push dotproxy's own past FD_SETSIZE, where
 * select() cannot watch them.
 */
static void
start_close_inherited(int first)
{
	struct rlimit rl;
	long fd, max = 1L << 20;

#ifdef SYS_close_range
	if (syscall(SYS_close_range, (unsigned)first, ~0u, 0u) == 0)
		return;		/* Linux 5.9 and later */
#endif
	/* Without it, what matters: those select() could watch. */
	if (getrlimit(RLIMIT_NOFILE, &rl) == 0 && rl.rlim_cur < (rlim_t)max)
		max = (long)rl.rlim_cur;
	for (fd = first; fd < max && fd < FD_SETSIZE; fd++)
		close((int)fd);
}

/* Returns 1 if an address is 0.0.0.0 or ::. */
static int
start_is_wildcard(const union sockaddr_u *a)
{
	static const unsigned char zero[16];

	if (a->sa.sa_family == AF_INET)
		return a->sin.sin_addr.s_addr == htonl(INADDR_ANY);
	return memcmp(&a->sin6.sin6_addr, zero, 16) == 0;
}

/*
 * Socket activation (sd_listen_fds(3)): when LISTEN_PID is ours, the
 * LISTEN_FDS sockets from descriptor 3 on are the listeners, datagram and
 * stream, paired by address; --listen is then not used. The unit needs
 * no capability, and a restart queues queries in the kernel. Returns how
 * many there are.
 */
static int
start_activated_count(void)
{
	const char *pid = getenv("LISTEN_PID"), *fds = getenv("LISTEN_FDS");
	unsigned long p, n;

	if (pid == NULL || fds == NULL ||
	    util_parse_uint(pid, 1, 0x7FFFFFFF, &p) < 0 ||
	    p != (unsigned long)getpid() ||
	    util_parse_uint(fds, 1, 2 * MAX_LISTENERS, &n) < 0)
		return 0;
	return (int)n;
}

static void
start_adopt_listeners(int n)
{
	int fd;

	for (fd = 3; fd < 3 + n; fd++) {
		union sockaddr_u a;
		socklen_t alen = sizeof a, tlen = sizeof(int);
		int type, flags = fcntl(fd, F_GETFL);
		struct listener *l = NULL;
		size_t i;

		if (getsockopt(fd, SOL_SOCKET, SO_TYPE, &type, &tlen) < 0 ||
		    getsockname(fd, &a.sa, &alen) < 0 || flags < 0 ||
		    (a.sa.sa_family != AF_INET && a.sa.sa_family != AF_INET6) ||
		    (type != SOCK_DGRAM && type != SOCK_STREAM))
			die("LISTEN_FDS: descriptor %d is not a UDP or TCP "
			    "socket", fd);
		fcntl(fd, F_SETFL, flags | O_NONBLOCK);
		fcntl(fd, F_SETFD, FD_CLOEXEC);
		for (i = 0; i < g.n_listeners && l == NULL; i++)
			if (g.listeners[i].addrlen == alen &&
			    memcmp(&g.listeners[i].addr, &a, alen) == 0)
				l = &g.listeners[i];
		if (l == NULL) {
			if (g.n_listeners == MAX_LISTENERS)
				die("LISTEN_FDS: more than %d addresses",
				    MAX_LISTENERS);
			l = &g.listeners[g.n_listeners++];
			l->addr = a;
			l->addrlen = alen;
			l->udp_fd = l->tcp_fd = -1;
			l->wildcard = start_is_wildcard(&a);
		}
		if (type == SOCK_DGRAM) {
			l->udp_fd = fd;
			if (l->wildcard)
				udp_enable_pktinfo(fd, a.sa.sa_family);
		} else {
			l->tcp_fd = fd;
		}
	}
	log_info("listening on %d socket%s from the service manager", n,
	    n == 1 ? "" : "s");
}

/*
 * The service manager's protocol (sd_notify(3), no libsystemd): the unix
 * datagram socket NOTIFY_SOCKET names ("@" for the abstract namespace),
 * connected before any chroot; and its watchdog, WATCHDOG_USEC, fed at
 * half that by the loop itself.
 */
static void
start_notify(void)
{
	const char *path = getenv("NOTIFY_SOCKET");
	const char *wd = getenv("WATCHDOG_USEC"), *wpid = getenv("WATCHDOG_PID");
	struct sockaddr_un sun;
	unsigned long v;
	size_t n;
	int fd;

	if (path == NULL || (path[0] != '/' && path[0] != '@') ||
	    (n = strlen(path)) >= sizeof sun.sun_path)
		return;
	memset(&sun, 0, sizeof sun);
	sun.sun_family = AF_UNIX;
	memcpy(sun.sun_path, path, n);
	if (path[0] == '@')
		sun.sun_path[0] = '\0';
	fd = socket(AF_UNIX, SOCK_DGRAM | SOCK_CLOEXEC, 0);
	if (fd < 0 || connect(fd, (struct sockaddr *)&sun,
	    (socklen_t)(offsetof(struct sockaddr_un, sun_path) + n)) < 0) {
		log_warn("NOTIFY_SOCKET %s: %s", path, strerror(errno));
		if (fd >= 0)
			close(fd);
		return;
	}
	g_log.notify_fd = fd;
	if (wpid != NULL && (util_parse_uint(wpid, 1, 0x7FFFFFFF, &v) < 0 ||
	    v != (unsigned long)getpid()))
		return;			/* the watchdog is another process's */
	if (wd != NULL && util_parse_uint(wd, 1, 0xFFFFFFFFUL, &v) == 0)
		g_log.watchdog_ms = (int64_t)(v / 2000 ? v / 2000 : 1);
}

/* Is stderr journald's stream (JOURNAL_STREAM names it)? Then lines get
 * <N> level prefixes: first thing, so that option errors have theirs. */
static void
start_journal(void)
{
	const char *js = getenv("JOURNAL_STREAM");
	struct stat st;
	unsigned long dev, ino;
	const char *colon;
	char buf[32];

	if (js != NULL && (colon = strchr(js, ':')) != NULL &&
	    (size_t)(colon - js) < sizeof buf && fstat(2, &st) == 0) {
		memcpy(buf, js, (size_t)(colon - js));
		buf[colon - js] = '\0';
		g_log.journal = util_parse_uint(buf, 0, ~0UL, &dev) == 0 &&
		    util_parse_uint(colon + 1, 0, ~0UL, &ino) == 0 &&
		    dev == (unsigned long)st.st_dev &&
		    ino == (unsigned long)st.st_ino;
	}
}

/* --syslog: log lines go to /dev/log instead (else stderr stays). */
static void
start_syslog(int want_syslog)
{
	struct sockaddr_un sun = { AF_UNIX, "/dev/log" };
	int fd;

	if (!want_syslog)
		return;
	fd = socket(AF_UNIX, SOCK_DGRAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
	if (fd < 0 || connect(fd, (struct sockaddr *)&sun, sizeof sun) < 0) {
		log_warn("--syslog: /dev/log: %s: logging to stderr",
		    strerror(errno));
		if (fd >= 0)
			close(fd);
		return;
	}
	g_log.syslog_fd = fd;
}

/*
 * --reuseport: the kernel spreads datagrams and connections over the
 * sockets bound to one address by hash; a program attached to the group
 * (SO_ATTACH_REUSEPORT_CBPF, one per group, the last one attached wins)
 * picks one by index instead. The sockets are indexed in the order they
 * joined (UDP at bind, TCP at listen), and when one leaves the last takes
 * its place: with two instances, index 0 is the older one, index 1 the
 * newer; an index out of range falls back to the hash. So:
 *   - a new instance beside another (start_in_use) steers every group to
 *     index 0, the old one, until an upstream of its own is verified
 *     (its /ready), then to index 1, itself: it takes queries only once it
 *     can answer them, and a program an old instance left is replaced;
 *   - a stopping one (loop_begin_lame_duck) steers to index 0, and sends
 *     itself a token datagram (start_steer_probe): if the token comes back
 *     to it, it is index 0 itself, and steers to index 1 instead. Either
 *     way new queries go to the other instance, whether the older or the
 *     newer one is stopped (a rollback, a failed surge pod).
 * A TCP group follows its UDP group's index: each instance binds both
 * together. The --http listener of a new instance steers to itself at
 * once (start_http): probes of the new pod get the new pod's answers.
 * With three or more instances on one address the index is a guess; a
 * new instance takes the group on its first answer (a probe's: ". NS"),
 * and keeps it. The classic-BPF structs (linux/filter.h, which musl does
 * not have): one instruction, "return index".
 */
struct start_sock_filter {
	uint16_t code;
	uint8_t jt, jf;
	uint32_t k;
};

struct start_sock_fprog {
	unsigned short len;
	struct start_sock_filter *filter;
};

/* Returns 1 if another socket of type is bound to addr (a bind without
 * SO_REUSEPORT says EADDRINUSE). */
static int
start_in_use(const union sockaddr_u *addr, socklen_t len, int type)
{
	int fd = socket(addr->sa.sa_family, type | SOCK_CLOEXEC, 0);
	int one = 1, used;

	if (fd < 0)
		return 0;
	if (addr->sa.sa_family == AF_INET6)
		setsockopt(fd, IPPROTO_IPV6, IPV6_V6ONLY, &one, sizeof one);
	used = bind(fd, &addr->sa, len) < 0 && errno == EADDRINUSE;
	close(fd);
	return used;
}

/* Steers new datagrams or connections of fd's group to the socket at
 * index. */
static void
start_steer(int fd, unsigned index)
{
	struct start_sock_filter ret[1] = { { 0x06, 0, 0, 0 } };
	struct start_sock_fprog prog = { 1, ret };	/* BPF_RET|BPF_K */

	ret[0].k = index;
	if (fd >= 0 && setsockopt(fd, SOL_SOCKET, SO_ATTACH_REUSEPORT_CBPF,
	    &prog, sizeof prog) < 0)
		log_warn("cannot steer new queries (--reuseport): %s",
		    strerror(errno));
}

/* start_steer on every listener's UDP and TCP socket. */
static void
start_steer_all(unsigned index)
{
	size_t i;

	for (i = 0; i < g.n_listeners; i++) {
		start_steer(g.listeners[i].udp_fd, index);
		start_steer(g.listeners[i].tcp_fd, index);
	}
}

/* Returns 1 if another listener of ours holds addr itself. */
static int
start_listener_holds(size_t except, const union sockaddr_u *addr)
{
	size_t i;

	for (i = 0; i < g.n_listeners; i++) {
		const struct listener *l = &g.listeners[i];

		if (i != except && l->addrlen == g.listeners[except].addrlen &&
		    memcmp(&l->addr, addr, l->addrlen) == 0)
			return 1;
	}
	return 0;
}

/*
 * Sends every UDP listener a random token of its own (byte 3: its index;
 * QR set: not a query, no instance answers it); udp_on_readable looks
 * for it, and steers that listener's groups to index 1 where it comes
 * back (each group has its own order). The groups are steered to index 0
 * already. A wildcard listener's token goes to a loopback address that no
 * listener of ours holds (with -l 0.0.0.0 -l 127.0.0.1 the kernel gives
 * 127.0.0.1 to the more specific group): 127.0.0.1 to 127.0.0.9; for IPv6
 * only ::1 is there.
 */
static void
start_steer_probe(void)
{
	size_t i;

	if (util_random(g.steer_token, sizeof g.steer_token) < 0)
		return;
	g.steer_token[2] |= DNS_FLAG_QR;
	for (i = 0; i < g.n_listeners; i++) {
		struct listener *l = &g.listeners[i];
		union sockaddr_u to = l->addr;
		unsigned char tok[sizeof g.steer_token];
		uint32_t a;
		int fd;

		if (l->udp_fd < 0)
			continue;
		if (l->wildcard && to.sa.sa_family == AF_INET)
			for (a = INADDR_LOOPBACK; a < INADDR_LOOPBACK + 10; a++) {
				to.sin.sin_addr.s_addr = htonl(a);
				if (!start_listener_holds(i, &to))
					break;
			}
		else if (l->wildcard)
			to.sin6.sin6_addr = in6addr_loopback;
		fd = socket(to.sa.sa_family, SOCK_DGRAM | SOCK_CLOEXEC, 0);
		if (fd < 0)
			continue;
		memcpy(tok, g.steer_token, sizeof tok);
		tok[3] = (unsigned char)i;
		l->steer_probing = sendto(fd, tok, sizeof tok, 0, &to.sa,
		    l->addrlen) == (ssize_t)sizeof tok;
		close(fd);
	}
}

/* --http: opens its listener (PORT alone means 127.0.0.1@PORT). */
static void
start_http(const char *spec)
{
	char buf[64];
	union sockaddr_u a;
	socklen_t alen;
	int fd, one = 1, shared;
	size_t i;
	unsigned long port;

	if (util_parse_uint(spec, 1, 65535, &port) == 0) {
		util_fmt(buf, sizeof buf, "127.0.0.1@%lu", port);
		spec = buf;
	}
	if (config_parse_addr(spec, 0, &a, &alen) < 0 ||
	    (a.sa.sa_family == AF_INET ? a.sin.sin_port : a.sin6.sin6_port) ==
	    0)
		die("bad --http '%s' (want PORT, IP@PORT, IPv4:PORT or "
		    "[IPv6]:PORT)", spec);
	/* --reuseport: an instance beside this one on the same port (pods
	 * of one DaemonSet on the host network ask for the same one) leaves
	 * /health, /ready and /metrics to the newest, this one: a kubelet's
	 * readiness probe of the new pod gets the new pod's answer. */
	shared = g.reuseport && start_in_use(&a, alen, SOCK_STREAM);
	fd = socket(a.sa.sa_family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC,
	    0);
	if (fd >= 0) {
		setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
		if (g.reuseport)
			setsockopt(fd, SOL_SOCKET, SO_REUSEPORT, &one,
			    sizeof one);
	}
	if (fd < 0 || fd >= FD_SETSIZE || bind(fd, &a.sa, alen) < 0 ||
	    listen(fd, 16) < 0)
		die("cannot serve --http on %s: %s", spec, strerror(errno));
	if (shared)
		start_steer(fd, 1);
	g.http_fd = fd;
	for (i = 0; i < MAX_HTTP_CLIENTS; i++) {
		g.http[i].fd = -1;
		g.http[i].in = g.http_in[i];
		g.http[i].out = g.http_out[i];
	}
	util_format_addr(&a, buf, sizeof buf);
	log_info("serving /health, /ready and /metrics on http://%s", buf);
}

/*
 * --probe: asks the dotproxy at spec (default 127.0.0.1@53) for
 * "localhost. A", which it answers itself, over UDP. Returns 0 if an
 * answer to that question comes within PROBE_WAIT_MS, else 1 (a health
 * check for an image without a shell: Docker's HEALTHCHECK, a Kubernetes
 * exec probe).
 */
static int
start_probe(const char *spec)
{
	static const unsigned char q[] = {
		0, 0, DNS_FLAG_RD, 0, 0, 1, 0, 0, 0, 0, 0, 0,
		9, 'l', 'o', 'c', 'a', 'l', 'h', 'o', 's', 't', 0, 0, 1, 0, 1,
	};
	unsigned char buf[512];
	union sockaddr_u a;
	socklen_t alen;
	int64_t end = time_now_ms() + PROBE_WAIT_MS;
	uint16_t id;
	int fd;

	if (spec == NULL)
		spec = "127.0.0.1@53";
	if (config_parse_addr(spec, DEFAULT_PORT, &a, &alen) < 0)
		die("bad --probe '%s' (want IP, IP@PORT, IPv4:PORT or "
		    "[IPv6]:PORT)", spec);
	fd = socket(a.sa.sa_family, SOCK_DGRAM | SOCK_CLOEXEC, 0);
	memcpy(buf, q, sizeof q);
	if (fd < 0 || fd >= FD_SETSIZE || util_random(&id, sizeof id) < 0 ||
	    connect(fd, &a.sa, alen) < 0 || (put16(buf, id),
	    send(fd, buf, sizeof q, 0)) < 0)
		die("--probe %s: %s", spec, strerror(errno));
	for (;;) {
		int64_t left = end - time_now_ms();
		struct timeval tv;
		fd_set rd;
		ssize_t n;

		if (left <= 0)
			break;
		tv.tv_sec = (time_t)(left / 1000);
		tv.tv_usec = (suseconds_t)(left % 1000 * 1000);
		FD_ZERO(&rd);
		FD_SET(fd, &rd);
		if (select(fd + 1, &rd, NULL, NULL, &tv) <= 0)
			continue;
		n = recv(fd, buf, sizeof buf, 0);
		if (n >= (ssize_t)sizeof q && get16(buf) == id &&
		    (buf[2] & DNS_FLAG_QR) &&
		    dns_question_equal(buf, sizeof q, q, sizeof q))
			return 0;
		if (n < 0 && errno != EINTR)
			break;		/* refused: nobody listens there */
	}
	log_error("--probe: no answer from %s within %d ms", spec,
	    PROBE_WAIT_MS);
	return 1;
}


/*
 * Opens the UDP and TCP sockets of a listener. Fatal on error, except
 * that an optional listener (the default ::) on a host without IPv6 is
 * skipped with a warning: returns -1 then, else 0.
 */
static int
start_open_listener(struct listener *l, int optional)
{
	static const int types[2] = { SOCK_DGRAM, SOCK_STREAM };
	int fds[2] = { -1, -1 }, one = 1, i;
	int fam = l->addr.sa.sa_family;
	char name[INET6_ADDRSTRLEN + 8];

	util_format_addr(&l->addr, name, sizeof name);
	for (i = 0; i < 2; i++) {
		int fd = socket(fam, types[i] | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);

		if (fd < 0)
			goto fail;
		fds[i] = fd;
		if (fd >= FD_SETSIZE)
			die("cannot listen on %s: descriptor %d is past "
			    "FD_SETSIZE (%d), which select() can watch", name,
			    fd, FD_SETSIZE);
		if (fam == AF_INET6)
			setsockopt(fd, IPPROTO_IPV6, IPV6_V6ONLY, &one,
			    sizeof one);
		if (types[i] == SOCK_STREAM)
			setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one,
			    sizeof one);
		if (g.reuseport && setsockopt(fd, SOL_SOCKET, SO_REUSEPORT,
		    &one, sizeof one) < 0)
			goto fail;
		if (g.reuseport && i == 0 && start_in_use(&l->addr, l->addrlen,
		    SOCK_DGRAM))
			g.steer_wait = 1;	/* another instance is there */
		if (bind(fd, &l->addr.sa, l->addrlen) < 0)
			goto fail;
		if (types[i] == SOCK_STREAM && listen(fd, 128) < 0)
			goto fail;
		if (g.steer_wait)	/* at once: it is in the group now */
			start_steer(fd, 0);
	}
	l->udp_fd = fds[0];
	l->tcp_fd = fds[1];
	l->wildcard = start_is_wildcard(&l->addr);
	if (l->wildcard)
		udp_enable_pktinfo(l->udp_fd, fam);
	log_info("listening on %s (UDP and TCP)", name);
	return 0;
fail:
	{
		int err = errno;

		if (fds[0] >= 0)
			close(fds[0]);
		if (fds[1] >= 0)
			close(fds[1]);
		if (optional && (err == EAFNOSUPPORT || err == EADDRNOTAVAIL)) {
			log_warn("no IPv6 here: not listening on %s (%s)",
			    name, strerror(err));
			return -1;
		}
		die("cannot listen on %s (%s): %s%s", name,
		    i == 0 ? "UDP" : "TCP", strerror(err),
		    err == EACCES ? " (ports below 1024 need root or "
		    "CAP_NET_BIND_SERVICE)" : "");
	}
	return -1;
}

/* Parses a --listen spec and opens its sockets (fatal on error). */
static void
start_listener(const char *spec, int optional)
{
	struct listener *l;

	if (g.n_listeners == MAX_LISTENERS)
		die("too many listen addresses (at most %d): '%s'",
		    MAX_LISTENERS, spec);
	l = &g.listeners[g.n_listeners];
	if (config_parse_addr(spec, DEFAULT_PORT, &l->addr, &l->addrlen) < 0)
		die("bad listen address '%s' (want IP, IP@PORT, IPv4:PORT or "
		    "[IPv6]:PORT)", spec);
	if (start_open_listener(l, optional) == 0)
		g.n_listeners++;
}

/* Checks at start-up that a zone's server can be reached at all (an
 * IPv6 server on a host without IPv6): fatal if not. Each query later
 * has its own socket (zone_send). */
static void
start_check_zone(const struct zone *z)
{
	int fd = zone_socket(z, SOCK_DGRAM);

	if (fd < 0)
		die("forward zone %s: %s", z->label, strerror(errno));
	close(fd);
}

static void
start_on_signal(int sig)
{
	if (sig == SIGUSR1) {
		g_stats_wanted = 1;
		return;
	}
	if (sig == SIGHUP) {
		g_retry_wanted = 1;
		return;
	}
	g_stop_signal = sig;
	g_stop_count++;
}

/* dotproxy is PID 1 in a scratch container: the kernel ignores signals
 * that PID 1 does not handle, so SIGTERM and SIGINT are caught. */
static void
start_signals(void)
{
	struct sigaction sa;

	memset(&sa, 0, sizeof sa);
	sa.sa_handler = start_on_signal;
	sigemptyset(&sa.sa_mask);
	sigaction(SIGTERM, &sa, NULL);
	sigaction(SIGINT, &sa, NULL);
	sigaction(SIGUSR1, &sa, NULL);
	sigaction(SIGHUP, &sa, NULL);	/* systemctl kill, docker kill -s HUP:
					 * never a reason to stop */
	sa.sa_handler = SIG_IGN;
	sigaction(SIGPIPE, &sa, NULL);
}

/*
 * After the sockets are bound: --chroot, then --user (supplementary
 * groups cleared, group before user). Refuses to go on if any step fails
 * or if root could be regained.
 */
static void
start_drop_privileges(const char *dir, long uid, long gid)
{
	if (dir != NULL) {
		if (chroot(dir) < 0 || chdir("/") < 0)
			die("cannot chroot to '%s': %s", dir, strerror(errno));
		log_info("chrooted to %s", dir);
	}
	if (uid < 0)
		return;
	if (setgroups(0, NULL) < 0 || setgid((gid_t)gid) < 0 ||
	    setuid((uid_t)uid) < 0)
		die("cannot drop privileges to %ld:%ld: %s", uid, gid,
		    strerror(errno));
	if (getuid() != (uid_t)uid || geteuid() != (uid_t)uid ||
	    getgid() != (gid_t)gid || (uid != 0 && setuid(0) == 0))
		die("privileges not dropped to %ld:%ld", uid, gid);
	log_info("running as %ld:%ld", uid, gid);
}

/*
 * Everything between the options and the loop: upstreams (DOT_SERVER,
 * else Cloudflare), cache, zones, anchors, TLS contexts, tables, signals,
 * listeners, access list, and last the privilege drop.
 */
static void
start_up(const struct start_opts *o)
{
	int activated = start_activated_count();
	const char *env;
	size_t i;

	start_close_inherited(3 + activated);
	start_syslog(o->syslog);
	start_notify();
	if (g.n_upstreams == 0) {
		env = getenv("DOT_SERVER");
		if (env != NULL)
			config_add_upstream_list(env, " in DOT_SERVER");
		else
			for (i = 0; i < sizeof config_default_upstreams /
			    sizeof config_default_upstreams[0]; i++)
				config_add_upstream(
				    config_default_upstreams[i], "");
	}
	if (o->cache_min_ttl > o->cache_max_ttl)
		die("--cache-min-ttl %u is above --cache-max-ttl %u",
		    o->cache_min_ttl, o->cache_max_ttl);
	if (o->serve_stale != 0 && o->cache_bytes == 0)
		die("--serve-stale needs a cache (--cache-size is 0)");
	cache_init(o->cache_bytes);
	g.cache.min_ttl_s = o->cache_min_ttl;
	g.cache.max_ttl_s = o->cache_max_ttl;
	g.cache.stale_s = o->serve_stale;
	zone_init();
	for (i = 0; i < g.n_zones; i++) {
		start_check_zone(&g.zones[i]);
		g.zone_names[i] = g.zones[i].name;
		g.zone_lens[i] = g.zones[i].name_len;
	}
	if (o->ca_file != NULL)
		anchors_load_file(o->ca_file);
	for (i = 0; i < g.n_upstreams; i++)
		upstream_tls_init(&g.upstreams[i]);
	pending_init();
	client_init();
	start_signals();
	if (activated != 0) {
		start_adopt_listeners(activated);
	} else if (o->n_listen == 0) {
		start_listener("0.0.0.0@53", 0);
		start_listener("::@53", 1);
	}
	for (i = 0; i < o->n_listen && activated == 0; i++)
		start_listener(o->listen_specs[i], 0);
	if (g.steer_wait)
		log_info("another instance listens on these addresses "
		    "(--reuseport): it takes the queries until an upstream "
		    "answers this one");
	if (o->http_spec != NULL)
		start_http(o->http_spec);
	if (g.n_allow == 0)
		acl_add_defaults();
	start_drop_privileges(o->chroot_dir, o->uid, o->gid);
}

/* After the loop: close_notify where it can go out, sockets closed. */
static void
start_stop(void)
{
	size_t i;

	for (i = 0; i < g.n_upstreams; i++)
		upstream_shutdown(&g.upstreams[i]);
	for (i = 0; i < MAX_TCP_CLIENTS; i++)
		if (g.clients[i].state != CLIENT_FREE)
			client_close(&g.clients[i]);
	for (i = 0; i < g.n_listeners; i++)
		if (g.listeners[i].udp_fd >= 0)
			close(g.listeners[i].udp_fd);
}

/* ==== main ============================================================ */

#ifndef DOTPROXY_NO_MAIN
int
main(int argc, char **argv)
{
	start_journal();
	config_defaults();
	config_parse_args(argc, argv);
	if (config.probe)
		return start_probe(config.probe_spec);
	start_up(&config);
	log_info("ready: %zu listener%s, %zu upstream%s (first: %s), "
	    "%zu trust anchor%s", g.n_listeners, g.n_listeners == 1 ? "" : "s",
	    g.n_upstreams, g.n_upstreams == 1 ? "" : "s",
	    g.upstreams[0].label, g.n_tas, g.n_tas == 1 ? "" : "s");
	util_notify("READY=1\nSTATUS=listening; %zu upstream%s, none verified "
	    "yet", g.n_upstreams, g.n_upstreams == 1 ? "" : "s");
	loop_run();
	start_stop();
	log_info("stopped");
	return 0;
}
#endif /* DOTPROXY_NO_MAIN */
