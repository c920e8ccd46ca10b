/*
 * libFuzzer harness: the command-line specs, each parser on the input as
 * a NUL-terminated string: config_parse_upstream (IP@PORT#NAME^pins),
 * config_parse_addr, config_parse_zone, config_parse_size,
 * trust_parse_range, trust_parse_pin, config_parse_user,
 * config_domain_to_wire and config_valid_hostname.
 */
#define DOTPROXY_NO_MAIN
#include "../../dotproxy.c"
#include "fuzz_util.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

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
	if (trust_parse_range(s, &r) == 0)
		FUZZ_ASSERT(r.prefix <= (r.family == AF_INET ? 32u : 128u));
	(void)trust_parse_pin(s, pin);
	if (config_parse_user(s, &uid, &gid) == 0)
		FUZZ_ASSERT(uid >= 0 && gid >= 0);
	n = config_domain_to_wire(s, wire);
	if (n != 0)
		FUZZ_ASSERT(dns_check_name(wire, n, 0) == n);
	(void)config_valid_hostname(s);
	free(s);
	return 0;
}
