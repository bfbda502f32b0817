/* SPDX-License-Identifier: GPL-2.0 */
/* The record netrecvlat.bpf.c sends for a received packet slower than its stage's threshold. */
#ifndef NETRECVLAT_H
#define NETRECVLAT_H

/* `stage` of a record. User space reads these names, and those of the enums below, through the
 * skeleton (`types::…`). */
enum recv_stage {
	STAGE_NETIF,    /* net/netif_receive_skb: into the stack */
	STAGE_TCP,      /* tcp/tcp_probe: processed by TCP (established connections) */
	STAGE_USERCOPY, /* skb/skb_copy_datagram_iovec: copied to the reading process */
	STAGES,
};

/* Counter slots: SLOT_SLOW + stage counts packets over the stage's threshold. */
enum counter_slot {
	SLOT_SLOW = 0,
	SLOT_SUPPRESSED = STAGES, /* over a threshold, refused by the rate limit */
	SLOT_RINGBUF_FULL,        /* passed the limit, ring buffer had no room */
	SLOT_EXCLUDED,            /* over a threshold, in the excluded (host) netns */
	COUNTER_SLOTS,
};

/* `clock` of a record: the clock of the skb's timestamp. */
enum tstamp_clock {
	TSTAMP_REALTIME,  /* stamped on receive */
	TSTAMP_MONOTONIC, /* the departure time a local sender set */
	TSTAMP_TAI,
};

struct netrecv_event {
	__u64 time_ns;     /* CLOCK_BOOTTIME */
	__u64 latency_ns;
	__u32 stage;       /* enum recv_stage */
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
	__u8 clock;        /* enum tstamp_clock */
	__u8 saddr[16];    /* of the packet (the sender); IPv4 in the first 4 bytes */
	__u8 daddr[16];
	char comm[16];
	char ifname[16];
};

#endif /* NETRECVLAT_H */
