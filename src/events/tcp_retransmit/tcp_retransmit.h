/* SPDX-License-Identifier: GPL-2.0 */
/* The record tcp_retransmit.bpf.c sends for a retransmitted TCP segment or SYN-ACK. */
#ifndef TCP_RETRANSMIT_H
#define TCP_RETRANSMIT_H

/* `event` of a record: the tracepoint. User space reads these names, and the counter slots',
 * through the skeleton (`types::…`). */
enum retrans_kind {
	EVENT_SKB,    /* tcp/tcp_retransmit_skb */
	EVENT_SYNACK, /* tcp/tcp_retransmit_synack */
};

enum counter_slot {
	SLOT_SKB,
	SLOT_SYNACK,
	SLOT_SUPPRESSED,
	SLOT_RINGBUF_FULL,
	COUNTER_SLOTS,
};

struct retrans_event {
	__u64 time_ns;  /* CLOCK_BOOTTIME */
	__u32 netns_inum;
	__u32 seq;
	__u32 end_seq;
	__u32 snd_una;
	__u32 pid;      /* tgid of the current task (often not the socket's owner: timers) */
	__s32 err;      /* result of the retransmit (skb only) */
	__u16 family;   /* AF_INET / AF_INET6 */
	__u16 sport;    /* host order */
	__u16 dport;
	__u8 event;     /* enum retrans_kind */
	__u8 state;     /* sk_state (TCP_*) */
	__u8 ca_state;  /* icsk_ca_state (TCP_CA_*) */
	__u8 tcp_flags; /* of the retransmitted segment */
	__u8 retransmits; /* icsk_retransmits */
	__u8 _pad;
	__u8 saddr[16]; /* IPv4 in the first 4 bytes */
	__u8 daddr[16];
	char comm[16];
};

#endif /* TCP_RETRANSMIT_H */
