/* SPDX-License-Identifier: GPL-2.0 */
/* The record netrecvlat.bpf.c sends for a received packet slower than its stage's threshold. */
#ifndef NETRECVLAT_H
#define NETRECVLAT_H

#define STAGE_NETIF 0    /* net/netif_receive_skb: into the stack */
#define STAGE_TCP 1      /* tcp/tcp_probe: processed by TCP (established connections) */
#define STAGE_USERCOPY 2 /* skb/skb_copy_datagram_iovec: copied to the reading process */
#define STAGES 3

#define SLOT_SLOW(stage) (stage)
#define SLOT_SUPPRESSED (STAGES + 0)   /* over a threshold, refused by the rate limit */
#define SLOT_RINGBUF_FULL (STAGES + 1) /* passed the limit, ring buffer had no room */
#define SLOT_EXCLUDED (STAGES + 2)     /* over a threshold, in the excluded (host) netns */
#define COUNTER_SLOTS (STAGES + 3)

struct netrecv_event {
	__u64 time_ns;     /* CLOCK_BOOTTIME */
	__u64 latency_ns;
	__u32 stage;
	__u32 netns_inum;
	__u32 ifindex;
	__u32 len;         /* skb->len */
	__u32 pid;         /* tgid of the reader (usercopy stage) */
	__u32 tid;
	__u32 tcp_seq;
	__u16 sport;       /* host order, of the packet */
	__u16 dport;
	__u16 l3_proto;    /* ETH_P_IP / ETH_P_IPV6 */
	__u8 l4_proto;
	__u8 clock;        /* the skb timestamp's clock: 0 realtime, 1 monotonic, 2 TAI */
	__u8 saddr[16];    /* of the packet (the sender); IPv4 in the first 4 bytes */
	__u8 daddr[16];
	char comm[16];
	char ifname[16];
};

#endif /* NETRECVLAT_H */
