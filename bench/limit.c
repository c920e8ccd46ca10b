/* The ceiling: a UDP responder that does nothing but turn each query into a fixed answer.
   Whatever a proxy does per query costs more than this. usage: limit PORT (on 127.0.0.1 only)
   The bench's hit-workload ceiling (copied from the shared reference, plus the usage check). */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <netinet/in.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>
int main(int argc, char **argv) {
	if (argc != 2) return 2;
	int s = socket(AF_INET, SOCK_DGRAM, 0);
	struct sockaddr_in a = { .sin_family = AF_INET, .sin_port = htons(atoi(argv[1])), .sin_addr.s_addr = htonl(0x7f000001) };
	if (bind(s, (void *)&a, sizeof a) < 0) return 1;
	unsigned char buf[4096];
	for (;;) {
		struct sockaddr_in from; socklen_t fl = sizeof from;
		ssize_t n = recvfrom(s, buf, 512, 0, (void *)&from, &fl);
		if (n < 12) continue;
		buf[2] |= 0x80; buf[3] = 0x80; buf[7] = 1;            /* QR, RA, ANCOUNT=1 */
		buf[10] = buf[11] = 0;                                 /* drop ARCOUNT (EDNS) */
		size_t q = 12; while (q < (size_t)n && buf[q]) q += buf[q] + 1; q += 5;
		if (q > (size_t)n) continue;
		static const unsigned char rr[] = {0xc0,12, 0,1, 0,1, 0,0,1,44, 0,4, 192,0,2,1};
		memcpy(buf + q, rr, sizeof rr);
		sendto(s, buf, q + sizeof rr, 0, (void *)&from, fl);
	}
}
