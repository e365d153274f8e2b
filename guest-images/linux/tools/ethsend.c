/*
 * ethsend IFACE DST SRC [COUNT]: sends COUNT (default 1) raw Ethernet frames of 60 bytes
 * from SRC to DST (ethertype 0x88b5, local experimental) out of IFACE through an
 * AF_PACKET socket, whatever IFACE's own address is. The nicd tests use it in the guest
 * to send frames a spoof check must drop (busybox has no such tool).
 */
#include <arpa/inet.h>
#include <linux/if_packet.h>
#include <net/ethernet.h>
#include <net/if.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

static int parse_mac(const char *s, unsigned char mac[6])
{
	unsigned int b[6];
	if (sscanf(s, "%x:%x:%x:%x:%x:%x", &b[0], &b[1], &b[2], &b[3], &b[4], &b[5]) != 6)
		return -1;
	for (int i = 0; i < 6; i++) {
		if (b[i] > 0xff)
			return -1;
		mac[i] = (unsigned char)b[i];
	}
	return 0;
}

int main(int argc, char **argv)
{
	unsigned char frame[60] = { 0 };
	struct sockaddr_ll addr = { 0 };
	int count = 1;

	if (argc < 4 || argc > 5) {
		fprintf(stderr, "usage: ethsend IFACE DST SRC [COUNT]\n");
		return 2;
	}
	if (parse_mac(argv[2], frame) || parse_mac(argv[3], frame + 6)) {
		fprintf(stderr, "ethsend: bad MAC address\n");
		return 2;
	}
	if (argc == 5 && (count = atoi(argv[4])) < 1) {
		fprintf(stderr, "ethsend: bad count\n");
		return 2;
	}
	frame[12] = 0x88;
	frame[13] = 0xb5;
	memcpy(frame + 14, "ethsend", 7);
	int fd = socket(AF_PACKET, SOCK_RAW, 0);
	if (fd < 0) {
		perror("ethsend: socket");
		return 1;
	}
	addr.sll_family = AF_PACKET;
	addr.sll_ifindex = (int)if_nametoindex(argv[1]);
	addr.sll_halen = 6;
	memcpy(addr.sll_addr, frame, 6);
	if (addr.sll_ifindex == 0) {
		fprintf(stderr, "ethsend: no interface %s\n", argv[1]);
		return 1;
	}
	for (int i = 0; i < count; i++) {
		if (sendto(fd, frame, sizeof(frame), 0, (struct sockaddr *)&addr, sizeof(addr)) !=
		    (ssize_t)sizeof(frame)) {
			perror("ethsend: sendto");
			return 1;
		}
	}
	close(fd);
	return 0;
}
