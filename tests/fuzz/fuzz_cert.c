/*
 * libFuzzer harness: a server's certificate as the pinning code sees it.
 * trust_find_spki and trust_pin_matches on the input as DER, then the
 * input as a one-certificate chain through the pin_x509 wrapper that
 * upstreams with pins use (trust_start_chain .. trust_end_chain,
 * trust_get_pkey), with and without pin-only. The pin is the SHA-256 of
 * whatever trust_find_spki finds, so the "pin matches" paths (and
 * pin-only's key decoding) are reachable.
 *
 * Input: byte 0 (bit 0: pin-only; bit 1: a wrong pin; the rest seeds the
 * append chunk sizes), then the DER.
 */
#define DOTPROXY_NO_MAIN
#include "../../dotproxy.c"
#include "fuzz_util.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int
LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	static struct upstream u;
	const br_x509_class **ctx = &u.px.vtable;
	unsigned char *der;
	size_t s, l, n, off = 0;
	unsigned flags, usages, seed;
	br_sha256_context h;

	if (size < 1)
		return 0;
	flags = data[0];
	seed = data[0];
	n = size - 1;
	der = fuzz_dup(data + 1, n);
	memset(&u.pins, 0, sizeof u.pins);
	u.n_pins = 1;
	if (trust_find_spki(der, n, &s, &l) == 0) {
		FUZZ_ASSERT(s < n && l <= n - s);
		br_sha256_init(&h);
		br_sha256_update(&h, der + s, l);
		br_sha256_out(&h, u.pins[0]);
		if (flags & 2)
			u.pins[0][0] ^= 1;
		FUZZ_ASSERT(trust_pin_matches(der, n,
		    (const unsigned char (*)[32])u.pins, 1) == !(flags & 2));
	} else {
		FUZZ_ASSERT(trust_pin_matches(der, n,
		    (const unsigned char (*)[32])u.pins, 1) == 0);
	}
	u.pin_only = flags & 1;
	/* What upstream_tls_init sets up, with the compiled-in roots. */
	br_x509_minimal_init(&u.xc, &br_sha256_vtable, TAs, TAs_NUM);
	br_x509_minimal_set_hash(&u.xc, br_sha256_ID, &br_sha256_vtable);
	br_x509_minimal_set_hash(&u.xc, br_sha384_ID, &br_sha384_vtable);
	br_x509_minimal_set_rsa(&u.xc, &br_rsa_i31_pkcs1_vrfy);
	br_x509_minimal_set_ecdsa(&u.xc, &br_ec_all_m31,
	    &br_ecdsa_i31_vrfy_asn1);
	br_x509_minimal_set_time(&u.xc, 739000, 0);
	u.px.vtable = &trust_pin_vtable;
	u.px.u = &u;
	(*ctx)->start_chain(ctx, "dns.test");
	(*ctx)->start_cert(ctx, (uint32_t)n);
	while (off < n) {
		size_t k = 1 + (seed = seed * 1103515245u + 12345u) % 4096u;

		if (k > n - off)
			k = n - off;
		(*ctx)->append(ctx, der + off, k);
		off += k;
	}
	(*ctx)->end_cert(ctx);
	if ((*ctx)->end_chain(ctx) == 0) {
		/* Accepted: only by the pin here (no test root matches),
		 * so only with pin-only and the right pin. */
		FUZZ_ASSERT(u.pin_only && !(flags & 2));
		FUZZ_ASSERT((*ctx)->get_pkey(ctx, &usages) != NULL);
	}
	free(der);
	return 0;
}
