/*
 * libFuzzer harness: the command-line specs, each parser on the input as
 * a NUL-terminated string: config_parse_upstream (IP@PORT#NAME^pins),
 * config_parse_addr, config_parse_zone, config_parse_size,
 * acl_parse_range, trust_parse_pin, config_parse_user,
 * config_domain_to_wire and config_valid_hostname; and util_parse_uint,
 * under every numeric option, against a reference that cannot overflow
 * (issue #9: 4294967296 is no uid 0, on 32-bit targets either).
 */
#define DOTPROXY_NO_MAIN
#include "../../dotproxy.c"
#include "fuzz_util.h"

#include <limits.h>

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

/* util_parse_uint against a reference that cannot overflow: digits
 * only, and the value compared digit by digit with max as text. */
static void
check_parse_uint(const char *s, unsigned long min, unsigned long max)
{
	char maxs[32];
	size_t n = strlen(s), ml, i;
	unsigned long v = 12345;
	int digits = n > 0, rc;
	const char *d = s;

	for (i = 0; i < n; i++)
		if (s[i] < '0' || s[i] > '9')
			digits = 0;
	rc = util_parse_uint(s, min, max, &v);
	if (!digits) {
		FUZZ_ASSERT(rc < 0 && v == 12345);
		return;
	}
	while (d[0] == '0' && d[1] != '\0')	/* leading zeros */
		d++;
	snprintf(maxs, sizeof maxs, "%lu", max);
	ml = strlen(maxs);
	n = strlen(d);
	if (n > ml || (n == ml && strcmp(d, maxs) > 0)) {
		FUZZ_ASSERT(rc < 0);	/* above max, however long */
		return;
	}
	FUZZ_ASSERT(rc == 0 ? v >= min && v <= max && v == strtoul(d, NULL,
	    10) : strtoul(d, NULL, 10) < min);
}

int
LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	static struct upstream u;
	static struct zone z;
	char *s = fuzz_alloc(size + 1);
	union sockaddr_u a;
	socklen_t alen;
	struct acl_range r;
	unsigned char pin[32], wire[DNS_NAME_MAX_BYTES];
	size_t n;
	long uid, gid;

	memcpy(s, data, size);
	s[size] = '\0';
	if (config_parse_upstream(s, &u) == NULL) {
		FUZZ_ASSERT(u.n_pins <= MAX_PINS);
		FUZZ_ASSERT(!u.pin_only || u.n_pins > 0);
		FUZZ_ASSERT(u.pin_only || u.name[0] != '\0');
		FUZZ_ASSERT(u.addr.sa.sa_family == AF_INET ||
		    u.addr.sa.sa_family == AF_INET6);
		FUZZ_ASSERT(strlen(u.label) < sizeof u.label);
	}
	if (config_parse_addr(s, DEFAULT_PORT, &a, &alen) == 0)
		FUZZ_ASSERT(alen == (a.sa.sa_family == AF_INET ?
		    sizeof a.sin : sizeof a.sin6));
	if (config_parse_zone(s, &z) == NULL) {
		FUZZ_ASSERT(z.name_len > 0 && z.name_len <= DNS_NAME_MAX_BYTES);
		FUZZ_ASSERT(dns_check_name(z.name, z.name_len, 0) ==
		    z.name_len);
	}
	if (config_parse_size(s, &n) == 0)
		FUZZ_ASSERT(n <= 1024UL * 1024 * 1024);
	if (acl_parse_range(s, &r) == 0)
		FUZZ_ASSERT(r.prefix <= (r.family == AF_INET ? 32u : 128u));
	(void)trust_parse_pin(s, pin);
	if (config_parse_user(s, &uid, &gid) == 0)
		FUZZ_ASSERT(uid >= 0 && gid >= 0);
	n = config_domain_to_wire(s, wire);
	if (n != 0)
		FUZZ_ASSERT(dns_check_name(wire, n, 0) == n);
	(void)config_valid_hostname(s);
	/* numbers: at 16, 31 and 32 bits, and the whole unsigned long */
	check_parse_uint(s, 0, 65535);
	check_parse_uint(s, 1, 0x7FFFFFFFUL);
	check_parse_uint(s, 0, 0xFFFFFFFFUL);
	check_parse_uint(s, 0, ULONG_MAX);
	check_parse_uint(s, 0, ULONG_MAX / 10 * 10 + 4);
	free(s);
	return 0;
}
